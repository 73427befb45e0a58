"""The bundle page for people (agent/bundle/html.py): its order, and its bounds whatever the
bundle holds (the timeline read one reading at a time, the chart capped, entries cut)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from agent.bundle.format import BundleReader, DeviceInfo, Entry, seal, text_entry
from agent.bundle.html import (
    CHART_MARKS,
    CHART_SOURCES,
    ENTRY_PREVIEW_BYTES,
    MAX_ENTRIES_LISTED,
    WHOLE_PARSE_BYTES,
    TimelineReadings,
    bounded_json,
    clock_notes,
    fault_words,
    render_html,
    timeline_svg,
)
from agent.core.redact import Redactor
from agent.core.timefmt import rfc3339
from tests.bundle.kit import KEY, make_bundle


def _readings(n: int, sources: int = 1, t0: float = 1_700_000_000.0) -> list[dict[str, Any]]:
    return [
        {"source": f"s{i % sources:05d}", "ts": t0 + i, "ok": True, "values": {"v": i}}
        for i in range(n)
    ]


def _timeline(readings: list[dict[str, Any]]) -> bytes:
    return json.dumps({"readings": readings}, indent=1).encode()


def test_the_agents_timeline_is_read_one_reading_at_a_time_and_again() -> None:
    rs = _readings(500, 3)
    tl = TimelineReadings(_timeline(rs))
    assert list(tl) == rs and list(tl) == rs  # re-iterable: the chart makes two passes
    assert tl.problem == ""
    assert list(TimelineReadings(b'{"readings": []}')) == []


def test_a_broken_reading_stops_the_timeline_with_a_reason() -> None:
    text = _timeline(_readings(10))
    cut = TimelineReadings(text[: len(text) // 2])
    got = list(cut)
    assert 0 < len(got) < 10 and got == _readings(10)[: len(got)]
    assert "is not JSON; charted up to it" in cut.problem
    deep = TimelineReadings(b'{"readings": [{"ts": 1}, ' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
    assert list(deep) == [{"ts": 1}] and "nested too deep" in deep.problem
    odd = TimelineReadings(b'{"readings": [{"ts": 1} {"ts": 2}]}')
    assert list(odd) == [{"ts": 1}] and "no ',' or ']'" in odd.problem


def test_other_forms_are_parsed_whole_only_when_small() -> None:
    small = TimelineReadings(json.dumps({"x": 1, "readings": [{"ts": 1}, 5]}).encode())
    assert list(small) == [{"ts": 1}]
    assert "no list" in (t := TimelineReadings(b'{"readings": 7}')).problem and not list(t)
    assert "not JSON" in TimelineReadings(b"not json").problem
    assert "nested too deep" in TimelineReadings(b"[" * 100_000 + b"]" * 100_000).problem
    big = json.dumps({"x": "y" * WHOLE_PARSE_BYTES, "readings": [{"ts": 1}]}).encode()
    assert "not of the form" in (t := TimelineReadings(big)).problem and not list(t)


def test_the_chart_draws_at_most_its_rows_failed_sources_first() -> None:
    rs = _readings(5000, 5000)
    rs[4321]["ok"] = False
    svg = timeline_svg(rs)
    assert svg.count("<line") == CHART_SOURCES
    assert ">s04321<" in svg and "#d33" in svg
    hidden = 5000 - CHART_SOURCES
    assert f"And {hidden:,} more sources ({hidden:,} readings) not drawn" in svg


def test_readings_on_one_mark_are_merged_and_a_failed_one_shows() -> None:
    rs = _readings(10_000)
    rs[5000]["values"] = {"paper_end": True}
    svg = timeline_svg(rs)
    assert svg.count("<circle") == CHART_MARKS
    assert svg.count("#d33") == 1 and "&quot;paper_end&quot;:true" in svg
    assert f"10,000 readings drawn as {CHART_MARKS} marks" in svg
    assert "readings; " in svg  # a merged mark says how many it stands for


def test_readings_without_a_time_or_a_name_are_left_out_or_named_safely() -> None:
    rs: list[dict[str, Any]] = [
        {"ts": "noon", "source": "a"},
        {"ts": float("nan"), "source": "a"},
        {"ts": 5, "source": {"deep": [1, 2]}},
        {"ts": 6, "source": None, "values": [1]},
    ]
    svg = timeline_svg(rs)
    assert "2 reading(s) without a valid time left out" in svg
    assert "(not a name)" in svg and ">None<" in svg
    assert timeline_svg([]).startswith("<p>No readings")
    extreme = timeline_svg([{"ts": 1e308, "source": "a"}, {"ts": -1e308, "source": "a"}])
    assert extreme.count("<circle") == 2 and "e+303 days" in extreme


def test_bounded_json_cuts_length_and_depth() -> None:
    value = {"a": [1, 2.5, None, True], "b": "x"}
    assert bounded_json(value) == json.dumps(value, indent=1)
    assert bounded_json(value, indent=None) == json.dumps(value, separators=(",", ":"))
    deep: Any = []
    for _ in range(50):
        deep = [deep, 1]
    text = bounded_json(deep, max_depth=3)
    assert "[…]" in text and text.count("[") == 4
    long = bounded_json(["z" * 100_000] * 100, max_chars=1000)
    assert len(long) <= 1001 and long.endswith("…")


def test_fault_keys_in_words() -> None:
    assert fault_words("printer.paper_end") == "Printer: paper end"
    assert fault_words("network.link_down", "cleared") == "Network: link down (cleared)"
    assert fault_words("manual.report", "manual") == "Manual report from the terminal"
    assert fault_words("", "startup") == "Startup"
    assert fault_words("power") == "Power"


def test_clock_notes_say_when_the_terminals_clock_looks_off() -> None:
    now = 1_800_000_000.0
    m = {"created_at": rfc3339(now), "clock_synced": True}
    assert clock_notes(m, now + 5) == []
    assert "not synchronised" in clock_notes({**m, "clock_synced": False}, now)[0]
    assert "about 2 h 0 min ahead" in clock_notes(m, now - 7200)[0]
    assert "arrived 3 days after it was made" in clock_notes(m, now + 3 * 86400)[0]
    old = {"created_at": "1970-01-01T00:00:05Z"}
    assert "listed at the time it arrived" in clock_notes(old, now)[0]
    assert "before 2000" in clock_notes(old, None)[0]
    assert "no valid creation time" in clock_notes({"created_at": "noon"}, now)[0]


def _bundle(entries: list[Entry]) -> bytes:
    return seal(
        device=DeviceInfo(id="T-1", site="Store <1>"),
        trigger={"kind": "fault", "key": "printer.cover_open", "severity": "error"},
        entries=entries,
        key=KEY,
        redactor=Redactor(),
    ).data


def test_the_page_leads_with_what_where_when_remedy_then_the_screenshot() -> None:
    """The order of issue 15 item 7; the remedy slot is filled by the caller, as is."""
    b = make_bundle(summary="paper out at till 3", created_at=time.time() - 60)
    with BundleReader(b.data) as r:
        page = render_html(r, True, remedy_html="<p id='fix'>Load a new roll.</p>")
    order = [
        "id='what'",
        "paper out at till 3",
        "id='where'",
        "id='when'",
        "id='fix'",
        "id='screenshot'",
        "id='timeline'",
        "id='fault-details'",
        "id='report-details'",
        "id='diagnostics'",
        "id='manifest'",
    ]
    at = [page.index(x) for x in order]
    assert at == sorted(at), order
    assert "Printer: paper end" in page and "data:image/png;base64," in page
    assert "Store 12 <span class='muted'>(as the terminal says)</span>" in page
    with BundleReader(b.data) as r:
        assert "id='remedy'" not in render_html(r, True, remedy_html="")  # none: no empty block
        built_in = render_html(r, True)  # `posagent bundle html`: the built-in remedy
    assert "id='remedy'" in built_in and "What to do" in built_in


def test_large_entries_are_cut_and_the_rest_only_counted() -> None:
    n = MAX_ENTRIES_LISTED + 7
    entries = [text_entry(f"diagnostics/d{i:03d}.txt", "<" * 40_000) for i in range(n)]
    entries.append(text_entry("report.txt", "r" * 100_000))
    entries.append(Entry("screenshot.png", os.urandom(9 << 20)))
    with BundleReader(_bundle(entries)) as r:
        assert r.size("report.txt") == 100_000
        assert r.read_head("report.txt", 10) == b"r" * 10
        assert r.read_head("report.txt", 10**9) == b"r" * 100_000
        page = render_html(r, False)
    cut = ENTRY_PREVIEW_BYTES // 1024
    assert f"truncated — showing the first {cut} KiB of 98 KiB" in page
    assert "the full entry is in the bundle (posagent bundle extract)" in page
    assert "not shown (39 KiB): the page shows at most 128 KiB of entries" in page
    assert "And 7 more entries not listed" in page
    assert "too large to inline" in page and "base64" not in page
    assert "Store &lt;1&gt;" in page and "<1>" not in page
    assert len(page) < 2_000_000


def test_a_files_trigger_of_any_shape_renders_cut() -> None:
    """`bundle html` reads files ingest never checked: trigger fields of the wrong type or
    far over the format's limits render as text, cut."""
    data = seal(
        device=DeviceInfo(id="T-1"),
        trigger={
            "kind": ["fault"],
            "key": {"a": "<b>"},
            "severity": 7,
            "summary": '"' * 200_000,
            "duration_s": "long",
            "readings": [{"v": "w" * 100_000}] * 3,
        },
        entries=[],
        key=KEY,
        redactor=Redactor(),
    ).data
    with BundleReader(data) as r:
        page = render_html(r, True)
    assert "&#x27;a&#x27;: &#x27;&lt;b&gt;&#x27;" in page and "<b>" not in page
    assert "<p class='summary' id='summary'>" + "&quot;" * 2000 + "</p>" in page
    assert len(page) < 300_000

"""What to do (issue 15 item 5): one remedy per fault key, shown first in report.txt, in
`posagent bundle show` and in `posagent bundle html`."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path

from agent.bundle.format import BundleReader
from agent.bundle.html import render_html
from agent.bundle.remedies import (
    CLEARED_NOTE,
    FLEET_KEYS,
    GENERIC,
    REMEDIES,
    remedy,
    remedy_lines,
)
from agent.bundle.trigger import Trigger, TriggerKind
from agent.capture.capturer import render_report
from agent.core.config import parse_config
from agent.core.model import Severity
from agent.core.redact import Redactor
from agent.faults.catalog import AREAS, RULES, flapping_key
from tests.bundle.kit import KEY, make_bundle
from tests.conftest import posagent_argv

PAPER_END = REMEDIES["printer.paper_end"]


def test_every_catalog_key_has_a_remedy_and_no_other_key_does() -> None:
    """The table names the catalog's keys (the generated flapping keys included) and the
    fleet-side keys, and nothing else."""
    assert {flapping_key(a) for a in (*AREAS, "adb")} <= set(REMEDIES)
    assert not FLEET_KEYS & set(RULES)
    assert set(REMEDIES) == set(RULES) | FLEET_KEYS, (set(RULES) | FLEET_KEYS) ^ set(REMEDIES)


def test_no_remedy_is_empty_and_each_is_one_short_sentence_line() -> None:
    """Both texts of every remedy are set, on one line, short enough for a page, and end
    with a full stop; merchant and support never say the same thing."""
    for key, r in [*REMEDIES.items(), ("(generic)", GENERIC)]:
        for text in (r.merchant, r.support):
            assert text.strip() == text and text, key
            assert "\n" not in text and len(text) <= 200, (key, len(text))
            assert text.endswith("."), (key, text)
        assert r.merchant != r.support, key


def test_an_unknown_key_gets_the_generic_remedy() -> None:
    """A key the table does not know (a newer agent, a fleet-side key) never fails."""
    assert remedy("device.checkin_missed") == GENERIC
    assert remedy("") == GENERIC
    assert remedy("printer.paper_end") == PAPER_END


def test_remedies_survive_redaction_unchanged() -> None:
    """report.txt passes the redactor when sealed: no remedy text looks like a secret."""
    red = Redactor()
    for key, r in REMEDIES.items():
        for text in (r.merchant, r.support):
            assert red.text(text) == text, key


def _trigger(kind: TriggerKind = TriggerKind.FAULT) -> Trigger:
    return Trigger(
        kind=kind,
        key="printer.paper_end",
        severity=Severity.CRITICAL,
        summary="printer receipt: out of paper",
        subject="receipt",
        raised_at="2026-03-01T10:00:00Z",
        cleared_at="2026-03-01T10:04:00Z" if kind == TriggerKind.CLEARED else "",
        duration_s=240.0 if kind == TriggerKind.CLEARED else None,
        readings=(
            {
                "source": "printer:receipt",
                "ts": 1.0,
                "ok": True,
                "values": {"link": "ok", "online": False, "paper_end": True},
            },
        ),
    )


def test_report_opens_with_what_happened_when_and_what_to_do_before_the_readings() -> None:
    """A person reads what happened, when, where and what to do before any raw reading."""
    cfg = parse_config('[agent]\ndevice_id = "T-7"\nsite = "Store 12"\n')
    text = render_report(cfg, _trigger(), "captured", {}, {}, 1772359205.0)
    lines = text.splitlines()
    order = [lines.index(h) for h in ("What happened", "When", "Where", "What to do", "Details")]
    assert order == sorted(order) and order[0] == 2, text
    assert lines[3] == "  printer receipt: out of paper"
    assert "  fault printer.paper_end, critical, raised" in lines
    assert "  raised    2026-03-01T10:00:00Z" in lines
    assert "  site Store 12, terminal T-7" in lines
    todo = "\n".join(lines[lines.index("What to do") : lines.index("Details")])
    assert "Merchant: " + PAPER_END.merchant in todo
    assert " ".join(todo.split()).count(" ".join(PAPER_END.support.split())) == 1
    readings = lines.index("What the agent saw (raw readings, newest last):")
    assert readings > lines.index("Details")
    assert lines[readings + 1] == "  printer:receipt: link=ok, online=False, paper_end=True"


def test_report_of_a_cleared_fault_says_it_cleared_and_what_to_do_if_it_returns() -> None:
    """A cleared bundle's remedy is for the next time, and the report says so."""
    cfg = parse_config('[agent]\ndevice_id = "T-7"\n')
    lines = render_report(cfg, _trigger(TriggerKind.CLEARED), "captured", {}, {}, 0.0).splitlines()
    assert lines[lines.index("What to do") + 1] == f"  {CLEARED_NOTE}"
    assert "  lasted    240.0 s" in lines and "  cleared   2026-03-01T10:04:00Z" in lines


def test_report_of_a_manual_report_keeps_the_merchants_words_under_what_happened() -> None:
    """The note (every line of it) and the contact come before what to do."""
    cfg = parse_config('[agent]\ndevice_id = "T-7"\n')
    trig = Trigger.manual("printer jams\nafter every sale", contact="Ana, +1 555 0100")
    lines = render_report(cfg, trig, "captured", {}, {}, 0.0).splitlines()
    note = lines.index("  note:     printer jams")
    assert lines[note + 1] == "            after every sale"
    assert lines[note + 2] == "  contact:  Ana, +1 555 0100"
    assert note < lines.index("What to do")
    assert "  Merchant: " + REMEDIES["manual.report"].merchant[:40] in "\n".join(lines)


def test_remedy_lines_wrap_at_the_width() -> None:
    """Every line of the block fits 78 columns; the words are all there."""
    lines = remedy_lines("power.ac_lost")
    assert all(len(ln) <= 78 for ln in lines) and len(lines) > 2
    joined = " ".join(" ".join(lines).split())
    r = REMEDIES["power.ac_lost"]
    assert f"Merchant: {r.merchant}" in joined and f"Support: {r.support}" in joined


def test_bundle_html_shows_what_to_do(tmp_path: Path) -> None:
    """`bundle html` has a What to do section with both texts, escaped."""
    b = make_bundle(fault="printer.cover_open")
    with BundleReader(b.data) as r:
        r.verify(KEY)
        page = render_html(r, True)
    r2 = REMEDIES["printer.cover_open"]
    assert "<h2>What to do</h2>" in page
    assert page.index("What to do") < page.index("<h2>Timeline</h2>")
    assert r2.merchant in page
    assert r2.support.replace("'", "&#x27;") in page


def test_bundle_show_prints_what_to_do(tmp_path: Path) -> None:
    """`posagent bundle show` on a bundle file prints the remedy of its fault key."""
    path = tmp_path / "b.zip"
    path.write_bytes(make_bundle(fault="printer.paper_end").data)
    key = tmp_path / "device.key"
    key.write_bytes(KEY)
    s = subprocess.run(
        posagent_argv("bundle", "show", "--key-file", str(key), str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert s.returncode == 0, s.stderr
    lines = s.stdout.splitlines()
    at = lines.index("what to do")
    assert lines[at + 1] == f"  Merchant: {PAPER_END.merchant}"
    assert " ".join(" ".join(lines[at + 2 : at + 4]).split()).startswith(
        f"Support: {PAPER_END.support}"[:60]
    )
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
        assert json.loads(z.read("manifest.json"))["trigger"]["key"] == "printer.paper_end"

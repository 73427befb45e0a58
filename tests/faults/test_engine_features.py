"""Fault engine behaviour beyond single rules: flapping, evidence, persistence, robustness."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.config import Config, FaultOverride
from agent.core.model import FaultEvent, FaultState, Reading, Severity
from agent.faults.catalog import RULES
from agent.faults.engine import EVIDENCE_MAX, FaultEngine, format_summary
from tests.faults.kit import TICK, F, FakeClock, R, Step, apply, make_config, make_engine, run


def link_blocks(pattern: list[bool], per_block: int = 3, dt: float = 10.0) -> list[Step]:
    """eth0 readings: `per_block` readings of each carrier value in `pattern`."""
    return [
        R("network:eth0", dt=dt, carrier=c, operstate="up")
        for c in pattern
        for _ in range(per_block)
    ]


def states(events: list[FaultEvent]) -> list[tuple[str, str, str, int]]:
    """(key, subject, state, suppressed) of each event."""
    return [(e.key, e.subject, e.state.value, e.suppressed) for e in events]


# --------------------------------------------------------------------------- flapping


def test_flapping_folds_transitions_and_reconciles_after_quiet_period() -> None:
    """Transitions after the 6th fold into network.flapping; the quiet period clears it and the real state is told."""
    steps = link_blocks([False, True, False, True, False, True, False, True])
    steps += [R("network:eth0", dt=60, carrier=True, operstate="up") for _ in range(4)]
    steps += [TICK(70.0)]
    _, events, engine, _ = run(steps, {"network.link_down", "network.flapping"})
    assert states(events) == [
        ("network.link_down", "eth0", "raised", 0),
        ("network.link_down", "eth0", "cleared", 0),
        ("network.link_down", "eth0", "raised", 0),
        ("network.link_down", "eth0", "cleared", 0),
        ("network.link_down", "eth0", "raised", 0),
        ("network.flapping", "eth0", "raised", 1),
        ("network.flapping", "eth0", "cleared", 3),
        ("network.link_down", "eth0", "cleared", 0),
    ]
    assert events[5].severity is Severity.ERROR
    assert events[5].summary == "network.link_down@eth0 flapping: 6 transitions in 10 min"
    assert engine.active() == []


def test_flapping_is_active_and_ends_with_a_raise_when_the_fault_stays() -> None:
    """While flapping the fault shows in active(); ending bad it is re-raised once after the quiet period."""
    engine, clock = make_engine()
    for step in link_blocks([False, True] * 3):
        apply(engine, clock, step)
    active = engine.active()
    assert [(e.key, e.subject) for e in active] == [
        ("network.link_down", "eth0"),
        ("network.flapping", "eth0"),
    ]
    out: list[FaultEvent] = []
    for step in link_blocks([False], per_block=8, dt=30.0):
        out += apply(engine, clock, step)
    assert (
        out == []
    )  # the link went down again: folded (and link_down was still raised for consumers)
    clock.advance(300.0)
    out = engine.tick()
    assert states(out) == [("network.flapping", "eth0", "cleared", 2)]
    assert [e.key for e in engine.active()] == ["network.link_down"]


def test_flapping_groups_every_fault_of_the_same_device() -> None:
    """Once printer receipt flaps, other printer faults of that device fold too; other devices do not."""
    engine, clock = make_engine()
    paper = [True, True, False, False] * 3
    out: list[FaultEvent] = []
    for bad in paper:
        out += apply(
            engine, clock, R("printer:receipt", link="ok", paper_end=bad, cover_open=False)
        )
    assert [e.key for e in out if e.state is FaultState.RAISED][-1] == "printer.flapping"
    cover = [R("printer:receipt", link="ok", paper_end=False, cover_open=True) for _ in range(2)]
    other = [R("printer:kitchen", link="ok", cover_open=True) for _ in range(2)]
    out = [e for s in cover + other for e in apply(engine, clock, s)]
    assert states(out) == [("printer.cover_open", "kitchen", "raised", 0)]


def test_tick_before_the_quiet_period_changes_nothing() -> None:
    """tick() only clears flapping faults whose quiet period has passed."""
    engine, clock = make_engine()
    for step in link_blocks([False, True] * 3):
        apply(engine, clock, step)
    clock.advance(299.0)
    assert engine.tick() == []
    clock.advance(2.0)
    assert [e.key for e in engine.tick()] == ["network.flapping", "network.link_down"]


def test_flapping_override_changes_threshold_and_quiet_period() -> None:
    """network.flapping raise_after counts transitions and clear_after is the quiet period in seconds."""
    cfg = make_config({"network.flapping": FaultOverride(raise_after=4, clear_after=30)})
    engine, clock = make_engine(cfg)
    out = [e for s in link_blocks([False, True, False, True]) for e in apply(engine, clock, s)]
    assert [e.key for e in out][-1] == "network.flapping"
    clock.advance(31.0)
    assert [(e.key, e.state) for e in engine.tick()] == [
        ("network.flapping", FaultState.CLEARED),
        ("network.link_down", FaultState.CLEARED),
    ]


# --------------------------------------------------------------------------- evidence and summaries


def test_raised_event_carries_the_readings_that_raised_it() -> None:
    """A count rule's RAISED event holds exactly its raise_after readings."""
    steps = [R("network", default_route=True)] + [
        R("network", default_route=False) for _ in range(3)
    ]
    _, events, _, _ = run(steps, {"network.no_route"})
    (ev,) = events
    assert [r.values for r in ev.readings] == [{"default_route": False}] * 3
    assert ev.raised_at == ev.at


def test_evidence_of_a_long_run_is_bounded_and_keeps_the_first_reading() -> None:
    """A 5-minute rule raised after 61 readings carries the first and the last ones, bounded."""
    steps = [
        R("power", dt=5, plugged=True, battery_status="Not charging", battery_pct=float(i))
        for i in range(61)
    ]
    _, events, _, _ = run(steps, {"power.not_charging"})
    (ev,) = events
    pcts = [r.values["battery_pct"] for r in ev.readings]
    assert len(pcts) == EVIDENCE_MAX
    assert pcts[0] == 0.0
    assert pcts[1:] == [float(i) for i in range(61 - EVIDENCE_MAX + 1, 61)]


def test_cleared_event_says_how_long_the_fault_lasted() -> None:
    """The CLEARED event keeps raised_at and its summary states the duration."""
    steps = [R("system", dt=30, clock_synced=False), R("system", dt=90, clock_synced=True)]
    _, events, _, _ = run(steps, {"system.clock_unsynced"})
    raised, cleared = events
    assert cleared.raised_at == raised.raised_at
    assert cleared.at - cleared.raised_at == pytest.approx(90.0)
    assert cleared.summary == "cleared after 1 min 30 s: clock not synchronised"


def test_summary_templates_fill_values_and_tolerate_missing_ones() -> None:
    """Summaries use the reading's values and print '?' for missing or None ones."""
    assert (
        format_summary("battery low: {battery_pct:.0f} %", {"battery_pct": 14.6})
        == "battery low: 15 %"
    )
    assert (
        format_summary("battery low: {battery_pct:.0f} %", {"battery_pct": None})
        == "battery low: ? %"
    )
    assert format_summary("x {a:.1f} {b}", {"a": "text"}) == "x text ?"


def test_monitor_failure_summary_names_the_error() -> None:
    """agent.monitor_failed's summary carries the monitor's error text."""
    steps = [F("power", error="timeout after 2 s") for _ in range(3)]
    _, events, _, _ = run(steps, {"agent.monitor_failed"})
    assert events[0].summary == "monitor power failing: timeout after 2 s"
    assert events[0].readings[0].ok is False


# --------------------------------------------------------------------------- API edges


def test_set_condition_rejects_reading_rules_and_unknown_keys() -> None:
    """set_condition is only for condition rules; unknown keys are programming errors."""
    engine, _ = make_engine()
    with pytest.raises(ValueError):
        engine.set_condition("power.ac_lost", "", True)
    with pytest.raises(KeyError):
        engine.set_condition("no.such", "", True)
    with pytest.raises(KeyError):
        engine.event("no.such")


def test_set_condition_summary_is_used_for_the_event() -> None:
    """A summary given to set_condition replaces the catalog template."""
    engine, _ = make_engine()
    (ev,) = engine.set_condition("upload.auth_failed", "", True, "HTTP 401 from collector")
    assert ev.summary == "HTTP 401 from collector"
    assert ev.readings[0].values["bad"] is True


def test_active_lists_most_severe_first() -> None:
    """active() sorts critical before error before warning."""
    engine, clock = make_engine()
    for _ in range(3):
        apply(engine, clock, R("system", clock_synced=False, disk_free_pct=1.0))
        apply(engine, clock, R("app", running=False))
    assert [e.severity.value for e in engine.active()] == ["critical", "error", "warning"]


def test_one_shot_events_are_never_active() -> None:
    """event() returns a RAISED event that active() does not list and that never clears."""
    engine, _ = make_engine()
    ev = engine.event(
        "app.crash_report", "/data/tombstones/tombstone_03", None, "", {"size_bytes": 10}
    )
    assert ev is not None and ev.state is FaultState.RAISED
    assert ev.readings[0].values == {"size_bytes": 10}
    assert engine.active() == []


def test_idle_instances_are_forgotten() -> None:
    """Hundreds of unexpected devices that come and go leave no state once the flap window passes."""
    engine, clock = make_engine()
    for i in range(300):
        apply(engine, clock, R("peripherals", dt=0.1, unexpected=[f"1a86:7523:{i}"]))
    apply(engine, clock, R("peripherals", unexpected=[]))
    assert engine.active() == []
    clock.advance(601.0)
    apply(engine, clock, R("peripherals", unexpected=[]))
    assert engine.snapshot()["instances"] == []


# --------------------------------------------------------------------------- persistence


def roundtrip(engine: FaultEngine) -> dict[str, Any]:
    """The engine's snapshot through JSON text, as the daemon persists it."""
    data: dict[str, Any] = json.loads(json.dumps(engine.snapshot()))
    return data


def test_snapshot_restore_keeps_active_faults_without_new_events() -> None:
    """After restore the same faults are active, nothing is re-raised, and they clear normally."""
    engine, clock = make_engine()
    for _ in range(2):
        apply(engine, clock, R("printer:receipt", link="ok", paper_end=True))
    before = engine.active()
    data = roundtrip(engine)

    clock2 = FakeClock(start=5.0)
    clock2.wall_time = clock.wall_time + 60
    engine2, _ = make_engine(Config(), clock2)
    engine2.restore(data)
    assert [(e.key, e.subject, e.severity, e.raised_at) for e in engine2.active()] == [
        (e.key, e.subject, e.severity, e.raised_at) for e in before
    ]
    assert apply(engine2, clock2, R("printer:receipt", link="ok", paper_end=True)) == []
    out = [
        e
        for _ in range(2)
        for e in apply(engine2, clock2, R("printer:receipt", link="ok", paper_end=False))
    ]
    assert states(out) == [("printer.paper_end", "receipt", "cleared", 0)]
    assert out[0].summary.startswith("cleared after 1 min 15 s")


def test_restore_counts_downtime_into_duration_rules() -> None:
    """A 5-minute condition 100 s old, restored after 150 s down, raises 50 s later on a rebooted clock."""
    engine, clock = make_engine()
    bad = {"plugged": True, "battery_status": "Not charging"}
    apply(engine, clock, R("power", dt=0, **bad))
    apply(engine, clock, R("power", dt=100, **bad))
    data = roundtrip(engine)

    clock2 = FakeClock(start=3.0)
    clock2.wall_time = clock.wall_time + 150
    engine2, _ = make_engine(Config(), clock2)
    engine2.restore(data)
    assert apply(engine2, clock2, R("power", dt=49, **bad)) == []
    assert [e.key for e in apply(engine2, clock2, R("power", dt=1, **bad))] == [
        "power.not_charging"
    ]


def test_restore_keeps_flapping_state() -> None:
    """A flapping fault survives a restart and still clears after its quiet period."""
    engine, clock = make_engine()
    for step in link_blocks([False, True] * 3):
        apply(engine, clock, step)
    data = roundtrip(engine)
    engine2, clock2 = make_engine(Config(), FakeClock(start=1.0))
    clock2.wall_time = clock.wall_time
    engine2.restore(data)
    assert {e.key for e in engine2.active()} == {"network.flapping", "network.link_down"}
    assert apply(engine2, clock2, R("network:eth0", dt=10, carrier=False, operstate="up")) == []
    clock2.advance(301.0)
    assert states(engine2.tick()) == [
        ("network.flapping", "eth0", "cleared", 1),
        ("network.link_down", "eth0", "cleared", 0),
    ]


def test_restore_drops_unknown_disabled_and_malformed_entries() -> None:
    """Entries for unknown or now-disabled rules, or with broken fields, are dropped; a wrong version is ignored."""
    engine, clock = make_engine()
    for _ in range(3):
        apply(engine, clock, R("network", default_route=False))
        apply(engine, clock, R("app", running=False))
    data = roundtrip(engine)
    data["instances"].append({"key": "gone.rule", "subject": ""})
    data["instances"].append({**data["instances"][0], "severity": "nope"})
    cfg = make_config({"app.not_running": FaultOverride(enabled=False)})
    engine2, _ = make_engine(cfg)
    engine2.restore(data)
    assert [e.key for e in engine2.active()] == ["network.no_route"]
    engine3, _ = make_engine()
    engine3.restore({"version": 99, "instances": data["instances"]})
    assert engine3.active() == []


# --------------------------------------------------------------------------- robustness

VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=8), max_size=3),
)
KEYS = sorted(
    {
        "ac_online", "plugged", "battery_present", "battery_pct", "battery_status",
        "battery_health", "battery_temp_c", "carrier", "operstate", "default_route",
        "dns_ok", "connect_ok", "connect_ms", "tls_ok", "error", "link", "online",
        "cover_open", "paper_end", "paper_near_end", "cutter_error", "unrecoverable",
        "auto_recoverable", "drawer_open", "state", "identity_changed", "identity",
        "unexpected", "cpu_pct", "mem_available_pct", "disk_free_pct", "disk_free_mib",
        "clock_synced", "clock_jump_s", "running", "restarts_10min", "heartbeat_age_s",
    }
)  # fmt: skip
SOURCES = [
    "power", "network", "network:eth0", "payment:h:443", "printer:p", "serial:s",
    "peripherals", "system", "app", "adb", "printer", "unknown:x",
]  # fmt: skip
READING = st.tuples(
    st.sampled_from(SOURCES),
    st.dictionaries(st.sampled_from(KEYS), VALUE, max_size=8),
    st.booleans(),
    st.floats(0, 400),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(READING, max_size=60))
def test_any_reading_sequence_is_handled_and_events_pair_up(seq: list[Any]) -> None:
    """Arbitrary values never crash the engine; per instance RAISED and CLEARED alternate (escalations aside)."""
    engine, clock = make_engine()
    shown: dict[str, Severity | None] = {}
    for source, values, ok, dt in seq:
        clock.advance(dt)
        events = engine.feed(
            Reading(source, values, ok=ok, error="" if ok else "x", ts=clock.wall())
        )
        events += engine.tick()
        for ev in events:
            prev = shown.get(ev.instance)
            if ev.state is FaultState.RAISED:
                assert prev is None or ev.severity.rank > prev.rank
                shown[ev.instance] = ev.severity
            else:
                assert prev is not None
                shown[ev.instance] = None
    assert {e.instance for e in engine.active()} == {k for k, v in shown.items() if v is not None}


def test_every_rule_summary_formats_without_values() -> None:
    """Every catalog summary renders even when its reading has none of the values it names."""
    for rule in RULES.values():
        text = format_summary(rule.summary, {})
        assert text and "{" not in text


def test_event_rules_fire_once_per_reading_of_their_source() -> None:
    """crash:/anr:/log_error: readings (the android monitor's) raise one one-shot event each;
    the event keeps the reading and its summary; a disabled rule or another source raises nothing."""
    eng = FaultEngine(Config())
    r = Reading("crash:com.example.pos", {"path": "dropbox:x", "summary": "data_app_crash boom"})
    (ev,) = eng.feed(r)
    assert (ev.key, ev.subject, ev.state, ev.severity) == (
        "app.crash_report",
        "com.example.pos",
        FaultState.RAISED,
        Severity.ERROR,
    )
    assert ev.summary == "data_app_crash boom" and ev.readings == (r,) and ev.at == r.ts
    assert [e.key for e in eng.feed(r)] == ["app.crash_report"]  # every reading is one event
    assert eng.active() == []  # one-shot: never active
    (anr,) = eng.feed(Reading("anr:anr_01", {"path": "/data/anr/anr_01"}))
    assert (anr.key, anr.summary) == ("app.anr", "ANR report anr_01")
    assert [e.key for e in eng.feed(Reading("log_error:logcat", {"line": "x"}))] == [
        "app.log_error"
    ]
    assert eng.feed(Reading("crash", {})) == []  # no subject: not the rule's source
    off = FaultEngine(make_config(faults={"app.crash_report": FaultOverride(enabled=False)}))
    assert off.feed(r) == []

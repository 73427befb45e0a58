"""Capture policy (cooldown, token bucket, reserve, storms), flight recorder and run marker."""

from __future__ import annotations

import json
from pathlib import Path

from agent.core.config import CaptureConfig
from agent.core.model import FaultEvent, FaultState, Reading, Severity
from agent.daemon.lifecycle import RunMarker
from agent.faults.policy import CapturePolicy
from agent.faults.recorder import FlightRecorder


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ev(
    key: str = "printer.paper_end",
    sev: Severity = Severity.ERROR,
    state: FaultState = FaultState.RAISED,
    subject: str = "",
) -> FaultEvent:
    return FaultEvent(key=key, state=state, severity=sev, summary="s", subject=subject)


def test_storm_of_100_events_yields_at_most_burst_and_counts_suppressed() -> None:
    """A 100-event storm across keys gives at most `burst` bundles; the next says how many it suppressed."""
    clock = Clock()
    pol = CapturePolicy(
        CaptureConfig(cooldown_s=60, bundles_per_hour=6, burst=3, critical_reserve=0), clock=clock
    )
    decisions = [pol.decide(ev(f"k.{i % 10}")) for i in range(100)]
    captured = [d for d in decisions if d.capture]
    assert len(captured) == 3
    assert sum(pol.suppressed_total().values()) == 97
    clock.t += 3600
    d = pol.decide(ev("k.5"))
    # k.5 occurs 10 times in the storm and was never captured (only k.0..k.2 were)
    assert d.capture and d.suppressed == 10


def test_cooldown_per_key() -> None:
    """The same key inside its cooldown is suppressed; another key is not."""
    clock = Clock()
    pol = CapturePolicy(CaptureConfig(cooldown_s=300, burst=10, bundles_per_hour=60), clock=clock)
    assert pol.decide(ev("a.x")).capture
    assert not pol.decide(ev("a.x")).capture
    assert pol.decide(ev("b.y")).capture
    clock.t += 301
    d = pol.decide(ev("a.x"))
    assert d.capture and d.suppressed == 1


def test_critical_reserve() -> None:
    """When the bucket is empty, critical faults still draw on their reserve; others do not."""
    clock = Clock()
    pol = CapturePolicy(
        CaptureConfig(cooldown_s=0, burst=1, bundles_per_hour=1, critical_reserve=2), clock=clock
    )
    assert pol.decide(ev("a.a")).capture
    assert not pol.decide(ev("a.b", Severity.ERROR)).capture
    assert pol.decide(ev("a.c", Severity.CRITICAL)).capture
    assert pol.decide(ev("a.d", Severity.CRITICAL)).capture
    assert not pol.decide(ev("a.e", Severity.CRITICAL)).capture


def test_cleared_bundle_only_after_captured_raise() -> None:
    """A cleared event yields a small bundle without screenshot only if its raise was captured."""
    pol = CapturePolicy(CaptureConfig(cooldown_s=0, burst=1, bundles_per_hour=0.001), clock=Clock())
    assert pol.decide(ev("p.x", subject="r")).capture
    assert not pol.decide(ev("p.y", subject="r")).capture
    c = pol.decide(ev("p.x", state=FaultState.CLEARED, subject="r"))
    assert c.capture and not c.with_screen
    assert not pol.decide(ev("p.y", state=FaultState.CLEARED, subject="r")).capture


def test_bucket_level_survives_restart(tmp_path: Path) -> None:
    """A restart does not refill the bucket (no flood from a restart loop)."""
    state = tmp_path / "policy.json"
    pol = CapturePolicy(CaptureConfig(cooldown_s=0, burst=3), state_path=state, clock=Clock())
    for i in range(3):
        assert pol.decide(ev(f"x.{i}")).capture
    pol.save()
    again = CapturePolicy(CaptureConfig(cooldown_s=0, burst=3), state_path=state, clock=Clock())
    assert not again.decide(ev("x.9")).capture
    state.write_text("garbage")
    fresh = CapturePolicy(CaptureConfig(cooldown_s=0, burst=3), state_path=state, clock=Clock())
    assert fresh.decide(ev("x.9")).capture


def test_first_of_storm_is_kept() -> None:
    """The first bundle of a key after a quiet period is marked keep; a repeat soon after is not."""
    clock = Clock()
    pol = CapturePolicy(CaptureConfig(cooldown_s=10, burst=10, bundles_per_hour=3600), clock=clock)
    assert pol.decide(ev("n.x")).keep
    clock.t += 11
    d = pol.decide(ev("n.x"))
    assert d.capture and not d.keep


def test_recorder_window_persist_and_load(tmp_path: Path) -> None:
    """The recorder keeps only the window, persists atomically and loads back."""
    path = tmp_path / "recorder.json"
    rec = FlightRecorder(path, window_s=60)
    for i in range(100):
        rec.add(Reading("power", {"battery_pct": i}, ts=1000.0 + i))
    snap = rec.snapshot(now=1099.0)
    assert snap[0]["ts"] >= 1039.0 and snap[-1]["values"]["battery_pct"] == 99
    assert rec.persist() and not rec.persist()
    again = FlightRecorder(path, window_s=60)
    assert again.load() == 61  # ts 1039..1099
    assert again.snapshot(now=1099.0) == snap
    assert json.loads(path.read_text())["readings"][-1]["values"]["battery_pct"] == 99
    path.write_text("{not json")
    assert FlightRecorder(path).load() == 0


def readings(rec: FlightRecorder, start: float, n: int) -> None:
    for i in range(n):
        rec.add(Reading("power", {"i": i}, ts=start + i))


def test_recorder_journal_appends_only_new_readings_and_compacts(tmp_path: Path) -> None:
    """tick() appends the readings since the last flush (never the whole window) every
    journal_interval_s and compacts into the snapshot once per compact_every_s."""
    path = tmp_path / "recorder.json"
    rec = FlightRecorder(path, window_s=60, journal_interval_s=4, compact_every_s=60)
    journal = tmp_path / "recorder.journal"
    assert not rec.tick(now=0.0)  # arms the timers
    readings(rec, 1000.0, 3)
    assert not rec.tick(now=3.9) and not journal.exists()
    assert rec.tick(now=4.0)
    lines = journal.read_bytes().splitlines()
    assert [json.loads(x)["r"]["values"]["i"] for x in lines] == [0, 1, 2]
    readings(rec, 1003.0, 2)
    assert rec.tick(now=8.0)
    assert len(journal.read_bytes().splitlines()) == 5  # appended, not rewritten
    assert not rec.tick(now=12.0)  # nothing new: no write at all
    assert not path.exists()
    assert rec.tick(now=60.0)  # compaction: snapshot written, journal emptied in place
    assert journal.stat().st_size == 0
    assert json.loads(path.read_text())["seq"] == 5
    again = FlightRecorder(path, window_s=60)
    assert again.load() == 5


def test_recorder_files_are_the_json_of_the_readings_kept_as_lines(tmp_path: Path) -> None:
    """The readings live in memory as their compact JSON lines: the journal and the snapshot
    are byte for byte what json.dumps of the readings gives, and snapshot() decodes them to
    fresh dicts equal to Reading.to_json()."""
    path = tmp_path / "recorder.json"
    rec = FlightRecorder(path, window_s=60, journal_interval_s=4, compact_every_s=60)
    made = [
        Reading("printer:receipt", {"paper": "end", "note": "näh ✓", "ms": 0.25}, ts=1000.5),
        Reading("power", {"battery_pct": None, "ac": False, "nested": {"a": [1, 2]}}, ts=1001.0),
    ]
    for r in made:
        rec.add(r)
    rows = [r.to_json() for r in made]
    sep = (",", ":")
    assert rec.tick(now=0.0) is False and rec.tick(now=4.0)
    journal = (tmp_path / "recorder.journal").read_bytes()
    assert journal == b"".join(
        json.dumps({"s": i + 1, "r": row}, separators=sep).encode() + b"\n"
        for i, row in enumerate(rows)
    )
    assert rec.tick(now=60.0)
    want = json.dumps({"version": 2, "seq": 2, "readings": rows}, separators=sep)
    assert path.read_bytes() == want.encode()
    snap = rec.snapshot(now=1001.0)
    assert snap == rows
    snap[0]["values"]["paper"] = "changed"  # a caller's change stays the caller's
    assert rec.snapshot(now=1001.0) == rows


def test_recorder_cut_between_snapshot_and_truncate_and_torn_tail(tmp_path: Path) -> None:
    """Rows both in the snapshot and the journal count once (seq); a line torn by a cut is
    skipped and the next append starts on a line of its own."""
    path = tmp_path / "recorder.json"
    rec = FlightRecorder(path, window_s=600)
    readings(rec, 1000.0, 10)
    rec.flush()
    stale_journal = (tmp_path / "recorder.journal").read_bytes()
    rec.compact()
    rec.close()
    (tmp_path / "recorder.journal").write_bytes(stale_journal + b'{"s":11,"r":{"source":"po')
    again = FlightRecorder(path, window_s=600)
    assert again.load() == 10 and again.loaded_journal_rows == 0
    again.add(Reading("power", {"i": 10}, ts=1010.0))
    again.flush()
    again.close()
    third = FlightRecorder(path, window_s=600)
    assert third.load() == 11
    assert [r["values"]["i"] for r in third.previous()] == list(range(11))


def test_recorder_previous_window_cut_at_last_reading_not_now(tmp_path: Path) -> None:
    """After an outage longer than the window, load() still holds the window that ended at the
    last persisted reading (the unclean-shutdown bundle's timeline), followed by new readings;
    snapshot(now) stays the live window."""
    path = tmp_path / "recorder.json"
    rec = FlightRecorder(path, window_s=60)
    readings(rec, 1000.0, 100)  # 1000..1099
    rec.compact()
    readings(rec, 1100.0, 3)  # 1100..1102: only in the journal
    rec.flush()
    rec.close()
    after = FlightRecorder(path, window_s=60)
    assert after.load() == 61  # 1042..1102: cut relative to the last reading, 1102
    now = 1102.0 + 3 * 3600  # three hours of outage
    assert after.snapshot(now=now) == []  # the old cut: nothing from before the outage
    after.add(Reading("power", {"i": "new"}, ts=now))
    prev = after.previous()
    assert prev[0]["ts"] == 1042.0 and prev[60]["ts"] == 1102.0 and prev[-1]["ts"] == now
    assert len(prev) == 62
    after.forget_previous()
    assert after.previous() == [after.snapshot(now=now)[0]]


def test_recorder_failed_compaction_keeps_rows_for_the_journal(tmp_path: Path) -> None:
    """A snapshot that cannot be written loses no reading: they stay for the next flush."""
    path = tmp_path / "sub" / "recorder.json"
    path.parent.mkdir()
    rec = FlightRecorder(path, window_s=600)
    readings(rec, 1000.0, 5)
    path.mkdir()  # the snapshot's name is taken by a directory: atomic_write fails
    assert not rec.compact()
    assert rec.flush()
    assert len((path.parent / "recorder.journal").read_bytes().splitlines()) == 5


def test_run_marker_detects_unclean_stop(tmp_path: Path) -> None:
    """A marker left behind means an unclean stop; a clean stop removes it."""
    m = RunMarker(tmp_path)
    assert m.check_previous() is None
    m.start()
    prev = RunMarker(tmp_path).check_previous()
    assert prev is not None and not prev.rebooted and prev.pid > 0
    data = json.loads(m.path.read_text())
    data["boot_id"] = "another-boot"
    m.path.write_text(json.dumps(data))
    prev = RunMarker(tmp_path).check_previous()
    assert prev is not None and prev.rebooted
    m.clean_stop()
    assert RunMarker(tmp_path).check_previous() is None


def test_manual_reports_have_their_own_bucket(tmp_path: Path) -> None:
    """Manual reports skip the cooldown and the fault bucket but draw on their own
    (manual_burst, manual_per_hour): a flood of trigger files is capped, faults keep their
    budget, the cap survives a restart and refills with time."""
    clock = Clock()
    cfg = CaptureConfig(cooldown_s=300, burst=2, manual_burst=3, manual_per_hour=6)
    state = tmp_path / "policy.json"
    pol = CapturePolicy(cfg, state_path=state, clock=clock)
    manual = [pol.decide(ev("manual.report")) for _ in range(50)]
    assert [d.capture for d in manual].count(True) == 3 and all(d.keep for d in manual[:3])
    assert "manual" in manual[3].reason
    assert pol.decide(ev("printer.paper_end")).capture  # the fault bucket is untouched
    pol.save()
    again = CapturePolicy(cfg, state_path=state, clock=clock)
    assert not again.decide(ev("manual.report")).capture  # no refill from a restart
    clock.t += 600  # 6 per hour: one token every 10 minutes
    d = again.decide(ev("manual.report"))
    assert d.capture and d.suppressed == 48  # the reports it held back, carried in this one

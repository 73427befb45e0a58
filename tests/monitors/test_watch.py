"""Watched crash/ANR dirs, the trigger dir and log tailing, on real files in tmp_path."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.config import AppConfig, CaptureConfig, Config
from agent.monitors.watch import (
    ANR_KEY,
    CRASH_KEY,
    CrashDirWatcher,
    LogTailer,
    ManualReport,
    TriggerDirWatcher,
    WatchedDir,
    crash_watcher,
    dirs_from_config,
    log_tailer,
    parse_trigger,
    trigger_watcher,
)
from tests.conftest import wait_until as wait_for


class Recorder:
    """Thread-safe list of callback calls."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Path]] = []
        self._lock = threading.Lock()

    def __call__(self, key: str, path: Path) -> None:
        with self._lock:
            self.items.append((key, path))

    def names(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, p.name) for k, p in self.items]


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """crash, anr and tombstone dirs plus a state file location."""
    out = {name: tmp_path / name for name in ("crash", "anr", "tombstones")}
    for d in out.values():
        d.mkdir()
    out["state"] = tmp_path / "state" / "watch-state.json"
    return out


def make_watcher(dirs: dict[str, Path], rec: Recorder, **kw: float | bool) -> CrashDirWatcher:
    """A crash watcher over the three dirs with fast settle and rescan."""
    watched = [
        WatchedDir(dirs["crash"], CRASH_KEY),
        WatchedDir(dirs["tombstones"], CRASH_KEY),
        WatchedDir(dirs["anr"], ANR_KEY),
    ]
    settle = float(kw.pop("settle_s", 0.05))
    rescan = float(kw.pop("rescan_s", 30.0))
    return CrashDirWatcher(watched, rec, dirs["state"], settle_s=settle, rescan_s=rescan, **kw)  # type: ignore[arg-type]


@pytest.fixture
def running() -> Iterator[list[Any]]:
    """Watchers started by a test, stopped at teardown."""
    started: list[Any] = []
    yield started
    for w in started:
        w.stop()


# --------------------------------------------------------------------------- crash / ANR dirs


def test_new_files_are_reported_with_their_fault_key(
    dirs: dict[str, Path], running: list[Any]
) -> None:
    """Files created after start give app.crash_report (crash, tombstone) or app.anr; old files and dot-files do not."""
    (dirs["crash"] / "old.crash").write_text("before start")
    rec = Recorder()
    w = make_watcher(dirs, rec)
    w.start()
    running.append(w)
    (dirs["crash"] / "pos.crash").write_text("segfault")
    (dirs["tombstones"] / "tombstone_00").write_text("*** *** ***")
    (dirs["anr"] / ".partial").write_text("ignored")
    (dirs["anr"] / "anr_2024").write_text("ANR in com.pos")
    assert wait_for(lambda: len(rec.items) >= 3)
    time.sleep(0.3)
    assert sorted(rec.names()) == [
        (ANR_KEY, "anr_2024"),
        (CRASH_KEY, "pos.crash"),
        (CRASH_KEY, "tombstone_00"),
    ]


def test_a_rewritten_tombstone_slot_is_a_new_report(
    dirs: dict[str, Path], running: list[Any]
) -> None:
    """Android reuses tombstone_00..09: a file rewritten with a new mtime is reported again, once."""
    slot = dirs["tombstones"] / "tombstone_03"
    slot.write_text("first crash")
    old = time.time() - 100
    os.utime(slot, (old, old))
    rec = Recorder()
    w = make_watcher(dirs, rec)
    w.start()
    running.append(w)
    slot.write_text("second crash")
    assert wait_for(lambda: rec.names() == [(CRASH_KEY, "tombstone_03")])
    time.sleep(0.3)
    assert rec.names() == [(CRASH_KEY, "tombstone_03")]


def test_files_that_appeared_while_down_are_reported_once(dirs: dict[str, Path]) -> None:
    """A file created while the agent was down is reported at the next start, and never after."""
    first = Recorder()
    w = make_watcher(dirs, first)
    w.start()
    (dirs["crash"] / "during.crash").write_text("x")
    assert wait_for(lambda: len(first.items) == 1)
    w.stop()

    (dirs["anr"] / "while_down").write_text("ANR")
    old = time.time() - 60
    os.utime(dirs["anr"] / "while_down", (old, old))
    second = Recorder()
    w2 = make_watcher(dirs, second)
    w2.start()
    try:
        assert wait_for(lambda: len(second.items) == 1)
        time.sleep(0.2)
    finally:
        w2.stop()
    assert second.names() == [(ANR_KEY, "while_down")]

    third = Recorder()
    w3 = make_watcher(dirs, third)
    w3.start()
    time.sleep(0.3)
    w3.stop()
    assert third.items == []


def test_a_dir_created_later_is_picked_up_by_the_rescan(tmp_path: Path, running: list[Any]) -> None:
    """A configured dir that does not exist at start is watched once it appears; its files are new."""
    late = tmp_path / "late-crashes"
    rec = Recorder()
    w = CrashDirWatcher(
        [WatchedDir(late, CRASH_KEY)], rec, tmp_path / "s.json", settle_s=0.05, rescan_s=0.2
    )
    w.start()
    running.append(w)
    time.sleep(0.1)
    late.mkdir()
    time.sleep(0.5)  # let a rescan schedule the observer on it
    (late / "a.crash").write_text("x")
    assert wait_for(lambda: rec.names() == [(CRASH_KEY, "a.crash")])


def test_rescan_alone_finds_files_without_the_observer(
    dirs: dict[str, Path], running: list[Any]
) -> None:
    """With the observer off, the periodic rescan still reports each new file once."""
    rec = Recorder()
    w = make_watcher(dirs, rec, use_observer=False, rescan_s=0.1)
    w.start()
    running.append(w)
    path = dirs["crash"] / "b.crash"
    path.write_text("x")
    old = time.time() - 10
    os.utime(path, (old, old))
    assert wait_for(lambda: len(rec.items) == 1)
    time.sleep(0.3)
    assert rec.names() == [(CRASH_KEY, "b.crash")]


def test_rename_into_place_is_reported_once(dirs: dict[str, Path], running: list[Any]) -> None:
    """A dot-file written then renamed into the dir is one report, under its final name."""
    rec = Recorder()
    w = make_watcher(dirs, rec)
    w.start()
    running.append(w)
    tmp = dirs["crash"] / ".tmp-c"
    tmp.write_text("dump")
    tmp.rename(dirs["crash"] / "c.crash")
    assert wait_for(lambda: len(rec.items) == 1)
    time.sleep(0.3)
    assert rec.names() == [(CRASH_KEY, "c.crash")]


def test_a_failing_callback_does_not_stop_the_watcher(
    dirs: dict[str, Path], running: list[Any]
) -> None:
    """An exception in on_file is logged and later files are still reported."""
    seen: list[str] = []

    def on_file(key: str, path: Path) -> None:
        seen.append(path.name)
        if path.name == "bad.crash":
            raise RuntimeError("capture queue full")

    w = CrashDirWatcher([WatchedDir(dirs["crash"], CRASH_KEY)], on_file, None, settle_s=0.05)
    w.start()
    running.append(w)
    (dirs["crash"] / "bad.crash").write_text("x")
    assert wait_for(lambda: seen == ["bad.crash"])
    (dirs["crash"] / "good.crash").write_text("y")
    assert wait_for(lambda: seen == ["bad.crash", "good.crash"])


def test_config_helpers_map_dirs_to_keys(tmp_path: Path) -> None:
    """crash and tombstone dirs map to app.crash_report, anr dirs to app.anr; state lives in the state dir."""
    cfg = dataclasses.replace(
        Config(),
        app=AppConfig(crash_dirs=["/c"], tombstone_dirs=["/t"], anr_dirs=["/a"]),
    )
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, state_dir=str(tmp_path)))
    assert dirs_from_config(cfg) == [
        WatchedDir(Path("/c"), CRASH_KEY),
        WatchedDir(Path("/t"), CRASH_KEY),
        WatchedDir(Path("/a"), ANR_KEY),
    ]
    w = crash_watcher(cfg, Recorder())
    assert w._state_file == tmp_path / "watch-state.json"
    assert trigger_watcher(Config(), lambda r: None) is None
    assert log_tailer(Config(), lambda p, s: None) is None


# --------------------------------------------------------------------------- trigger dir


def test_trigger_file_becomes_a_manual_report_and_is_removed(
    tmp_path: Path, running: list[Any]
) -> None:
    """A dropped file gives its note and contact to the callback, then disappears."""
    trig = tmp_path / "trigger"
    trig.mkdir()
    (trig / "left-while-down").write_text("printer jams\n")
    reports: list[ManualReport] = []
    w = TriggerDirWatcher(trig, reports.append, settle_s=0.05, rescan_s=5.0)
    w.start()
    running.append(w)
    assert wait_for(lambda: len(reports) == 1)
    tmp = trig / ".new"
    tmp.write_text("Screen froze during sale\nContact: Ana +351 900 000 000\nafter tapping PAY\n")
    tmp.rename(trig / "report-1")
    assert wait_for(lambda: len(reports) == 2)
    assert reports[0].note == "printer jams" and reports[0].contact == ""
    assert reports[1].note == "Screen froze during sale\nafter tapping PAY"
    assert reports[1].contact == "Ana +351 900 000 000"
    assert reports[1].file_name == "report-1"
    assert wait_for(lambda: sorted(p.name for p in trig.iterdir()) == [])


def test_trigger_dir_is_created_and_a_failed_report_is_set_aside(
    tmp_path: Path, running: list[Any]
) -> None:
    """The trigger dir is created at start; a report whose callback fails is renamed .failed and not retried."""
    trig = tmp_path / "made" / "trigger"
    calls: list[str] = []

    def on_report(r: ManualReport) -> None:
        calls.append(r.note)
        raise RuntimeError("spool full")

    cfg = dataclasses.replace(Config(), capture=CaptureConfig(trigger_dir=str(trig)))
    w = trigger_watcher(cfg, on_report, settle_s=0.05, rescan_s=0.1)
    assert w is not None
    w.start()
    running.append(w)
    assert trig.is_dir()
    (trig / "r").write_text("note")
    assert wait_for(lambda: (trig / "r.failed").exists())
    time.sleep(0.3)
    assert calls == ["note"]


def test_parse_trigger_takes_the_first_contact_line() -> None:
    """Only the first "contact:" line is the contact; later ones stay in the note."""
    assert parse_trigger("a\nCONTACT:  b@example.com \ncontact: c\n") == (
        "a\ncontact: c",
        "b@example.com",
    )
    assert parse_trigger("") == ("", "")


@given(st.text())
def test_parse_trigger_never_fails(text: str) -> None:
    """Any text parses; the contact never spans lines."""
    note, contact = parse_trigger(text)
    assert "\n" not in contact and isinstance(note, str)


# --------------------------------------------------------------------------- log tailing


class Lines:
    """Collects matched lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, path: Path, line: str) -> None:
        self.lines.append(line)


def test_tailer_reports_only_new_matching_lines(tmp_path: Path) -> None:
    """Lines present at start and non-matching lines are ignored; partial lines wait for their newline."""
    log = tmp_path / "pos.log"
    log.write_text("ERROR old problem\n")
    got = Lines()
    t = LogTailer([log], [r"ERROR", r"Exception"], got, interval_s=0.05)
    t.prime()
    with log.open("a") as fh:
        fh.write("INFO fine\nERROR card reader timeout\nNullPointerException at Pay")
    assert t.poll() == 1
    with log.open("a") as fh:
        fh.write("Activity\n")
    assert t.poll() == 1
    assert got.lines == ["ERROR card reader timeout", "NullPointerException at PayActivity"]
    t.stop()


def test_tailer_follows_rename_rotation(tmp_path: Path) -> None:
    """After os.rename + a new file, the rest of the old file and then the new file are read, in order."""
    log = tmp_path / "pos.log"
    log.write_text("")
    got = Lines()
    t = LogTailer([log], ["ERROR"], got)
    t.prime()
    with log.open("a") as fh:
        fh.write("ERROR 1\n")
    t.poll()
    with log.open("a") as fh:
        fh.write("ERROR 2\nERROR 3 no newline")
    os.rename(log, tmp_path / "pos.log.1")
    assert t.poll() == 1  # renamed away, not yet recreated: the old file is still read
    log.write_text("ERROR 4\n")
    t.poll()
    with log.open("a") as fh:
        fh.write("ERROR 5\n")
    t.poll()
    assert got.lines == ["ERROR 1", "ERROR 2", "ERROR 3 no newline", "ERROR 4", "ERROR 5"]
    t.stop()


def test_tailer_follows_truncation(tmp_path: Path) -> None:
    """When the file shrinks (copytruncate), reading restarts at its beginning."""
    log = tmp_path / "pos.log"
    log.write_text("x" * 100 + "\n")
    got = Lines()
    t = LogTailer([log], ["FATAL"], got)
    t.prime()
    with log.open("a") as fh:
        fh.write("FATAL a\n")
    t.poll()
    with log.open("r+") as fh:
        fh.truncate(0)
    with log.open("a") as fh:
        fh.write("FATAL b\n")
    t.poll()
    assert got.lines == ["FATAL a", "FATAL b"]
    t.stop()


def test_tailer_reads_a_file_that_appears_later_from_its_start(tmp_path: Path) -> None:
    """A log missing at start is read from its first line once it exists."""
    log = tmp_path / "later.log"
    got = Lines()
    t = LogTailer([log], ["ERROR"], got)
    t.prime()
    assert t.poll() == 0
    log.write_text("ERROR first\n")
    assert t.poll() == 1 and got.lines == ["ERROR first"]
    t.stop()


def test_tailer_bounds_matches_and_line_length(tmp_path: Path) -> None:
    """At most max_matches_per_poll lines are reported per poll (the rest counted); long lines are cut."""
    log = tmp_path / "spam.log"
    log.write_text("")
    got = Lines()
    t = LogTailer([log], ["E"], got, max_matches_per_poll=100, max_line_bytes=64)
    t.prime()
    with log.open("a") as fh:
        fh.write("".join(f"E{i}\n" for i in range(150)))
    assert t.poll() == 100
    assert t.dropped_matches == 50
    with log.open("a") as fh:
        fh.write("E" * 200)
    assert t.poll() == 3
    with log.open("a") as fh:
        fh.write("\n" + "E" * 100 + "\n")
    t.poll()
    assert [len(x) for x in got.lines[100:]] == [64, 64, 64, 8, 64]
    t.stop()


def test_tailer_thread_follows_rotation_and_truncation(tmp_path: Path, running: list[Any]) -> None:
    """The running tailer reports lines across a real rotation and a truncation."""
    log = tmp_path / "app.log"
    log.write_text("")
    got = Lines()
    cfg = dataclasses.replace(Config(), app=AppConfig(log_files=[str(log)], log_patterns=["ERR"]))
    t = log_tailer(cfg, got, interval_s=0.05)
    assert t is not None
    t.start()
    running.append(t)
    with log.open("a") as fh:
        fh.write("ERR one\n")
    assert wait_for(lambda: got.lines == ["ERR one"])
    os.rename(log, tmp_path / "app.log.1")
    log.write_text("ERR two\n")
    assert wait_for(lambda: got.lines == ["ERR one", "ERR two"])
    with log.open("r+") as fh:
        fh.truncate(0)
    with log.open("a") as fh:
        fh.write("ERR 3\n")
    assert wait_for(lambda: got.lines == ["ERR one", "ERR two", "ERR 3"])


# --------------------------------------------------------------------------- hostile local user

SECRET = b"SECRET-ONLY-THE-AGENT-MAY-READ\n"


def _secret(tmp_path: Path) -> Path:
    p = tmp_path / "private" / "device.key"
    p.parent.mkdir()
    p.write_bytes(SECRET)
    p.chmod(0o600)
    return p


def _in_thread(fn: Callable[[], None], timeout_s: float = 10.0) -> bool:
    """Run fn on a thread; True when it returned within timeout_s (a FIFO open would block)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout_s)
    return not t.is_alive()


def test_trigger_symlink_fifo_and_hard_link_are_never_read(tmp_path: Path) -> None:
    """A symlink to a private file, a FIFO and a hard link in the trigger dir are not read;
    the FIFO does not block the watcher; the regular file beside them is reported."""
    secret = _secret(tmp_path)
    trig = tmp_path / "trigger"
    trig.mkdir()
    (trig / "link").symlink_to(secret)
    os.mkfifo(trig / "pipe")
    os.link(secret, trig / "hard")
    (trig / "good").write_text("drawer stuck")
    old = time.time() - 60  # settled
    for n in ("good", "pipe", "hard"):
        os.utime(trig / n, (old, old))
    reports: list[ManualReport] = []
    w = TriggerDirWatcher(trig, reports.append, settle_s=0.05, use_observer=False)
    assert _in_thread(w.rescan), "the watcher blocked on the FIFO"
    assert [r.note for r in reports] == ["drawer stuck"]
    assert not any("SECRET" in r.note for r in reports)
    assert (trig / "link").is_symlink() and (trig / "pipe").exists()
    assert not (trig / "hard").exists() and secret.read_bytes() == SECRET  # link dropped, unread


def test_trigger_symlink_swap_race_never_leaks_another_file(tmp_path: Path) -> None:
    """A thread swapping the trigger file with a symlink to a private file (RENAME_EXCHANGE)
    thousands of times while the watcher reads: no report ever holds the private content."""
    from tests.monitors.kit import SymlinkSwapper

    secret = _secret(tmp_path)
    trig = tmp_path / "trigger"
    trig.mkdir()
    reports: list[ManualReport] = []
    w = TriggerDirWatcher(trig, reports.append, settle_s=0.0, rescan_s=0.001, use_observer=True)
    w.start()
    try:
        swapper = SymlinkSwapper(trig / "report", secret, b"till 3 frozen\n", 3000).start()
        while not swapper.done.is_set():
            w.rescan()  # the test's own thread reads too: more chances for the race
        swapper.join()
    finally:
        w.stop()
    assert swapper.swaps > 1000
    assert reports, "the watcher never read the note"
    leaked = [r for r in reports if r.note != "till 3 frozen"]
    assert leaked == [], f"{len(leaked)} of {len(reports)} reports held foreign content"


_STUCK_CHILD = """
import sys
from pathlib import Path
from agent.monitors.watch import TriggerDirWatcher
trig, state = Path(sys.argv[1]), Path(sys.argv[2])
w = TriggerDirWatcher(trig, lambda r: print("REPORT", r.note, flush=True),
                      settle_s=0.0, use_observer=False, state_file=state)
for _ in range(int(sys.argv[3])):
    w.rescan()
"""


def _run_stuck_child(trig: Path, state: Path, scans: int) -> list[str]:
    """The watcher in a child that cannot remove files from trig (a read-only bind mount in
    its own mount namespace as root, else a 0555 dir); its REPORT lines."""
    import shutil
    import subprocess
    import sys

    py = [sys.executable, "-c", _STUCK_CHILD, str(trig), str(state), str(scans)]
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("needs unshare(1) for a read-only bind mount")
        q = " ".join(f"'{a}'" for a in py)
        cmd = [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount --bind '{trig}' '{trig}' && mount -o remount,ro,bind '{trig}' '{trig}' "
            f"&& exec {q}",
        ]
    else:
        trig.chmod(0o555)
        cmd = py
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path.cwd())
    if os.geteuid() == 0 and r.returncode != 0 and "mount" in r.stderr:
        pytest.skip(f"no read-only bind mount here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.startswith("REPORT")]


def test_trigger_file_that_cannot_be_removed_is_reported_once(tmp_path: Path) -> None:
    """On a read-only trigger dir the same file is reported once over many rescans, and not
    again by a restarted watcher (its identity is persisted); a changed file is reported."""
    trig = tmp_path / "trigger"
    trig.mkdir()
    f = trig / "report"
    f.write_text("receipt printer smoking")
    state = tmp_path / "state" / "trigger-state.json"
    state.parent.mkdir()
    try:
        assert _run_stuck_child(trig, state, 20) == ["REPORT receipt printer smoking"]
        assert f.exists()  # could not be removed
        assert _run_stuck_child(trig, state, 5) == []  # a restart does not report it again
        f.write_text("receipt printer smoking again")
        assert _run_stuck_child(trig, state, 5) == ["REPORT receipt printer smoking again"]
    finally:
        trig.chmod(0o755)


def test_tailer_follows_no_symlink_and_no_fifo(tmp_path: Path) -> None:
    """A log file replaced by a symlink to a private file is not read; a FIFO does not block."""
    secret = tmp_path / "private.log"
    secret.write_text("")
    log = tmp_path / "pos.log"
    log.symlink_to(secret)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    got = Lines()
    t = LogTailer([log, fifo], [r"."], got, interval_s=0.05)
    assert _in_thread(t.prime)
    with secret.open("a") as fh:
        fh.write("SECRET line\n")
    polled: list[int] = []
    assert _in_thread(lambda: polled.append(t.poll()))
    assert polled == [0] and got.lines == []
    t.stop()

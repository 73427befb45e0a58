"""drivers/system.py: resources, the POS app's process, heartbeat and clock, on real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.roots import Roots
from drivers.shell import Shell
from drivers.system import (
    STA_UNSYNC,
    adjtimex_sync,
    find_process,
    heartbeat_age,
    parse_pid_file,
    parse_timedatectl_ntp,
    read_boot_id,
    read_clock_offset,
    read_clock_sync,
    read_disk,
    read_system,
    read_uptime_s,
    timedatectl_sync,
)


def test_snapshot_matches_the_kernel(tmp_path: Path) -> None:
    """Memory total equals /proc/meminfo, load is present, disks are read or carry an error."""
    snap = read_system(["/", str(tmp_path), str(tmp_path / "missing")])
    meminfo = Path("/proc/meminfo").read_text().split("\n")
    total_kib = int(next(x for x in meminfo if x.startswith("MemTotal:")).split()[1])
    assert snap.memory_total_bytes == total_kib * 1024
    assert 0 < snap.memory_available_bytes <= snap.memory_total_bytes
    assert 0.0 < snap.memory_available_pct <= 100.0
    assert snap.load_1 is not None and snap.load_1 >= 0
    assert 0.0 <= snap.cpu_percent <= 100.0 and snap.cpu_count >= 1
    root, tmp, missing = snap.disks
    sv = os.statvfs("/")
    assert root.total_bytes == sv.f_blocks * sv.f_frsize and root.error == ""
    assert tmp.free_pct is not None and 0.0 <= tmp.free_pct <= 100.0
    assert missing.total_bytes is None and missing.error.startswith("ENOENT")


def test_cpu_interval_measures() -> None:
    """With a sampling interval, cpu_percent is a real measurement between 0 and 100."""
    snap = read_system([], cpu_interval_s=0.1, temperatures=False)
    assert 0.0 <= snap.cpu_percent <= 100.0 and snap.disks == () and snap.temperatures == ()


def test_read_disk_free_pct() -> None:
    """free_pct agrees with statvfs for the root filesystem."""
    d = read_disk("/")
    sv = os.statvfs("/")
    assert d.free_pct == pytest.approx(100.0 * sv.f_bavail / sv.f_blocks, abs=1.0)


# --------------------------------------------------------------------------- process


@pytest.fixture
def app_binary(tmp_path: Path) -> Path:
    """A copy of `sleep` with a unique name, standing in for the POS app."""
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("coreutils sleep not installed")
    exe = tmp_path / f"posapp{uuid.uuid4().hex[:6]}"
    shutil.copy(sleep, exe)
    return exe


@pytest.fixture
def app(app_binary: Path) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([str(app_binary), "30"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def test_find_by_name_and_restart(app_binary: Path, app: subprocess.Popen[bytes]) -> None:
    """The app is found by name with pid, rss and create_time; a restart changes pid and time."""
    info = find_process(app_binary.name)
    assert info.found and info.pid == app.pid and info.matches == 1
    assert info.rss_bytes is not None and info.rss_bytes > 0
    assert info.create_time is not None and abs(info.create_time - time.time()) < 60
    app.kill()
    app.wait()
    assert not find_process(app_binary.name).found
    time.sleep(0.02)  # create_time has 10 ms resolution
    with subprocess.Popen([str(app_binary), "30"]) as again:
        try:
            info2 = find_process(app_binary.name)
            assert info2.found and info2.pid == again.pid
            assert info2.create_time is not None and info2.create_time > info.create_time
        finally:
            again.kill()


def test_find_by_pid_file(tmp_path: Path, app_binary: Path, app: subprocess.Popen[bytes]) -> None:
    """A pid file naming the running app finds it; a pid of another program is refused."""
    pf = tmp_path / "app.pid"
    pf.write_text(f"{app.pid}\n")
    assert find_process(pid_file=pf).pid == app.pid
    assert find_process(app_binary.name, pid_file=pf).found
    pf.write_text(f"{os.getpid()}\n")
    wrong = find_process(app_binary.name, pid_file=pf)
    assert not wrong.found and "is not" in wrong.error


def test_pid_file_problems(tmp_path: Path) -> None:
    """Missing, empty and stale pid files give clear not-found results."""
    assert find_process(pid_file=tmp_path / "none.pid").error == "pid file missing"
    pf = tmp_path / "app.pid"
    pf.write_text("garbage\n")
    assert find_process(pid_file=pf).error == "pid file has no pid"
    p = subprocess.Popen(["true"])
    p.wait()
    pf.write_text(str(p.pid))
    stale = find_process(pid_file=pf)
    assert not stale.found and stale.pid == p.pid
    assert find_process().error.startswith("no process name")
    pf.write_text("9" * 30)
    assert find_process(pid_file=pf).error == "pid file has no pid"


def test_zombie_is_not_running(app_binary: Path) -> None:
    """A child that exited but was not reaped (zombie) counts as not running."""
    p = subprocess.Popen([str(app_binary), "0"])
    deadline = time.monotonic() + 5
    info = find_process(app_binary.name)
    while info.status != "zombie" and time.monotonic() < deadline:
        time.sleep(0.02)
        info = find_process(app_binary.name)
    try:
        assert info.status == "zombie" and not info.found and info.pid == p.pid
    finally:
        p.wait()


def test_process_absent() -> None:
    """A name nobody runs is not found, with zero matches."""
    info = find_process(f"nosuch{uuid.uuid4().hex[:8]}")
    assert not info.found and info.matches == 0


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_age(tmp_path: Path) -> None:
    """The age is now minus mtime; a missing file is exists=False."""
    hb = tmp_path / "heartbeat"
    hb.write_text("x")
    now = time.time()
    os.utime(hb, (now - 100, now - 100))
    h = heartbeat_age(hb, now=now)
    assert h.exists and h.age_s == pytest.approx(100, abs=0.01)
    assert heartbeat_age(tmp_path / "none").exists is False


# --------------------------------------------------------------------------- clock


def test_adjtimex_reads_kernel_state() -> None:
    """adjtimex answers on Linux and its verdict is consistent with the STA_UNSYNC bit."""
    r = adjtimex_sync()
    assert r.source == "adjtimex" and r.status is not None
    assert r.maxerror_us is not None and r.maxerror_us >= 0
    if r.status & STA_UNSYNC:
        assert r.synced is False
    assert read_clock_sync().source == "adjtimex"


def test_timedatectl_parser() -> None:
    """Both `--value` and `KEY=value` forms are read; anything else is unknown."""
    assert parse_timedatectl_ntp("NTPSynchronized=yes\n") is True
    assert parse_timedatectl_ntp("no\n") is False
    assert parse_timedatectl_ntp("Failed to connect to bus\n") is None


def _fake_timedatectl(dir_: Path, body: str) -> None:
    exe = dir_ / "timedatectl"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)


def test_timedatectl_fallback_through_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `timedatectl` on PATH answering NTPSynchronized=no is read as unsynced."""
    _fake_timedatectl(tmp_path, 'echo "NTPSynchronized=no"')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    r = timedatectl_sync(Shell())
    assert r.synced is False and r.source == "timedatectl"
    _fake_timedatectl(tmp_path, 'echo "System has not been booted with systemd" >&2; exit 1')
    bad = timedatectl_sync(Shell())
    assert bad.synced is None and "exit 1" in bad.error


def test_clock_offset_is_stable() -> None:
    """Two samples a moment apart agree on wall minus boot time to within 50 ms."""
    a = read_clock_offset()
    time.sleep(0.05)
    b = read_clock_offset()
    assert abs(a.offset_s - b.offset_s) < 0.05 and b.wall_s > a.wall_s


def test_boot_id_and_uptime(tmp_path: Path) -> None:
    """boot_id and uptime from the real /proc, and None from an empty fake tree."""
    assert read_boot_id(Roots()) == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    up = read_uptime_s(Roots())
    assert up is not None and up > 0
    assert (
        read_boot_id(Roots(proc=tmp_path)) is None and read_uptime_s(Roots(proc=tmp_path)) is None
    )


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fuzz_small_parsers(text: str) -> None:
    """The pid-file and timedatectl parsers accept any text without an exception."""
    pid = parse_pid_file(text)
    assert pid is None or pid > 0
    assert parse_timedatectl_ntp(text) in (True, False, None)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_fuzz_small_parsers_bytes(raw: bytes) -> None:
    """Any bytes decoded as the readers do parse without an exception."""
    text = raw.decode("ascii", "replace")
    pid = parse_pid_file(text)
    assert pid is None or pid > 0
    assert parse_timedatectl_ntp(text) in (True, False, None)


def test_run_argv_collects_output_input_and_deadline() -> None:
    """run_argv: stdout, stderr and stdin of a real child, a non-zero status, and the
    deadline killing a child that keeps its pipes open (all without time.sleep)."""
    from drivers.shell import ShellTimeout, run_argv

    r = run_argv(["sh", "-c", "cat; echo err >&2; exit 3"], 10.0, stdin=b"x" * 300_000)
    assert r.returncode == 3 and r.stdout == b"x" * 300_000 and r.stderr == b"err\n"
    with pytest.raises(ShellTimeout):
        run_argv(["sh", "-c", "sleep 30"], 0.5)

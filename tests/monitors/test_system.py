"""System and app monitors with real psutil, a real child process as the POS app, a heartbeat file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.core.config import AppConfig, SystemConfig
from agent.monitors.app import AppMonitor
from agent.monitors.system import SystemMonitor
from drivers.shell import Shell
from simulator.fake_adb import FakeAdb
from tests.faults.kit import FakeClock


def test_system_reading_with_real_psutil(tmp_path: Path) -> None:
    """Real CPU/memory/disk figures in range; clock jump None first, then about 0."""
    mon = SystemMonitor(SystemConfig(disk_paths=[str(tmp_path), "/"]))
    (r,) = mon.poll()
    v = r.values
    assert r.source == "system"
    assert 0.0 <= v["cpu_pct"] <= 100.0 and 0.0 < v["mem_available_pct"] <= 100.0
    assert 0.0 <= v["disk_free_pct"] <= 100.0 and v["disk_free_mib"] > 0
    assert v["clock_synced"] in (True, False, None) and v["clock_jump_s"] is None
    (r,) = mon.poll()
    assert abs(r.values["clock_jump_s"]) < 1.0


def test_system_disk_errors_are_evidence(tmp_path: Path) -> None:
    """A missing disk path is reported in errors and ignored for the free figures."""
    mon = SystemMonitor(SystemConfig(disk_paths=[str(tmp_path / "nope")]))
    (r,) = mon.poll()
    assert r.values["disk_free_pct"] is None and r.values["disk_free_mib"] is None
    assert any("nope" in e for e in r.values["errors"])


def test_timedatectl_clock_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """clock_source timedatectl: the answer of `timedatectl show` (a fake on PATH) is used."""
    script = tmp_path / "timedatectl"
    script.write_text("#!/bin/sh\necho NTPSynchronized=no\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (r,) = SystemMonitor(SystemConfig(disk_paths=["/"]), Shell(), "timedatectl").poll()
    assert r.values["clock_synced"] is False and r.values["clock_source"] == "timedatectl"


# The app's process name, unique to this test process: the monitor looks it up by name in
# the machine's process table, where another test (another xdist worker) may run a "posapp".
APP = f"posapp{os.getpid() % 10**8}"  # at most 15 characters: the kernel's comm


@pytest.fixture
def posapp(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A factory list: call start(procs) to start a process named APP."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def _start(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    exe = tmp_path / APP
    if not exe.exists():
        sleep = shutil.which("sleep")
        assert sleep is not None
        shutil.copy(sleep, exe)
    p = subprocess.Popen([str(exe), "600"])
    procs.append(p)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            if psutil.Process(p.pid).name() == APP:
                break
        except psutil.Error:
            pass
        time.sleep(0.005)
    return p


def test_app_start_kill_restart(tmp_path: Path, posapp: list[subprocess.Popen[bytes]]) -> None:
    """Running, killed (not running), restarted 3 times (counted), window expiry (fake clock)."""
    clock = FakeClock()
    mon = AppMonitor(AppConfig(process=APP), clock=clock)
    assert mon.poll()[0].values["running"] is False
    p = _start(tmp_path, posapp)
    v = mon.poll()[0].values
    assert v["running"] is True and v["pid"] == p.pid and v["restarts_10min"] == 0
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    assert mon.poll()[0].values["running"] is False
    for _ in range(3):
        posapp[-1].kill()
        posapp[-1].wait(5)
        _start(tmp_path, posapp)
        clock.advance(30)
        v = mon.poll()[0].values
    assert v["running"] is True and v["restarts_10min"] == 3
    clock.advance(601)
    assert mon.poll()[0].values["restarts_10min"] == 0


def test_app_by_pid_file_and_heartbeat(
    tmp_path: Path, posapp: list[subprocess.Popen[bytes]]
) -> None:
    """The pid file names the process; the heartbeat's age follows its mtime."""
    p = _start(tmp_path, posapp)
    pid_file = tmp_path / "pos.pid"
    pid_file.write_text(f"{p.pid}\n")
    hb = tmp_path / "hb"
    hb.touch()
    os.utime(hb, (time.time() - 90, time.time() - 90))
    mon = AppMonitor(AppConfig(pid_file=str(pid_file), heartbeat_file=str(hb)))
    v = mon.poll()[0].values
    assert v["running"] is True and v["pid"] == p.pid
    assert 89 <= v["heartbeat_age_s"] <= 95 and v["heartbeat_exists"] is True
    hb.unlink()
    v = mon.poll()[0].values
    assert v["heartbeat_age_s"] is None and v["heartbeat_exists"] is False


def test_app_heartbeat_only_has_unknown_running(tmp_path: Path) -> None:
    """Only a heartbeat configured: running and restarts are unknown (None), not False."""
    hb = tmp_path / "hb"
    hb.touch()
    v = AppMonitor(AppConfig(heartbeat_file=str(hb))).poll()[0].values
    assert v["running"] is None and v["restarts_10min"] is None
    assert v["heartbeat_age_s"] is not None and v["heartbeat_age_s"] < 5


def test_app_over_adb_pidof(tmp_path: Path) -> None:
    """Target adb: `pidof` on the fake device; a new pid counts as a restart."""
    fake = FakeAdb(tmp_path)
    shell = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))
    mon = AppMonitor(AppConfig(process="com.example.pos"), shell)
    v = mon.poll()[0].values
    assert v["running"] is True and v["pid"] == 4242
    fake.set(processes={})
    assert mon.poll()[0].values["running"] is False
    fake.set(processes={"com.example.pos": [5151]})
    v = mon.poll()[0].values
    assert v["pid"] == 5151 and v["restarts_10min"] == 1

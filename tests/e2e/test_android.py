"""Android targets end to end with the fake adb: power, network, POS app, screen and logs on both.

`target = "adb"` talks to the simulated device through the fake `adb`;
`target = "android"` runs the same commands locally (as the agent does in a
root shell on the device), here through shims for dumpsys, getprop, pidof,
screencap and logcat that answer from the same simulated device.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.config import load_config
from agent.daemon.runner import Agent
from simulator.fake_adb import FakeAdb
from tests.conftest import FIXTURES, posagent_argv, wait_until, write_config

ANDROID_TOOLS = ("dumpsys", "getprop", "pidof", "screencap", "logcat")


@pytest.fixture
def payment_port() -> Iterator[int]:
    """A loopback listener standing in for the payment host (accepts and closes)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    yield srv.getsockname()[1]
    srv.close()


def shims(fake: FakeAdb, directory: Path) -> Path:
    """Local `dumpsys`, `getprop`, ... that run on the simulated device (target android)."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ANDROID_TOOLS:
        p = directory / tool
        p.write_text(f'#!/bin/sh\nexec "{fake.adb_path}" -s {fake.serial} shell {tool} "$@"\n')
        p.chmod(0o755)
    return directory


def bundles(state: Path) -> list[dict[str, object]]:
    out = []
    for f in sorted((state / "spool" / "new").glob("*.zip")):
        with zipfile.ZipFile(f) as z:
            out.append(
                {"manifest": json.loads(z.read("manifest.json")), "names": z.namelist(), "path": f}
            )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target", ["adb", "android"])
def test_android_target_end_to_end(
    tmp_path: Path, payment_port: int, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AC loss, the POS app dying and (adb) the device dropping off are detected; bundles carry screen, logcat, getprop."""
    fake = FakeAdb(tmp_path / "adb")
    monkeypatch.setenv("POSAGENT_SIM_ADB_STATE", str(fake.state_path))
    if target == "android":
        monkeypatch.setenv(
            "PATH", f"{shims(fake, tmp_path / 'shims')}{os.pathsep}{os.environ['PATH']}"
        )
    cfg_path = write_config(
        tmp_path,
        f"""
[power]
interval_s = 0.3

[network]
interval_s = 0.5
interfaces = ["eth0"]
payment_hosts = ["127.0.0.1:{payment_port}"]

[system]
interval_s = 5.0

[app]
process = "com.example.pos"
interval_s = 0.3

[screen]
backend = "auto"

[capture]
# the screenshot over adb and the probes share the budget: generous, as the machine may be busy
total_budget_s = 30
cooldown_s = 0
burst = 20
bundles_per_hour = 3600

[faults."power.ac_lost"]
raise_after = 2
""",
        agent_extra=f'target = "{target}"\nadb_serial = "{fake.serial}"\nadb_path = "{fake.adb_path}"',
    )
    cfg = load_config(cfg_path)
    agent = Agent(cfg)
    agent.start()
    state = tmp_path / "state"
    try:
        assert wait_until(
            lambda: (
                agent.last.get("power") is not None
                and agent.last["power"].values.get("ac_online") is True
            )
        )
        assert wait_until(
            lambda: (
                agent.last.get("app") is not None
                and agent.last["app"].values.get("running") is True
            )
        )

        fake.set_battery(ac=False, usb=False, status="Discharging")
        # a capture takes a few seconds (screenshot child, probes over adb), after any other
        # fault's capture (system.clock_unsynced here): more than wait_until's default 5 s
        assert wait_until(
            lambda: any(b["manifest"]["trigger"]["key"] == "power.ac_lost" for b in bundles(state)),
            90,
        )
        b = next(b for b in bundles(state) if b["manifest"]["trigger"]["key"] == "power.ac_lost")
        names = b["names"]
        assert b["manifest"]["redaction"]["screenshot"] == "captured", b["manifest"]["redaction"]
        assert "screenshot.png" in names
        assert any("logcat" in n for n in names), names
        assert any("getprop" in n for n in names), names
        assert b["manifest"]["device"]["platform"] == "android"

        fake.set(processes={})
        assert wait_until(lambda: "app.not_running" in {f.key for f in agent.engine.active()}, 15)
        fake.set(processes={"com.example.pos": [4343]})
        assert wait_until(
            lambda: "app.not_running" not in {f.key for f in agent.engine.active()}, 15
        )

        if target == "adb":
            fake.set(reconnect_restores=False)  # a reconnect does not bring it back
            fake.drop()
            assert wait_until(lambda: "adb.offline" in {f.key for f in agent.engine.active()}, 30)
            fake.set(state="device")
            assert wait_until(
                lambda: "adb.offline" not in {f.key for f in agent.engine.active()}, 30
            )
    finally:
        agent.stop()


def _entry_text(fixture: str) -> str:
    """The text of the first printed entry of a `dumpsys dropbox --print` fixture."""
    printed = (FIXTURES / "android" / fixture).read_text()
    return printed.split("=" * 40 + "\n")[1].split("\n", 1)[1]


def _spooled(state: Path) -> dict[str, dict[str, object]]:
    """trigger key -> manifest of every bundle in the spool (queued or not)."""
    out: dict[str, dict[str, object]] = {}
    for f in sorted((state / "spool").glob("*/*.zip")):
        try:
            with zipfile.ZipFile(f) as z:
                m = json.loads(z.read("manifest.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue  # moved between listing and reading
        out.setdefault(m["trigger"]["key"], m)
    return out


@pytest.mark.slow
def test_adb_crashes_anrs_logcat_and_heartbeat_read_on_the_device(tmp_path: Path) -> None:
    """`posagent run` with target adb, the fake adb on PATH: a dropbox crash, an ANR, a logcat
    line matching log_patterns and a stale heartbeat on the device each give their bundle."""
    fake = FakeAdb(tmp_path / "adb")
    hb = "/sdcard/Android/data/com.example.pos/files/heartbeat"
    fake.touch(hb)
    fake.set(clock_offset_s=-3600.0)  # the terminal's clock differs from this box's
    cfg_path = write_config(
        tmp_path,
        f"""
[power]
interval_s = 1.0

[network]
interval_s = 2.0
interfaces = ["eth0"]

[system]
interval_s = 5.0

[app]
process = "com.example.pos"
interval_s = 0.5
heartbeat_file = "{hb}"
heartbeat_max_age_s = 30.0
log_patterns = ["printer queue closed"]

[screen]
backend = "none"

[capture]
cooldown_s = 0
burst = 20
bundles_per_hour = 3600
persist_interval_s = 1.0
""",
        agent_extra=f'target = "adb"\nadb_serial = "{fake.serial}"\nadb_path = "adb"',
    )
    env = fake.env()
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        posagent_argv("run", "--config", str(cfg_path)), env=env, stdout=log, stderr=log
    )
    state = tmp_path / "state"
    try:
        # the monitor has its starting points once it reads logcat from a time
        assert wait_until(
            lambda: any("logcat -d -v threadtime -T" in " ".join(c) for c in fake.calls()), 30
        ), (tmp_path / "daemon.log").read_text()[-3000:]
        assert proc.poll() is None
        fake.add_dropbox(
            "data_app_crash", _entry_text("dumpsys_dropbox_print_data_app_crash_written.txt")
        )
        fake.add_dropbox(
            "data_app_anr", _entry_text("dumpsys_dropbox_print_data_app_anr_written.txt")
        )
        line = fake.log("printer queue closed: broken pipe", tag="PrintQueue", pid=4242)
        fake.touch(hb, mtime=time.time() - 3600.0 - 600.0)  # 10 min old by the device's clock
        want = {"app.crash_report", "app.anr", "app.log_error", "app.hung"}

        def all_there() -> dict[str, dict[str, object]] | None:
            s = _spooled(state)
            return s if want <= set(s) else None

        got = wait_until(all_there, 60)
        assert want <= set(got or {}), (
            sorted(got or {}),
            (tmp_path / "daemon.log").read_text()[-3000:],
        )
        crash = got["app.crash_report"]["trigger"]
        assert crash["subject"] == "com.example.pos"
        assert "IllegalStateException: printer queue closed" in crash["summary"]
        anr = got["app.anr"]["trigger"]
        assert (
            anr["subject"] == "com.example.pos" and "Input dispatching timed out" in anr["summary"]
        )
        err = got["app.log_error"]["trigger"]
        assert err["subject"] == "logcat" and line in err["summary"]
        hung = got["app.hung"]["trigger"]
        assert 600 <= hung["readings"][-1]["values"]["heartbeat_age_s"] < 700
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

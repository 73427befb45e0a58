"""Android targets end to end with the fake adb: power, network, POS app, screen and logs on both.

`target = "adb"` talks to the simulated device through the fake `adb`;
`target = "android"` runs the same commands locally (as the agent does in a
root shell on the device), here through shims for dumpsys, getprop, pidof,
screencap and logcat that answer from the same simulated device.
"""

from __future__ import annotations

import json
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.config import load_config
from agent.daemon.runner import Agent
from simulator.fake_adb import FakeAdb
from tests.conftest import wait_until, write_config

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
        assert wait_until(
            lambda: any(b["manifest"]["trigger"]["key"] == "power.ac_lost" for b in bundles(state))
        )
        b = next(b for b in bundles(state) if b["manifest"]["trigger"]["key"] == "power.ac_lost")
        names = b["names"]
        assert b["manifest"]["redaction"]["screenshot"] == "captured", b["manifest"]["redaction"]
        assert "screenshot.png" in names
        assert any("logcat" in n for n in names), names
        assert any("getprop" in n for n in names), names
        assert b["manifest"]["device"]["platform"] == "android"

        fake.set(processes={})
        assert wait_until(lambda: "app.not_running" in {f.key for f in agent.engine.active()})
        fake.set(processes={"com.example.pos": [4343]})
        assert wait_until(lambda: "app.not_running" not in {f.key for f in agent.engine.active()})

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

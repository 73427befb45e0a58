"""adb monitor against the fake adb: online, offline, reconnect, hang."""

from __future__ import annotations

from pathlib import Path

from agent.core.config import parse_config
from agent.monitors import MonitorContext, build_monitors, load_all
from agent.monitors.adb import AdbMonitor
from drivers.shell import Shell
from simulator.fake_adb import FakeAdb


def _mon(tmp_path: Path, **kw: object) -> tuple[FakeAdb, AdbMonitor]:
    fake = FakeAdb(tmp_path)
    shell = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))
    return fake, AdbMonitor(shell, **kw)  # type: ignore[arg-type]


def test_online_device(tmp_path: Path) -> None:
    """A listed device in state "device" reads online and is not reconnected."""
    fake, mon = _mon(tmp_path)
    (r,) = mon.poll()
    assert r.source == "adb" and r.values["online"] is True
    assert r.values["reconnect_tried"] is False
    assert not [c for c in fake.calls() if "reconnect" in c]


def test_offline_device_is_reconnected(tmp_path: Path) -> None:
    """Offline: online False and `adb reconnect` is run; the next poll sees it back."""
    fake, mon = _mon(tmp_path)
    fake.set(state="offline")
    (r,) = mon.poll()
    assert r.values["online"] is False and r.values["reconnect_tried"] is True
    assert any("reconnect" in c for c in fake.calls())
    assert mon.poll()[0].values["online"] is True


def test_gone_device_stays_offline_without_restore(tmp_path: Path) -> None:
    """A device that reconnect cannot bring back stays offline, with adb's message."""
    fake, mon = _mon(tmp_path)
    fake.set(reconnect_restores=False)
    fake.drop()
    for _ in range(2):
        (r,) = mon.poll()
        assert r.values["online"] is False
    assert "not found" in r.values["state"]


def test_hung_adb_counts_as_offline(tmp_path: Path) -> None:
    """adb hanging: the shell timeout kills it and the reading says offline."""
    fake, mon = _mon(tmp_path, state_timeout_s=0.3)
    fake.set(hang=True)
    (r,) = mon.poll()
    assert r.values["online"] is False and r.values["state"].startswith("timeout")


def test_factory_only_for_target_adb(tmp_path: Path) -> None:
    """The adb monitor exists with target adb and not with target local."""
    load_all()
    local = parse_config("")
    adb = parse_config('[agent]\ntarget = "adb"\nadb_serial = "SIM0001"\n')
    ctx = MonitorContext(state_dir=tmp_path)
    assert "adb" not in [m.name for m in build_monitors(local, ctx, ["adb"])]
    assert [m.name for m in build_monitors(adb, ctx, ["adb"])] == ["adb"]

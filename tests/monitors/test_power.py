"""Power monitor on the simulated sysfs power_supply tree and on the fake adb (dumpsys battery)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.config import PowerConfig
from agent.monitors.power import PowerMonitor, power_values
from drivers.power import PowerStatus, PowerSupply
from drivers.roots import Roots
from drivers.shell import Shell, ShellUnavailable
from simulator.fake_adb import FakeAdb
from simulator.power import SimPower


def _values(mon: PowerMonitor) -> dict[str, object]:
    (r,) = mon.poll()
    assert r.source == "power" and r.ok
    return r.values


def test_sysfs_tree_gives_the_contract_values(tmp_path: Path) -> None:
    """Mains + battery in the fake sysfs: every contract key with the tree's values."""
    sim = SimPower(tmp_path)
    sim.add_mains("AC", online=True)
    sim.add_battery("BAT0", capacity_pct=64, status="Charging", health="Good", temp_c=31.5)
    mon = PowerMonitor(PowerConfig(), Roots(sys=tmp_path))
    assert _values(mon) | {"errors": []} == {
        "ac_online": True,
        "plugged": True,
        "battery_present": True,
        "battery_pct": 64,
        "battery_status": "Charging",
        "battery_health": "Good",
        "battery_temp_c": 31.5,
        "supply_source": "sysfs",
        "updates_stopped": False,
        "errors": [],
    }
    sim.set_ac(False)
    sim.set_status("BAT0", "Discharging")
    v = _values(mon)
    assert v["ac_online"] is False and v["plugged"] is False
    assert v["battery_status"] == "Discharging"


def test_pulled_battery_reads_absent(tmp_path: Path) -> None:
    """A battery with present=0 reads battery_present False and no level."""
    sim = SimPower(tmp_path)
    sim.add_mains("AC", online=True)
    sim.add_battery("BAT0", present=False)
    v = _values(PowerMonitor(PowerConfig(), Roots(sys=tmp_path)))
    assert v["battery_present"] is False and v["battery_pct"] is None
    assert v["ac_online"] is True


def test_usb_supply_counts_as_external(tmp_path: Path) -> None:
    """AC lost but USB online: still powered (ac_online True)."""
    sim = SimPower(tmp_path)
    sim.add_mains("AC", online=False)
    sim.add_usb("usb", online=True)
    assert _values(PowerMonitor(PowerConfig(), Roots(sys=tmp_path)))["ac_online"] is True


def test_no_supplies_unreadable_is_unknown() -> None:
    """psutil found nothing and reported an error: battery_present is unknown, not False."""
    v = power_values(PowerStatus(source="none", errors=("psutil: boom",)))
    assert v["battery_present"] is None and v["ac_online"] is None
    v = power_values(PowerStatus(source="none"))
    assert v["battery_present"] is False


def test_typeless_supply_values() -> None:
    """A supply without a type but with a capacity is taken as the battery."""
    v = power_values(
        PowerStatus(source="sysfs", supplies=(PowerSupply(name="x", capacity_pct=40),))
    )
    assert v["battery_pct"] == 40 and v["battery_present"] is True


@pytest.fixture
def adb(tmp_path: Path) -> tuple[FakeAdb, Shell]:
    fake = FakeAdb(tmp_path / "adb")
    return fake, Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))


def test_dumpsys_battery_over_fake_adb(adb: tuple[FakeAdb, Shell], tmp_path: Path) -> None:
    """Target adb: dumpsys battery gives the same keys; unplugged and 3 % are seen."""
    fake, shell = adb
    mon = PowerMonitor(PowerConfig(), Roots(sys=tmp_path / "nosys"), shell)
    v = _values(mon)
    assert v["supply_source"] == "dumpsys"
    assert (v["ac_online"], v["battery_pct"], v["battery_status"]) == (True, 80, "Charging")
    assert v["battery_health"] == "Good" and v["battery_temp_c"] == 30.0
    fake.set_battery(ac=False, usb=False, level=3, status="Discharging", health="Overheat")
    v = _values(mon)
    assert (v["ac_online"], v["battery_pct"]) == (False, 3)
    assert v["battery_status"] == "Discharging" and v["battery_health"] == "Overheat"
    fake.set_battery(usb=True)
    assert _values(mon)["ac_online"] is True


def test_adb_device_gone_fails_the_poll(adb: tuple[FakeAdb, Shell], tmp_path: Path) -> None:
    """A dropped adb device raises (the scheduler turns it into ok=False)."""
    fake, shell = adb
    fake.drop()
    with pytest.raises(ShellUnavailable):
        PowerMonitor(PowerConfig(), Roots(sys=tmp_path), shell).poll()

"""simulator/power.py: the fake power_supply tree is read by the real driver like sysfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.power import parse_uevent, read_power_status
from drivers.roots import Roots
from simulator.power import SimPower


def test_sim_tree_layout_matches_sysfs(tmp_path: Path) -> None:
    """class/power_supply/<name> is a symlink to a device directory holding files and uevent."""
    sim = SimPower(tmp_path)
    sim.add_battery("BAT0", capacity_pct=64, temp_c=31.5)
    link = tmp_path / "class" / "power_supply" / "BAT0"
    assert link.is_symlink() and link.resolve() == sim.supply_dir("BAT0").resolve()
    assert (link / "temp").read_text() == "315\n"
    ev = parse_uevent((link / "uevent").read_text())
    assert ev["name"] == "BAT0" and ev["capacity"] == "64" and ev["type"] == "Battery"


def test_ac_loss_and_return(tmp_path: Path) -> None:
    """Unplugging every Mains/USB supply makes the driver report AC offline, then online again."""
    sim = SimPower(tmp_path)
    sim.add_mains("AC", online=True)
    sim.add_usb("usb", online=False)
    sim.add_battery("BAT0", status="Charging")
    roots = Roots(sys=tmp_path)
    assert read_power_status(roots).ac_online is True
    sim.set_ac(False)
    sim.set_status("BAT0", "Discharging")
    st = read_power_status(roots)
    assert st.ac_online is False and st.battery_status == "Discharging"
    sim.set_online("usb", True)
    assert read_power_status(roots).ac_online is True


def test_battery_changes_are_seen(tmp_path: Path) -> None:
    """Capacity, health, temperature and presence changes show up in the next reading."""
    sim = SimPower(tmp_path)
    sim.add_battery("BAT0", capacity_pct=50)
    roots = Roots(sys=tmp_path)
    sim.set_capacity("BAT0", 4)
    sim.set_health("BAT0", "Overheat")
    sim.set_temp("BAT0", 61.2)
    st = read_power_status(roots)
    assert st.battery_capacity_pct == 4 and st.battery_health == "Overheat"
    assert st.battery_temp_c == pytest.approx(61.2)
    sim.set_present("BAT0", False)
    assert read_power_status(roots).battery is None


def test_remove_supply(tmp_path: Path) -> None:
    """A removed supply disappears from the reading."""
    sim = SimPower(tmp_path)
    sim.add_mains("AC")
    sim.add_battery("BAT0", type="UPS")
    sim.remove("AC")
    st = read_power_status(Roots(sys=tmp_path), psutil_fallback=False)
    assert [s.name for s in st.supplies] == ["BAT0"] and st.ups is not None
    assert st.ac_online is None

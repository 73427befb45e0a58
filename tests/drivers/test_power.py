"""drivers/power.py: sysfs power_supply, uevent and `dumpsys battery` parsing, on real captures."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.power import (
    android_power_status,
    parse_dumpsys_battery,
    parse_power_supply_uevent,
    parse_uevent,
    read_power_status,
    read_power_supply,
)
from drivers.roots import Roots

FIX = Path(__file__).resolve().parents[1] / "fixtures"
PS = FIX / "linux" / "power_supply"
AND = FIX / "android"


def battery_fixture(name: str) -> str:
    return (AND / f"dumpsys_battery_{name}.txt").read_text()


# --------------------------------------------------------------------------- uevent


def test_uevent_thinkpad_energy_battery() -> None:
    """A ThinkPad BAT0 uevent (no TYPE line) reads as a discharging battery at 81 %."""
    s = parse_power_supply_uevent((PS / "laptop_thinkpad_45N1_BAT0.uevent").read_text())
    assert (s.name, s.type, s.status, s.capacity_pct) == ("BAT0", None, "Discharging", 81)
    assert s.present is True and s.voltage_uv == 11660000
    assert s.is_battery and not s.is_external


def test_uevent_old_ac_adapter_without_type_is_external() -> None:
    """The old-format AC uevent (no TYPE) counts as an external supply that is offline."""
    s = parse_power_supply_uevent((PS / "mains_thinkpad_AC_offline.uevent").read_text())
    assert s.name == "AC" and s.type is None and s.online is False
    assert s.is_external and not s.is_battery


def test_uevent_pixel8_temp_status_with_space() -> None:
    """Pixel 8: TEMP in tenths of °C, STATUS 'Not charging' with its space, health Good."""
    s = parse_power_supply_uevent((PS / "android_pixel8_shiba_battery.uevent").read_text())
    assert s.temp_c == pytest.approx(36.8)
    assert s.status == "Not charging" and s.health == "Good" and s.capacity_pct == 99
    assert s.attributes["charge_counter"] == "18398000"


def test_uevent_serial_number_leading_spaces_kept_raw() -> None:
    """SERIAL_NUMBER's leading spaces stay in the raw attributes; STATUS=Unknown is kept."""
    text = (PS / "laptop_lenovo_42T4977_BAT0_status_unknown.uevent").read_text()
    assert parse_uevent(text)["serial_number"] == "  973"
    s = parse_power_supply_uevent(text)
    assert s.status == "Unknown" and s.capacity_pct == 32


def test_uevent_ups_and_usb_types() -> None:
    """The UPS HAT is neither a battery nor external; the Sony usb supply is external, online."""
    ups = parse_power_supply_uevent(
        (PS / "ups_rpi5_waveshare_ups_hat_e_rpi-ups-battery.uevent").read_text()
    )
    assert ups.type == "UPS" and not ups.is_external and not ups.is_battery
    usb = parse_power_supply_uevent((PS / "usb_android_sony_xperia_xz_usb.uevent").read_text())
    assert usb.type == "USB" and usb.online is True and usb.is_external


@pytest.mark.parametrize("path", sorted(PS.glob("*.uevent")), ids=lambda p: p.name)
def test_every_uevent_fixture_has_a_name(path: Path) -> None:
    """Every captured uevent yields a named supply matching POWER_SUPPLY_NAME."""
    text = path.read_text()
    s = parse_power_supply_uevent(text)
    assert s.name == parse_uevent(text)["name"]


# --------------------------------------------------------------------------- sysfs reader


def make_supply(root: Path, name: str, files: dict[str, str], uevent: str | None = None) -> Path:
    d = root / "class" / "power_supply" / name
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_text(v + "\n")
    if uevent is not None:
        (d / "uevent").write_text(uevent)
    return d


def test_read_power_status_files_and_uevent(tmp_path: Path) -> None:
    """Attribute files and a real uevent combine; AC online and battery facts are derived."""
    make_supply(tmp_path, "AC", {"type": "Mains", "online": "1"})
    make_supply(
        tmp_path,
        "BAT0",
        {"type": "Battery", "temp": "451"},
        uevent=(PS / "laptop_dell_xps15_9560_BAT0.uevent").read_text(),
    )
    st_ = read_power_status(Roots(sys=tmp_path))
    assert st_.source == "sysfs" and [s.name for s in st_.supplies] == ["AC", "BAT0"]
    assert st_.ac_online is True
    assert st_.battery_capacity_pct == 92 and st_.battery_status == "Discharging"
    assert st_.battery_temp_c == pytest.approx(45.1)
    assert st_.battery is not None and st_.battery.type == "Battery"


def test_attribute_file_wins_over_uevent(tmp_path: Path) -> None:
    """When the file and uevent disagree (file read later), the file's value is used."""
    d = make_supply(tmp_path, "BAT0", {"capacity": "10"}, uevent="POWER_SUPPLY_CAPACITY=90\n")
    assert read_power_supply(d).capacity_pct == 10


def test_ac_offline_when_every_external_supply_is_offline(tmp_path: Path) -> None:
    """Mains 0 and USB 0 → ac_online False; a UPS is not counted as a supply."""
    make_supply(tmp_path, "AC", {"type": "Mains", "online": "0"})
    make_supply(tmp_path, "usb", {"type": "USB", "online": "0"})
    make_supply(tmp_path, "ups", {"type": "UPS", "online": "1", "capacity": "50"})
    st_ = read_power_status(Roots(sys=tmp_path))
    assert st_.ac_online is False
    assert st_.ups is not None and st_.ups.name == "ups"
    assert st_.battery is None


def test_unreadable_attribute_is_an_error_not_an_exception(tmp_path: Path) -> None:
    """A capacity that cannot be read (a directory in its place: EISDIR) is reported in errors."""
    d = make_supply(tmp_path, "BAT0", {"type": "Battery", "status": "Charging"})
    (d / "capacity").mkdir()
    s = read_power_supply(d)
    assert s.capacity_pct is None and s.status == "Charging"
    assert s.errors == ("capacity: EISDIR",)


def test_absent_battery_is_skipped(tmp_path: Path) -> None:
    """A battery slot with present=0 is not reported as the battery."""
    make_supply(tmp_path, "BAT0", {"type": "Battery", "present": "0"})
    make_supply(tmp_path, "BAT1", {"type": "Battery", "present": "1", "capacity": "55"})
    assert read_power_status(Roots(sys=tmp_path)).battery_capacity_pct == 55


def test_no_sysfs_falls_back_to_psutil(tmp_path: Path) -> None:
    """Without a power_supply directory the reader asks psutil, matching its answer."""
    st_ = read_power_status(Roots(sys=tmp_path / "nothing"))
    b = psutil.sensors_battery()
    if b is None:
        assert st_.source == "none" and st_.supplies == ()
    else:
        assert st_.source == "psutil" and st_.battery_capacity_pct == round(b.percent)
    assert read_power_status(Roots(sys=tmp_path), psutil_fallback=False).source == "none"


def test_real_sysfs_reads_without_exception() -> None:
    """Reading this machine's /sys/class/power_supply gives one supply per directory entry."""
    base = Path("/sys/class/power_supply")
    st_ = read_power_status(Roots(), psutil_fallback=False)
    expected = len(os.listdir(base)) if base.is_dir() else 0
    assert len(st_.supplies) == expected


# --------------------------------------------------------------------------- dumpsys battery


def test_dumpsys_capacity_level_does_not_shadow_level() -> None:
    """'Capacity level: 3' after 'level: 80' leaves the level at 80; health 3 is Overheat."""
    b = parse_dumpsys_battery(battery_fixture("android15_capacity_level"))
    assert b.level == 80 and b.scale == 100 and b.percent == 80.0
    assert b.ac_powered is True and b.dock_powered is False
    assert b.status == "Not charging" and b.status_code == 4
    assert b.health == "Overheat" and b.temp_c == pytest.approx(18.0)
    assert b.voltage_mv == 4200 and b.fields["Capacity level"] == "3"


def test_dumpsys_hyperos_one_space_vendor_lines() -> None:
    """HyperOS's one-space vendor lines neither break nor replace the standard fields."""
    b = parse_dumpsys_battery(battery_fixture("redmi_note14_hyperos3"))
    assert b.voltage_mv == 4228 and b.level == 80 and b.technology == "Li-poly"
    assert b.max_charging_current_ua == 12400000 and b.temp_c == pytest.approx(36.4)
    assert b.fields["The last voltage value sent via the battery changed broadcast"] == "4232"


def test_dumpsys_samsung_lower_case_charge_counter() -> None:
    """Samsung's extra lines (lower-case 'charge counter', LLB CAL empty) do not confuse fields."""
    b = parse_dumpsys_battery(battery_fixture("samsung_oneui_2023"))
    assert b.charge_counter_uah == 2967000 and b.status == "Full" and b.level == 100
    assert b.usb_powered is True and b.ac_powered is False and b.plugged is True
    b18 = parse_dumpsys_battery(battery_fixture("samsung_2018_mbootcompleted"))
    assert b18.fields["LLB CAL"] == "" and b18.level == 84 and b18.temp_c == pytest.approx(32.6)


def test_dumpsys_updates_stopped_fragment() -> None:
    """The UPDATES STOPPED marker becomes a flag; the two fields of the fragment are read."""
    b = parse_dumpsys_battery(battery_fixture("updates_stopped_fragment"))
    assert b.updates_stopped is True and b.recognized is True
    assert b.ac_powered is False and b.usb_powered is True and b.level is None
    assert android_power_status(b).updates_stopped is True


def test_dumpsys_oneplus_not_charging_unplugged() -> None:
    """OnePlus 8T paused by acc: every powered flag false, status Not charging."""
    st_ = android_power_status(parse_dumpsys_battery(battery_fixture("oneplus8t_fastchargestatus")))
    assert st_.ac_online is False and st_.battery_status == "Not charging"
    assert st_.battery_capacity_pct == 89 and st_.battery_temp_c == pytest.approx(32.4)


def test_dumpsys_2016_without_max_charging_or_dock() -> None:
    """A dump without 'Max charging' and 'Dock powered' lines leaves those None."""
    b = parse_dumpsys_battery(battery_fixture("appium_2016_no_maxcurrent"))
    assert b.max_charging_current_ua is None and b.dock_powered is None
    assert b.level == 89 and b.status == "Charging"


@pytest.mark.parametrize("path", sorted(AND.glob("dumpsys_battery_*.txt")), ids=lambda p: p.name)
def test_every_battery_fixture_recognized(path: Path) -> None:
    """Every captured dumpsys battery is recognized and its powered flags read."""
    b = parse_dumpsys_battery(path.read_text())
    assert b.recognized and b.ac_powered is not None and b.usb_powered is not None


def test_dumpsys_pixel_c_in_power_status_shape() -> None:
    """The Pixel C dump maps to a PowerStatus with AC online and a 19 % charging battery."""
    st_ = android_power_status(parse_dumpsys_battery(battery_fixture("pixel_c_dragon")))
    assert st_.source == "dumpsys" and st_.ac_online is True
    assert st_.battery_capacity_pct == 19 and st_.battery_health == "Good"
    assert st_.battery is not None and st_.battery.voltage_uv == 3764000


def test_unrecognized_output() -> None:
    """Output that is not a battery dump is flagged, not guessed at."""
    b = parse_dumpsys_battery("Can't find service: battery\n")
    assert not b.recognized and b.level is None
    assert android_power_status(b).errors


def test_absurd_numbers_are_unknown_not_overflow() -> None:
    """Numbers beyond 64 bits (garbage) read as unknown instead of overflowing float maths."""
    huge = "9" * 400
    b = parse_dumpsys_battery(f"  level: {huge}\n  scale: 100\n  temperature: {huge}\n")
    assert b.level is None and b.temp_c is None and b.percent is None
    s = parse_power_supply_uevent(f"POWER_SUPPLY_TEMP={huge}\nPOWER_SUPPLY_CAPACITY=-{huge}\n")
    assert s.temp_c is None and s.capacity_pct is None


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_dumpsys_battery(text: str) -> None:
    """Any text parses without an exception."""
    b = parse_dumpsys_battery(text)
    android_power_status(b)
    assert isinstance(b.recognized, bool)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_fuzz_dumpsys_battery_bytes(raw: bytes) -> None:
    """Any bytes, decoded leniently as the Shell does, parse without an exception."""
    assert isinstance(parse_dumpsys_battery(raw.decode("utf-8", "replace")).fields, dict)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_uevent(text: str) -> None:
    """Any text parses as a uevent without an exception."""
    s = parse_power_supply_uevent(text, name="x")
    assert isinstance(s.name, str)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_fuzz_uevent_bytes(raw: bytes) -> None:
    """Any bytes decoded as the reader does parse as a uevent without an exception."""
    assert isinstance(parse_uevent(raw.decode("utf-8", "replace")), dict)


_KEYS = [
    "AC powered",
    "USB powered",
    "status",
    "health",
    "present",
    "level",
    "scale",
    "voltage",
    "temperature",
    "technology",
    "Capacity level",
    "Charge counter",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_KEYS),
            st.integers(min_value=-(10**40), max_value=10**40).map(str)
            | st.sampled_from(["true", "false", ""])
            | st.text(max_size=6),
            st.sampled_from(["", " ", "  ", "\t"]),
        ),
        max_size=20,
    )
)
def test_fuzz_dumpsys_battery_structured(lines: list[tuple[str, str, str]]) -> None:
    """Battery-shaped dumps with any values (huge numbers, text) parse without an exception."""
    text = "Current Battery Service state:\n" + "".join(f"{i}{k}: {v}\n" for k, v, i in lines)
    b = parse_dumpsys_battery(text)
    android_power_status(b)
    assert b.recognized
    assert b.percent is None or b.percent == b.percent  # a number, never NaN

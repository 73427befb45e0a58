"""drivers/android.py: getprop and dumpsys window parsers on real captures; readers via fake adb."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.android import (
    parse_focus_value,
    parse_getprop,
    parse_pidof,
    parse_window_focus,
    pidof,
    read_battery,
    read_connectivity,
    read_getprop,
    read_logcat_tail,
    read_power_status,
    read_window_focus,
)
from drivers.shell import Shell, ShellTimeout, ShellUnavailable
from simulator.fake_adb import FakeAdb

AND = Path(__file__).resolve().parents[1] / "fixtures" / "android"


def fixture(name: str) -> str:
    return (AND / name).read_text()


# --------------------------------------------------------------------------- getprop


def test_getprop_humane_multiline_and_empty() -> None:
    """The Ai Pin dump: 718 props, a three-line boot reason history, and empty [] values."""
    props = parse_getprop(fixture("getprop_humane_ai_pin_android12.txt"))
    assert len(props) == 718
    assert props["persist.sys.boot.reason.history"] == (
        "reboot,shell,1741390745\nreboot,shell,1741390333\nshutdown,battery,1741380409"
    )
    assert props["persist.rild.nitz_long_ons_0"] == ""
    assert props["vold.has_reserved"] == "1"  # last line, no trailing newline
    assert props["ro.build.version.sdk"] == "32"


@pytest.mark.parametrize(
    ("name", "model", "release"),
    [
        ("getprop_oppo_a57_android6.0.1_crlf.txt", "OPPO A57", "6.0.1"),
        ("getprop_oppo_find_x3_pro_android14_crlf.txt", "PEEM00", "14"),
        ("getprop_moto_g84_lineageos23_android16.txt", "moto g84 5G", "16"),
        ("getprop_meizu_mx5_android5.1.txt", "MX5", "5.1"),
        ("getprop_redmi_5a_android7.1.2.txt", "Redmi 5A", "7.1.2"),
    ],
)
def test_getprop_model_and_release(name: str, model: str, release: str) -> None:
    """Model and release come out clean, with no stray CR from CRLF captures."""
    props = parse_getprop(fixture(name))
    assert props["ro.product.model"] == model
    assert props["ro.build.version.release"] == release
    assert not any("\r" in v for v in props.values())


@pytest.mark.parametrize("path", sorted(AND.glob("getprop_*.txt")), ids=lambda p: p.name)
def test_getprop_every_fixture_line_counted(path: Path) -> None:
    """Every `[key]: [` line of each capture becomes exactly one property."""
    text = path.read_text()
    keys = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.startswith("[")]
    assert len(parse_getprop(text)) == len({k.split("]")[0] for k in keys})


def test_getprop_unclosed_value_stops_at_next_key() -> None:
    """A value that never closes ends at the next property line."""
    props = parse_getprop("[a]: [one\ntwo\n[b]: [x]\n")
    assert props == {"a": "one\ntwo", "b": "x"}


# --------------------------------------------------------------------------- window focus


def test_focus_car_headunit_mismatch() -> None:
    """Input focus (launcher) and focused app (PlayActivity) differ: both kept, flagged."""
    w = parse_window_focus(fixture("dumpsys_window_focus_car_headunit_android4_mismatch.txt"))
    assert w.package == "com.incall.apps.launcher"
    assert w.activity == "com.incall.apps.launcher.Launcher"
    assert w.mismatch
    fa = w.focused_apps[0]
    assert fa is not None and fa.activity == "com.example.UI.play.PlayActivity"
    assert {c.package for c in w.candidates} == {"com.incall.apps.launcher", "com.example"}


def test_focus_flip4_multi_display() -> None:
    """Galaxy Z Flip4: null lines per display are kept; the chosen app is LINE, not SystemUI."""
    cf = parse_window_focus(
        fixture("dumpsys_window_focus_galaxy_z_flip4_android12_mCurrentFocus.txt")
    )
    assert cf.current_focus[:2] == (None, None)
    assert cf.package == "jp.naver.line.android"
    fa_text = fixture("dumpsys_window_focus_galaxy_z_flip4_android12_mFocusedApp.txt")
    fa = parse_window_focus(fa_text)
    assert fa.package == "jp.naver.line.android"
    assert fa.activity == "jp.naver.line.android.activity.main.MainActivity"
    both = parse_window_focus(
        fa_text + fixture("dumpsys_window_focus_galaxy_z_flip4_android12_mCurrentFocus.txt")
    )
    assert both.focused is not None and both.focused.source == "mCurrentFocus"
    assert both.focused.index == 2 and not both.mismatch
    assert "com.android.systemui" in {c.package for c in both.candidates}


def test_focus_appwindowtoken_nesting_and_lost_indent() -> None:
    """2018 Photos: the first line lost its indent; the nested ActivityRecord is used."""
    w = parse_window_focus(fixture("dumpsys_window_focus_google_photos_2018_appwindowtoken.txt"))
    assert w.package == "com.google.android.apps.photos"
    assert w.activity == "com.google.android.apps.photos.home.HomeActivity"
    fa = w.focused_apps[0]
    assert fa is not None and fa.activity == w.activity and not w.mismatch


def test_focus_repeated_calls_lines() -> None:
    """Android 4.4.2 lines: null → None, package-only window → package without activity."""
    lines = fixture("dumpsys_window_focus_android4.4.2_repeated_calls.txt").splitlines()
    parsed = [parse_focus_value(ln.split("=", 1)[1]) for ln in lines]
    assert parsed.count(None) == 24
    assert parsed[1] is not None and parsed[1].activity == (
        "com.lookout.enterprise.ui.android.activity.StartActivity"
    )
    last = parsed[-1]
    assert last is not None and last.package == "com.lookout.enterprise" and last.activity is None


def test_focus_android13_window_list() -> None:
    """Android 13+ `dumpsys window windows` has no focus lines: the window list is used."""
    w = parse_window_focus(
        fixture("dumpsys_window_windows_android13_14_no_mCurrentFocus_excerpt.txt")
    )
    assert w.current_focus == () and w.focused_apps == ()
    assert w.focused is not None and w.focused.source == "window_list"
    assert w.package == "tv.danmaku.bili" and w.activity == "tv.danmaku.bili.MainActivityV2"


def test_focus_window_title_without_package() -> None:
    """A system window title (no package) is a candidate, never a package."""
    w = parse_window_focus("  mCurrentFocus=Window{1a2b u0 NotificationShade}\n")
    assert w.focused is not None and w.focused.title == "NotificationShade"
    assert w.package is None


def test_focus_nothing() -> None:
    """No focus information at all: focused None, no candidates."""
    w = parse_window_focus("WINDOW MANAGER WINDOWS\n  mCurrentFocus=null\n")
    assert w.focused is None and w.candidates == ()


def test_pidof_parser() -> None:
    """pidof output: space-separated pids; junk is ignored."""
    assert parse_pidof("4242 17\n") == (4242, 17)
    assert parse_pidof("") == ()
    assert parse_pidof("x -3 9") == (9,)


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_getprop(text: str) -> None:
    """Any text parses as getprop without an exception."""
    assert isinstance(parse_getprop(text), dict)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_fuzz_getprop_bytes(raw: bytes) -> None:
    """Any bytes decoded leniently parse as getprop without an exception."""
    assert isinstance(parse_getprop(raw.decode("utf-8", "replace")), dict)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_window_focus(text: str) -> None:
    """Any text parses as dumpsys window without an exception."""
    w = parse_window_focus(text)
    assert isinstance(w.candidates, tuple)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "mCurrentFocus=",
                "mFocusedApp=",
                "Window{",
                "ActivityRecord{",
                " u0 ",
                "}",
                "/",
                ".",
                "com.a",
                "null",
                "\n",
                " t7",
                "Window #3 ",
                ":",
            ]
        )
        | st.text(max_size=5),
        max_size=30,
    )
)
def test_fuzz_window_focus_tokens(tokens: list[str]) -> None:
    """Focus-looking token soups parse without an exception."""
    w = parse_window_focus("".join(tokens))
    assert w.focused is None or isinstance(w.focused.title, str)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_fuzz_window_and_pidof_bytes(raw: bytes) -> None:
    """Any bytes decoded leniently parse as dumpsys window and pidof without an exception."""
    text = raw.decode("utf-8", "replace")
    parse_window_focus(text)
    assert all(p > 0 for p in parse_pidof(text))


# --------------------------------------------------------------------------- readers via fake adb


@pytest.fixture
def adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdb]:
    fake = FakeAdb(tmp_path / "adb")
    monkeypatch.setenv("PATH", fake.env()["PATH"])
    monkeypatch.setenv("POSAGENT_SIM_ADB_STATE", str(fake.state_path))
    yield fake


def test_readers_through_adb(adb: FakeAdb) -> None:
    """Battery, connectivity, focus, props, logcat and pidof all come through Shell(mode=adb)."""
    sh = Shell(mode="adb", adb_serial=adb.serial)
    b = read_battery(sh)
    assert b.recognized and b.level == 80 and b.ac_powered is True and b.status == "Charging"
    c = read_connectivity(sh)
    assert c.connected is True and c.default is not None and c.default.interface == "eth0"
    w = read_window_focus(sh)
    assert w.package == "com.example.pos" and w.activity == "com.example.pos.SaleActivity"
    assert read_getprop(sh)["ro.product.model"] == "SimPOS 1"
    assert "sale screen ready" in read_logcat_tail(sh, lines=10)
    assert pidof(sh, "com.example.pos") == (4242,)
    assert pidof(sh, "com.other") == ()
    assert read_power_status(sh).ac_online is True


def test_readers_follow_state_changes(adb: FakeAdb) -> None:
    """AC pulled, network down, app crashed: the next readings show it."""
    sh = Shell(mode="adb", adb_serial=adb.serial)
    adb.set_battery(ac=False, status="Discharging", level=12)
    adb.set_network(connected=False)
    adb.set(processes={})
    st_ = read_power_status(sh)
    assert st_.ac_online is False and st_.battery_capacity_pct == 12
    assert read_connectivity(sh).connected is False
    assert pidof(sh, "com.example.pos") == ()
    adb.set_network(id=None)
    c = read_connectivity(sh)
    assert c.active_network_id is None and c.connected is False


def test_fixture_outputs_through_adb(adb: FakeAdb) -> None:
    """Captured dumps served verbatim by the fake adb parse as they do from files."""
    sh = Shell(mode="adb", adb_serial=adb.serial)
    adb.set_output("dumpsys battery", fixture("dumpsys_battery_samsung_oneui_2023.txt"))
    adb.set_output(
        "dumpsys window", fixture("dumpsys_window_focus_car_headunit_android4_mismatch.txt")
    )
    adb.set_output("dumpsys connectivity", fixture("dumpsys_connectivity_rk3588_ethernet.txt"))
    assert read_battery(sh).status == "Full"
    assert read_window_focus(sh).mismatch
    c = read_connectivity(sh)
    assert c.default is not None and c.default.interface == "eth1"


def test_device_dropped_is_unavailable(adb: FakeAdb) -> None:
    """A device that fell off the bus raises ShellUnavailable; reconnect brings it back."""
    sh = Shell(mode="adb", adb_serial=adb.serial)
    adb.drop()
    with pytest.raises(ShellUnavailable):
        read_battery(sh)
    assert "not found" in sh.adb_state()
    sh.reconnect()
    assert sh.adb_state() == "device"
    assert read_battery(sh).recognized
    assert ["-s", adb.serial, "reconnect"] in adb.calls()


def test_hanging_device_times_out(adb: FakeAdb) -> None:
    """A hung adb is killed at the Shell timeout and raises ShellTimeout."""
    adb.set(hang=True)
    with pytest.raises(ShellTimeout):
        read_battery(Shell(mode="adb", adb_serial=adb.serial), timeout_s=0.5)


def test_fake_adb_is_first_on_path(adb: FakeAdb) -> None:
    """`adb` resolves to the fake launcher, not the Debian adb."""
    first = next(
        Path(d) / "adb" for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / "adb").exists()
    )
    assert first == adb.adb_path

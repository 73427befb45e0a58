"""simulator/fake_adb.py: the fake `adb` executable behaves like adb for the commands we use."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from drivers.power import parse_dumpsys_battery
from drivers.shell import Shell, ShellUnavailable, run_argv
from simulator.fake_adb import FakeAdb, default_device, render_dumpsys_battery


@pytest.fixture
def adb(tmp_path: Path) -> FakeAdb:
    return FakeAdb(tmp_path)


def test_devices_and_get_state(adb: FakeAdb) -> None:
    """`devices` lists the serial; get-state reports device, then offline."""
    out = run_argv([str(adb.adb_path), "devices"], 10)
    assert out.returncode == 0
    assert out.text.splitlines()[:2] == ["List of devices attached", f"{adb.serial}\tdevice"]
    sh = Shell(mode="adb", adb_serial=adb.serial, adb_path=str(adb.adb_path))
    assert sh.adb_state() == "device"
    adb.set(state="offline")
    assert sh.adb_state() == "error: device offline"
    with pytest.raises(ShellUnavailable):
        sh.run("getprop")


def test_screencap_png_from_state(adb: FakeAdb) -> None:
    """`exec-out screencap -p` returns a PNG of the configured size and background colour."""
    adb.set(screen={"width": 200, "height": 100, "color": [10, 200, 30]})
    sh = Shell(mode="adb", adb_serial=adb.serial, adb_path=str(adb.adb_path))
    png = sh.check("screencap -p", 10, binary=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    assert img.size == (200, 100) and img.getpixel((100, 90)) == (10, 200, 30)


def test_serial_selection_errors(adb: FakeAdb) -> None:
    """Unknown serial, no device and two devices give adb's own error texts."""
    r = run_argv([str(adb.adb_path), "-s", "NOPE", "shell", "true"], 10)
    assert r.returncode == 1 and b"error: device 'NOPE' not found" in r.stderr
    assert run_argv([str(adb.adb_path), "shell", "true"], 10).returncode == 0
    adb.set("SECOND", **default_device())
    r = run_argv([str(adb.adb_path), "shell", "true"], 10)
    assert r.returncode == 1 and b"more than one device" in r.stderr
    adb.drop("SECOND")
    adb.drop()
    r = run_argv([str(adb.adb_path), "shell", "true"], 10)
    assert r.returncode == 1 and b"no devices/emulators found" in r.stderr


def test_shell_commands(adb: FakeAdb) -> None:
    """getprop KEY, logcat -d -t N, an unknown command (127) and the call log."""
    sh = Shell(mode="adb", adb_serial=adb.serial, adb_path=str(adb.adb_path))
    assert sh.check("getprop ro.build.version.sdk").strip() == b"33"
    adb.set(logcat="".join(f"line {i}\n" for i in range(50)))
    assert sh.check("logcat -d -t 3").decode().splitlines() == ["line 47", "line 48", "line 49"]
    r = sh.run("frobnicate")
    assert r.returncode == 127 and b"inaccessible or not found" in r.stderr
    assert ["-s", adb.serial, "shell", "frobnicate"] in adb.calls()


def test_unauthorized_and_reconnect_without_restore(adb: FakeAdb) -> None:
    """An unauthorized device errors; reconnect does not revive a device set not to come back."""
    adb.set(state="unauthorized")
    r = run_argv([str(adb.adb_path), "-s", adb.serial, "shell", "true"], 10)
    assert r.returncode == 1 and b"unauthorized" in r.stderr
    adb.set(state="gone", reconnect_restores=False)
    run_argv([str(adb.adb_path), "-s", adb.serial, "reconnect"], 10)
    assert adb.device()["state"] == "gone"


def test_rendered_battery_matches_real_layout() -> None:
    """The generated dumpsys battery parses to the state it came from, with the stopped flag."""
    state = dict(default_device()["battery"], level=7, health="Overheat", updates_stopped=True)
    b = parse_dumpsys_battery(render_dumpsys_battery(state))
    assert b.recognized and b.level == 7 and b.health == "Overheat" and b.updates_stopped
    assert b.temp_c == pytest.approx(30.0) and b.dock_powered is False


def test_missing_state_variable(tmp_path: Path) -> None:
    """Run without the state variable, the module itself refuses with a message."""
    import sys

    r = run_argv([sys.executable, "-m", "simulator.fake_adb", "devices"], 10)
    assert r.returncode == 1 and b"POSAGENT_SIM_ADB_STATE" in r.stderr


def test_dropbox_logcat_files_and_pipes(adb: FakeAdb) -> None:
    """Dropbox entries, logcat since a time, `ls -l`, `stat`, `date`, `;` and pipes from the state."""
    sh = Shell(mode="adb", adb_serial=adb.serial, adb_path=str(adb.adb_path))
    adb.add_dropbox(
        "data_app_crash", "Process: com.example.pos\nPID: 1\n\nboom\n", at=1_714_564_801
    )
    adb.add_dropbox("SYSTEM_BOOT", "Build: x\n", at=1_714_564_802)
    summary = sh.check("dumpsys dropbox").decode()
    assert "2024-05-01 12:00:01 data_app_crash (text, 38 bytes)\n" in summary
    assert summary.endswith(
        "Usage: dumpsys dropbox [--print|--file] [YYYY-mm-dd] [HH:MM:SS] [tag]\n"
    )
    printed = sh.check("dumpsys dropbox --print 2024-05-01 12:00:01 data_app_crash").decode()
    assert "=" * 40 + "\n2024-05-01 12:00:01 data_app_crash" in printed and "boom" in printed
    assert "SYSTEM_BOOT" not in printed
    assert sh.check("dumpsys dropbox | tail -n 1").decode().startswith("Usage:")
    assert len(sh.check("dumpsys dropbox --print | head -c 10")) == 10

    first = adb.log("one", pid=7)
    second = adb.log("two", pid=7)
    assert sh.check("logcat -d -v threadtime -t 1").decode() == second + "\n"
    since = first[:18]
    out = sh.check(f"logcat -d -v threadtime -T '{since}' | head -n 1").decode()
    assert out == first + "\n"

    adb.touch("/sdcard/hb", mtime=1_714_564_800, size=3)
    r = sh.run("date +%s; stat -c %Y /sdcard/hb")
    now, mtime = (int(x) for x in r.text.split())
    assert mtime == 1_714_564_800 and abs(now - __import__("time").time()) < 60
    gone = sh.run("date +%s; stat -c %Y /sdcard/none")
    assert gone.returncode == 1 and b"No such file or directory" in gone.stderr
    assert sh.check("ls -l /sdcard").decode().splitlines()[1].endswith(" 3 2024-05-01 12:00 hb")
    denied = sh.run("ls -l /data/tombstones")
    assert (
        denied.returncode == 1
        and denied.stderr.strip() == b"ls: /data/tombstones: Permission denied"
    )
    absent = sh.run("ls -l /data/nothing")
    assert b"No such file or directory" in absent.stderr

"""android_logs monitor against the fake adb: dropbox, device dirs, logcat, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.config import Config, parse_config
from agent.core.model import Reading
from agent.core.redact import redactor_for
from agent.faults.engine import FaultEngine
from agent.monitors import MonitorContext, build_monitors, load_all
from agent.monitors.android_logs import AndroidLogsMonitor
from agent.monitors.app import AppMonitor
from agent.monitors.watch import crash_watcher, log_tailer
from drivers.shell import Shell, ShellError
from simulator.fake_adb import FakeAdb
from simulator.state import write_json_atomic
from tests.conftest import FIXTURES

CRASH = (FIXTURES / "android" / "dumpsys_dropbox_print_data_app_crash_written.txt").read_text()
JAVA_CRASH = CRASH.split("=" * 40 + "\n")[1].split("\n", 1)[1]  # the first entry's text
ANR = (FIXTURES / "android" / "dumpsys_dropbox_print_data_app_anr_written.txt").read_text()
ANR_TEXT = ANR.split("=" * 40 + "\n")[1].split("\n", 1)[1]


def config(tmp_path: Path, app: str = "", target: str = "adb") -> Config:
    return parse_config(
        f"""
[agent]
target = "{target}"
adb_serial = "SIM0001"
state_dir = "{tmp_path / "state"}"

[app]
process = "com.example.pos"
log_patterns = ["FATAL EXCEPTION", "printer queue closed"]
{app}
"""
    )


def monitor(tmp_path: Path, cfg: Config, fake: FakeAdb) -> AndroidLogsMonitor:
    shell = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)  # the daemon makes it
    return AndroidLogsMonitor(
        cfg, shell, tmp_path / "state" / "android-logs.json", redactor_for(cfg)
    )


def split(readings: list[Reading]) -> tuple[list[Reading], Reading]:
    status = [r for r in readings if r.source == "android_logs"]
    assert len(status) == 1
    return [r for r in readings if r.source != "android_logs"], status[0]


@pytest.fixture
def fake(tmp_path: Path) -> FakeAdb:
    return FakeAdb(tmp_path / "adb")


def test_new_dropbox_crash_and_anr_become_event_readings(tmp_path: Path, fake: FakeAdb) -> None:
    """Entries there at the start are history; new crash/ANR entries are crash:/anr: readings."""
    fake.add_dropbox("data_app_crash", JAVA_CRASH, at=1_714_000_000)
    fake.add_dropbox("SYSTEM_BOOT", "Build: x\n", at=1_714_000_001)
    cfg = config(tmp_path)
    mon = monitor(tmp_path, cfg, fake)
    events, status = split(mon.poll())
    assert events == []
    assert status.values["dropbox"] == "ok" and status.values["dropbox_entries"] == 2
    assert status.values["reachable"] is True

    fake.add_dropbox("data_app_crash", JAVA_CRASH)
    fake.add_dropbox("data_app_anr", ANR_TEXT)
    fake.add_dropbox("system_server_wtf", "wtf\n")  # neither crash nor ANR
    events, status = split(mon.poll())
    assert [r.source for r in events] == ["crash:com.example.pos", "anr:com.example.pos"]
    crash = events[0].values
    assert crash["tag"] == "data_app_crash" and crash["pid"] == 4242
    assert crash["path"].startswith("dropbox:data_app_crash@")
    assert crash["cause"] == "java.lang.IllegalStateException: printer queue closed"
    assert crash["pos_app"] is True
    assert crash["summary"].startswith("data_app_crash com.example.pos: java.lang.Illegal")
    assert events[1].values["cause"].startswith("Input dispatching timed out")
    assert status.values["dropbox_new"] == 3
    assert split(mon.poll())[0] == []  # reported once

    # the engine turns them into the catalog's one-shot events
    engine = FaultEngine(cfg)
    got = [ev for r in events for ev in engine.feed(r)]
    assert [(e.key, e.subject) for e in got] == [
        ("app.crash_report", "com.example.pos"),
        ("app.anr", "com.example.pos"),
    ]
    assert got[0].summary == crash["summary"] and got[0].readings[0].values["path"]


def test_restart_reports_what_came_while_down(tmp_path: Path, fake: FakeAdb) -> None:
    """The dropbox mark is kept in the state dir: a crash while the agent was down is reported once."""
    cfg = config(tmp_path)
    fake.add_dropbox("data_app_crash", JAVA_CRASH, at=1_714_000_000)
    monitor(tmp_path, cfg, fake).poll()
    fake.add_dropbox("data_app_crash", JAVA_CRASH, at=1_714_000_100)
    again = monitor(tmp_path, cfg, fake)
    events, _ = split(again.poll())
    assert [r.source for r in events] == ["crash:com.example.pos"]
    assert split(again.poll())[0] == []
    assert split(monitor(tmp_path, cfg, fake).poll())[0] == []


def test_device_dirs_denied_absent_and_configured(tmp_path: Path, fake: FakeAdb) -> None:
    """Default dirs are states; a configured dir's new file is a crash: reading like on local."""
    cfg = config(tmp_path, 'tombstone_dirs = ["/data/vendor/tombstones"]')
    fake.set_dir("/data/anr", "absent")
    fake.set_dir("/data/vendor/tombstones", "ok")
    fake.touch("/data/vendor/tombstones/tombstone_00", mtime=1_714_000_000, size=10)
    mon = monitor(tmp_path, cfg, fake)
    events, status = split(mon.poll())
    assert events == []
    assert status.values["dirs"] == (
        "/data/tombstones=denied /data/anr=absent /data/vendor/tombstones=ok:1"
    )
    fake.touch("/data/vendor/tombstones/tombstone_01", size=20)
    fake.touch("/data/vendor/tombstones/tombstone_00", size=30)  # the ring reuses a name
    events, _ = split(mon.poll())
    assert [r.source for r in events] == ["crash:tombstone_00", "crash:tombstone_01"]
    assert events[1].values["path"] == "/data/vendor/tombstones/tombstone_01"
    assert events[1].values["summary"] == "crash_report file /data/vendor/tombstones/tombstone_01"


def test_default_dirs_raise_only_without_dropbox(tmp_path: Path, fake: FakeAdb) -> None:
    """/data/anr's new file is reported only while the dropbox cannot be read (no double report)."""
    cfg = config(tmp_path)
    fake.set_dir("/data/anr", "ok")
    mon = monitor(tmp_path, cfg, fake)
    mon.poll()
    fake.touch("/data/anr/anr_2024-05-01-12-03-44-120", size=100)
    assert split(mon.poll())[0] == []
    st = fake.state()
    st["devices"][fake.serial]["outputs"]["dumpsys dropbox | tail -n 2000"] = {
        "exit": 1,
        "stderr": "Permission Denial: can't dump dropbox",
    }
    write_json_atomic(fake.state_path, st)
    fake.touch("/data/anr/anr_2024-05-01-12-09-00-001", size=100)
    events, status = split(mon.poll())
    assert status.values["dropbox"] == "error"
    assert [r.source for r in events] == ["anr:anr_2024-05-01-12-09-00-001"]


def test_logcat_matches_only_new_lines_of_the_pos_app(tmp_path: Path, fake: FakeAdb) -> None:
    """Lines before the start are history; another app's matching line is not the POS app's."""
    cfg = config(tmp_path)
    fake.log("FATAL EXCEPTION: main", tag="AndroidRuntime")  # before the agent: history
    mon = monitor(tmp_path, cfg, fake)
    assert split(mon.poll())[0] == []
    line = fake.log("printer queue closed: broken pipe", tag="PrintQueue", pid=4242)
    fake.log("printer queue closed", tag="Other", pid=777)  # not the POS app
    fake.log("all good", pid=4242)
    events, status = split(mon.poll())
    assert [r.source for r in events] == ["log_error:logcat"]
    assert events[0].values["line"] == line
    assert events[0].values["summary"] == f"log error in logcat: {line}"
    assert status.values["logcat_lines"] == 2 and status.values["logcat_matches"] == 1
    assert split(mon.poll())[0] == []  # the same second is not read twice
    # a crash of a process the agent never saw by pidof: its pid is learnt from the lines
    fake.set(processes={})
    fake.log(
        "Start proc 5555:com.example.pos/u0a123 for top-activity",
        tag="ActivityManager",
        pid=1402,
        level="I",
    )
    fake.log("FATAL EXCEPTION: main", tag="AndroidRuntime", pid=5555)
    events, _ = split(mon.poll())
    assert [r.values["pid"] for r in events] == [5555]


def test_logcat_lines_are_redacted(tmp_path: Path, fake: FakeAdb) -> None:
    """A card number in a matching line never leaves the monitor."""
    cfg = config(tmp_path)
    mon = monitor(tmp_path, cfg, fake)
    mon.poll()
    fake.log("printer queue closed for card 4111111111111111", pid=4242)
    events, _ = split(mon.poll())
    assert "4111111111111111" not in str(events[0].values)


def test_failures(tmp_path: Path, fake: FakeAdb) -> None:
    """A gone device is a status (adb.offline owns it); nothing readable fails the poll."""
    cfg = config(tmp_path)
    mon = monitor(tmp_path, cfg, fake)
    mon.poll()
    fake.drop()
    events, status = split(mon.poll())
    assert events == [] and status.values["reachable"] is False
    fake.set(state="device")
    st = fake.state()
    outs = st["devices"][fake.serial]["outputs"]
    for cmd in ("dumpsys dropbox | tail -n 2000",):
        outs[cmd] = {"exit": 1, "stderr": "dumpsys: broken"}
    write_json_atomic(fake.state_path, st)
    bare = parse_config(
        f'[agent]\ntarget = "adb"\nadb_serial = "SIM0001"\nstate_dir = "{tmp_path / "s2"}"\n'
    )
    with pytest.raises(ShellError):
        monitor(tmp_path / "b", bare, fake).poll()


def test_factory_targets(tmp_path: Path) -> None:
    """One monitor on adb and android, none on local."""
    load_all()
    for target, n in (("adb", 1), ("android", 1), ("local", 0)):
        cfg = config(tmp_path, target=target)
        mons = build_monitors(cfg, MonitorContext.from_config(cfg), ["android_logs"])
        assert len(mons) == n, target


def test_app_monitor_reads_the_heartbeat_on_the_device(tmp_path: Path, fake: FakeAdb) -> None:
    """Target adb: the heartbeat's age is taken on the device's clock, whatever this box's says."""
    cfg = config(tmp_path, 'heartbeat_file = "/sdcard/pos/heartbeat"')
    fake.set(clock_offset_s=-86_400.0)  # the terminal's clock is a day behind this box
    shell = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))
    mon = AppMonitor(cfg.app, shell)
    (r,) = mon.poll()
    assert r.values["heartbeat_exists"] is False and r.values["heartbeat_age_s"] is None
    assert r.values["running"] is True
    fake.touch("/sdcard/pos/heartbeat")
    (r,) = mon.poll()
    assert r.values["heartbeat_exists"] is True and 0 <= r.values["heartbeat_age_s"] < 30
    st = fake.device()
    fake.touch("/sdcard/pos/heartbeat", mtime=st["files"]["/sdcard/pos/heartbeat"]["mtime"] - 600)
    (r,) = mon.poll()
    assert 600 <= r.values["heartbeat_age_s"] < 630
    engine = FaultEngine(cfg)
    assert engine.feed(r) == [] and [e.key for e in engine.feed(r)] == ["app.hung"]


def test_box_watchers_are_off_on_target_adb(tmp_path: Path) -> None:
    """On adb the crash dirs and log patterns name the device: nothing watches this box for them."""
    box = 'crash_dirs = ["/tmp"]\nlog_files = ["/var/log/syslog"]'
    assert crash_watcher(config(tmp_path, box), lambda k, p: None) is None
    assert log_tailer(config(tmp_path, box), lambda p, s: None) is None
    assert crash_watcher(config(tmp_path, box, target="local"), lambda k, p: None) is not None
    assert log_tailer(config(tmp_path, box, target="local"), lambda p, s: None) is not None

"""Every catalog fault raised and cleared through the real driver path with the simulator twins.

Table-driven: for each key of agent.faults.catalog.CATALOG a case injects the fault
into a twin (fake sysfs power tree, fake sys/proc net trees, loopback payment
hosts, pty printer and PIN pad with sysfs USB identity, fake adb, a real child
process, real files), polls the real monitors into a FaultEngine driven by a
fake clock (duration rules need no real minutes), asserts the RAISED event,
removes the fault and asserts the CLEARED event. `test_table_covers_catalog`
keeps the table complete.

Where no twin offers a real path, the closest real one is used (each case
says so in `path`):
- system.memory_low / system.cpu_saturated: psutil parsing a simulated procfs
  (psutil.PROCFS_PATH pointed at meminfo/stat files we write), since taking
  90 % of this shared machine's memory or CPU is not an option;
- system.clock_jump: the wall clock itself cannot be stepped on a shared
  machine; the monitor's offset reader adds the jump to the real reading;
- system.clock_unsynced: a fake `timedatectl` on PATH (adjtimex reflects this
  host's real NTP state, which a test must not change);
- one-shot keys (power.unclean_shutdown, app.crash_report, app.anr,
  app.log_error, manual.report) come from the run marker and the watchers,
  not from monitors; they never "clear" by design (FaultEngine.event): the
  test asserts the single RAISED event and that nothing stays active or is
  reported again;
- upload.auth_failed is a condition set by the real Uploader against a
  loopback HTTP collector answering 401, then 201.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.core.config import Config
from agent.core.model import FaultEvent, FaultState, Reading
from agent.faults.catalog import CATALOG, Kind
from agent.faults.engine import FaultEngine
from agent.monitors import Monitor, build_monitors, load_all
from agent.monitors.adb import AdbMonitor
from agent.monitors.app import AppMonitor
from agent.monitors.power import PowerMonitor
from agent.monitors.scheduler import failed_reading
from agent.monitors.system import SystemMonitor
from drivers.shell import Shell
from drivers.system import ClockOffset, read_clock_offset
from simulator.fake_adb import FakeAdb
from simulator.hosts import SimHost, make_self_signed_cert
from simulator.peripherals import UsbIdentity, card_reader
from tests.conftest import is_root
from tests.faults.kit import FakeClock
from tests.monitors.kit import DEFAULT_ROUTE, MonitorRig

load_all()

OTHER_PAD = UsbIdentity(0x067B, 0x2303, "SWAP99", "Prolific", "USB-Serial", driver="usb-serial")


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    """One case's world: the twins, extras a case starts, the fake clock, the engine."""

    tmp: Path
    term: MonitorRig
    clock: FakeClock
    mp: pytest.MonkeyPatch
    sections: dict[str, Any] = field(default_factory=dict)
    cfg: Config = field(default_factory=Config)
    engine: FaultEngine | None = None
    monitors: list[Monitor] = field(default_factory=list)
    dt: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    events: list[FaultEvent] = field(default_factory=list)

    @property
    def eng(self) -> FaultEngine:
        assert self.engine is not None
        return self.engine

    def start(self, monitors: list[Monitor]) -> None:
        self.engine = FaultEngine(self.cfg, self.clock, wall=self.clock.wall)
        self.monitors = monitors

    def poll(self) -> list[FaultEvent]:
        """Advance the clock by dt and poll every monitor once into the engine."""
        self.clock.advance(self.dt)
        out: list[FaultEvent] = []
        for m in self.monitors:
            try:
                readings = m.poll()
            except Exception as e:  # what the scheduler does with a failing poll
                readings = [failed_reading(m.name, f"{type(e).__name__}: {e}")]
            for r in readings:
                out += self.eng.feed(r)
        out += self.eng.tick()
        self.events += out
        return out

    def until(self, key: str, state: FaultState, max_polls: int = 15) -> FaultEvent:
        """Poll until an event of key in state comes out; fail after max_polls."""
        for _ in range(max_polls):
            for ev in self.poll():
                if ev.key == key and ev.state is state:
                    return ev
        seen = [(e.key, e.state.value, e.subject) for e in self.events]
        raise AssertionError(f"no {state.value} {key} after {max_polls} polls; events: {seen}")


def pick(env: Env, *names: str) -> list[Monitor]:
    """The monitors of the config with these names."""
    ms = build_monitors(env.cfg, env.term.context())
    out = [m for m in ms if m.name in names]
    assert len(out) == len(names), [m.name for m in ms]
    return out


# --------------------------------------------------------------------------- twins for some cases


# the app monitor finds the POS app by name in the machine's process table, where another
# test (another xdist worker: the simulator's app twin) may run a "posapp" meanwhile
APP = f"posapp{os.getpid() % 10**8}"  # at most 15 characters: the kernel's comm


def start_posapp(env: Env) -> subprocess.Popen[bytes]:
    """A real child process named APP (a copy of sleep) standing for the POS app."""
    exe = env.tmp / "bin" / APP
    if not exe.exists():
        exe.parent.mkdir(parents=True, exist_ok=True)
        sleep = shutil.which("sleep")
        assert sleep is not None
        shutil.copy(sleep, exe)
    proc = subprocess.Popen([str(exe), "600"])
    env.cleanups.append(lambda: _kill(proc))
    env.extra["proc"] = proc
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # wait until exec has named it
        with contextlib.suppress(psutil.Error):
            if psutil.Process(proc.pid).name() == APP:
                break
        time.sleep(0.005)
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(5)


def kill_posapp(env: Env) -> None:
    _kill(env.extra["proc"])


def restart_posapp(env: Env, times: int) -> None:
    for _ in range(times):
        kill_posapp(env)
        start_posapp(env)
        env.poll()


def app_monitor(env: Env) -> list[Monitor]:
    return [AppMonitor(env.cfg.app, Shell(), clock=env.clock)]


def setup_app(env: Env) -> None:
    env.sections["app"] = {"process": APP, "interval_s": 0.2}
    start_posapp(env)


def setup_heartbeat(env: Env) -> None:
    hb = env.tmp / "heartbeat"
    hb.touch()
    env.extra["hb"] = hb
    env.sections["app"] = {
        "process": APP,
        "heartbeat_file": str(hb),
        "heartbeat_max_age_s": 60.0,
        "interval_s": 0.2,
    }
    start_posapp(env)


class FakeProc:
    """meminfo and stat files in a directory psutil reads instead of /proc (PROCFS_PATH)."""

    def __init__(self, d: Path) -> None:
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self.meminfo = Path("/proc/meminfo").read_text()
        self.total_kib = int(self.meminfo.split("MemTotal:")[1].split()[0])
        self.cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        self.set_available_pct(80.0)
        self.write_stat()

    def set_available_pct(self, pct: float) -> None:
        avail = int(self.total_kib * pct / 100)
        lines = []
        for line in self.meminfo.splitlines():
            if line.startswith(("MemAvailable:", "MemFree:")):
                line = f"{line.split(':')[0]}:{avail:>16} kB"
            lines.append(line)
        (self.d / "meminfo").write_text("\n".join(lines) + "\n")

    def tick_cpu(self, busy: int, idle: int) -> None:
        self.cpu[0] += busy  # user
        self.cpu[3] += idle  # idle
        self.write_stat()

    def write_stat(self) -> None:
        rest = Path("/proc/stat").read_text().split("\n")[1:]
        head = "cpu  " + " ".join(str(x) for x in self.cpu)
        (self.d / "stat").write_text("\n".join([head, *rest]))


class BusyCpuSystem(SystemMonitor):
    """The system monitor; each poll first advances the simulated CPU counters."""

    fake: FakeProc | None = None
    busy: bool = False

    def poll(self) -> list[Reading]:
        assert self.fake is not None
        self.fake.tick_cpu(990, 10) if self.busy else self.fake.tick_cpu(10, 990)
        return super().poll()


def setup_fake_proc(env: Env) -> None:
    fake = FakeProc(env.tmp / "fakeproc")
    env.mp.setattr(psutil, "PROCFS_PATH", str(fake.d))
    env.extra["fakeproc"] = fake


def fake_proc_system(env: Env) -> list[Monitor]:
    m = BusyCpuSystem(env.cfg.system, Shell(), clock_source="adjtimex")
    m.fake = env.extra["fakeproc"]
    env.extra["sysmon"] = m
    return [m]


def setup_timedatectl(env: Env) -> None:
    bindir = env.tmp / "tdbin"
    bindir.mkdir(exist_ok=True)
    state = env.tmp / "ntp_state"
    state.write_text("yes")
    script = bindir / "timedatectl"
    script.write_text(f'#!/bin/sh\necho "NTPSynchronized=$(cat {state})"\n')
    script.chmod(0o755)
    env.mp.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env.extra["ntp"] = state


def timedatectl_system(env: Env) -> list[Monitor]:
    return [SystemMonitor(env.cfg.system, Shell(), clock_source="timedatectl")]


def jump_system(env: Env) -> list[Monitor]:
    env.extra["jump_s"] = 0.0

    def offset() -> ClockOffset:
        o = read_clock_offset()
        return dataclasses.replace(o, wall_s=o.wall_s + env.extra["jump_s"])

    return [SystemMonitor(env.cfg.system, Shell(), offset_reader=offset)]


def setup_tmpfs(env: Env) -> None:
    if not is_root():
        pytest.skip("mounting a small tmpfs needs root")
    mnt = env.tmp / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "posagent-test", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    env.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))
    env.sections["system"] = {"interval_s": 0.2, "disk_paths": [str(mnt)], "disk_low_mib": 1}
    env.extra["mnt"] = mnt


def fill_disk(env: Env) -> None:
    mnt: Path = env.extra["mnt"]
    free = shutil.disk_usage(mnt).free
    (mnt / "fill").write_bytes(b"\0" * (free - 64 * 1024))


def setup_adb(env: Env, *, restore: bool = True) -> None:
    fake = FakeAdb(env.tmp / "adb")
    fake.set(reconnect_restores=restore)
    env.extra["adb"] = fake
    env.extra["shell"] = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))


def adb_monitor(env: Env) -> list[Monitor]:
    return [AdbMonitor(env.extra["shell"], interval_s=0.2)]


def adb_power_monitor(env: Env) -> list[Monitor]:
    return [PowerMonitor(env.cfg.power, env.term.roots, env.extra["shell"])]


def setup_tls_host(env: Env) -> None:
    cert = make_self_signed_cert(env.tmp / "cert")
    host = SimHost(cert=cert).start()
    env.cleanups.append(host.stop)
    env.extra["tls_host"] = host
    env.mp.setenv("SSL_CERT_FILE", str(cert.cert_path))
    net = env.sections["network"]
    net.update(payment_hosts=[host.address], tls=True, high_latency_ms=50.0, latency_window=5)


def setup_card_reader(env: Env) -> None:
    env.extra["card"] = card_reader(env.term.dev / "ttyACM0", sys_root=env.term.sys)


# --------------------------------------------------------------------------- the table


Action = Callable[[Env], None]


def _noop(env: Env) -> None:
    pass


@dataclass(frozen=True)
class Case:
    """How one fault is injected and removed, and which monitors see it."""

    path: str
    inject: Action
    remove: Action
    monitors: tuple[str, ...] = ()
    build: Callable[[Env], list[Monitor]] | None = None
    setup: Action = _noop
    dt: float = 10.0
    subject: str | None = None


def _power(**attrs: Any) -> Action:
    return lambda env: env.term.power.set("BAT0", **attrs)


def _printer(**state: Any) -> Action:
    def act(env: Env) -> None:
        assert env.term.printer is not None
        env.term.printer.set_state(**state)

    return act


def _prn(env: Env) -> Any:
    assert env.term.printer is not None
    return env.term.printer


def _pad(env: Env) -> Any:
    assert env.term.pinpad is not None
    return env.term.pinpad


PRINTER = ("printer:receipt",)
SIM_POWER = "power monitor on the fake sysfs power_supply tree (SimPower)"
PTY_PRINTER = "printer monitor, DLE EOT over the pty printer twin (SimPrinter)"
PTY_PAD = "serial monitor on the pty PIN pad with sysfs USB identity"

CASES: dict[str, Case] = {
    # power
    "power.ac_lost": Case(
        SIM_POWER,
        lambda e: e.term.power.set_ac(False),
        lambda e: e.term.power.set_ac(True),
        ("power",),
    ),
    "power.battery_low": Case(SIM_POWER, _power(capacity=12), _power(capacity=80), ("power",)),
    "power.battery_critical": Case(SIM_POWER, _power(capacity=3), _power(capacity=80), ("power",)),
    "power.not_charging": Case(
        SIM_POWER, _power(status="Not charging"), _power(status="Charging"), ("power",), dt=60.0
    ),
    "power.battery_health": Case(
        SIM_POWER, _power(health="Dead"), _power(health="Good"), ("power",)
    ),
    "power.battery_hot": Case(SIM_POWER, _power(temp=500), _power(temp=300), ("power",)),
    # network
    "network.link_down": Case(
        "link monitor on the fake <sys>/class/net tree (SimNet)",
        lambda e: e.term.net.set_link("eth0", carrier=False),
        lambda e: e.term.net.set_link("eth0", carrier=True),
        ("network",),
        subject="eth0",
    ),
    "network.no_route": Case(
        "link monitor on the fake <proc>/net/route tree (SimNet)",
        lambda e: e.term.net.set_routes([]),
        lambda e: e.term.net.set_routes([DEFAULT_ROUTE]),
        ("network",),
    ),
    "network.host_unreachable": Case(
        "payment monitor, TCP connect to the loopback SimHost (refusing, then answering)",
        lambda e: e.term.host.set_mode("refuse"),
        lambda e: e.term.host.set_mode("ok"),
        ("payment",),
    ),
    "network.high_latency": Case(
        "payment monitor, TCP + TLS handshake to a loopback TLS SimHost answering slowly",
        lambda e: e.extra["tls_host"].set_mode("slow", delay_s=0.08),
        lambda e: e.extra["tls_host"].set_mode("ok"),
        ("payment",),
        setup=setup_tls_host,
        dt=60.0,
    ),
    # printer
    "printer.absent": Case(
        PTY_PRINTER + ": unplugged",
        lambda e: _prn(e).unplug(),
        lambda e: _prn(e).replug(),
        PRINTER,
    ),
    "printer.no_reply": Case(
        PTY_PRINTER + ": silent",
        lambda e: _prn(e).set_mode("silent"),
        lambda e: _prn(e).set_mode("normal"),
        PRINTER,
    ),
    "printer.offline": Case(PTY_PRINTER, _printer(offline=True), _printer(offline=False), PRINTER),
    "printer.cover_open": Case(
        PTY_PRINTER, _printer(cover_open=True), _printer(cover_open=False), PRINTER
    ),
    "printer.paper_end": Case(PTY_PRINTER, _printer(paper="end"), _printer(paper="ok"), PRINTER),
    "printer.cutter_error": Case(
        PTY_PRINTER, _printer(cutter_error=True), _printer(cutter_error=False), PRINTER
    ),
    "printer.unrecoverable": Case(
        PTY_PRINTER, _printer(unrecoverable=True), _printer(unrecoverable=False), PRINTER
    ),
    "printer.overheat": Case(
        PTY_PRINTER, _printer(overheat=True), _printer(overheat=False), PRINTER
    ),
    "printer.paper_near_end": Case(
        PTY_PRINTER, _printer(paper="near_end"), _printer(paper="ok"), PRINTER
    ),
    "printer.drawer_open_too_long": Case(
        PTY_PRINTER, _printer(drawer_high=True), _printer(drawer_high=False), PRINTER, dt=30.0
    ),
    # serial
    "serial.missing": Case(
        PTY_PAD + ": unplugged",
        lambda e: _pad(e).unplug(),
        lambda e: _pad(e).replug(),
        ("serial:pinpad",),
    ),
    "serial.identity_changed": Case(
        PTY_PAD + ": another USB identity plugged into the same port",
        lambda e: _pad(e).swap(OTHER_PAD),
        lambda e: _pad(e).swap(
            dataclasses.replace(OTHER_PAD, vid=0x0403, pid=0x6001, serial="PP000123")
        ),
        ("serial:pinpad",),
    ),
    "serial.unexpected_device": Case(
        "peripherals monitor: a CDC-ACM card reader twin appears in the fake /dev + sysfs",
        lambda e: e.extra["card"].start(),
        lambda e: e.extra["card"].stop(),
        ("peripherals",),
        setup=setup_card_reader,
        subject="0801:0003:CR42",
    ),
    "serial.no_reply": Case(
        PTY_PAD + ": probe unanswered",
        lambda e: _pad(e).set_mode("silent"),
        lambda e: _pad(e).set_mode("normal"),
        ("serial:pinpad",),
    ),
    # system
    "system.disk_low": Case(
        "system monitor, psutil.disk_usage on a real 4 MiB tmpfs being filled (root)",
        fill_disk,
        lambda e: (e.extra["mnt"] / "fill").unlink(),
        ("system",),
        setup=setup_tmpfs,
    ),
    "system.memory_low": Case(
        "system monitor, psutil reading a simulated procfs meminfo (PROCFS_PATH)",
        lambda e: e.extra["fakeproc"].set_available_pct(4.0),
        lambda e: e.extra["fakeproc"].set_available_pct(80.0),
        build=fake_proc_system,
        setup=setup_fake_proc,
    ),
    "system.cpu_saturated": Case(
        "system monitor, psutil.cpu_percent over a simulated procfs stat (PROCFS_PATH)",
        lambda e: setattr(e.extra["sysmon"], "busy", True),
        lambda e: setattr(e.extra["sysmon"], "busy", False),
        build=fake_proc_system,
        setup=setup_fake_proc,
        dt=30.0,
    ),
    "system.clock_unsynced": Case(
        "system monitor, `timedatectl show -p NTPSynchronized` through Shell (fake on PATH)",
        lambda e: e.extra["ntp"].write_text("no"),
        lambda e: e.extra["ntp"].write_text("yes"),
        build=timedatectl_system,
        setup=setup_timedatectl,
    ),
    "system.clock_jump": Case(
        "system monitor, real wall/boottime offset plus an injected step",
        lambda e: e.extra.__setitem__("jump_s", 3600.0),
        _noop,  # the next reading sees no further step
        build=jump_system,
    ),
    # app
    "app.not_running": Case(
        "app monitor, psutil finding a real child process named APP",
        kill_posapp,
        lambda e: start_posapp(e) and None,
        build=app_monitor,
        setup=setup_app,
    ),
    "app.crash_loop": Case(
        "app monitor, the real child process killed and restarted 3 times",
        lambda e: restart_posapp(e, 3),
        _noop,  # restarts age out of the 10-min window (fake clock)
        build=app_monitor,
        setup=setup_app,
        dt=60.0,
    ),
    "app.hung": Case(
        "app monitor, heartbeat file mtime (os.utime) of a running posapp",
        lambda e: os.utime(e.extra["hb"], (time.time() - 300, time.time() - 300)),
        lambda e: e.extra["hb"].touch(),
        build=app_monitor,
        setup=setup_heartbeat,
    ),
    # adb
    "adb.offline": Case(
        "adb monitor, `adb get-state` of the fake adb (device dropped off)",
        lambda e: e.extra["adb"].drop(),
        lambda e: e.extra["adb"].set(state="device"),
        build=adb_monitor,
        setup=lambda e: setup_adb(e, restore=False),
    ),
    "agent.monitor_failed": Case(
        "power monitor on target adb: `dumpsys battery` fails while the device is gone",
        lambda e: e.extra["adb"].drop(),
        lambda e: e.extra["adb"].set(state="device"),
        build=adb_power_monitor,
        setup=lambda e: setup_adb(e, restore=False),
        subject="power",
    ),
}

# <area>.flapping: the area's fault above, toggled until the area flaps.
FLAP_BASE = {
    "power.flapping": "power.battery_health",
    "network.flapping": "network.link_down",
    "printer.flapping": "printer.absent",
    "serial.flapping": "serial.missing",
    "system.flapping": "system.clock_unsynced",
    "app.flapping": "app.not_running",
    "adb.flapping": "adb.offline",
    "agent.flapping": "agent.monitor_failed",
}

# Keys with their own test function below.
SPECIAL = {
    "network.dns_failure": "test_dns_failure_in_netns",
    "power.unclean_shutdown": "test_one_shot_events",
    "app.crash_report": "test_one_shot_events",
    "app.anr": "test_one_shot_events",
    "app.log_error": "test_one_shot_events",
    "manual.report": "test_one_shot_events",
    "upload.auth_failed": "test_upload_auth_failed",
    "upload.flapping": "test_upload_auth_failed",
}


def test_table_covers_catalog() -> None:
    """Every catalog key has a case (monitor path, flapping, or a dedicated test)."""
    keys = {r.key for r in CATALOG}
    covered = set(CASES) | set(FLAP_BASE) | set(SPECIAL)
    assert keys - covered == set()
    assert covered - keys == set()
    for key, base in FLAP_BASE.items():
        assert base in CASES and base.split(".")[0] == key.split(".")[0]
    assert all(r.kind is Kind.FLAPPING for r in CATALOG if r.key in FLAP_BASE)


# --------------------------------------------------------------------------- running a case


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    term = MonitorRig(tmp_path)
    e = Env(tmp_path, term, FakeClock(), monkeypatch)
    e.sections = term.sections()
    try:
        yield e
    finally:
        for fn in reversed(e.cleanups):
            with contextlib.suppress(Exception):
                fn()
        for key in ("card",):
            if key in e.extra:
                with contextlib.suppress(Exception):
                    e.extra[key].stop()
        term.close()


def prepare(env: Env, key: str, case: Case) -> None:
    case.setup(env)
    env.cfg = env.term.config(env.sections)
    env.dt = case.dt
    env.start(case.build(env) if case.build else pick(env, *case.monitors))
    for _ in range(3):  # healthy warm-up: nothing of this case's key may be raised
        assert not [ev for ev in env.poll() if ev.state is FaultState.RAISED and ev.key == key]


def raise_and_clear(env: Env, key: str, case: Case) -> tuple[FaultEvent, FaultEvent]:
    case.inject(env)
    raised = env.until(key, FaultState.RAISED)
    case.remove(env)
    cleared = env.until(key, FaultState.CLEARED, max_polls=40 if key == "app.crash_loop" else 15)
    return raised, cleared


@pytest.mark.parametrize("key", sorted(CASES))
def test_fault_raised_and_cleared(env: Env, key: str) -> None:
    """Injecting the fault in its twin raises exactly this key; removing it clears it."""
    case = CASES[key]
    prepare(env, key, case)
    raised, cleared = raise_and_clear(env, key, case)
    if case.subject is not None:
        assert raised.subject == case.subject
    assert cleared.subject == raised.subject
    assert raised.readings, "a raised fault carries the readings behind it"
    assert cleared.raised_at == raised.raised_at
    assert key not in {e.key for e in env.eng.active()}


@pytest.mark.parametrize("key", sorted(FLAP_BASE))
def test_area_flapping(env: Env, key: str) -> None:
    """Toggling the area's fault six times raises <area>.flapping; a quiet period clears it."""
    base = FLAP_BASE[key]
    case = CASES[base]
    prepare(env, base, case)
    flap: FaultEvent | None = None
    for _ in range(4):
        case.inject(env)
        env.until(base, FaultState.RAISED)
        case.remove(env)
        before = len(env.events)
        for _ in range(15):
            env.poll()
            news = env.events[before:]
            flap = next((e for e in news if e.key == key and e.state is FaultState.RAISED), None)
            if flap is not None or any(e.key == base for e in news):
                break
        if flap is not None:
            break
    assert flap is not None, [(e.key, e.state.value) for e in env.events]
    env.dt = 100.0
    cleared = env.until(key, FaultState.CLEARED, max_polls=6)
    assert cleared.subject == flap.subject
    assert not [e for e in env.eng.active() if e.key in (key, base)]


# --------------------------------------------------------------------------- DNS in a namespace

_DNS_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from agent.core.config import NetworkConfig
from agent.monitors.network import PaymentMonitor
m = PaymentMonitor(NetworkConfig(payment_hosts=["pay.posagent.test:443"],
                                 dns_timeout_s=0.5, connect_timeout_s=0.3))
for line in sys.stdin:
    r = m.poll()[0]
    print(json.dumps({"source": r.source, "values": r.values}), flush=True)
"""


def test_dns_failure_in_netns(env: Env) -> None:
    """network.dns_failure through getaddrinfo in a namespace whose /etc/hosts we edit (root)."""
    if not is_root():
        pytest.skip("needs root to create a network namespace")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` not installed")
    ns = f"pa-dns-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("`ip netns add` failed")
    etc = Path("/etc/netns") / ns
    env.cleanups.append(lambda: subprocess.run(["ip", "netns", "del", ns], check=False))
    env.cleanups.append(lambda: shutil.rmtree(etc, ignore_errors=True))
    etc.mkdir(parents=True)
    hosts = etc / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 pay.posagent.test\n")
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _DNS_CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    env.cleanups.append(child.kill)
    env.cfg = env.term.config(env.sections)
    env.start([])
    assert child.stdin is not None and child.stdout is not None

    def poll() -> list[FaultEvent]:
        env.clock.advance(10)
        child.stdin.write("poll\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        line = child.stdout.readline()  # type: ignore[union-attr]
        if not line:
            err = child.stderr.read() if child.stderr else ""
            if "mount" in err.lower():
                pytest.skip(f"`ip netns exec` cannot set up the namespace's /etc: {err.strip()}")
            raise AssertionError(f"namespace child died: {err}")
        import json

        d = json.loads(line)
        return env.eng.feed(Reading(d["source"], d["values"]))

    def until(state: FaultState) -> FaultEvent:
        for _ in range(6):
            for ev in poll():
                if ev.key == "network.dns_failure" and ev.state is state:
                    return ev
        raise AssertionError(f"no {state.value} network.dns_failure")

    for _ in range(2):
        assert not poll()
    hosts.write_text("127.0.0.1 localhost\n")  # the name no longer resolves (no DNS server)
    raised = until(FaultState.RAISED)
    assert raised.subject == "pay.posagent.test:443"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 pay.posagent.test\n")
    cleared = until(FaultState.CLEARED)
    assert cleared.subject == raised.subject


# --------------------------------------------------------------------------- one-shot events


def _wait(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_one_shot_events(env: Env) -> None:
    """Run marker and watchers raise each one-shot key once; nothing stays active or repeats."""
    from agent.daemon.lifecycle import RunMarker
    from agent.monitors.watch import CrashDirWatcher, LogTailer, TriggerDirWatcher, WatchedDir

    env.cfg = env.term.config(env.sections)
    env.start([])
    got: list[FaultEvent] = []

    def fire(key: str, subject: str) -> None:
        ev = env.eng.event(key, subject=subject)
        assert ev is not None
        got.append(ev)

    # power.unclean_shutdown: a run that never stopped cleanly, found at the next start
    marker = RunMarker(env.tmp / "state", env.term.proc)
    marker.start()
    if RunMarker(env.tmp / "state", env.term.proc).check_previous() is not None:
        fire("power.unclean_shutdown", "")
    marker.clean_stop()
    assert RunMarker(env.tmp / "state", env.term.proc).check_previous() is None

    # app.crash_report / app.anr: new files in watched dirs
    crash, anr = env.tmp / "crash", env.tmp / "anr"
    crash.mkdir()
    anr.mkdir()
    watcher = CrashDirWatcher(
        [WatchedDir(crash, "app.crash_report"), WatchedDir(anr, "app.anr")],
        lambda key, path: fire(key, path.name),
        env.tmp / "watch-state.json",
        settle_s=0.05,
        rescan_s=0.1,
    )
    watcher.start()
    env.cleanups.append(watcher.stop)
    time.sleep(0.2)
    (crash / "core.1234").write_text("crash")
    (anr / "anr_2024").write_text("anr")
    _wait(lambda: {"app.crash_report", "app.anr"} <= {e.key for e in got})
    time.sleep(0.3)  # further rescans must not report the same files again

    # app.log_error: a matching line appended to a followed log
    log = env.tmp / "pos.log"
    log.write_text("started\n")
    tailer = LogTailer([log], [r"ERROR"], lambda path, line: fire("app.log_error", path.name))
    tailer.prime()
    with log.open("a") as f:
        f.write("ERROR printer timeout\nok line\n")
    assert tailer.poll() == 1

    # manual.report: a file dropped into the trigger dir
    trig = env.tmp / "trigger"
    trig.mkdir()
    tw = TriggerDirWatcher(trig, lambda rep: fire("manual.report", ""), settle_s=0.05, rescan_s=0.1)
    tw.start()
    env.cleanups.append(tw.stop)
    (trig / "report.txt").write_text("printer jams\ncontact: 555-0100\n")
    _wait(lambda: "manual.report" in {e.key for e in got})
    _wait(lambda: not (trig / "report.txt").exists())

    keys = [e.key for e in got]
    for key in (
        "power.unclean_shutdown",
        "app.crash_report",
        "app.anr",
        "app.log_error",
        "manual.report",
    ):
        assert keys.count(key) == 1, keys
    assert all(e.state is FaultState.RAISED for e in got)
    assert env.eng.active() == []  # one-shot: raised, never held, nothing left to clear


# --------------------------------------------------------------------------- uploader condition


class _Collector(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_PUT(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_upload_auth_failed(env: Env) -> None:
    """The real Uploader against a loopback collector: 401 raises, 201 clears; toggling flaps."""
    from agent.spool.maildir import Spool
    from agent.upload.uploader import Uploader
    from tests.bundle.kit import small_bundle

    handler = type("H", (_Collector,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env.cleanups.append(server.shutdown)
    env.sections["upload"] = {
        "endpoint": f"http://127.0.0.1:{server.server_address[1]}",
        "token": "secret-device-token",
        "token_file": "",
    }
    env.cfg = env.term.config(env.sections)
    env.start([])
    spool = Spool(env.tmp / "state").open()

    def cond(key: str, bad: bool, summary: str = "") -> None:
        env.clock.advance(10)
        env.events.extend(env.eng.set_condition(key, "", bad, summary))

    up = Uploader(env.cfg, spool, on_condition=cond)
    n = 0

    def cycle(status: int) -> None:
        nonlocal n
        n += 1
        handler.status = status
        b = small_bundle(f"cycle {n}")
        spool.enqueue(b.bundle_id, b.data, 1)
        up.drain_once(deadline_s=5)

    cycle(401)
    raised = [e for e in env.events if e.key == "upload.auth_failed"]
    assert [e.state for e in raised] == [FaultState.RAISED]
    cycle(201)
    assert [e.state for e in env.events if e.key == "upload.auth_failed"][-1] is FaultState.CLEARED
    for _ in range(3):
        cycle(401)
        cycle(201)
        if any(e.key == "upload.flapping" for e in env.events):
            break
    flaps = [e for e in env.events if e.key == "upload.flapping"]
    assert flaps and flaps[0].state is FaultState.RAISED
    env.clock.advance(400)
    assert [e.state for e in env.eng.tick() if e.key == "upload.flapping"] == [FaultState.CLEARED]

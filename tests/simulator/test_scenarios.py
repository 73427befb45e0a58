"""The scenario library end to end (agent and collector as real subprocesses), and its machinery.

Each file under simulator/scenarios/ runs through `simulator.scenario.run`:
the simulated terminal's twins, `posagent collector serve` behind the
cuttable NetCut proxy, and `posagent run`; every expectation must pass.
The machinery (loader validation, NetCut, SimTerminal actions, config
rendering) is tested on its own with real sockets and files.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from simulator.netcut import NetCut
from simulator.scenario import SCENARIO_DIR, ScenarioError, load, run
from simulator.terminal import SimError, SimTerminal, merge_sections, render_toml
from tests.conftest import wait_until

SCENARIOS = sorted(SCENARIO_DIR.glob("*.toml"))


def _host_skip_reason(path: Path) -> str:
    """Why this host cannot run the scenario honestly ('' when it can)."""
    sc = load(path)
    if sc.disk_mib > 0 and os.geteuid() != 0:
        return "the scenario's disk twin mounts a tmpfs, which needs root"
    if sc.netns:
        from simulator.netns import netns_unavailable

        reason = netns_unavailable()
        if reason:
            return f"the scenario runs the agent in a network namespace: {reason}"
    if sc.fake_clock:
        from simulator.clock import find_libfaketime

        if find_libfaketime() is None:
            return "libfaketime not installed"
    if path.stem == "system_clock_unsynced":
        from drivers.system import adjtimex_sync

        if adjtimex_sync().synced is not False:
            return "this host's clock is NTP-synced (adjtimex), so clock_unsynced cannot be shown"
    return ""


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_passes(path: Path, tmp_path: Path) -> None:
    """Every expectation of the scenario holds against the real agent and collector."""
    reason = _host_skip_reason(path)
    if reason:
        pytest.skip(reason)
    result = run(load(path), tmp_path / "run")
    lines = [f"{'PASS' if e.passed else 'FAIL'} {e.describe()}: {e.detail}" for e in result.expects]
    assert result.passed, "\n".join([result.error, *lines, *result.log_tail[-15:]])


# Catalog keys beyond docs/ARCHITECTURE.md §8 that no scenario raises, and where each is shown instead.
NOT_IN_LIBRARY = {
    "adb.offline": "target adb only: tests/e2e/test_android.py (fake adb dropping the device)",
    "agent.monitor_failed": "a monitor that raises on every poll: tests/daemon/test_runner.py",
    **{
        f"{area}.flapping": "the flapping rule shared by every area: tests/faults/test_engine_features.py"
        " (printer and network flapping are also scenarios)"
        for area in ("power", "serial", "system", "app", "upload", "agent", "adb")
    },
}


def test_library_covers_the_whole_catalog() -> None:
    """Every catalog key is raised by some scenario, except the few listed with where they are shown."""
    from agent.faults.catalog import CATALOG

    raised = set()
    for p in SCENARIOS:
        raised |= {e.key for e in load(p).expects if e.kind == "raised"}
    keys = {rule.key for rule in CATALOG}
    assert set(NOT_IN_LIBRARY) <= keys, sorted(set(NOT_IN_LIBRARY) - keys)
    assert keys - set(NOT_IN_LIBRARY) <= raised, sorted(keys - set(NOT_IN_LIBRARY) - raised)


def test_cli_runs_a_scenario_and_exits_by_verdict(tmp_path: Path) -> None:
    """`python -m simulator run` prints PASS per expectation and exits 0; a failing one exits 1."""
    good = tmp_path / "good.toml"
    good.write_text(
        'name = "pad"\ntimeout_s = 6\ncollector = false\n'
        '[[step]]\nat_s = 0.2\ndevice = "pinpad"\nset = {plugged = false}\n'
        '[[expect]]\nraised = "serial.missing"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "never"\ntimeout_s = 2\ncollector = false\n[[expect]]\nraised = "power.ac_lost"\n'
    )
    root = Path(__file__).resolve().parents[2]
    ok = subprocess.run(
        [sys.executable, "-m", "simulator", "run", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS  raised serial.missing" in ok.stdout
    ko = subprocess.run(
        [sys.executable, "-m", "simulator", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert ko.returncode == 1
    assert "FAIL  raised power.ac_lost: no raised event for power.ac_lost" in ko.stdout


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[expect]]\nraised = "a.b"\n[[step]]\ndevice = "toaster"\nset = {x = 1}\n',
            "unknown device",
        ),
        (
            '[[step]]\ndevice = "printer"\nset = {colour = "red"}\n[[expect]]\nraised = "a"\n',
            "no setting",
        ),
        ('[[expect]]\nraised = "a"\ncleared = "b"\n', "exactly one"),
        ('[[expect]]\nbundle = "a"\nsize = 3\n', "unknown keys"),
        ('[[expect]]\nraised = "a"\nbefore_step = 4\n', "not a step"),
        ('name = "x"\n', "no [[expect]]"),
        ('speed = 3\n[[expect]]\nraised = "a"\n', "unknown keys"),
        ("= broken", "Invalid"),
    ],
)
def test_loader_rejects_bad_files(tmp_path: Path, body: str, message: str) -> None:
    """A malformed scenario is a ScenarioError naming the file and the problem."""
    p = tmp_path / "s.toml"
    p.write_text(body)
    with pytest.raises(ScenarioError, match=re.escape(message)) as info:
        load(p)
    assert str(p) in str(info.value)


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def echo(c: socket.socket) -> None:
        with c, contextlib.suppress(OSError):  # a reset by the cut ends this connection only
            while data := c.recv(1024):
                c.sendall(data.upper())

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_netcut_relays_cuts_and_restores() -> None:
    """Through NetCut bytes flow; cut() refuses and resets; restore() serves on the same port."""
    srv, _ = _echo_server()
    with srv, NetCut("127.0.0.1", srv.getsockname()[1]) as cut:
        port = cut.port
        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
            c.sendall(b"hello")
            assert c.recv(16) == b"HELLO"
            cut.cut()
            c.settimeout(2)
            try:
                got = c.recv(16)
            except ConnectionResetError:
                got = b""
            assert got == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        cut.restore()
        assert cut.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
            c.sendall(b"back")
            assert c.recv(16) == b"BACK"
        assert cut.relayed == 2


def test_terminal_actions_change_the_twins(tmp_path: Path) -> None:
    """apply() reaches each twin (sysfs power, link, routes, pty printer, trigger file) and rejects unknowns."""
    with SimTerminal(tmp_path) as term:
        term.apply("power", {"ac_online": False, "capacity": 9})
        psu = term.sys / "class" / "power_supply"
        assert (psu / "AC" / "online").read_text().strip() == "0"
        assert (psu / "BAT0" / "capacity").read_text().strip() == "9"
        term.apply("network", {"carrier": False, "default_route": False})
        assert (term.sys / "class" / "net" / "eth0" / "carrier").read_text().strip() == "0"
        assert len((term.proc / "net" / "route").read_text().splitlines()) == 1
        term.apply("printer", {"paper": "end"})
        assert term.printer is not None and term.printer.state.paper == "end"
        term.apply("pinpad", {"plugged": False})
        assert not (term.dev / "ttyUSB0").exists()
        term.apply("trigger", {"note": "drawer stuck", "contact": "Bo"})
        (report,) = list(term.trigger_dir.iterdir())
        assert report.read_text() == "drawer stuck\ncontact: Bo\n"
        with pytest.raises(SimError, match="unknown device"):
            term.apply("toaster", {"on": True})
        with pytest.raises(SimError, match="no setting"):
            term.apply("printer", {"colour": "red"})


def test_pos_app_twin_stops_restarts_and_hangs(tmp_path: Path) -> None:
    """The app twin is a real `posapp` process: killed it is gone, restarted it has a new pid, hung it is stopped and its heartbeat ages."""
    import time

    import psutil

    with SimTerminal(tmp_path, pos_app=True, printer=False, pinpad=False) as term:
        app = term.pos_app
        assert app is not None and app.proc is not None
        first = app.proc.pid
        assert psutil.Process(first).name() == "posapp"
        assert int(app.pid_file.read_text()) == first
        term.apply("app", {"running": False})
        assert not psutil.pid_exists(first)
        term.apply("app", {"restart": True})
        assert app.proc is not None and app.proc.pid != first
        assert int(app.pid_file.read_text()) == app.proc.pid
        term.apply("app", {"hung": True})
        proc = psutil.Process(app.proc.pid)
        # signal delivery is asynchronous, and a process in uninterruptible sleep stops
        # only when that sleep ends: poll until the kernel reports it stopped (hang() stops
        # the shell alone: a group stop could catch its vfork child before exec and hold
        # the shell in "disk-sleep" for good, as CI saw)
        assert wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, 60.0), proc.status()
        mtime = app.heartbeat_file.stat().st_mtime
        # hung: the heartbeat does not move while the process is stopped
        time.sleep(0.5)
        assert app.heartbeat_file.stat().st_mtime == mtime
        term.apply("app", {"hung": False})
        # resumed: a fresh heartbeat arrives
        assert wait_until(lambda: app.heartbeat_file.stat().st_mtime > mtime, 10.0)
        pid = app.proc.pid
    assert not psutil.pid_exists(pid)


def test_agent_config_renders_as_valid_toml(tmp_path: Path) -> None:
    """The terminal's agent sections, merged with overrides, render to TOML the agent accepts."""
    from agent.core.config import parse_config

    with SimTerminal(tmp_path) as term:
        sections = merge_sections(
            term.agent_sections("http://127.0.0.1:9", str(tmp_path / "token")),
            {"printer": [{"interval_s": 0.25}], "faults": {"power.ac_lost": {"raise_after": 1.0}}},
        )
        text = render_toml(sections)
        doc = tomllib.loads(text)
        assert doc["printer"][0]["interval_s"] == 0.25
        assert doc["printer"][0]["device"] == "/dev/ttyS0"
        cfg = parse_config(text, "sim.toml")
        assert cfg.network.payment_hosts == [term.host.address]
        assert cfg.faults["power.ac_lost"].raise_after == 1.0
        assert cfg.faults["system.clock_unsynced"].enabled is False

"""The daemon under a real NOTIFY_SOCKET: READY, WATCHDOG, STATUS, reload, stop, unclean restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.config import load_config
from agent.core.model import Reading
from agent.daemon.sdnotify import Notifier
from tests.conftest import posagent_argv, quick_config, wait_until


@pytest.fixture
def payment_port() -> Iterator[int]:
    """A loopback TCP listener standing in for the payment host."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield port
    stop.set()
    t.join(2)
    srv.close()


def daemon_config(tmp: Path, port: int, extra: str = "") -> Path:
    """A quick config whose payment host is the loopback listener."""
    return quick_config(tmp, [f"127.0.0.1:{port}"], extra)


class NotifySocket:
    """A real AF_UNIX datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(
        self, field: str, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None
    ) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode} before {field!r}")
            for m in self.messages:
                if field in m.split("\n") or any(line.startswith(field) for line in m.split("\n")):
                    return m
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no {field!r} within {timeout_s} s; got {self.messages}")

    def drain(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return

    def close(self) -> None:
        self.sock.close()


def start_daemon(cfg: Path, notify: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "2000000",
    }
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        posagent_argv("run", "--config", str(cfg)),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.slow
def test_ready_watchdog_status_reload_and_clean_stop(tmp_path: Path, payment_port: int) -> None:
    """READY, WATCHDOG pings and STATUS; SIGHUP reloads (a bad config is kept out); SIGTERM stops cleanly in 10 s."""
    cfg = daemon_config(tmp_path, payment_port)
    notify = NotifySocket(tmp_path / "notify.sock")
    log = tmp_path / "agent.log"
    t0 = time.monotonic()
    proc = start_daemon(cfg, notify, log)
    try:
        ready = notify.wait_for("READY=1", proc=proc)
        ready_s = time.monotonic() - t0
        assert f"MAINPID={proc.pid}" in ready
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("STATUS=")
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["state"] == "running" and status["pid"] == proc.pid
        st = subprocess.run(
            posagent_argv("status", "--config", str(cfg), "--json"), capture_output=True, text=True
        )
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["device_id"] == "T-TEST"

        # an invalid config on SIGHUP keeps the old one
        good = cfg.read_text()
        cfg.write_text(good + "\n[network]\nbogus = 1\n")
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        time.sleep(0.5)
        assert proc.poll() is None
        assert "config_reload_rejected" in log.read_text()
        # a valid one is applied
        cfg.write_text(good.replace('site = "Test Store"', 'site = "Reloaded Store"'))
        notify.messages.clear()
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        deadline = time.monotonic() + 10
        while "config_reloaded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "config_reloaded" in log.read_text()
        assert proc.poll() is None

        notify.messages.clear()
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 10) == 0
        assert time.monotonic() - t_stop < 10
        notify.wait_for("STOPPING=1", 2)
        assert not (tmp_path / "state" / "running.json").exists()
        assert ready_s < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


@pytest.mark.slow
def test_kill9_then_restart_yields_unclean_shutdown_bundle(
    tmp_path: Path, payment_port: int
) -> None:
    """kill -9, an outage longer than the flight recorder's window, restart: the unclean-shutdown
    bundle carries the readings from before the cut (cut at the last persisted reading, not
    at now), and the last of them is at most 5 s older than the kill (the journal interval)."""
    window_s = 6.0
    cfg = daemon_config(tmp_path, payment_port, "timeline_minutes = 0.1")
    notify = NotifySocket(tmp_path / "notify.sock")
    log = tmp_path / "agent.log"
    journal = tmp_path / "state" / "recorder.journal"
    proc = start_daemon(cfg, notify, log)
    try:
        notify.wait_for("READY=1")
        t_ready = time.time()
        # a few journal flushes, the last of them at a moment the kill does not choose
        assert wait_until(lambda: journal.exists() and journal.stat().st_size > 0, 15)
        wait_until(lambda: time.time() > t_ready + 6.5, 10)
        proc.kill()
        t_kill = time.time()
        proc.wait()
        # the outage: longer than the window, so a cut at now - window would hold nothing
        assert wait_until(lambda: time.time() > t_kill + window_s + 2.0, 15)
        notify.messages.clear()
        t_restart = time.time()
        proc = start_daemon(cfg, notify, log)
        notify.wait_for("READY=1")
        new = tmp_path / "state" / "spool" / "new"

        def unclean_bundle() -> Path | None:
            for f in new.glob("*.zip"):
                r = subprocess.run(
                    posagent_argv("bundle", "show", "--json", "--config", str(cfg), str(f)),
                    capture_output=True,
                    text=True,
                )
                key = json.loads(r.stdout)["manifest"]["trigger"]["key"] if r.stdout else ""
                if r.returncode == 0 and key == "power.unclean_shutdown":
                    return f
            return None

        found = wait_until(unclean_bundle, 20, step_s=0.3)
        assert found is not None, log.read_text()[-3000:]
        with zipfile.ZipFile(found) as z:
            m = json.loads(z.read("manifest.json"))
            timeline = json.loads(z.read("timeline.json"))
        assert m["trigger"]["kind"] == "startup"
        before = [r["ts"] for r in timeline["readings"] if r["ts"] < t_kill]
        assert before, "the readings from before the cut travel in the bundle"
        assert all(ts < t_restart - window_s for ts in before)  # the old cut dropped them all
        assert t_kill - max(before) <= 5.0, (
            f"last persisted reading {t_kill - max(before):.2f} s before the kill"
        )
        assert max(before) - min(before) >= 4.0  # a window, not one flush
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_stuck_loop_stops_watchdog_pings(tmp_path: Path, payment_port: int) -> None:
    """While the engine loop is stuck, WATCHDOG=1 is withheld; once it moves again, pings resume."""
    from agent.daemon.runner import Agent, Daemon

    cfg = load_config(daemon_config(tmp_path, payment_port))
    notify = NotifySocket(tmp_path / "wd.sock")
    d = Daemon(None, notifier=Notifier(str(notify.path)))
    d.stuck_after_s = 1.5
    agent = Agent(cfg)
    agent.start()
    try:
        assert d.watchdog_tick(agent, time.monotonic())
        notify.wait_for("WATCHDOG=1", 2)
        agent.engine._lock.acquire()  # the engine loop blocks in feed(): stuck
        try:
            agent.readings.put(Reading("power", {"ac_online": True}))
            time.sleep(3.0)
            agent.uploader.wake()  # the idle uploader beats every 15 s; make it beat now
            time.sleep(0.3)
            notify.messages.clear()
            assert not d.watchdog_tick(agent, time.monotonic())
            notify.drain()
            assert not any("WATCHDOG=1" in m for m in notify.messages)
        finally:
            agent.engine._lock.release()
        time.sleep(1.2)
        agent.uploader.wake()
        time.sleep(0.3)
        assert d.watchdog_tick(agent, time.monotonic())
        notify.wait_for("WATCHDOG=1", 2)
    finally:
        agent.stop()
        notify.close()


def test_survives_a_monitor_that_raises_every_poll(tmp_path: Path, payment_port: int) -> None:
    """A monitor raising on every poll yields ok=False readings and agent.monitor_failed; the rest keep running."""
    from agent.daemon.runner import Agent
    from agent.monitors import register, unregister

    class Boom:
        name = "boom"
        interval_s = 0.1
        timeout_s = 1.0

        def poll(self) -> list[Reading]:
            raise RuntimeError("device exploded")

    register("boom")(lambda cfg, ctx: [Boom()])
    try:
        cfg = load_config(daemon_config(tmp_path, payment_port))
        agent = Agent(cfg)
        agent.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                keys = {f.key for f in agent.engine.active()}
                if "agent.monitor_failed" in keys and "power" in agent.last:
                    break
                time.sleep(0.2)
            assert "agent.monitor_failed" in {f.key for f in agent.engine.active()}
            assert agent.last["boom"].ok is False and "device exploded" in agent.last["boom"].error
            assert any(src.startswith("payment:") for src in agent.last)
            boom = next(m for m in agent.status()["monitors"] if m["name"] == "boom")
            assert boom["failures"] >= 3
        finally:
            agent.stop()
    finally:
        unregister("boom")


def test_trigger_file_is_removed_only_once_its_bundle_is_captured(
    tmp_path: Path, payment_port: int
) -> None:
    """A trigger file goes only after its manual.report bundle is in the spool: a power cut
    between the two must not lose the merchant's report (the qemu power-cut family lost 89
    of 125 when the file went first). Seen from outside: whenever the file is gone, the
    bundle is already in new/."""
    from agent.bundle.format import BundleReader
    from agent.daemon.runner import Agent

    trigger = tmp_path / "trigger"
    trigger.mkdir()
    extra = f'trigger_dir = "{trigger}"\n'  # lands in quick_config's [capture]
    cfg = load_config(daemon_config(tmp_path, payment_port, extra))
    agent = Agent(cfg)
    agent.start()
    try:
        note = "till 3 drawer stuck"
        (trigger / "drawer").write_text(note + "\n")
        assert wait_until(lambda: not (trigger / "drawer").exists(), 30), "file never handled"
        notes = []
        for path in (Path(cfg.agent.state_dir) / "spool" / "new").glob("*.zip"):
            with BundleReader(path) as r:
                notes.append(r.manifest()["trigger"].get("note"))
        assert note in notes, notes
    finally:
        agent.stop()

"""Daemon figures: start to READY with 10,000 queued, idle RSS and CPU, fault → bundle, capture RSS.

Every figure is taken on `posagent run` (its own process) as a terminal runs it
(bench/installed.py: a venv made as install.sh makes it, the systemd unit's environment),
pointed at the simulated terminal (sysfs power/net trees, pty printer and PIN pad, loopback
payment host, Xvfb + Tk screen when Xvfb is installed), with the default
monitor intervals of agent/data/agent.toml (power 5 s, network 5 s, printer
and serial 2 s, peripherals 5 s, system 10 s, app 5 s).

1. Start to READY: 10,000 sealed bundles in spool/new, the collector
   unreachable; time from exec to READY=1 on a real NOTIFY_SOCKET datagram
   socket (median of STARTS), and the same with an empty spool.
2. With a real collector (Stack: `posagent collector serve` + netcut):
   - RSS after start (settled), CPU % of one core over an idle window;
   - CAPTURES printer faults (paper end / cover open, alternating) raised and
     cleared: fault raised (the agent's fault_raised log time) → the bundle
     file in the spool (directory polled every 10 ms); the bundle's manifest
     says whether the screenshot was captured; RSS sampled every 20 ms during
     the captures: peak above the idle RSS;
   - after the captures and their uploads: RSS, then a second idle window:
     CPU % and RSS growth over it. The daemon's short-lived children (the
     screenshot worker per capture, the sealing worker from a capture's start
     to a minute after the last, the upload worker while uploads run and a
     minute after) are not in its RSS: their peak is reported beside it.
   The issue's RSS figures are "after 10 minutes" and "growth over 30
   minutes": a default run measures what fits in IDLE_S windows; with
   BENCH_LONG=1 the second window lasts 30 minutes and RSS is also read at
   10 minutes after start.
Run: python -m bench.bench_daemon
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.installed import daemon_stack_args, hwm_mib, rss_mib
from simulator.stack import Stack, read_manifest
from simulator.terminal import SimTerminal, merge_sections, render_toml

STARTS = 5
QUEUED = 10_000
CAPTURES = 6  # at most len(KINDS)
LONG = os.environ.get("BENCH_LONG", "") == "1"
IDLE_S = 1800.0 if LONG else 30.0
SETTLE_S = 8.0

# agent/data/agent.toml defaults for every monitor the simulator config shortens
DEFAULT_INTERVALS: dict[str, Any] = {
    "power": {"interval_s": 5.0},
    "network": {"interval_s": 5.0},
    "peripherals": {"interval_s": 5.0},
    "system": {"interval_s": 10.0},
    "app": {"interval_s": 5.0},
    "printer": [{"interval_s": 2.0, "timeout_s": 1.0}],
    "serial": [{"interval_s": 2.0, "timeout_s": 1.0}],
    "capture": {"persist_interval_s": 30.0},
}
# let every capture through (the figure is the capture, not the rate limit)
OPEN_POLICY: dict[str, Any] = {
    "capture": {"cooldown_s": 0.0, "burst": 100, "bundles_per_hour": 3600.0}
}

TARGETS = {
    "ready_s": 1.5,
    "rss_mib": 40.0,
    "rss_growth_mib": 1.0,
    "cpu_pct": 0.5,
    "fault_to_bundle_p95_s": 2.0,
    "capture_peak_above_idle_mib": 30.0,
}


def _mib(n: float) -> float:
    return round(n / 2**20, 2)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- 1. start-up


def _ready_once(cfg: Path, notify_path: Path, log: Path) -> float:
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.5)
    daemon = daemon_stack_args()
    env = {
        **daemon["agent_environ"],
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "30000000",
    }
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*daemon["agent_argv"], "run", "--config", str(cfg)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = t0 + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode} before READY; see {log}")
            try:
                msg = sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in msg.split("\n"):
                return time.monotonic() - t0
        raise RuntimeError("no READY=1 within 60 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.close()


def _fill(state: Path, n: int) -> None:
    """n small, valid sealed bundles (each named by its own id) straight into spool/new."""
    from agent.bundle.format import DeviceInfo, new_bundle_id, seal, text_entry
    from agent.core.redact import Redactor
    from agent.spool.maildir import Limits, Spool, file_name

    sp = Spool(state, Limits(max_items=10**6, max_bytes=1 << 40, reserve_bytes=0)).open()
    redactor = Redactor()
    for i in range(n):
        bid = new_bundle_id()
        b = seal(
            device=DeviceInfo(id="T-SIM"),
            trigger={"kind": "manual", "note": f"queued {i}"},
            entries=[text_entry("report.txt", f"queued bundle {i}\n")],
            key=b"bench-daemon-key-0123456789",
            redactor=redactor,
            bundle_id=bid,
        )
        (sp.root / "new" / file_name(bid, i % 3)).write_bytes(b.data)


def measure_startup(tmp: Path) -> dict[str, Any]:
    """Median exec → READY=1 with QUEUED bundles queued, and with none."""
    out: dict[str, Any] = {"runs": STARTS, "queued": QUEUED}
    with SimTerminal(tmp / "startup-term") as term:
        (term.root / "token").write_text("bench-token\n")
        sections = term.agent_sections(f"http://127.0.0.1:{_closed_port()}")
        sections = merge_sections(sections, DEFAULT_INTERVALS)
        for label, n in (("empty", 0), ("queued", QUEUED)):
            cfg = tmp / f"startup-{label}.toml"
            sections["agent"]["state_dir"] = str(tmp / f"state-{label}")
            cfg.write_text(render_toml(sections))
            if n:
                _fill(tmp / f"state-{label}", n)
            times = [
                _ready_once(cfg, tmp / "notify.sock", tmp / f"startup-{label}.log")
                for _ in range(STARTS if n else 3)
            ]
            out[f"ready_s_{label}"] = round(statistics.median(times), 3)
            out[f"ready_s_{label}_max"] = round(max(times), 3)
        left = sum(1 for _ in (tmp / "state-queued" / "spool" / "new").iterdir())
        out["still_queued_after"] = left
    out["target_s"] = TARGETS["ready_s"]
    out["met"] = out["ready_s_queued"] <= TARGETS["ready_s"]
    return out


# --------------------------------------------------------------------------- 2. running daemon


class RssSampler:
    """Samples one process's RSS every period_s on a thread."""

    def __init__(self, proc: psutil.Process, period_s: float = 0.02) -> None:
        self.proc = proc
        self.period_s = period_s
        self.samples: list[int] = []
        self.children: list[int] = []  # summed RSS of its children (screenshot and upload workers)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append(self.proc.memory_info().rss)
                kids = 0
                for c in self.proc.children():
                    with contextlib.suppress(psutil.Error):
                        kids += c.memory_info().rss
                self.children.append(kids)
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(2)


def _cpu_window(proc: psutil.Process, seconds: float) -> float:
    """CPU % of one core used by proc (and its children) over a wall-clock window."""

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    c0, w0 = cpu(), time.monotonic()
    time.sleep(seconds)
    return round((cpu() - c0) / (time.monotonic() - w0) * 100, 3)


def _spool_names(spool: Path) -> set[str]:
    names: set[str] = set()
    for where in ("new", "cur", "sent"):
        with contextlib.suppress(FileNotFoundError):
            names.update(os.listdir(spool / where))
    return {n for n in names if n.endswith(".zip")}


def _find_bundle(spool: Path, name: str) -> Path | None:
    for where in ("new", "cur", "sent"):
        p = spool / where / name
        if p.exists():
            return p
    return None


def _wait_event(stack: Stack, key: str, state: str, after: int, timeout_s: float) -> dict[str, Any]:
    """The first fault event of key in state among events[after:]."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with stack.faults.lock:
            for e in stack.faults.events[after:]:
                if e.get("key") == key and e["state"] == state:
                    return e
        time.sleep(0.01)
    raise RuntimeError(f"no {key} {state} within {timeout_s} s: {stack.faults.tail(5)}")


def _wait_bundle(
    spool: Path, before: set[str], key: str, kind: str, timeout_s: float
) -> tuple[float, dict[str, Any]]:
    """(wall time first seen, manifest) of the first new bundle whose trigger is (kind, key)."""
    seen: dict[str, float] = {}
    checked: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = time.time()
        for name in _spool_names(spool) - before:
            seen.setdefault(name, now)
        for name in sorted(seen):
            if name in checked:
                continue
            path = _find_bundle(spool, name)
            m = read_manifest(path) if path is not None else None
            if m is None:
                continue  # being renamed between states: next round
            checked.add(name)
            trig = m.get("trigger") or {}
            if trig.get("key") == key and trig.get("kind") == kind:
                return seen[name], m
        time.sleep(0.01)
    raise RuntimeError(f"no {kind} bundle for {key} within {timeout_s} s")


def _one_capture(
    stack: Stack, device: str, key: str, change: dict[str, Any], undo: dict[str, Any]
) -> dict[str, Any]:
    spool = stack.term.state / "spool"
    out: dict[str, Any] = {"key": key}
    for state, kind, act in (("raised", "fault", change), ("cleared", "cleared", undo)):
        before = _spool_names(spool)
        mark = len(stack.faults.events)
        stack.term.apply(device, act)
        ev = _wait_event(stack, key, state, mark, 30)
        seen, m = _wait_bundle(spool, before, key, kind, 30)
        out[f"{state}_to_bundle_s"] = round(seen - float(ev["at"]), 3)
        out[f"{state}_screenshot"] = str((m.get("redaction") or {}).get("screenshot", ""))
    return out


# (device, fault key, inject, remove): no instance transitions 6 times (that is flapping;
# paper end also sets the near-end bits and takes the printer offline)
KINDS: tuple[tuple[str, str, dict[str, Any], dict[str, Any]], ...] = (
    ("printer", "printer.paper_near_end", {"paper": "near_end"}, {"paper": "ok"}),
    ("power", "power.battery_critical", {"capacity": 3}, {"capacity": 80}),
    ("printer", "printer.paper_end", {"paper": "end"}, {"paper": "ok"}),
    ("pinpad", "serial.missing", {"plugged": False}, {"plugged": True}),
    ("power", "power.battery_critical", {"capacity": 3}, {"capacity": 80}),
    ("printer", "printer.cover_open", {"cover_open": True}, {"cover_open": False}),
)


def measure_running(tmp: Path) -> dict[str, Any]:
    """Idle RSS/CPU, fault → bundle, peak capture RSS, RSS and CPU after captures and uploads."""
    screen = "x11" if shutil.which("Xvfb") else "none"
    extra = merge_sections(DEFAULT_INTERVALS, OPEN_POLICY)
    out: dict[str, Any] = {"screen": screen, "idle_window_s": IDLE_S, "long_run": LONG}
    with Stack(tmp / "stack", screen=screen, agent_config=extra, **daemon_stack_args()) as stack:
        assert stack.agent_proc is not None
        proc = psutil.Process(stack.agent_proc.pid)
        t_start = time.monotonic()
        time.sleep(SETTLE_S)
        out["rss_after_start_mib"] = rss_mib(proc.pid)
        out["cpu_pct_idle"] = _cpu_window(proc, IDLE_S if not LONG else 60.0)
        idle_rss = proc.memory_info().rss
        out["rss_idle_before_captures_mib"] = _mib(idle_rss)

        captures = []
        with RssSampler(proc) as sampler:
            for device, key, change, undo in KINDS[:CAPTURES]:
                captures.append(_one_capture(stack, device, key, change, undo))
        out["captures"] = captures
        raised = sorted(c["raised_to_bundle_s"] for c in captures)
        cleared = sorted(c["cleared_to_bundle_s"] for c in captures)
        both = sorted(raised + cleared)
        out["fault_to_bundle_p50_s"] = round(statistics.median(raised), 3)
        out["fault_to_bundle_p95_s"] = raised[max(0, -(-95 * len(raised) // 100) - 1)]
        out["cleared_to_bundle_p50_s"] = round(statistics.median(cleared), 3)
        out["any_to_bundle_max_s"] = both[-1]
        out["screenshots"] = sorted({c.get("raised_screenshot", "?") for c in captures})
        out["capture_peak_rss_mib"] = _mib(max(sampler.samples))
        out["capture_peak_above_idle_mib"] = _mib(max(sampler.samples) - idle_rss)
        out["vm_hwm_mib"] = hwm_mib(proc.pid)
        out["workers_peak_rss_mib"] = _mib(max(sampler.children, default=0))

        # uploads: wait until the collector holds every bundle the spool made
        deadline = time.monotonic() + 30
        made = len(_spool_names(stack.term.state / "spool"))
        while time.monotonic() < deadline and len(stack.collector_bundles()) < made:
            time.sleep(0.2)
        out["bundles_made"] = made
        out["bundles_uploaded"] = len(stack.collector_bundles())
        time.sleep(2.0)
        rss_a = rss_mib(proc.pid)
        out["rss_after_captures_uploads_mib"] = rss_a
        if LONG:
            # BENCH_LONG: RSS at 10 minutes after start, then growth over 30 minutes
            time.sleep(max(0.0, 600 - (time.monotonic() - t_start)))
            rss_a = out["rss_at_10_min_mib"] = rss_mib(proc.pid)
        out["cpu_pct_after_captures"] = _cpu_window(proc, IDLE_S)
        rss_b = rss_mib(proc.pid)
        out["rss_end_mib"] = rss_b
        out["rss_growth_over_window_mib"] = round(rss_b - rss_a, 2)
        out["agent_uptime_s"] = round(time.monotonic() - t_start, 1)
    out["targets"] = TARGETS
    return out


def main() -> dict[str, Any]:
    """Both parts; print and return the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as d:
        tmp = Path(d)
        startup = measure_startup(tmp)
        print(f"   startup: {startup}")
        running = measure_running(tmp)
        for k, v in running.items():
            print(f"   {k:32} {v}")
    return {"startup": startup, "running": running}


if __name__ == "__main__":
    main()

"""Benchmark: the two-way channel on a live terminal (issue 16's latency and RSS figures).

Two simulated terminals (simulator.stack.Stack: the twins, Xvfb when installed, a real
`posagent collector serve` holding a command key, a real `posagent run` at the default
monitor intervals of bench_daemon) run side by side for RUN_S (10 minutes):

- A: long-poll on (`[upload] longpoll`), the default check-in interval (300 s);
- B: long-poll off, the minimum interval (30 s); its collector has
  `silent_after_checkins = 1` and sweeps for silent terminals every second.

The device is registered by `collector add-device` (docs/CHANNEL.md §2: such a device
checks in too) and the agent trusts the command key through
`[upload] collector_public_key_file`; manual captures are not rate-limited here (the
figure is the path, not the policy).

1. Operator "capture" → the bundle listed: the operator (tests/channel/operator.py, the
   API the device page uses) queues `capture` and polls GET /v1/bundles every 0.1 s until
   the terminal's new manual bundle is listed. CAPTURES_LP on A (target p95 ≤ 5 s),
   CAPTURES_POLL on B (target p95 ≤ interval + 5 s); each beside the other.
2. Silent terminal → `device.silent`: B's uplink is cut (simulator NetCut: the relayed
   connections reset, new ones refused: a dead cellular link) and the incident's open
   time read from the device's outages (`silent_at`, the collector's clock: the same
   machine); the uplink is restored and the time to the incident's clearing noted.
   SILENT_TRIALS without long-poll, then B restarted with long-poll on and the same again
   (its deadline holds the long-poll's wait). Target: silent_after × interval + 30 s,
   from the cut.
3. Daemon RSS at 10 minutes after start (VmRSS of the daemon's own process; its upload
   child, which holds requests and TLS, apart): A and B beside C, the same daemon on the
   same twins with no endpoint (no channel and no uploads), run alongside; the target is
   the issue's 36 MiB (the daemon held 36.09 MiB at 10 minutes before the channel, from
   the dev venv). Every daemon runs as a terminal runs it (bench/installed.py: a venv made
   as install.sh makes it, the systemd unit's environment). Beside RSS, the daemons' own
   pages (USS: RSS less the shared libraries' clean pages, which other processes map too).

Run: python -m bench.bench_channel_live   (about 14 minutes; BENCH_QUICK=1: 3)
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.core.timefmt import parse_rfc3339
from bench.bench_daemon import DEFAULT_INTERVALS
from bench.installed import daemon_stack_args, hwm_mib, private_mib, rss_mib
from collector.channel.signing import keygen
from simulator.stack import Stack
from simulator.terminal import merge_sections
from tests.channel.operator import Operator
from tests.conftest import wait_until

QUICK = os.environ.get("BENCH_QUICK", "") == "1"  # a short run that checks the bench itself
RUN_S = 60.0 if QUICK else 600.0  # the daemons' RSS is read this long after their start
SETTLE_S = 8.0
CAPTURES_LP = 2 if QUICK else 10
CAPTURES_POLL = 1 if QUICK else 5
SILENT_TRIALS = 1 if QUICK else 3
POLL_INTERVAL_S = 30  # B's check-in interval: the minimum
SILENT_AFTER = 1
LONGPOLL_WAIT_S = 25  # agent.upload.protocol.LONGPOLL_WAIT_S
TARGETS = {
    "capture_longpoll_p95_s": 5.0,
    "capture_poll_p95_s": POLL_INTERVAL_S + 5.0,
    "silent_s": SILENT_AFTER * POLL_INTERVAL_S + 30.0,
    "rss_10min_mib": 36.0,
}
RSS_BEFORE_CHANNEL_MIB = 36.09  # bench_daemon, RSS 10 minutes after start (docs/BENCHMARKS.md)
OPEN_MANUAL: dict[str, Any] = {"capture": {"manual_per_hour": 3600.0, "manual_burst": 100}}


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def _stats(xs: list[float]) -> dict[str, Any]:
    return {
        "n": len(xs),
        "p50_s": round(statistics.median(xs), 2) if xs else None,
        "p95_s": round(_p95(xs), 2) if xs else None,
        "max_s": round(max(xs), 2) if xs else None,
        "all_s": [round(x, 2) for x in xs],
    }


def _stack(root: Path, name: str, *, longpoll: bool, interval_s: int, silent_after: int) -> Stack:
    key = root / f"{name}-command.key"
    pub = root / f"{name}-command.pub"
    pub.write_text(keygen(key))
    agent = merge_sections(
        merge_sections(DEFAULT_INTERVALS, OPEN_MANUAL),
        {
            "upload": {
                "longpoll": longpoll,
                "checkin_interval_s": interval_s,
                "collector_public_key_file": str(pub),
            }
        },
    )
    collector = {
        "signing_key_file": str(key),
        "silent_after_checkins": silent_after,
        "silent_check_interval_s": 1.0,
    }
    screen = "x11" if shutil.which("Xvfb") else "none"
    return Stack(
        root / name,
        screen=screen,
        agent_config=agent,
        collector_config=collector,
        **daemon_stack_args(),
    )


def _operator(stack: Stack) -> Operator:
    return Operator(stack.collector_url, stack.http, stack.term.device_id)


def _capture(op: Operator) -> float:
    """Queue a capture; seconds until its bundle is listed (the result must be done)."""
    before = op.manual_bundles()
    t0 = time.monotonic()
    cid = op.command("capture", {"note": "bench"})
    new = wait_until(lambda: op.manual_bundles() - before, 120.0, 0.1)
    elapsed = time.monotonic() - t0
    if not new:
        raise RuntimeError(f"capture {cid}: no bundle listed in 120 s: {op.command_status(cid)}")
    c = op.answered(cid)
    if c["status"] != "done":
        raise RuntimeError(f"capture {cid}: {c['status']} {c.get('detail')}")
    return elapsed


def _outage_after(op: Operator, t: float) -> dict[str, Any] | None:
    d = op.get(f"/v1/devices/{op.device_id}")
    for o in d.get("outages", []):
        if parse_rfc3339(o["silent_at"]) >= t - 1.0:
            return {
                **o,
                "silent_at_ts": parse_rfc3339(o["silent_at"]),
                "last_seen_ts": parse_rfc3339(o["last_seen"]),
            }
    return None


def _silent_trial(stack: Stack, op: Operator, deadline_s: float) -> dict[str, Any]:
    """Cut the uplink: seconds to device.silent; restore: seconds to its clearing."""
    if not wait_until(lambda: (d := op.device()) and d["state"] == "ok", 120.0, 0.5):
        raise RuntimeError(f"the terminal is not checking in: {op.device()}")
    time.sleep(3.0)  # not at the very moment of a check-in
    cut = time.time()
    stack.cut_uplink()
    try:
        opened = wait_until(lambda: _outage_after(op, cut), deadline_s + 120, 0.5)
        if not opened:
            raise RuntimeError(f"no device.silent within {deadline_s + 120} s of the cut")
        if not op.active_silent():
            raise RuntimeError("an outage but no open device.silent incident")
    finally:
        stack.restore_uplink()
    restored = time.time()
    cleared = wait_until(lambda: not op.active_silent(), 300.0, 0.5)
    back = time.time()
    if not cleared:
        raise RuntimeError("device.silent not cleared within 300 s of the restore")
    return {
        "cut_to_silent_s": round(opened["silent_at_ts"] - cut, 2),
        "last_checkin_to_silent_s": round(opened["silent_at_ts"] - opened["last_seen_ts"], 2),
        "restore_to_cleared_s": round(back - restored, 2),
    }


def _silent_stats(trials: list[dict[str, Any]], deadline_s: float) -> dict[str, Any]:
    worst = max(t["cut_to_silent_s"] for t in trials)
    return {
        "trials": trials,
        "deadline_s": deadline_s,
        "cut_to_silent_max_s": worst,
        "cut_to_silent_p50_s": round(statistics.median(t["cut_to_silent_s"] for t in trials), 2),
        "restore_to_cleared_max_s": max(t["restore_to_cleared_s"] for t in trials),
    }


def _run_b(b: Stack, op: Operator, out: dict[str, Any], errors: list[str]) -> None:
    try:
        out["capture_poll"] = _stats([_capture(op) for _ in range(CAPTURES_POLL)])
        deadline = SILENT_AFTER * POLL_INTERVAL_S
        trials = [_silent_trial(b, op, deadline) for _ in range(SILENT_TRIALS)]
        out["silent_poll"] = _silent_stats(trials, deadline)
    except Exception as e:  # reported, the other terminal's figures kept
        errors.append(f"B: {type(e).__name__}: {e}")


def _run_a(op: Operator, t_start: float, out: dict[str, Any], errors: list[str]) -> None:
    try:
        spacing = max(5.0, (RUN_S - SETTLE_S - 60) / CAPTURES_LP)
        times = []
        for i in range(CAPTURES_LP):
            wake = t_start + SETTLE_S + 30 + i * spacing
            time.sleep(max(0.0, wake - time.monotonic()))
            times.append(_capture(op))
        out["capture_longpoll"] = _stats(times)
    except Exception as e:
        errors.append(f"A: {type(e).__name__}: {e}")


def measure(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"run_s": RUN_S, "targets": TARGETS}
    errors: list[str] = []
    a = _stack(root, "a", longpoll=True, interval_s=300, silent_after=3)
    b = _stack(root, "b", longpoll=False, interval_s=POLL_INTERVAL_S, silent_after=SILENT_AFTER)
    # the peer of the RSS: the same daemon with no endpoint (no channel, no uploads)
    c = Stack(
        root / "c",
        screen=a.term.screen_mode,
        collector=False,
        agent_config=DEFAULT_INTERVALS,
        **daemon_stack_args(),
    )
    with a, b, c:
        assert a.agent_proc and b.agent_proc and c.agent_proc
        out["screen"] = a.term.screen.backend if a.term.screen else "none"
        pids = {"a": a.agent_proc.pid, "b": b.agent_proc.pid, "c": c.agent_proc.pid}
        t_start = time.monotonic()
        op_a, op_b = _operator(a), _operator(b)
        for op in (op_a, op_b):
            if not wait_until(op.device, 120.0, 0.5):
                raise RuntimeError(f"{op.url}: the terminal never checked in")
        time.sleep(max(0.0, t_start + SETTLE_S - time.monotonic()))
        out["rss_after_start_mib"] = {k: rss_mib(pid) for k, pid in pids.items()}
        threads = [
            threading.Thread(target=_run_a, args=(op_a, t_start, out, errors)),
            threading.Thread(target=_run_b, args=(b, op_b, out, errors)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(max(0.0, t_start + RUN_S - time.monotonic()))
        out["rss_at_run_s_mib"] = {k: rss_mib(pid) for k, pid in pids.items()}
        out["rss_hwm_mib"] = {k: hwm_mib(pid) for k, pid in pids.items()}
        out["private_at_run_s_mib"] = {k: private_mib(pid) for k, pid in pids.items()}
        out["uptime_s"] = round(time.monotonic() - t_start, 1)
        out["checkin_failures_logged"] = {"a": _failures(a), "b": _failures(b)}
        # B again with long-poll on: its silent deadline holds the long-poll's wait
        try:
            b.stop_agent()
            text = b.agent_config_path.read_text()
            b.agent_config_path.write_text(text.replace("longpoll = false", "longpoll = true"))
            b.start_agent()
            deadline = SILENT_AFTER * POLL_INTERVAL_S + LONGPOLL_WAIT_S
            trials = [_silent_trial(b, op_b, deadline) for _ in range(SILENT_TRIALS)]
            out["silent_longpoll"] = _silent_stats(trials, deadline)
        except Exception as e:
            errors.append(f"B long-poll: {type(e).__name__}: {e}")
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if errors:
        out["errors"] = errors
    return out


def _failures(stack: Stack) -> int:
    """Check-ins the agent logged as failed (the uplink cuts make some)."""
    log = stack.workdir / "agent.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count('"channel_checkin_failed"')


def main() -> dict[str, Any]:
    """Measure and print the live channel's figures."""
    with tempfile.TemporaryDirectory(prefix="bench-channel-live-") as tmp:
        figures = measure(Path(tmp))
    for k, v in figures.items():
        print(f"   {k:28} {v}")
    return figures


if __name__ == "__main__":
    main()

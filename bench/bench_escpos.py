"""Benchmark: ESC/POS status poll latency against the simulated printer (pty and TCP).

A poll opens the port, sends DLE EOT 1..4, validates each reply (with the
settle window that catches multi-byte garbage) and closes. Figures: per-poll
p50/p95 over the pty (pyserial) and over loopback TCP, the bare reply latency
of one DLE EOT on the pty, the same poll with settle_s=0, and the cost of a
poll against a silent printer (timeout + late drain). The design budget is a
reply within 1 s; the poll interval is 2 s. Run: python -m bench.bench_escpos
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from drivers.escpos import PrinterLinkState, PrinterStatus, poll_printer
from simulator.printer import PrinterMode, SimPrinter, SimTcpPrinter


def _percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=20)
    return {"p50_ms": round(statistics.median(samples) * 1000, 2), "p95_ms": round(q[18] * 1000, 2)}


def _timed(n: int, poll: Callable[[], PrinterStatus]) -> tuple[list[float], list[float]]:
    total: list[float] = []
    reply: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        status = poll()
        total.append(time.perf_counter() - t0)
        if status.state is not PrinterLinkState.OK:
            raise RuntimeError(f"poll failed: {status.error_text}")
        reply.extend(status.reply_latency_s.values())
    return total, reply


def main() -> dict[str, object]:
    """Measure and print poll latencies; return the figures."""
    n = 100
    figures: dict[str, object] = {"polls": n}
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimPrinter(Path(tmp) / "dev" / "ttyS0").start()
        try:
            dev = str(sim.link)
            total, reply = _timed(n, lambda: poll_printer("serial", dev, timeout_s=1.0))
            figures["pty_poll"] = _percentiles(total)
            figures["pty_reply_per_query"] = _percentiles(reply)
            total0, _ = _timed(n, lambda: poll_printer("serial", dev, timeout_s=1.0, settle_s=0.0))
            figures["pty_poll_settle_0"] = _percentiles(total0)
            sim.set_mode(PrinterMode.SILENT)
            t0 = time.perf_counter()
            silent = poll_printer("serial", dev, timeout_s=1.0)
            figures["pty_silent_poll_s"] = round(time.perf_counter() - t0, 3)
            figures["pty_silent_state"] = str(silent.state)
        finally:
            sim.stop()
    tcp = SimTcpPrinter().start()
    try:
        total, reply = _timed(n, lambda: poll_printer("tcp", tcp.address, timeout_s=1.0))
        figures["tcp_poll"] = _percentiles(total)
        figures["tcp_reply_per_query"] = _percentiles(reply)
    finally:
        tcp.stop()
    figures["target_reply_s"] = 1.0
    for name, value in figures.items():
        print(f"{name}: {value}")
    return figures


if __name__ == "__main__":
    main()

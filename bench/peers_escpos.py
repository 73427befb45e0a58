"""Printer status query against python-escpos, on the same simulated pty printer, in every mode.

For each printer condition (healthy; paper end; silent; garbage reply;
unplugged) both sides query the same SimPrinter pty, alternately:
- ours: drivers.escpos.poll_printer("serial", ...) (open, DLE EOT 1..4 with
  validation, close), timeout 1 s; and the same with only n=1 and n=4 (the
  two queries python-escpos makes);
- python-escpos: printer.Serial(devfile, timeout=1): open, is_online()
  (DLE EOT 1), paper_status() (DLE EOT 4), close.
Recorded: wall time per status query (median of N), and what each returns,
judged against the right answer for the condition (docs/ARCHITECTURE.md §8: keep "port
gone", "present but silent" and "printer reports a fault" apart; no reply
is never "no paper", garbage is never a status).
Run: python -m bench.peers_escpos
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.escpos import PrinterLinkState, PrinterStatus, poll_printer
from simulator.printer import PrinterMode, SimPrinter

N_OURS = 30  # healthy printer: our polls
N_PEER = 5  # healthy printer: python-escpos (each waits out its 1 s read timeout twice)
N_FAULT = 3  # each fault condition, both sides
TIMEOUT_S = 1.0

# condition -> the right answer, in words
RIGHT = {
    "healthy": "online, paper ok",
    "paper_end": "paper end",
    "silent": "no reply (cannot tell paper or online state)",
    "garbage": "invalid reply (not a status)",
    "unplugged": "port absent",
}


def _ours(dev: str, ns: tuple[int, ...] = (1, 2, 3, 4)) -> PrinterStatus:
    return poll_printer("serial", dev, timeout_s=TIMEOUT_S, ns=ns)


def _ours_answer(s: PrinterStatus) -> str:
    if s.state is PrinterLinkState.OK:
        if s.paper_end:
            return "paper end"
        return f"{'online' if s.online else 'offline'}, paper {'near end' if s.paper_near_end else 'ok'}"
    return {
        PrinterLinkState.ABSENT: "port absent",
        PrinterLinkState.NO_REPLY: "no reply",
        PrinterLinkState.INVALID_REPLY: "invalid reply",
    }.get(s.state, str(s.state))


def _escpos(dev: str) -> tuple[str, Any]:
    """(answer in words, raw return) of open + is_online + paper_status + close."""
    from escpos.exceptions import DeviceNotFoundError
    from escpos.printer import Serial

    p = Serial(devfile=dev, baudrate=9600, timeout=TIMEOUT_S)
    try:
        p.open()
    except DeviceNotFoundError as e:
        return "port absent", f"DeviceNotFoundError: {str(e).split(' (')[0]}"
    try:
        online = p.is_online()
        paper = p.paper_status()
    except Exception as e:  # report whatever the library raises, as it raised it
        return f"exception {type(e).__name__}", repr(e)
    finally:
        p.close()
    raw = {"is_online": online, "paper_status": paper}
    words = {2: "paper ok", 1: "paper near end", 0: "paper end"}[paper]
    if paper == 0:
        return "paper end", raw
    return f"{'online' if online else 'offline'}, {words}", raw


def _judge(condition: str, answer: str) -> bool:
    right = RIGHT[condition]
    if condition == "healthy":
        return answer == "online, paper ok"
    if condition == "paper_end":
        return answer == "paper end"
    if condition == "silent":
        return answer == "no reply"
    if condition == "garbage":
        return answer == "invalid reply"
    return answer == right


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _condition(sim: SimPrinter, condition: str) -> None:
    sim.set_state(paper="end" if condition == "paper_end" else "ok")
    sim.set_mode(
        {"silent": PrinterMode.SILENT, "garbage": PrinterMode.GARBAGE}.get(
            condition, PrinterMode.NORMAL
        ),
        garbage=b"\x00",
    )


def main() -> dict[str, object]:
    """Latency and answers of both sides in every condition; print and return the figures."""
    logging.getLogger("escpos").setLevel(logging.CRITICAL)
    logging.getLogger().setLevel(logging.CRITICAL)
    figures: dict[str, object] = {"timeout_s": TIMEOUT_S}
    with tempfile.TemporaryDirectory(prefix="bench-peers-escpos") as d:
        sim = SimPrinter(Path(d) / "dev" / "ttyS0").start()
        dev = str(sim.link)
        try:
            for condition in ("healthy", "paper_end", "silent", "garbage", "unplugged"):
                healthy = condition == "healthy"
                n = N_OURS if healthy else N_FAULT
                if condition == "unplugged":
                    sim.unplug()
                else:
                    _condition(sim, condition)
                ours_t: list[float] = []
                ours2_t: list[float] = []
                peer_t: list[float] = []
                ours_a: set[str] = set()
                peer_a: set[str] = set()
                peer_raw: list[str] = []
                for i in range(n):
                    t, s = _timed(lambda: _ours(dev))
                    ours_t.append(t)
                    ours_a.add(_ours_answer(s))
                    if healthy:
                        t, s2 = _timed(lambda: _ours(dev, (1, 4)))
                        ours2_t.append(t)
                        ours_a.add(_ours_answer(s2))
                    if healthy and i >= N_PEER:
                        continue
                    t, (answer, raw) = _timed(lambda: _escpos(dev))
                    peer_t.append(t)
                    peer_a.add(answer)
                    if str(raw) not in peer_raw:
                        peer_raw.append(str(raw))
                figures[condition] = {
                    "runs": n,
                    "escpos_runs": len(peer_t),
                    "right_answer": RIGHT[condition],
                    "posagent_ms": round(statistics.median(ours_t) * 1000, 1),
                    "posagent_answer": " / ".join(sorted(ours_a)),
                    "posagent_right": all(_judge(condition, a) for a in ours_a),
                    "escpos_ms": round(statistics.median(peer_t) * 1000, 1),
                    "escpos_answer": " / ".join(sorted(peer_a)),
                    "escpos_returns": "; ".join(peer_raw),
                    "escpos_right": all(_judge(condition, a) for a in peer_a),
                }
                if ours2_t:
                    figures[condition]["posagent_n1_n4_ms"] = round(  # type: ignore[index]
                        statistics.median(ours2_t) * 1000, 1
                    )
                print(f"   {condition:10} {figures[condition]}")
        finally:
            sim.stop()
    conds = ("healthy", "paper_end", "silent", "garbage", "unplugged")
    figures["posagent_right_of_5"] = sum(1 for c in conds if figures[c]["posagent_right"])  # type: ignore[index]
    figures["escpos_right_of_5"] = sum(1 for c in conds if figures[c]["escpos_right"])  # type: ignore[index]
    return figures


if __name__ == "__main__":
    main()

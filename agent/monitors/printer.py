"""Printer monitors: one per [[printer]], a "printer:<name>" reading per DLE EOT 1..4 poll.

Values (the catalog's printer rules read them):
- link: "ok" | "absent" | "no_reply" | "invalid_reply". The driver's
  open_failed (EACCES, EBUSY) and io_error also read "no_reply": the port is
  there but gives no valid status; `link_detail` keeps the driver's state.
- when link is "ok": online, cover_open, paper_end, paper_near_end,
  cutter_error, unrecoverable, auto_recoverable, drawer_open (drawer pin 3
  level with the configured polarity `drawer_open_high`); otherwise all None,
  so "no reply" is never read as "no paper".
- evidence: latency_ms, raw (status bytes by n, hex), error.

Serial and usblp device paths are re-rooted under Roots.dev; tcp devices are
host:port. The port is opened per poll (shared with the POS application).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.core.config import Config, PrinterConfig
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers.escpos import PrinterLinkState, PrinterStatus, poll_printer
from drivers.roots import Roots

LATE_DRAIN_S = 0.1

_LINK = {
    PrinterLinkState.OK: "ok",
    PrinterLinkState.ABSENT: "absent",
    PrinterLinkState.NO_REPLY: "no_reply",
    PrinterLinkState.INVALID_REPLY: "invalid_reply",
    PrinterLinkState.OPEN_FAILED: "no_reply",
    PrinterLinkState.IO_ERROR: "no_reply",
}

STATUS_FLAGS = (
    "online",
    "cover_open",
    "paper_end",
    "paper_near_end",
    "cutter_error",
    "unrecoverable",
    "auto_recoverable",
    "drawer_open",
)


def printer_values(status: PrinterStatus, drawer_open_high: bool = True) -> dict[str, Any]:
    """The "printer:<name>" reading's values from one status poll (pure)."""
    link = _LINK[status.state]
    values: dict[str, Any] = {"link": link, "link_detail": str(status.state)}
    ok = status.state is PrinterLinkState.OK
    drawer: bool | None = None
    if ok and status.drawer_high is not None:
        drawer = status.drawer_high == drawer_open_high
    flags = {
        "online": status.online,
        "cover_open": status.cover_open,
        "paper_end": status.paper_end,
        "paper_near_end": status.paper_near_end,
        "cutter_error": status.cutter_error,
        "unrecoverable": status.unrecoverable,
        "auto_recoverable": status.auto_recoverable,
        "drawer_open": drawer,
    }
    for key in STATUS_FLAGS:
        values[key] = flags[key] if ok else None
    values["latency_ms"] = round(status.latency_s * 1000, 2) if status.latency_s else None
    values["raw"] = {str(n): f"{b:02x}" for n, b in sorted(status.raw.items())}
    values["error"] = status.error_text
    return values


@dataclass
class PrinterMonitor:
    """Polls one receipt printer's real-time status."""

    cfg: PrinterConfig
    roots: Roots = field(default_factory=Roots)

    @property
    def name(self) -> str:
        return f"printer:{self.cfg.name}"

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        # open (TCP connect ≤ timeout) + one silent query + the late drain, plus slack
        return 3 * self.cfg.timeout_s + 1.0

    def read(self) -> PrinterStatus:
        """One DLE EOT 1..4 poll through the configured transport."""
        return poll_printer(
            self.cfg.transport,
            self.cfg.device,
            baudrate=self.cfg.baudrate,
            timeout_s=self.cfg.timeout_s,
            roots=self.roots,
            # The port is opened per poll and flushed before every query, so a reply
            # later than this is discarded by the next poll anyway: a silent printer
            # costs timeout_s + 0.1 s, not 2 × timeout_s.
            late_drain_s=min(LATE_DRAIN_S, self.cfg.timeout_s),
        )

    def poll(self) -> list[Reading]:
        return [Reading(self.name, printer_values(self.read(), self.cfg.drawer_open_high))]


@register("printer")
def printer_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """One monitor per configured printer."""
    return [PrinterMonitor(p, ctx.roots) for p in cfg.printer]

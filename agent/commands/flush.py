"""`posagent flush`: upload the queue now, with a progress bar on a TTY.

Resets every backoff (this is an explicit "now"), then drains once: critical
bundles first, then oldest; stops at the first retriable error. Exit 0 when
the queue is empty afterwards, 75 (EX_TEMPFAIL) when bundles remain queued,
69 (EX_UNAVAILABLE) when no endpoint is configured, 78 (EX_CONFIG) when the
upload settings cannot be used (bad URL, no token, unreadable CA/cert files).

Unlike the daemon, flush does not recover `cur/` (a running daemon may be
uploading from it); the daemon puts leftovers back into the queue at start.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from agent.commands.common import load
from agent.commands.output import emit_json, err, out
from agent.core import log
from agent.core.config import Config
from agent.core.exits import EX_CANTCREAT, EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from agent.core.redact import redactor_for
from agent.spool.maildir import STATES, Spool, limits_from_config
from agent.upload.uploader import DrainSummary, Progress, Uploader, check_upload_config

BAR_WIDTH = 30


def human_bytes(n: float) -> str:
    """1234567 → '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class ProgressPrinter:
    """A one-line bar on a TTY (redrawn at most 10 times a second); plain lines otherwise."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        if not self.tty:
            if p.event == "done":
                self._line(f"uploaded {p.bundle_id} {p.size_bytes} bytes ({p.done}/{p.total})")
            elif p.event == "rejected":
                self._line(f"rejected {p.bundle_id}: {p.error} (kept in failed/)")
            elif p.event == "deferred":
                self._line(f"deferred {p.bundle_id}: {p.error}")
            return
        now = time.monotonic()
        if p.event == "sending" and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        if p.event in ("rejected", "deferred"):
            self._clear()
            self._line(f"{p.event} {p.bundle_id}: {p.error}")
        frac = p.done / p.total if p.total else 1.0
        filled = int(BAR_WIDTH * min(frac, 1.0))
        rate = p.bytes_sent / p.elapsed_s if p.elapsed_s > 0 else 0.0
        text = (
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {p.done}/{p.total}  "
            f"{human_bytes(p.bytes_sent)}  {human_bytes(rate)}/s  {p.bundle_id[:8]}"
        )
        self.stream.write(text)
        self.stream.flush()
        self._drawn = True

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _open_spool(cfg: Config) -> Spool:
    spool = Spool(cfg.agent.state_dir, limits_from_config(cfg.spool), cfg.fs_roots())
    for d in (*STATES, "retry"):
        (spool.root / d).mkdir(parents=True, exist_ok=True)
    return spool


def summary_text(s: DrainSummary) -> list[str]:
    """Human lines for a drain summary."""
    lines = [
        f"uploaded {s.uploaded}, failed {s.failed}, still queued {s.remaining}; "
        f"{human_bytes(s.bytes_sent)} in {s.elapsed_s:.1f} s "
        f"({human_bytes(s.rate_bytes_per_s)}/s)"
    ]
    if s.last_error:
        lines.append(f"last error: {s.last_error}")
    if s.stopped == "auth":
        lines.append("the collector refused the device credentials: check the token")
    return lines


def run(args: argparse.Namespace) -> int:
    """The `posagent flush` handler (see the module docstring for exit codes)."""
    cfg = load(args)
    level = cfg.agent.log_level if cfg.agent.log_level in ("debug", "error") else "warning"
    log.configure(
        level, "console" if sys.stderr.isatty() else "json", redactor_for(cfg), sys.stderr
    )
    _token, why = check_upload_config(cfg.upload)
    if not cfg.upload.endpoint:
        err(f"posagent flush: {why}")
        return EX_UNAVAILABLE
    if why:
        err(f"posagent flush: {why}")
        return EX_CONFIG
    try:
        spool = _open_spool(cfg)
    except OSError as e:
        err(f"posagent flush: spool unusable: {e.strerror or e}")
        return EX_CANTCREAT
    spool.reset_backoff()
    uploader = Uploader(cfg, spool)
    printer = None if args.json else ProgressPrinter(sys.stdout, sys.stdout.isatty())
    try:
        summary = uploader.drain_once(progress=printer)
    finally:
        if printer is not None:
            printer.finish()
        uploader.stop(1.0)
    if args.json:
        result: dict[str, Any] = summary.as_dict()
        result["endpoint"] = cfg.upload.endpoint
        emit_json(result)
    else:
        for line in summary_text(summary):
            out(line)
    return EX_OK if summary.remaining == 0 else EX_TEMPFAIL

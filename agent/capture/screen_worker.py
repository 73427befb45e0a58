"""Screen capture in a short-lived child process, so the daemon never holds Pillow.

Image work costs about 20 MB of RSS (Pillow, decoded frames); the daemon
stays small by running `capture_screen` here: `python -m agent.capture.screen_worker
--config PATH` writes one JSON line (status, detail, backend, counts, png size)
and then the PNG bytes on stdout. The parent enforces a timeout; anything
unexpected becomes `skipped:<reason>`, never an unmasked image.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import structlog

from agent.capture.privacy import ScreenResult, capture_screen
from agent.core.config import Config, load_config
from agent.monitors import MonitorContext
from drivers.shell import ShellError, run_argv


def worker_timeout_s(cfg: Config) -> float:
    """How long the child may take: grab, two privacy checks, OCR, plus start-up."""
    sc = cfg.screen
    return 3 * sc.timeout_s + (sc.ocr_timeout_s if sc.ocr_mask else 0.0) + 5.0


def capture_in_child(cfg: Config) -> ScreenResult:
    """Run the capture in a child process with a hard timeout."""
    argv = [sys.executable, "-m", "agent.capture.screen_worker", "--config", cfg.source]
    try:
        r = run_argv(argv, worker_timeout_s(cfg))
    except ShellError as e:
        return ScreenResult(None, "skipped:screenshot worker timed out", str(e))
    head, sep, png = r.stdout.partition(b"\n")
    try:
        meta = json.loads(head) if sep else None
    except ValueError:
        meta = None
    if r.returncode != 0 or not isinstance(meta, dict):
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        why = err[-1][:200] if err else f"exit {r.returncode}"
        return ScreenResult(None, "skipped:screenshot worker failed", why)
    size = int(meta.get("png_size", 0))
    if size != len(png):
        return ScreenResult(
            None, "skipped:screenshot worker output truncated", f"{len(png)}/{size}"
        )
    return ScreenResult(
        png if size else None,
        str(meta.get("status", "skipped:unknown")),
        str(meta.get("detail", "")),
        str(meta.get("backend", "")),
        int(meta.get("masked_regions", 0)),
        int(meta.get("masked_card_numbers", 0)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: capture once, print the JSON line and the PNG."""

    p = argparse.ArgumentParser(prog="python -m agent.capture.screen_worker")
    p.add_argument("--config", required=True)
    args = p.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    cfg = load_config(args.config)
    ctx = MonitorContext.from_config(cfg)
    res = capture_screen(cfg.screen, cfg.agent.target, ctx.shell, ctx.roots)
    png = res.png or b""
    meta = {
        "status": res.status,
        "detail": res.detail,
        "backend": res.backend,
        "masked_regions": res.masked_regions,
        "masked_card_numbers": res.masked_card_numbers,
        "png_size": len(png),
    }
    out = sys.stdout.buffer
    out.write(json.dumps(meta).encode() + b"\n" + png)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

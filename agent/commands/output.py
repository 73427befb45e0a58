"""Command output: the only paths to stdout and stderr, times and sizes for people."""

from __future__ import annotations

import json
import sys
from typing import Any

from agent.core.timefmt import rfc3339


def out(text: str = "") -> None:
    """Write a line of command output (the CLI's only output path)."""
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    """Write a line to stderr."""
    sys.stderr.write(text + "\n")


def emit_json(obj: Any) -> None:
    """Machine-readable output for --json."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def fmt_age(seconds: float | None) -> str:
    """An age for people: 42s, 3.5m, 2.0h, 1.1d; '-' for none."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def when(ts: Any) -> str:
    """An epoch time as RFC 3339, or '-'."""
    return rfc3339(float(ts)) if isinstance(ts, int | float) and ts > 0 else "-"

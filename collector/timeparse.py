"""The read side's time parameters (since/until): epoch seconds, RFC 3339, or a naive ISO
time taken as UTC; '' is None. One parser for the bundle, audit and incident queries."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def parse_time(text: str) -> float | None:
    """since/until: epoch seconds, RFC 3339, or a naive ISO time (taken as UTC); '' is None."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"not a time: {text!r}")
        return value
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"not a time (RFC 3339 or epoch seconds): {text[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()

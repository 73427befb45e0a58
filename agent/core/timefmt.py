"""Timestamps as text: the one RFC 3339 form of the bundle format and the pages."""

from __future__ import annotations

from datetime import UTC, datetime

# Beyond this a timestamp is not a time a terminal can have produced (year 9999).
MAX_EPOCH_S = 253402300799.0


def rfc3339(ts: float) -> str:
    """Epoch seconds as UTC RFC 3339 with milliseconds, e.g. 2026-12-06T04:55:25.000Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """RFC 3339 text as epoch seconds; ValueError when it is not one."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def short_utc(ts: float | None) -> str:
    """Epoch seconds as 'YYYY-MM-DD HH:MM:SSZ' for people; '-' for none."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")

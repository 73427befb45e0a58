"""The check-in's health summary from the daemon's own state (docs/CHANNEL.md §2).

Pure: the latest reading of each source, the active faults and the spool's
counts in, the `summary` object out. A value the readings cannot tell is
None (the collector shows it as unknown), never a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.core.model import FaultEvent, Reading

PRINTER_FLAGS = ("paper_end", "cover_open", "unrecoverable", "cutter_error", "paper_near_end")


def _link(last: Mapping[str, Reading]) -> str | None:
    links = [r for src, r in last.items() if src.startswith("network:") and r.ok]
    if not links:
        route = last.get("network")
        v = route.values.get("default_route") if route is not None and route.ok else None
        return None if v is None else ("up" if v else "down")
    up = any(
        r.values.get("operstate") in ("up", "unknown") and r.values.get("carrier") is not False
        for r in links
    )
    return "up" if up else "down"


def _payment_latency_ms(last: Mapping[str, Reading]) -> float | None:
    samples = [
        r.values.get("connect_ms") for src, r in last.items() if src.startswith("payment:") and r.ok
    ]
    nums = [float(v) for v in samples if isinstance(v, int | float) and not isinstance(v, bool)]
    return round(max(nums), 1) if nums else None


def _printer(last: Mapping[str, Reading]) -> str | None:
    printers = [r for src, r in last.items() if src.startswith("printer:")]
    if not printers:
        return None
    for r in printers:
        if not r.ok:
            return "unknown"
        link = r.values.get("link")
        if link != "ok":
            return str(link or "unknown")
        for flag in PRINTER_FLAGS:
            if r.values.get(flag) is True:
                return flag
        if r.values.get("online") is False:
            return "offline"
    return "ok"


def build_summary(
    last: Mapping[str, Reading],
    active: Iterable[FaultEvent],
    queue_stats: Mapping[str, Any],
    config_digest: str,
) -> dict[str, Any]:
    """The `summary` object of a check-in."""
    power = last.get("power")
    pv = power.values if power is not None and power.ok else {}
    battery = pv.get("battery_pct")
    ac = pv.get("ac_online")
    new = queue_stats.get("new", {}).get("count", 0)
    cur = queue_stats.get("cur", {}).get("count", 0)
    oldest = queue_stats.get("oldest_queued_age_s")
    return {
        "battery_pct": battery if isinstance(battery, int | float) else None,
        "ac_online": ac if isinstance(ac, bool) else None,
        "link": _link(last),
        "payment_latency_ms": _payment_latency_ms(last),
        "printer": _printer(last),
        "queue_depth": int(new) + int(cur),
        "queue_oldest_age_s": round(float(oldest), 1) if oldest is not None else None,
        "active_faults": sorted({f.key for f in active}),
        "config_digest": config_digest,
    }

"""Diagnostics collectors: each returns JSON-able data or text for one bundle entry.

The capture stage runs collectors in parallel, each with its own timeout
inside a total budget (agent/capture.py). The readings come from drivers
(drivers/system.py here); this module only shapes them into entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.roots import Roots
from drivers.system import read_interfaces, read_system, read_uptime_s, top_processes


@dataclass(frozen=True)
class Collector:
    """A named diagnostics collector: `fn` returns a dict/list (→ .json) or str (→ .txt)."""

    name: str
    fn: Callable[[], Any]
    timeout_s: float = 2.0


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def system_snapshot(disk_paths: list[str] | None = None, top_n: int = 10) -> dict[str, Any]:
    """CPU, memory, disks, uptime, interfaces and the top processes by RSS."""
    snap = read_system(disk_paths or ["/"], temperatures=False)
    disks: dict[str, Any] = {}
    for d in snap.disks:
        if d.error or d.total_bytes is None:
            disks[d.path] = {"error": d.error}
            continue
        used_pct = 100.0 * (d.used_bytes or 0) / d.total_bytes if d.total_bytes else 0.0
        disks[d.path] = {
            "total_bytes": d.total_bytes,
            "free_bytes": d.free_bytes,
            "used_pct": round(used_pct, 1),
        }
    load = [round(x, 2) for x in (snap.load_1, snap.load_5, snap.load_15) if x is not None]
    return {
        "cpu_pct": snap.cpu_percent,
        "cpu_count": snap.cpu_count,
        "load_avg": load,
        "memory": {
            "total_bytes": snap.memory_total_bytes,
            "available_bytes": snap.memory_available_bytes,
            "available_pct": round(snap.memory_available_pct, 1),
        },
        "disks": disks,
        "uptime_s": _round(read_uptime_s(Roots())),
        "interfaces": read_interfaces(),
        "top_processes": top_processes(top_n),
    }

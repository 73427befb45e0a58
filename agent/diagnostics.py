"""Diagnostics collectors: each returns JSON-able data or text for one bundle entry.

The capture stage runs collectors in parallel, each with its own timeout
inside a total budget (agent/capture.py). Collectors here read the host with
psutil; device collectors come from the monitors' drivers.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Collector:
    """A named diagnostics collector: `fn` returns a dict/list (→ .json) or str (→ .txt)."""

    name: str
    fn: Callable[[], Any]
    timeout_s: float = 2.0


def system_snapshot(disk_paths: list[str] | None = None, top_n: int = 10) -> dict[str, Any]:
    """CPU, memory, disks, uptime, interfaces and the top processes by RSS."""
    vm = psutil.virtual_memory()
    disks: dict[str, Any] = {}
    for p in disk_paths or ["/"]:
        try:
            du = psutil.disk_usage(p)
        except OSError as e:
            disks[p] = {"error": e.strerror or str(e)}
            continue
        disks[p] = {
            "total_bytes": du.total,
            "free_bytes": du.free,
            "used_pct": du.percent,
        }
    ifaces: dict[str, Any] = {}
    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        st = stats.get(name)
        ifaces[name] = {
            "up": bool(st.isup) if st else None,
            "speed_mbps": st.speed if st else None,
            "addresses": [
                a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)
            ],
        }
    procs: list[dict[str, Any]] = []
    for proc in psutil.process_iter(["pid", "name", "memory_info", "cpu_times", "status"]):
        info = proc.info
        mem = info.get("memory_info")
        cpu = info.get("cpu_times")
        procs.append(
            {
                "pid": info["pid"],
                "name": info.get("name") or "",
                "rss_bytes": mem.rss if mem else 0,
                "cpu_s": round(cpu.user + cpu.system, 2) if cpu else None,
                "status": info.get("status"),
            }
        )
    procs.sort(key=lambda d: d["rss_bytes"], reverse=True)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_pct": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "load_avg": load,
        "memory": {
            "total_bytes": vm.total,
            "available_bytes": vm.available,
            "available_pct": round(vm.available * 100.0 / vm.total, 1) if vm.total else None,
        },
        "disks": disks,
        "uptime_s": round(time.time() - psutil.boot_time(), 1),
        "interfaces": ifaces,
        "top_processes": procs[:top_n],
    }

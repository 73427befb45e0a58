"""System monitor: one "system" reading of CPU, memory, disk and clock per interval.

Values (the catalog's system rules read them; None when unknown):
cpu_pct (since the previous poll), mem_available_pct, disk_free_pct and
disk_free_mib (the lowest over [system].disk_paths), clock_synced (adjtimex,
else `timedatectl` through the Shell), clock_jump_s (change of wall clock
minus boot-time clock since the previous poll: 0 while nobody steps the
clock; None on the first poll); plus load_1 and disk errors as evidence.

CPU, memory and disks are read with psutil where the agent runs: on target
adb that is the box next to the terminal, not the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.config import Config, SystemConfig
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers.shell import Shell
from drivers.system import (
    ClockOffset,
    ClockSync,
    adjtimex_sync,
    read_clock_offset,
    read_clock_sync,
    read_system,
    timedatectl_sync,
)

MIB = 1024 * 1024


@dataclass
class SystemMonitor:
    """Resources and clock of the machine the agent runs on."""

    cfg: SystemConfig
    shell: Shell = field(default_factory=Shell)
    clock_source: str = "auto"  # "auto" | "adjtimex" | "timedatectl"
    offset_reader: Callable[[], ClockOffset] = read_clock_offset
    name: str = "system"
    _last_offset_s: float | None = field(default=None, init=False)

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        return 5.0

    def clock_sync(self) -> ClockSync:
        """Whether the clock is synchronised, from the configured source."""
        if self.clock_source == "adjtimex":
            return adjtimex_sync()
        if self.clock_source == "timedatectl":
            return timedatectl_sync(self.shell)
        return read_clock_sync(self.shell)

    def poll(self) -> list[Reading]:
        snap = read_system(self.cfg.disk_paths, temperatures=False)
        disks = [d for d in snap.disks if not d.error]
        pcts = [p for p in (d.free_pct for d in disks) if p is not None]
        mibs = [d.free_bytes / MIB for d in disks if d.free_bytes is not None]
        sync = self.clock_sync()
        offset = self.offset_reader().offset_s
        jump = None if self._last_offset_s is None else offset - self._last_offset_s
        self._last_offset_s = offset
        values: dict[str, Any] = {
            "cpu_pct": round(snap.cpu_percent, 1),
            "mem_available_pct": round(snap.memory_available_pct, 2),
            "disk_free_pct": round(min(pcts), 2) if pcts else None,
            "disk_free_mib": round(min(mibs), 1) if mibs else None,
            "clock_synced": sync.synced,
            "clock_source": sync.source,
            "clock_jump_s": round(jump, 3) if jump is not None else None,
            "load_1": snap.load_1,
            "errors": [f"{d.path}: {d.error}" for d in snap.disks if d.error]
            + ([sync.error] if sync.error else []),
        }
        return [Reading("system", values)]


@register("system")
def system_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """One system monitor."""
    return [SystemMonitor(cfg.system, ctx.shell)]

"""Power monitor: one "power" reading per interval from sysfs (psutil fallback) or dumpsys.

Values (the catalog's power rules read them; None when unknown):
ac_online, plugged, battery_present, battery_pct, battery_status,
battery_health, battery_temp_c; plus `supply_source` ("sysfs" | "psutil" |
"dumpsys" | "none"), `updates_stopped` (Android battery service frozen) and
`errors` (attribute read failures) as evidence.

Target local reads <sys>/class/power_supply through Roots; targets android
and adb run `dumpsys battery` through the context's Shell (a Shell error
fails the poll, which the scheduler turns into an ok=False reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.core.config import Config, PowerConfig
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers import android
from drivers.power import PowerStatus, read_power_status
from drivers.roots import Roots
from drivers.shell import Shell

SHELL_TIMEOUT_S = 6.0


def power_values(status: PowerStatus) -> dict[str, Any]:
    """The "power" reading's values from one PowerStatus (pure)."""
    battery = status.battery
    if battery is not None:
        present: bool | None = True
    elif status.source == "none" and status.errors:
        present = None  # the supplies could not be read: cannot tell
    else:
        present = False  # no battery, or only batteries reporting present=0
    ac = status.ac_online
    return {
        "ac_online": ac,
        "plugged": ac,
        "battery_present": present,
        "battery_pct": battery.capacity_pct if battery else None,
        "battery_status": battery.status if battery else None,
        "battery_health": battery.health if battery else None,
        "battery_temp_c": battery.temp_c if battery else None,
        "supply_source": status.source,
        "updates_stopped": status.updates_stopped,
        "errors": [*status.errors, *(e for s in status.supplies for e in s.errors)],
    }


@dataclass
class PowerMonitor:
    """Reads every power supply once per poll."""

    cfg: PowerConfig
    roots: Roots = field(default_factory=Roots)
    shell: Shell = field(default_factory=Shell)
    name: str = "power"

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        return SHELL_TIMEOUT_S + 2.0 if self._uses_shell else 3.0

    @property
    def _uses_shell(self) -> bool:
        return self.shell.mode in ("android", "adb")

    def read(self) -> PowerStatus:
        """The supplies, from dumpsys on Android targets and from sysfs otherwise."""
        if self._uses_shell:
            return android.read_power_status(self.shell, SHELL_TIMEOUT_S)
        return read_power_status(self.roots)

    def poll(self) -> list[Reading]:
        return [Reading("power", power_values(self.read()))]


@register("power")
def power_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """One power monitor for the terminal."""
    return [PowerMonitor(cfg.power, ctx.roots, ctx.shell)]

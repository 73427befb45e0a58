"""adb link monitor (target adb only): one "adb" reading per interval.

Values: online (`adb get-state` says "device"), state (what adb said) and
reconnect_tried. When the device is not online, `adb reconnect` is tried
once per poll; the next poll tells whether it came back. A hung adb counts as
offline (the shell's timeout kills it). A missing adb executable fails the
poll (agent.monitor_failed), since that is a setup fault, not a device one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from agent.core.config import Config
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers.shell import Shell, ShellError, ShellTimeout, ShellUnavailable

log = structlog.get_logger(__name__)

STATE_TIMEOUT_S = 5.0


@dataclass
class AdbMonitor:
    """Checks that the Android terminal is reachable over adb."""

    shell: Shell
    interval_s: float = 5.0
    reconnect: bool = True
    state_timeout_s: float = STATE_TIMEOUT_S
    name: str = "adb"

    @property
    def timeout_s(self) -> float:
        return 2 * self.state_timeout_s + 2.0

    def poll(self) -> list[Reading]:
        try:
            state = self.shell.adb_state(self.state_timeout_s)
        except ShellTimeout as e:
            state = f"timeout: {e}"
        online = state == "device"
        tried = False
        if not online and self.reconnect:
            tried = True
            try:
                self.shell.reconnect(self.state_timeout_s)
            except ShellUnavailable:
                raise
            except ShellError as e:  # reconnect is best effort; the state above is the reading
                log.warning("adb_reconnect_failed", serial=self.shell.adb_serial, error=str(e))
        values: dict[str, Any] = {"online": online, "state": state, "reconnect_tried": tried}
        return [Reading("adb", values)]


@register("adb")
def adb_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """The adb monitor, only with target = "adb"."""
    if cfg.agent.target != "adb":
        return []
    return [AdbMonitor(ctx.shell, interval_s=cfg.power.interval_s)]

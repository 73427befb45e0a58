"""POS application monitor: one "app" reading per interval.

Values (the catalog's app rules read them; None when unknown or not configured):
- running: the configured process is there (by pid file, else by name; on
  targets android and adb by `pidof NAME` through the Shell);
- restarts_10min: how many times the process came back as a new process
  (new pid, or same pid with another create time) in the last 10 minutes;
  the first sighting is not a restart;
- heartbeat_age_s: seconds since the heartbeat file was modified (None when
  not configured or missing); on target adb the file is on the device and its
  age is `date +%s` minus `stat -c %Y FILE` there, so the two clocks never mix;
plus pid and heartbeat_exists as evidence.

With no process, pid file or heartbeat file configured there is no monitor.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.config import AppConfig, Config
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers import android
from drivers.shell import Shell
from drivers.system import find_process, heartbeat_age

RESTART_WINDOW_S = 600.0
SHELL_TIMEOUT_S = 5.0


@dataclass
class AppMonitor:
    """Watches the POS application's process and heartbeat."""

    cfg: AppConfig
    shell: Shell = field(default_factory=Shell)
    clock: Callable[[], float] = time.monotonic
    name: str = "app"
    _last: tuple[int, float | None] | None = field(default=None, init=False)
    _restarts: deque[float] = field(default_factory=deque, init=False)

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        return 2 * SHELL_TIMEOUT_S + 2.0  # pidof and, on adb, the heartbeat: a shell call each

    def _process(self) -> tuple[bool | None, tuple[int, float | None] | None, str]:
        """(running, identity (pid, create time), error) of the POS process."""
        cfg = self.cfg
        if not cfg.process and not cfg.pid_file:
            return None, None, ""
        if self.shell.mode in ("android", "adb") and cfg.process:
            pids = android.pidof(self.shell, cfg.process, SHELL_TIMEOUT_S)
            return bool(pids), ((min(pids), None) if pids else None), ""
        info = find_process(cfg.process, cfg.pid_file or None)
        if not info.found or info.pid is None:
            return False, None, info.error
        return True, (info.pid, info.create_time), info.error

    def poll(self) -> list[Reading]:
        now = self.clock()
        running, ident, error = self._process()
        if ident is not None:
            if self._last is not None and ident != self._last:
                self._restarts.append(now)
            self._last = ident
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        age: float | None = None
        exists: bool | None = None
        if self.cfg.heartbeat_file:
            if self.shell.mode == "adb":  # the file is on the device: its mtime by its clock
                hb = android.read_heartbeat(self.shell, self.cfg.heartbeat_file, SHELL_TIMEOUT_S)
            else:
                hb = heartbeat_age(self.cfg.heartbeat_file)
            age, exists = hb.age_s, hb.exists
            error = error or hb.error
        values: dict[str, Any] = {
            "running": running,
            "pid": ident[0] if ident is not None else None,
            "restarts_10min": len(self._restarts) if running is not None else None,
            "heartbeat_age_s": round(age, 2) if age is not None else None,
            "heartbeat_exists": exists,
            "error": error,
        }
        return [Reading("app", values)]


@register("app")
def app_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """One app monitor when the POS application is configured."""
    a = cfg.app
    if not (a.process or a.pid_file or a.heartbeat_file):
        return []
    return [AppMonitor(a, ctx.shell)]

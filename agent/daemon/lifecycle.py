"""Clean-stop marker and unclean-shutdown detection across agent restarts and reboots."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.files import atomic_write, unlink_durably
from drivers.roots import Roots
from drivers.system import read_boot_id


def current_boot_id(proc: Path = Path("/proc")) -> str:
    """The kernel's boot id ('' when unavailable)."""
    return read_boot_id(Roots(proc=proc)) or ""


@dataclass(frozen=True)
class PreviousRun:
    """What the last run left behind when it did not stop cleanly."""

    pid: int
    boot_id: str
    started_at: float
    last_alive_at: float
    rebooted: bool


class RunMarker:
    """`running.json` exists while the agent runs; a clean stop removes it.

    Finding it at start means the last run ended without a clean stop: a
    power cut (the boot id changed) or a crash/kill of the agent.
    """

    def __init__(self, state_dir: Path, proc: Path = Path("/proc")):
        self.path = state_dir / "running.json"
        self.proc = proc

    def check_previous(self) -> PreviousRun | None:
        """The unclean previous run, if any (call before `start`)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return PreviousRun(0, "", 0.0, 0.0, rebooted=False)
        boot = str(data.get("boot_id", ""))
        return PreviousRun(
            pid=int(data.get("pid", 0)),
            boot_id=boot,
            started_at=float(data.get("started_at", 0.0)),
            last_alive_at=float(data.get("last_alive_at", 0.0)),
            rebooted=bool(boot) and boot != current_boot_id(self.proc),
        )

    def start(self) -> None:
        """Write the marker for this run."""
        self.touch(started=True)

    def touch(self, started: bool = False) -> None:
        """Refresh last_alive_at (the flight recorder's persist tick calls this)."""
        now = time.time()
        data = {
            "pid": os.getpid(),
            "boot_id": current_boot_id(self.proc),
            "started_at": now if started else self._started_at(),
            "last_alive_at": now,
        }
        atomic_write(self.path, json.dumps(data).encode())

    def _started_at(self) -> float:
        try:
            return float(json.loads(self.path.read_text()).get("started_at", 0.0))
        except (OSError, ValueError):
            return 0.0

    def clean_stop(self) -> None:
        """The clean-stop marker: remove the running marker durably."""
        unlink_durably(self.path)

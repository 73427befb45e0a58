"""The one object every driver path starts from (node_exporter's --path.sysfs idea)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Roots:
    """Filesystem roots; tests and the simulator point them at a fake tree."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    run: Path = Path("/run/posagent")
    state: Path = Path("/var/lib/posagent")

    def sys_path(self, *parts: str) -> Path:
        """A path below the sysfs root."""
        return self.sys.joinpath(*parts)

    def proc_path(self, *parts: str) -> Path:
        """A path below the procfs root."""
        return self.proc.joinpath(*parts)

    def dev_path(self, name: str) -> Path:
        """A device node: absolute /dev paths are re-rooted, other names are joined."""
        p = Path(name)
        if p.is_absolute():
            try:
                return self.dev / p.relative_to("/dev")
            except ValueError:
                return p
        return self.dev / p

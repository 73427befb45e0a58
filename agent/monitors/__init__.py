"""Monitor protocol and registry (node_exporter's one-line collector registration).

A monitor module lives in this package (`agent/monitors/power.py`, ...) and
registers a factory in one line::

    @register("power")
    def power_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
        return [PowerMonitor(cfg.power, ctx.roots)]

A factory turns the config into zero or more monitors (one per printer, for
instance). The scheduler (agent/monitors/scheduler.py) runs each monitor's `poll` at
its `interval_s` with a `timeout_s`. Convention that keeps agent.monitor_failed
clearable: a monitor's `name` is the source of its readings ("power") or
their area ("printer" for "printer:receipt", or "printer:receipt" itself).

Beside the monitor modules live the scheduler that runs them and the watched
directories (crash/ANR dirs, log tails, the trigger dir). This `__init__` holds
only the protocol and the registry; `load_all()` imports every monitor module
beside it so their decorators run. Imports core and drivers only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import structlog

from agent.core.config import Config
from agent.core.model import Reading
from drivers.roots import Roots
from drivers.shell import Shell

log = structlog.get_logger(__name__)


@runtime_checkable
class Monitor(Protocol):
    """Something the scheduler polls: plain attributes or properties will do."""

    @property
    def name(self) -> str: ...

    @property
    def interval_s(self) -> float: ...

    @property
    def timeout_s(self) -> float: ...

    def poll(self) -> list[Reading]:
        """Observe once; raise on failure (the scheduler turns it into ok=False)."""
        ...


@dataclass(frozen=True)
class MonitorContext:
    """What factories get besides the config: the I/O edges, built once."""

    roots: Roots = field(default_factory=Roots)
    shell: Shell = field(default_factory=Shell)
    state_dir: Path = Path("/var/lib/posagent")

    @classmethod
    def from_config(cls, cfg: Config) -> MonitorContext:
        """Roots, shell mode and state dir as the config says."""
        mode = {"local": "local", "android": "android", "adb": "adb"}[cfg.agent.target]
        return cls(
            roots=cfg.fs_roots(),
            shell=Shell(mode=mode, adb_serial=cfg.agent.adb_serial, adb_path=cfg.agent.adb_path),
            state_dir=Path(cfg.agent.state_dir),
        )


Factory = Callable[[Config, MonitorContext], Sequence[Monitor]]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[F], F]:
    """Decorator: register a monitor factory under `name` (unique)."""

    def deco(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"monitor factory {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def unregister(name: str) -> None:
    """Remove a factory (tests and plugins)."""
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Factory]:
    """The registered factories by name, in registration order."""
    return dict(_REGISTRY)


# Modules of this package that are not monitors (nothing to register).
NOT_MONITORS = frozenset({"scheduler", "watch"})


def load_all() -> list[str]:
    """Import every module of this package so their @register lines run; returns their names."""
    names: list[str] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in NOT_MONITORS:
            continue
        importlib.import_module(f"{__name__}.{info.name}")
        names.append(info.name)
    return names


@dataclass
class BrokenMonitor:
    """Stands in for a factory that failed: every poll raises its error.

    The scheduler turns that into ok=False readings, so a broken monitor shows
    up as agent.monitor_failed instead of silently missing.
    """

    name: str
    error: str
    interval_s: float = 60.0
    timeout_s: float = 1.0

    def poll(self) -> list[Reading]:
        raise RuntimeError(f"monitor setup failed: {self.error}")


def build_monitors(
    cfg: Config, ctx: MonitorContext, names: Sequence[str] | None = None
) -> list[Monitor]:
    """Call every registered factory (or those in `names`); a failing one becomes a BrokenMonitor."""
    out: list[Monitor] = []
    for name, factory in registered().items():
        if names is not None and name not in names:
            continue
        try:
            out.extend(factory(cfg, ctx))
        except Exception as e:  # a factory bug must not stop the other monitors
            log.error("monitor_factory_failed", monitor=name, error=repr(e))
            out.append(BrokenMonitor(name, repr(e)))
    return out

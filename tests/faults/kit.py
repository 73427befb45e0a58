"""Shared helpers for the fault-engine tests: a fake clock and a tiny step language."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agent.core.config import Config, FaultOverride, NetworkConfig
from agent.core.model import FaultEvent, Reading, Severity
from agent.faults.engine import FaultEngine


class FakeClock:
    """A monotonic and a wall clock that only move when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.mono = start
        self.wall_time = 1_700_000_000.0

    def __call__(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds


@dataclass(frozen=True)
class Step:
    """One input to the engine: a reading, a failed reading, a condition or a one-shot event."""

    kind: str  # "reading" | "fail" | "cond" | "event" | "tick"
    dt: float
    name: str = ""  # source for readings, key for cond/event
    subject: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    bad: bool = False
    severity: Severity | None = None


def R(source: str, dt: float = 5.0, **values: Any) -> Step:
    """A good-monitor reading of `source` with `values`, dt seconds after the previous step."""
    return Step("reading", dt, source, values=values)


def F(source: str, dt: float = 5.0, error: str = "boom") -> Step:
    """A reading from a failed monitor (ok=False)."""
    return Step("fail", dt, source, values={"error": error})


def COND(key: str, subject: str, bad: bool, dt: float = 5.0) -> Step:
    """A set_condition call."""
    return Step("cond", dt, key, subject, bad=bad)


def EV(key: str, subject: str = "", severity: Severity | None = None, dt: float = 1.0) -> Step:
    """A one-shot event() call."""
    return Step("event", dt, key, subject, severity=severity)


def TICK(dt: float) -> Step:
    """Let time pass and call tick()."""
    return Step("tick", dt)


Row = tuple[int, str, str, str, str]  # step index, key, subject, state, severity


def make_config(
    faults: dict[str, FaultOverride] | None = None,
    latency_window: int | None = None,
) -> Config:
    """A default Config with fault overrides and a few test-friendly settings."""
    cfg = Config(faults=dict(faults or {}))
    if latency_window is not None:
        cfg = dataclasses.replace(cfg, network=NetworkConfig(latency_window=latency_window))
    return cfg


def make_engine(
    cfg: Config | None = None, clock: FakeClock | None = None
) -> tuple[FaultEngine, FakeClock]:
    """An engine on a fake clock."""
    clock = clock or FakeClock()
    return FaultEngine(cfg or Config(), clock, wall=clock.wall), clock


def apply(engine: FaultEngine, clock: FakeClock, step: Step) -> list[FaultEvent]:
    """Advance the clock by step.dt and feed the step; returns the events produced."""
    clock.advance(step.dt)
    if step.kind == "reading":
        return engine.feed(Reading(step.name, step.values, ts=clock.wall(), mono=clock()))
    if step.kind == "fail":
        err = str(step.values.get("error", ""))
        return engine.feed(
            Reading(step.name, {}, ok=False, error=err, ts=clock.wall(), mono=clock())
        )
    if step.kind == "cond":
        return engine.set_condition(step.name, step.subject, step.bad, summary="")
    if step.kind == "event":
        ev = engine.event(step.name, step.subject, step.severity, "", {"path": step.subject})
        return [ev] if ev is not None else []
    if step.kind == "tick":
        return engine.tick()
    raise ValueError(step.kind)


def run(
    steps: list[Step],
    watch: set[str] | None = None,
    cfg: Config | None = None,
) -> tuple[list[Row], list[FaultEvent], FaultEngine, FakeClock]:
    """Run steps on a fresh engine; rows are (step, key, subject, state, severity) for watched keys."""
    engine, clock = make_engine(cfg)
    rows: list[Row] = []
    events: list[FaultEvent] = []
    for i, step in enumerate(steps):
        for ev in apply(engine, clock, step):
            if watch is None or ev.key in watch:
                rows.append((i, ev.key, ev.subject, ev.state.value, ev.severity.value))
                events.append(ev)
    return rows, events, engine, clock

"""Records that flow between the agent's stages: readings, fault events, severities."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How bad a fault is: critical means a sale is impossible."""

    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for warning, 1 for error, 2 for critical (priority in the spool)."""
        return {"warning": 0, "error": 1, "critical": 2}[self.value]


@dataclass(frozen=True)
class Reading:
    """One monitor's observation of one subject at one time.

    `source` names the area and subject ("power", "printer:receipt",
    "network:eth0"); `values` is flat JSON-able data; `ok` is False when the
    monitor itself failed (raised or overran), with `error` saying why.
    """

    source: str
    values: dict[str, Any]
    ok: bool = True
    error: str = ""
    ts: float = field(default_factory=time.time)
    mono: float = field(default_factory=time.monotonic)

    @property
    def area(self) -> str:
        """The area part of the source: "printer" for "printer:receipt"."""
        return self.source.split(":", 1)[0]

    def to_json(self) -> dict[str, Any]:
        """Plain data for timelines and manifests."""
        d: dict[str, Any] = {"source": self.source, "ts": round(self.ts, 3), "ok": self.ok}
        if self.error:
            d["error"] = self.error
        d["values"] = self.values
        return d


class FaultState(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


@dataclass(frozen=True)
class FaultEvent:
    """A fault raised or cleared by the engine, with the readings behind it."""

    key: str
    state: FaultState
    severity: Severity
    summary: str
    subject: str = ""
    raised_at: float = 0.0
    at: float = field(default_factory=time.time)
    readings: tuple[Reading, ...] = ()
    suppressed: int = 0

    @property
    def instance(self) -> str:
        """Unique name of this fault instance: key plus subject when there is one."""
        return f"{self.key}@{self.subject}" if self.subject else self.key

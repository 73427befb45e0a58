"""The incident's data: rows as dataclasses, the statuses and their transitions, the
contact channels of a note, the filters of a list, and the errors of the package.

An `Incident` is one episode (or a run of episodes, reopened within the window) of one
fault key on one device; `collector.incidents.grouping` makes and changes them, people
change their status, assignee and notes (`collector.incidents.service`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.core.model import Severity
from collector.i18n import Phrased
from collector.storage.base import Query


class IncidentError(Phrased):
    """Base of the package's errors (each maps to one HTTP answer): English in `str(e)`, the
    reader's language in `e.words()` (a form's error on the page)."""


class NotFound(IncidentError):
    """No such incident, or one out of the principal's reach (404 either way)."""


class OutOfReach(NotFound):
    """An incident that exists, out of the principal's reach: answered as NotFound (its
    existence is not told) and audited as ``incident.denied``."""


class Forbidden(IncidentError):
    """A principal who may only read asked to change something (403)."""


class BadInput(IncidentError, ValueError):
    """A request that does not read (400 with the reason)."""


class InvalidTransition(IncidentError):
    """A status change the incident's current status does not allow (409)."""


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


# The status changes a person may make (the collector itself only resolves, and reopens
# a resolved incident on a recurrence). resolved -> open is a person's reopen.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.OPEN: frozenset({Status.ACKNOWLEDGED, Status.RESOLVED}),
    Status.ACKNOWLEDGED: frozenset({Status.RESOLVED}),
    Status.RESOLVED: frozenset({Status.OPEN}),
}

# `status=` of a list: a status, or "unresolved" (open or acknowledged)
STATUS_FILTERS = ("open", "acknowledged", "resolved", "unresolved")


class Channel(StrEnum):
    """How the contact a note records took place."""

    PHONE = "phone"
    EMAIL = "email"
    VISIT = "visit"
    CHAT = "chat"
    OTHER = "other"


class EventKind(StrEnum):
    """The kinds of `incident_events` rows (the migration's CHECK lists the same)."""

    OPENED = "opened"
    REOPENED = "reopened"
    CLEARED = "cleared"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    ESCALATED = "escalated"
    ASSIGNED = "assigned"
    NOTE = "note"
    BUNDLE = "bundle"


class Source(StrEnum):
    """What raised an incident: bundles of a terminal, or the collector itself (issue 16's
    ``device.silent``: a fleet-side fault key with no bundle)."""

    BUNDLE = "bundle"
    FLEET = "fleet"


SYSTEM_ACTOR = "system"  # the actor of what the collector does by itself

SEVERITY_RANK = {s.value: s.rank for s in Severity}


def sev_rank(severity: str) -> int:
    """0 warning, 1 error, 2 critical; -1 for anything else."""
    return SEVERITY_RANK.get(severity, -1)


INCIDENT_COLUMNS = (
    "id",
    "device",
    "site",
    "fault_key",
    "source",
    "severity",
    "summary",
    "status",
    "assignee",
    "active",
    "raised_at",
    "episode_at",
    "cleared_at",
    "last_at",
    "duration_s",
    "repeats",
    "bundles",
    "open_since",
    "touched_at",
    "escalated_at",
    "resolved_at",
    "created_at",
    "updated_at",
)
SELECT_INCIDENT = f"SELECT {', '.join(INCIDENT_COLUMNS)} FROM incidents"


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class Incident:
    """One row of ``incidents``. Times: raised_at, episode_at, cleared_at and last_at are
    the terminal's (bundle created_at); open_since, touched_at and the rest the collector's."""

    id: int
    device: str
    site: str
    fault_key: str
    source: str
    severity: str
    summary: str
    status: Status
    assignee: str
    active: bool  # the fault is raised now (its last episode has not cleared)
    raised_at: float  # the first episode's start
    episode_at: float  # the current (or last) episode's start
    cleared_at: float | None  # the last episode's end; None while raised
    last_at: float  # the newest signal grouped
    duration_s: float  # raised time of the episodes that cleared
    repeats: int  # recurrences within the reopen window
    bundles: int
    open_since: float  # when it was opened or last reopened (collector time)
    touched_at: float  # when the last signal was grouped (collector time)
    escalated_at: float | None
    resolved_at: float | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Incident:
        d = dict(zip(INCIDENT_COLUMNS, row, strict=True))
        return cls(
            id=int(d["id"]),
            device=str(d["device"]),
            site=str(d["site"]),
            fault_key=str(d["fault_key"]),
            source=str(d["source"]),
            severity=str(d["severity"]),
            summary=str(d["summary"]),
            status=Status(str(d["status"])),
            assignee=str(d["assignee"]),
            active=bool(d["active"]),
            raised_at=float(d["raised_at"]),
            episode_at=float(d["episode_at"]),
            cleared_at=_opt(d["cleared_at"]),
            last_at=float(d["last_at"]),
            duration_s=float(d["duration_s"]),
            repeats=int(d["repeats"]),
            bundles=int(d["bundles"]),
            open_since=float(d["open_since"]),
            touched_at=float(d["touched_at"]),
            escalated_at=_opt(d["escalated_at"]),
            resolved_at=_opt(d["resolved_at"]),
            created_at=float(d["created_at"]),
            updated_at=float(d["updated_at"]),
        )

    def total_duration_s(self, now: float) -> float:
        """Raised time over every episode, the one still raised counted up to now."""
        ongoing = max(0.0, now - self.episode_at) if self.active else 0.0
        return self.duration_s + ongoing

    @property
    def lock_name(self) -> str:
        return lock_name(self.device, self.fault_key)


def lock_name(device: str, fault_key: str) -> str:
    """The advisory lock every writer of a (device, fault key)'s incidents holds."""
    return f"incident:{device}:{fault_key}"


@dataclass(frozen=True)
class Event:
    """One row of ``incident_events``."""

    id: int
    incident_id: int
    kind: EventKind
    at: float
    actor: str
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Event:
        try:
            detail = json.loads(str(row[5]))
        except ValueError:
            detail = {"unreadable": str(row[5])[:200]}
        return cls(
            id=int(row[0]),
            incident_id=int(row[1]),
            kind=EventKind(str(row[2])),
            at=float(row[3]),
            actor=str(row[4]),
            detail=detail if isinstance(detail, dict) else {"value": detail},
        )


@dataclass(frozen=True)
class GroupedBundle:
    """A bundle an incident groups; `record` is None once retention deleted its row."""

    bundle_id: str
    trigger_kind: str
    at: float
    record: Any = None  # collector.storage.BundleRecord | None


@dataclass(frozen=True)
class IncidentFilter:
    """A list's filters: the bundle filters (`Query`: device, site, fault, severity, since,
    until, paging and the principal's sites) plus status and assignee. since/until select
    the incidents active in the window (last signal at or after since, raised at or before
    until)."""

    query: Query = field(default_factory=Query)
    status: str = ""  # one of STATUS_FILTERS, or "" for any
    assignee: str | None = None  # None: any; "": unassigned

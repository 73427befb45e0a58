"""What made a bundle: the manifest's `trigger`, typed, built in one place.

The daemon builds it from a fault event (`Trigger.of_event`), `posagent report`
and the trigger directory from a person's note (`Trigger.manual`); capture
writes it into the manifest and report.txt (`to_json`); the collector and
`posagent bundle show` read it back from a manifest (`Trigger.from_json`),
which refuses a trigger of the wrong shape with a `TriggerError` naming the
field. docs/ARCHITECTURE.md §4 lists the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.core.model import FaultEvent, FaultState, Severity
from agent.core.timefmt import rfc3339

MANUAL_KEY = "manual.report"
STARTUP_KEYS = frozenset({"power.unclean_shutdown"})
MAX_READINGS = 10
_TEXT_LIMITS = {"key": 100, "subject": 200, "summary": 2000, "note": 10000, "contact": 500}


class TriggerKind(StrEnum):
    """Why the bundle was made."""

    FAULT = "fault"
    CLEARED = "cleared"
    MANUAL = "manual"
    STARTUP = "startup"


class TriggerError(ValueError):
    """A manifest's trigger that is not of the bundle format's shape."""


@dataclass(frozen=True)
class Trigger:
    """The manifest `trigger` of one bundle."""

    kind: TriggerKind
    key: str
    severity: Severity
    summary: str = ""
    subject: str = ""
    raised_at: str = ""  # RFC 3339, "" when not a fault
    cleared_at: str = ""  # RFC 3339, only for kind cleared
    duration_s: float | None = None  # only for kind cleared
    readings: tuple[dict[str, Any], ...] = ()
    suppressed: int = 0
    note: str = ""  # manual reports: the merchant's words
    contact: str = ""
    tried: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ builders

    @classmethod
    def of_event(cls, ev: FaultEvent, suppressed: int = 0) -> Trigger:
        """The trigger of a fault event (raised, cleared, a manual report or start-up)."""
        if ev.key == MANUAL_KEY:
            kind = TriggerKind.MANUAL
        elif ev.key in STARTUP_KEYS:
            kind = TriggerKind.STARTUP
        elif ev.state == FaultState.CLEARED:
            kind = TriggerKind.CLEARED
        else:
            kind = TriggerKind.FAULT
        cleared = ev.state == FaultState.CLEARED
        note = contact = ""
        if kind == TriggerKind.MANUAL and ev.readings:
            vals = ev.readings[-1].values
            note, contact = str(vals.get("note", "")), str(vals.get("contact", ""))
        return cls(
            kind=kind,
            key=ev.key,
            severity=ev.severity,
            summary=ev.summary,
            subject=ev.subject,
            raised_at=rfc3339(ev.raised_at) if ev.raised_at else "",
            cleared_at=rfc3339(ev.at) if cleared and ev.at else "",
            duration_s=round(max(0.0, ev.at - ev.raised_at), 1) if cleared else None,
            readings=tuple(r.to_json() for r in ev.readings[-MAX_READINGS:]),
            suppressed=suppressed,
            note=note,
            contact=contact,
        )

    @classmethod
    def manual(
        cls,
        note: str,
        contact: str = "",
        severity: Severity = Severity.ERROR,
        summary: str = "manual report from the terminal",
    ) -> Trigger:
        """A person's report (`posagent report`, a trigger file); a note or contact longer than
        the format allows is cut, never refused (the collector would refuse the bundle)."""
        return cls(
            kind=TriggerKind.MANUAL,
            key=MANUAL_KEY,
            severity=severity,
            summary=_clip(summary, _TEXT_LIMITS["summary"]),
            note=_clip(note, _TEXT_LIMITS["note"]),
            contact=_clip(contact, _TEXT_LIMITS["contact"]),
        )

    # ------------------------------------------------------------------ manifest form

    def to_json(self) -> dict[str, Any]:
        """The manifest form: cleared_at/duration_s only when cleared, note/contact only
        for manual reports."""
        d: dict[str, Any] = {
            "kind": self.kind.value,
            "key": self.key,
            "subject": self.subject,
            "severity": self.severity.value,
            "summary": self.summary,
            "raised_at": self.raised_at,
            "readings": list(self.readings),
            "suppressed": self.suppressed,
        }
        if self.kind == TriggerKind.CLEARED:
            d["cleared_at"] = self.cleared_at
            d["duration_s"] = self.duration_s
        if self.kind == TriggerKind.MANUAL:
            d["note"] = self.note
            d["contact"] = self.contact
        if self.tried:
            d["tried"] = list(self.tried)
        return d

    @classmethod
    def from_json(cls, data: Any) -> Trigger:
        """Read a manifest's trigger back; TriggerError names the first field that is off."""
        if not isinstance(data, Mapping):
            raise TriggerError("trigger: not an object")
        try:
            kind = TriggerKind(str(data.get("kind")))
        except ValueError:
            raise TriggerError(f"trigger.kind: not one of {[k.value for k in TriggerKind]}")
        sev_raw = data.get("severity") or Severity.ERROR.value
        try:
            severity = Severity(sev_raw)
        except ValueError:
            raise TriggerError(f"trigger.severity: not one of {[s.value for s in Severity]}")
        text = {name: _text(data, name, limit) for name, limit in _TEXT_LIMITS.items()}
        key = text["key"] or (MANUAL_KEY if kind == TriggerKind.MANUAL else "")
        readings = data.get("readings", [])
        if not isinstance(readings, list) or not all(isinstance(r, Mapping) for r in readings):
            raise TriggerError("trigger.readings: not a list of objects")
        suppressed = data.get("suppressed", 0)
        if isinstance(suppressed, bool) or not isinstance(suppressed, int) or suppressed < 0:
            raise TriggerError("trigger.suppressed: not a count")
        duration = data.get("duration_s")
        if duration is not None and (
            isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0
        ):
            raise TriggerError("trigger.duration_s: not a number of seconds")
        tried = data.get("tried", [])
        if not isinstance(tried, list) or not all(isinstance(t, str) for t in tried):
            raise TriggerError("trigger.tried: not a list of strings")
        return cls(
            kind=kind,
            key=key,
            severity=severity,
            summary=text["summary"],
            subject=text["subject"],
            raised_at=_text(data, "raised_at", 40),
            cleared_at=_text(data, "cleared_at", 40),
            duration_s=float(duration) if duration is not None else None,
            readings=tuple(dict(r) for r in readings[-MAX_READINGS:]),
            suppressed=suppressed,
            note=text["note"],
            contact=text["contact"],
            tried=tuple(tried),
        )


def _text(data: Mapping[str, Any], name: str, limit: int) -> str:
    v = data.get(name, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise TriggerError(f"trigger.{name}: not a string")
    if len(v) > limit:
        raise TriggerError(f"trigger.{name}: longer than {limit} characters")
    return v


def _clip(text: str, limit: int) -> str:
    mark = " [cut]"
    return text if len(text) <= limit else text[: limit - len(mark)] + mark

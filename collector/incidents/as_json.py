"""The incidents as the API gives them (and the dispute export's incident.json): times in
RFC 3339 (null for none), durations in seconds, links to the incident's endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.timefmt import rfc3339
from collector.incidents.model import Event, GroupedBundle, Incident
from collector.incidents.queries import Detail
from collector.pages import shown_time
from collector.reads import record_json


def time_json(ts: float | None) -> str | None:
    return rfc3339(ts) if ts is not None and shown_time(ts) != "-" else None


def fault_text(line: Mapping[str, Any]) -> str:
    """One fault key over a window, in words."""
    t, s = int(line["terminals"]), int(line["sites"])
    return (
        f"{line['fault_key']} at {t} terminal{'s' if t != 1 else ''} "
        f"in {s} site{'s' if s != 1 else ''}"
    )


def incident_json(inc: Incident, now: float) -> dict[str, Any]:
    """An incident for the API (times RFC 3339, the duration counted up to now)."""
    base = f"/v1/incidents/{inc.id}"
    return {
        "id": inc.id,
        "device": inc.device,
        "site": inc.site,
        "fault_key": inc.fault_key,
        "source": inc.source,
        "severity": inc.severity,
        "summary": inc.summary,
        "status": inc.status.value,
        "assignee": inc.assignee,
        "active": inc.active,
        "raised_at": time_json(inc.raised_at),
        "cleared_at": time_json(inc.cleared_at),
        "last_at": time_json(inc.last_at),
        "duration_s": round(inc.total_duration_s(now), 3),
        "repeats": inc.repeats,
        "bundles": inc.bundles,
        "opened_at": time_json(inc.created_at),
        "escalated_at": time_json(inc.escalated_at),
        "resolved_at": time_json(inc.resolved_at),
        "updated_at": time_json(inc.updated_at),
        "links": {"self": base, "page": f"/incidents/{inc.id}", "export": f"{base}/export"},
    }


def event_json(ev: Event) -> dict[str, Any]:
    return {
        "id": ev.id,
        "kind": ev.kind.value,
        "at": time_json(ev.at),
        "actor": ev.actor,
        "detail": ev.detail,
    }


def bundle_json(b: GroupedBundle) -> dict[str, Any]:
    if b.record is None:  # retention deleted its row
        return {
            "bundle_id": b.bundle_id,
            "trigger_kind": b.trigger_kind,
            "created_at": time_json(b.at),
            "deleted": True,
        }
    return {**record_json(b.record), "deleted": False}


def detail_json(d: Detail, now: float) -> dict[str, Any]:
    return {
        **incident_json(d.incident, now),
        "bundle_list": [bundle_json(b) for b in d.bundles],
        "bundle_total": d.bundle_total,
        "notes": [event_json(n) for n in d.notes],
        "events": [event_json(e) for e in d.events],
        "event_total": d.event_total,
    }


# --------------------------------------------------------------------------- handlers

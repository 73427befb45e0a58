"""The incidents' event log: every change of an incident is one append-only row of
``incident_events`` (id, incident_id, kind, at, actor, detail JSON), written by `append`
and by nothing else, inside the transaction that makes the change.

Kinds (`model.EventKind`): ``opened``, ``reopened`` (a recurrence within the window, or a
person reopening a resolved one), ``cleared`` (an episode ended: its duration),
``acknowledged``, ``resolved`` (by a person, or ``"auto": true`` by the collector),
``escalated``, ``assigned``, ``note`` (a contact with the merchant: channel, contact, text,
contact_at) and ``bundle`` (a bundle grouped into it). The actor is the person's name, or
``system`` for what the collector does by itself.

Notifications (webhooks, email) are fed from here: a consumer hooks into `append` and
writes its outbox row in the same transaction, so an event and its delivery are
committed together or not at all. Ids increase, but on PostgreSQL two transactions may
commit out of id order: a reader that pages by id must allow for a late commit.
"""

from __future__ import annotations

import json
from typing import Any

from agent.core.timefmt import rfc3339
from collector import notify
from collector.incidents.model import Event, EventKind
from collector.storage.base import StorageError
from collector.storage.sql import Tx

MAX_DETAIL_BYTES = 16384
_COLUMNS = "id, incident_id, kind, at, actor, detail"


def append(
    tx: Tx,
    incident_id: int,
    kind: EventKind,
    actor: str,
    detail: dict[str, Any],
    *,
    at: float,
) -> Event:
    """Append one event in tx (the caller's transaction); the event as written."""
    text = json.dumps(detail, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(text.encode()) > MAX_DETAIL_BYTES:
        raise ValueError(f"event detail over {MAX_DETAIL_BYTES} bytes")
    row = tx.one(
        "INSERT INTO incident_events (incident_id, kind, at, actor, detail) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (incident_id, kind.value, at, actor[:200], text),
    )
    if row is None:
        raise StorageError("incident event not returned")
    if kind in NOTIFIED:  # the notifications outbox, in this same transaction
        notify.enqueue(tx, NOTIFIED[kind], _payload(tx, incident_id), at=at)
    return Event(int(row[0]), incident_id, kind, at, actor[:200], detail)


# The events people are told of (`collector.notify`: webhooks, email).
NOTIFIED = {
    EventKind.OPENED: "incident.opened",
    EventKind.REOPENED: "incident.reopened",
    EventKind.ESCALATED: "incident.escalated",
    EventKind.RESOLVED: "incident.resolved",
}


def _payload(tx: Tx, incident_id: int) -> dict[str, Any]:
    """The incident as a notification's `IncidentPayload` (url relative: the notifier
    puts the collector's public address before it)."""
    row = tx.one(
        "SELECT device, site, fault_key, severity, status, raised_at, cleared_at, repeats, "
        "summary FROM incidents WHERE id = ?",
        (incident_id,),
    )
    if row is None:
        raise StorageError(f"incident {incident_id} not found for its notification")
    device, site, fault_key, severity, status, raised_at, cleared_at, repeats, summary = row
    return {
        "id": incident_id,
        "device": str(device),
        "site": str(site),
        "fault_key": str(fault_key),
        "severity": str(severity),
        "status": str(status),
        "opened_at": rfc3339(float(raised_at)),
        "cleared_at": None if cleared_at is None else rfc3339(float(cleared_at)),
        "repeats": int(repeats),
        "summary": str(summary),
        "url": f"/incidents/{incident_id}",
    }


def of_incident(
    tx: Tx, incident_id: int, *, kinds: tuple[EventKind, ...] = (), limit: int = 500
) -> list[Event]:
    """The incident's newest events (of those kinds, when given), oldest first."""
    sql = f"SELECT {_COLUMNS} FROM incident_events WHERE incident_id = ?"
    params: list[Any] = [incident_id]
    if kinds:
        sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
        params.extend(k.value for k in kinds)
    rows = tx.all(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
    return [Event.from_row(r) for r in reversed(rows)]


def count(tx: Tx, incident_id: int, *, exclude: tuple[EventKind, ...] = ()) -> int:
    """How many events the incident has (without those kinds)."""
    sql = "SELECT COUNT(*) FROM incident_events WHERE incident_id = ?"
    params: list[Any] = [incident_id]
    if exclude:
        sql += f" AND kind NOT IN ({', '.join('?' for _ in exclude)})"
        params.extend(k.value for k in exclude)
    row = tx.one(sql, params)
    return int(row[0]) if row else 0

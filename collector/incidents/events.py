"""The incidents' event log: every change of an incident is one append-only row of
``incident_events`` (id, incident_id, kind, at, actor, detail JSON), written by `append`
(or `record`, the same without the id read back) and by nothing else, inside the
transaction that makes the change.

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
from collector.storage.sql import Row, Tx

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
    text = _text(detail)
    row = tx.one(
        f"INSERT INTO incident_events ({_WRITTEN}) VALUES (?, ?, ?, ?, ?) RETURNING id",
        (incident_id, kind.value, at, actor[:200], text),
    )
    if row is None:
        raise StorageError("incident event not returned")
    _notify(tx, incident_id, kind, at, None)
    return Event(int(row[0]), incident_id, kind, at, actor[:200], detail)


def record(
    tx: Tx,
    incident_id: int,
    kind: EventKind,
    actor: str,
    detail: dict[str, Any],
    *,
    at: float,
    incident: Row | None = None,
) -> None:
    """`append` without reading the event's id back: statements only, so a pipelined
    transaction (`collector.storage.sql`) sends it with the next without waiting.

    incident: the incident's `PAYLOAD_COLUMNS` as the caller's own write returned them
    (``RETURNING``), for a notified kind's payload; read here when None."""
    tx.execute(
        f"INSERT INTO incident_events ({_WRITTEN}) VALUES (?, ?, ?, ?, ?)",
        (incident_id, kind.value, at, actor[:200], _text(detail)),
    )
    _notify(tx, incident_id, kind, at, incident)


_WRITTEN = "incident_id, kind, at, actor, detail"


def _text(detail: dict[str, Any]) -> str:
    text = json.dumps(detail, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if len(text.encode()) > MAX_DETAIL_BYTES:
        raise ValueError(f"event detail over {MAX_DETAIL_BYTES} bytes")
    return text


def _notify(tx: Tx, incident_id: int, kind: EventKind, at: float, incident: Row | None) -> None:
    """The notifications outbox's rows of a notified kind, in this same transaction."""
    if kind in NOTIFIED:
        cols = incident if incident is not None else _payload_row(tx, incident_id)
        notify.enqueue(tx, NOTIFIED[kind], payload(incident_id, cols), at=at)


# The events people are told of (`collector.notify`: webhooks, email).
NOTIFIED = {
    EventKind.OPENED: "incident.opened",
    EventKind.REOPENED: "incident.reopened",
    EventKind.ESCALATED: "incident.escalated",
    EventKind.RESOLVED: "incident.resolved",
}


# The incident's columns a notification's payload is made of (`payload`).
PAYLOAD_COLUMNS = (
    "device, site, fault_key, severity, status, raised_at, cleared_at, repeats, summary"
)


def _payload_row(tx: Tx, incident_id: int) -> Row:
    row = tx.one(f"SELECT {PAYLOAD_COLUMNS} FROM incidents WHERE id = ?", (incident_id,))
    if row is None:
        raise StorageError(f"incident {incident_id} not found for its notification")
    return row


def payload(incident_id: int, row: Row) -> dict[str, Any]:
    """The incident (its `PAYLOAD_COLUMNS` row) as a notification's `IncidentPayload`
    (url relative: the notifier puts the collector's public address before it)."""
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

"""The notifications outbox in the index (tables ``notify_outbox`` and ``notify_attempts``,
migration 0007): what is to be sent, claimed, retried, and the delivery log.

- `enqueue` writes one row per subscribed (channel, target) in the CALLER's transaction:
  an incident change and its notifications commit or roll back together. Each row has a
  fresh delivery id (UUID 4) and its body, the exact bytes every attempt sends.
- `claim` takes up to ``limit`` due rows of one target for one worker: a lease
  (``lease_until``, ``claimed_by``) set by a compare-and-set UPDATE, so two workers (two
  instances on one PostgreSQL) never hold one row; PostgreSQL also skips the rows another
  claim has locked (``FOR UPDATE SKIP LOCKED``, `_claim_sql`: the one place the engines
  differ). A worker that dies leaves its lease, which expires. The claim is a durable
  commit (the default ``db.transaction()``) and must stay one: a row written by a
  transaction that did not wait for the disk (a bundle's grouping, ``durable=False``)
  is on disk once the claim that leased it has committed, so nothing is sent for a
  change a crash of the database could still undo.
- `finish` records one attempt (``notify_attempts``) and the row's new state in one
  transaction: ``delivered`` on success; else ``pending`` again with the next attempt
  after `RetryPolicy.delay` (exponential, equal jitter, capped), or ``failed`` once
  ``max_attempts`` or ``max_age_s`` is reached. Only a ``pending`` row is ever claimed:
  a delivery recorded as delivered is never sent again.
- `deliveries` is the delivery log of one target, newest first, with every attempt;
  `prune` drops delivered and failed rows older than the log's keep time.

Times are epoch seconds given by the caller (the worker's clock), so tests drive them.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from agent.core.timefmt import rfc3339
from collector.config import NOTIFY_EVENTS
from collector.notify.channels import Channels
from collector.storage.sql import Database, Dialect, Tx

SCHEMA = "posagent.notify/1"
Event = Literal["incident.opened", "incident.reopened", "incident.escalated", "incident.resolved"]
Status = Literal["pending", "delivered", "failed"]


class IncidentPayload(TypedDict):
    """The incident as the notification's ``incident`` object (README: Notifications)."""

    id: int  # the incident's id
    device: str  # the terminal's device id
    site: str  # the device's registered site ("" when none)
    fault_key: str  # e.g. "printer.paper_end"
    severity: str  # "info" | "warning" | "critical"
    status: str  # "open" | "acknowledged" | "resolved"
    opened_at: str  # RFC 3339 UTC, when the episode was raised
    cleared_at: str | None  # RFC 3339 UTC when the fault cleared, else null
    repeats: int  # times the fault was raised again within the episode
    summary: str  # one line for people
    url: str  # the incident's page on the collector


_PAYLOAD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "device": (str,),
    "site": (str,),
    "fault_key": (str,),
    "severity": (str,),
    "status": (str,),
    "opened_at": (str,),
    "cleared_at": (str, type(None)),
    "repeats": (int,),
    "summary": (str,),
    "url": (str,),
}


def check_payload(payload: Mapping[str, Any]) -> None:
    """ValueError unless payload has exactly the `IncidentPayload` keys and types."""
    keys = set(payload)
    if keys != set(_PAYLOAD_TYPES):
        missing, unknown = set(_PAYLOAD_TYPES) - keys, keys - set(_PAYLOAD_TYPES)
        raise ValueError(f"incident payload: missing {sorted(missing)}, unknown {sorted(unknown)}")
    for key, types in _PAYLOAD_TYPES.items():
        value = payload[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"incident payload: {key} is {type(value).__name__}")


def envelope(event: str, delivery_id: str, payload: Mapping[str, Any], at: float) -> str:
    """The JSON body every channel carries (compact, keys sorted, UTF-8)."""
    doc = {
        "schema": SCHEMA,
        "event": event,
        "delivery_id": delivery_id,
        "at": rfc3339(at),
        "incident": dict(payload),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def enqueue(
    tx: Tx, channels: Channels, event: str, payload: Mapping[str, Any], *, at: float
) -> int:
    """One outbox row per channel target subscribed to event, in tx; the rows written.

    ValueError (nothing written) for an unknown event or a payload that is not an
    `IncidentPayload`."""
    if event not in NOTIFY_EVENTS:
        raise ValueError(f"unknown event {event[:60]!r} (known: {', '.join(NOTIFY_EVENTS)})")
    check_payload(payload)
    targets = channels.subscribed(event)
    for channel, target in targets:
        delivery_id = str(uuid.uuid4())
        tx.execute(
            "INSERT INTO notify_outbox (delivery_id, channel, target, event, ref, body, "
            "created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                delivery_id,
                channel,
                target,
                event,
                str(payload["id"]),
                envelope(event, delivery_id, payload, at),
                at,
                at,
            ),
        )
    return len(targets)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again, and when to give up (`[collector.notify]`)."""

    base_s: float = 10.0
    max_s: float = 3600.0
    max_attempts: int = 20
    max_age_s: float = 86400.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """The wait after the attempts-th failure: d = min(max_s, base_s * 2^(attempts-1)),
        then d/2 plus a uniform jitter up to d/2 (so a wait is never shorter than half the
        next one's cap: the waits grow until the cap)."""
        d = min(self.max_s, self.base_s * 2.0 ** min(max(attempts - 1, 0), 60))
        return d / 2 + rng.uniform(0.0, d / 2)

    def gives_up(self, attempts: int, age_s: float) -> bool:
        return attempts >= self.max_attempts or age_s >= self.max_age_s


@dataclass(frozen=True)
class Claimed:
    """A row a worker holds the lease of."""

    id: int
    delivery_id: str
    channel: str
    target: str
    event: str
    body: str
    attempts: int  # before this one
    created_at: float


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: ok (2xx, or the SMTP server took the message), the HTTP or
    SMTP code when one came back, an error line, and how long it took."""

    ok: bool
    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0


_DUE = "status = 'pending' AND next_at <= ? AND lease_until <= ?"


def _claim_sql(dialect: Dialect) -> str:
    """The claim statement; PostgreSQL also skips rows another claim has locked.

    The candidates are a MATERIALIZED CTE: PostgreSQL may run a ``WHERE id IN (SELECT ...
    LIMIT n FOR UPDATE SKIP LOCKED)`` subquery more than once and so lease more than n
    rows; a materialized CTE is run once."""
    skip = " FOR UPDATE SKIP LOCKED" if dialect == "postgres" else ""
    return (
        "WITH due AS MATERIALIZED (SELECT id FROM notify_outbox WHERE channel = ? AND "
        f"target = ? AND {_DUE} ORDER BY next_at, id LIMIT ?{skip}) "
        "UPDATE notify_outbox SET lease_until = ?, claimed_by = ? "
        f"WHERE id IN (SELECT id FROM due) AND {_DUE} "
        "RETURNING id, delivery_id, channel, target, event, body, attempts, created_at"
    )


def due_targets(db: Database, targets: list[tuple[str, str]], now: float) -> list[tuple[str, str]]:
    """Those of targets with a row due at now and not leased (one indexed probe each)."""
    with db.transaction(write=False) as tx:
        return [
            (channel, target)
            for channel, target in targets
            if tx.one(
                f"SELECT 1 FROM notify_outbox WHERE channel = ? AND target = ? AND {_DUE} LIMIT 1",
                (channel, target, now, now),
            )
        ]


def claim(
    db: Database,
    channel: str,
    target: str,
    *,
    now: float,
    worker: str,
    limit: int,
    lease_s: float,
) -> list[Claimed]:
    """Lease up to limit due rows of one target to worker until now + lease_s."""
    with db.transaction() as tx:
        rows = tx.all(
            _claim_sql(tx.dialect),
            (channel, target, now, now, limit, now + lease_s, worker, now, now),
        )
    out = [
        Claimed(
            int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]), float(r[7])
        )
        for r in rows
    ]
    return sorted(out, key=lambda c: c.id)


def finish(
    db: Database,
    row: Claimed,
    outcome: Outcome,
    *,
    started_at: float,
    now: float,
    worker: str,
    policy: RetryPolicy,
    rng: random.Random,
) -> Status | None:
    """Record one attempt and the row's new state; None when the lease was lost (another
    worker took the row over: nothing is recorded)."""
    attempts = row.attempts + 1
    status: Status
    next_at = now
    if outcome.ok:
        status = "delivered"
    elif policy.gives_up(attempts, now - row.created_at):
        status = "failed"
    else:
        status = "pending"
        next_at = now + policy.delay(attempts, rng)
    with db.transaction() as tx:
        changed = tx.execute(
            "UPDATE notify_outbox SET status = ?, attempts = ?, next_at = ?, lease_until = 0, "
            "claimed_by = NULL, done_at = ?, last_status = ?, last_error = ? "
            "WHERE id = ? AND status = 'pending' AND claimed_by = ? AND attempts = ?",
            (
                status,
                attempts,
                next_at,
                None if status == "pending" else now,
                outcome.status_code,
                outcome.error,
                row.id,
                worker,
                row.attempts,
            ),
        )
        if changed != 1:
            return None
        tx.execute(
            "INSERT INTO notify_attempts (delivery_id, attempt, at, duration_ms, status_code, "
            "error, worker) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.delivery_id,
                attempts,
                started_at,
                outcome.duration_ms,
                outcome.status_code,
                outcome.error,
                worker,
            ),
        )
    return status


def release(db: Database, worker: str, ids: list[int] | None = None) -> int:
    """Give up worker's leases (of ids, or all of them) untouched; the rows released."""
    sql = "UPDATE notify_outbox SET lease_until = 0, claimed_by = NULL WHERE claimed_by = ? AND status = 'pending'"
    params: list[Any] = [worker]
    if ids is not None:
        if not ids:
            return 0
        sql += f" AND id IN ({', '.join('?' for _ in ids)})"
        params += ids
    with db.transaction() as tx:
        return tx.execute(sql, params)


def deliveries(
    db: Database,
    channel: str,
    target: str,
    *,
    limit: int = 100,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """The delivery log of one target, newest first, each with its attempts."""
    cond, params = "channel = ? AND target = ?", [channel, target]
    if status is not None:
        cond += " AND status = ?"
        params.append(status)
    with db.transaction(write=False) as tx:
        rows = tx.all(
            "SELECT delivery_id, event, ref, status, attempts, created_at, next_at, done_at, "
            f"last_status, last_error FROM notify_outbox WHERE {cond} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        ids = [str(r[0]) for r in rows]
        tries: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            for d, n, at, ms, code, err, worker in tx.all(
                "SELECT delivery_id, attempt, at, duration_ms, status_code, error, worker "
                f"FROM notify_attempts WHERE delivery_id IN ({', '.join('?' for _ in ids)}) "
                "ORDER BY delivery_id, attempt",
                ids,
            ):
                tries[str(d)].append(
                    {
                        "attempt": int(n),
                        "at": rfc3339(float(at)),
                        "duration_ms": int(ms),
                        "status_code": code,
                        "error": str(err),
                        "worker": str(worker),
                    }
                )
    return [
        {
            "delivery_id": str(d),
            "event": str(ev),
            "incident_id": str(ref),
            "status": str(st),
            "attempts": int(n),
            "created_at": rfc3339(float(ca)),
            "next_at": rfc3339(float(na)) if st == "pending" else None,
            "done_at": rfc3339(float(da)) if da is not None else None,
            "last_status": ls,
            "last_error": str(le),
            "log": tries[str(d)],
        }
        for d, ev, ref, st, n, ca, na, da, ls, le in rows
    ]


def prune(db: Database, *, before: float) -> int:
    """Drop delivered and failed rows done before `before`, with their attempts."""
    done = "status <> 'pending' AND done_at < ?"
    with db.transaction() as tx:
        tx.execute(
            "DELETE FROM notify_attempts WHERE delivery_id IN "
            f"(SELECT delivery_id FROM notify_outbox WHERE {done})",
            (before,),
        )
        return tx.execute(f"DELETE FROM notify_outbox WHERE {done}", (before,))

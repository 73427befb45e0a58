"""Grouping: bundles (and fleet-side signals) into incidents, one per episode.

A `Signal` is what one bundle says about its (device, fault key): its trigger kind, its
severity and summary, when it happened on the terminal (``at``: the bundle's created_at)
and when the collector received it (``seen_at``). A fleet-side fault the collector raises
itself (issue 16's ``device.silent``) is a Signal with no bundle and source ``fleet``:
the same rules apply.

Rules, for the newest incident ``cur`` of the signal's (device, fault key):

- ``fault`` (raised): no ``cur`` → a new incident, raised. ``cur`` raised → grouped into
  it (a repeat capture of the same episode). ``cur`` cleared and the signal happened
  before that clear → grouped (a late upload of an earlier moment). ``cur`` cleared no
  longer than ``reopen_window_s`` before → reopened: raised again, ``repeats`` + 1, a
  resolved one back to ``open`` (event ``reopened``). Later than the window → a new
  incident.
- ``cleared``: ``cur`` raised → cleared at the signal's time, the episode's time added to
  ``duration_s`` (event ``cleared``); a clear from before the episode began is grouped
  only. ``cur`` already cleared within the window → grouped (a repeated clear). No
  ``cur``, or one cleared longer ago (its raise never arrived: suppressed or lost) → a
  new incident that is already cleared.
- ``manual`` (a person's report from the terminal, key ``manual.report``) → an episode of
  its own that starts and ends at once, per device: a new incident, or, within the window
  of the previous report's incident, that incident reopened (``repeats`` + 1). A manual
  report is the merchant's complaint, never folded into a fault's incident: support sees
  it as its own line to follow up.
- ``startup`` (an unclean shutdown found at start, ``power.unclean_shutdown``) → grouped
  into the device's newest incident that is raised and not resolved, of any other key
  (the power cut is evidence of that episode: the terminal died in it); when there is
  none, an instant episode of its own like ``manual``.

Every incident's severity is the highest of its signals; its summary the newest raise's.

Safety: every writer of a (device, fault key)'s incidents holds the advisory lock
``incident:<device>:<key>`` (`collector.storage.sql.Tx.lock`) for its transaction, so
instances racing on the same device and key make one incident; a startup signal takes
its own key's lock, then the lock of the incident it joins (no writer takes two locks in
the other order). Idempotent: ``incident_bundles`` has the bundle id as primary key and
a bundle already there is not grouped again; re-running grouping changes nothing.

When: ingest hands the stored bundle over (`collector.incidents.backlog`) and answers;
the collector's incident worker (`collector.incidents.service.IncidentWorker`) groups what
it was handed in batches (`observe_many`), an incident a few tens of milliseconds after
its upload. `catch_up` groups what was never grouped (the index down for a moment, an
instance killed between the bundle's commit and its grouping: the hand-over is in memory)
from a cursor over (received_at, bundle_id): at start and every ``[collector.incidents]
interval_s``. The cursor never passes ``now - SETTLE_S``: a bundle received but committed
later than that is still found.

Batches: a transaction groups up to ``TX_SIGNALS`` signals (one advisory lock each, so
PostgreSQL's lock table is not filled) with `group`: their locks first, in name order, in
one statement (`Tx.lock_all`): two instances' batches never wait on each other in a
cycle; then, in one query, which incident groups each bundle already and the newest
incident of each (device, key) (`Known`); then the rules, signal by signal in their
order, on what is known, which each signal's changes keep up to date (a clear after a
raise of the same key in the batch sees the raise); at the end one UPDATE per changed
incident. On PostgreSQL a batch thus waits for a reply twice plus once per new incident
(its id), whatever its size. A startup signal, which may take a second key's lock, gets
a transaction of its own. A batch's links, events and outbox rows go at its end as one
multi-row INSERT per statement (`Coalesced`). A transaction that fails is rolled back
and its signals grouped again one by one: one bad signal costs only itself (logged, left
to `catch_up`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from agent.bundle.trigger import TriggerKind
from collector.config import IncidentsConfig
from collector.incidents import events
from collector.incidents.model import (
    INCIDENT_COLUMNS,
    SELECT_INCIDENT,
    SYSTEM_ACTOR,
    EventKind,
    Incident,
    Source,
    Status,
    lock_name,
    sev_rank,
)
from collector.storage.base import COLUMNS, BundleRecord, StorageError
from collector.storage.sql import STATEMENT_PARAMS, Database, Row, Tx

log = structlog.get_logger(__name__)

CURSOR = "grouping"
SETTLE_S = 600.0  # a bundle is committed within this of its received_at
BATCH = 500
TX_SIGNALS = 64  # signals grouped in one transaction at most


@dataclass(frozen=True)
class Settings:
    """`[collector.incidents]` as the rules use it (seconds; 0 turns a rule off)."""

    reopen_window_s: float = 3600.0
    auto_resolve_after_s: float = 86400.0
    escalate_after_s: float = 1800.0

    @classmethod
    def of(cls, cfg: IncidentsConfig) -> Settings:
        return cls(cfg.reopen_window_s, cfg.auto_resolve_after_s, cfg.escalate_after_s)


@dataclass(frozen=True)
class Signal:
    """One observation of a (device, fault key)."""

    device: str
    site: str
    key: str
    kind: TriggerKind
    severity: str
    summary: str
    at: float  # on the terminal's clock (a bundle's created_at)
    seen_at: float  # on the collector's clock (a bundle's received_at)
    bundle_id: str = ""  # "" for a fleet-side signal
    source: Source = Source.BUNDLE

    @classmethod
    def of_record(cls, r: BundleRecord) -> Signal:
        try:
            kind = TriggerKind(r.trigger_kind)
        except ValueError:
            kind = TriggerKind.FAULT
        at = r.created_at if math.isfinite(r.created_at) else r.received_at
        return cls(
            device=r.device,
            site=r.site,
            key=r.fault_key or kind.value,
            kind=kind,
            severity=r.severity,
            summary=r.summary,
            at=at,
            seen_at=r.received_at,
            bundle_id=r.bundle_id,
        )


# --------------------------------------------------------------------------- the rules


def apply(tx: Tx, sig: Signal, settings: Settings, now: float) -> int:
    """Group one signal in tx (under its lock); the id of the incident it went to."""
    return group(tx, [sig], settings, now)[0]


def group(tx: Tx, sigs: Sequence[Signal], settings: Settings, now: float) -> list[int]:
    """Group signals in tx (module docstring: Batches): their locks, their state read
    once (`Known`), the rules signal by signal, each changed incident written once; the
    incident of each. A startup signal must be alone (it may take a second lock)."""
    if len(sigs) > 1 and any(s.kind is TriggerKind.STARTUP for s in sigs):
        raise ValueError("a startup signal is grouped in a transaction of its own")
    known = Known.read(tx, sigs)
    ids = [_rule(tx, known, sig, settings, now) for sig in sigs]
    known.write(tx)
    return ids


class Known:
    """What a transaction's grouping knows of its signals' incidents, kept as its rules
    change them: which incident groups each bundle already, and the newest incident of
    each (device, fault key), read in one query under their locks (nobody else writes
    them until the transaction ends); the rules' changes are kept here and `write` sends
    one UPDATE per changed incident (a new incident is INSERTed at once: its id)."""

    def __init__(self, grouped: dict[str, int], newest: dict[tuple[str, str], Incident]):
        self.grouped = grouped  # bundle id -> the incident that groups it
        self.newest = {k: inc.id for k, inc in newest.items()}  # (device, key) -> id
        self.incidents = {inc.id: inc for inc in newest.values()}  # as the rules left them
        self.changed: dict[int, set[str]] = {}  # incident id -> columns changed

    @classmethod
    def read(cls, tx: Tx, sigs: Sequence[Signal]) -> Known:
        """The signals' locks (one statement, in name order), then their state in one
        query: per signal its bundle's incident (if grouped) and its key's newest."""
        tx.lock_all(sorted({lock_name(s.device, s.key) for s in sigs}))
        if not sigs:
            return cls({}, {})
        rows = tx.all(
            "WITH k (i, bundle_id, device, fault_key) AS (VALUES "
            + ", ".join("(?, ?, ?, ?)" for _ in sigs)
            + "), s AS (SELECT k.i AS i, (SELECT ib.incident_id FROM incident_bundles ib "
            "WHERE ib.bundle_id = k.bundle_id) AS grouped, (SELECT m.id FROM incidents m "
            "WHERE m.device = k.device AND m.fault_key = k.fault_key ORDER BY m.id DESC "
            f"LIMIT 1) AS newest FROM k) SELECT s.i, s.grouped, {_N_COLUMNS} FROM s "
            "LEFT JOIN incidents n ON n.id = s.newest",
            [v for i, s in enumerate(sigs) for v in (i, s.bundle_id, s.device, s.key)],
        )
        grouped: dict[str, int] = {}
        newest: dict[tuple[str, str], Incident] = {}
        for row in rows:
            sig = sigs[int(row[0])]
            if row[1] is not None and sig.bundle_id:
                grouped[sig.bundle_id] = int(row[1])
            if row[2] is not None:
                newest[(sig.device, sig.key)] = Incident.from_row(row[2:])
        return cls(grouped, newest)

    def cur(self, sig: Signal) -> Incident | None:
        """The newest incident of the signal's (device, fault key), as grouping left it."""
        n = self.newest.get((sig.device, sig.key))
        return None if n is None else self.incidents[n]

    def opened(self, inc: Incident) -> None:
        """A new incident (written): the newest of its (device, fault key) now."""
        self.incidents[inc.id] = inc
        self.newest[(inc.device, inc.fault_key)] = inc.id

    def adopt(self, inc: Incident) -> None:
        """An incident read under its lock outside `read` (a startup signal's)."""
        self.incidents.setdefault(inc.id, inc)

    def change(self, inc: Incident, now: float, **cols: Any) -> Incident:
        """The incident with cols (and updated_at) changed, to be written by `write`."""
        after = replace(self.incidents[inc.id], **cols, updated_at=now)
        self.incidents[inc.id] = after
        self.changed.setdefault(inc.id, set()).update(cols, ("updated_at",))
        return after

    def write(self, tx: Tx) -> None:
        """One UPDATE per changed incident (no reply awaited: pipelined), its changed
        columns as the rules left them."""
        for inc_id, cols in self.changed.items():
            values = _values(self.incidents[inc_id])
            if "severity" in cols:
                cols.add("sev_rank")
            names = [c for c in values if c in cols]
            tx.execute(
                f"UPDATE incidents SET {', '.join(f'{c} = ?' for c in names)} WHERE id = ?",
                [*(values[c] for c in names), inc_id],
            )
        self.changed.clear()


_N_COLUMNS = ", ".join(f"n.{c}" for c in INCIDENT_COLUMNS)
_WRITTEN = [c for c in INCIDENT_COLUMNS if c != "id"] + ["sev_rank"]


def _values(inc: Incident) -> dict[str, Any]:
    """The incident's columns as written (`_WRITTEN`: without id, with sev_rank)."""
    out = {c: getattr(inc, c) for c in INCIDENT_COLUMNS if c != "id"}
    out.update(
        status=inc.status.value, active=1 if inc.active else 0, sev_rank=sev_rank(inc.severity)
    )
    return out


def _payload(inc: Incident) -> Row:
    """The incident's `events.PAYLOAD_COLUMNS` (a notification's), as written."""
    values = _values(inc)
    return tuple(values[c] for c in events.PAYLOAD_COLUMNS.split(", "))


def _rule(tx: Tx, known: Known, sig: Signal, settings: Settings, now: float) -> int:
    """The rules (module docstring) for one signal, on what is known."""
    grouped = known.grouped.get(sig.bundle_id) if sig.bundle_id else None
    if grouped is not None:
        return grouped  # grouped before: nothing changes
    cur = known.cur(sig)
    if sig.kind is TriggerKind.STARTUP:
        joined = _join_raised(tx, known, sig, now)
        if joined is not None:
            return joined
    window = settings.reopen_window_s
    if sig.kind is TriggerKind.FAULT:
        if cur is None:
            return _open(tx, known, sig, now, raised=True)
        if cur.active or sig.at < _cleared(cur):
            return _touch(tx, known, cur, sig, now)
        if sig.at - _cleared(cur) <= window:
            return _reopen(tx, known, cur, sig, now, raised=True)
        return _open(tx, known, sig, now, raised=True)
    if sig.kind is TriggerKind.CLEARED:
        if cur is not None and cur.active:
            if sig.at < cur.episode_at:
                return _touch(tx, known, cur, sig, now)
            return _clear(tx, known, cur, sig, now)
        if cur is not None and sig.at - _cleared(cur) <= window:
            return _touch(tx, known, cur, sig, now)
        return _open(tx, known, sig, now, raised=False)  # its raise never arrived
    # manual, startup: an episode that begins and ends at once
    if cur is None:
        return _open(tx, known, sig, now, raised=False)
    if cur.active or sig.at <= _cleared(cur):
        return _touch(tx, known, cur, sig, now)
    if sig.at - _cleared(cur) <= window:
        return _reopen(tx, known, cur, sig, now, raised=False)
    return _open(tx, known, sig, now, raised=False)


def _cleared(inc: Incident) -> float:
    return inc.cleared_at if inc.cleared_at is not None else inc.last_at


def get(tx: Tx, incident_id: int) -> Incident | None:
    """One incident by id (no scoping: callers check the principal)."""
    row = tx.one(f"{SELECT_INCIDENT} WHERE id = ?", (incident_id,))
    return Incident.from_row(row) if row else None


def _join_raised(tx: Tx, known: Known, sig: Signal, now: float) -> int | None:
    """A startup signal into the device's newest raised, unresolved incident of another key."""
    row = tx.one(
        "SELECT id, fault_key FROM incidents WHERE device = ? AND active = 1 "
        "AND status <> 'resolved' AND fault_key <> ? AND source = 'bundle' "
        "ORDER BY last_at DESC, id DESC LIMIT 1",
        (sig.device, sig.key),
    )
    if row is None:
        return None
    tx.lock(lock_name(sig.device, str(row[1])))
    target = get(tx, int(row[0]))  # again, under its lock
    if target is None or not target.active or target.status is Status.RESOLVED:
        return None
    known.adopt(target)
    return _touch(tx, known, target, sig, now)


def _ref(sig: Signal) -> dict[str, Any]:
    """What an event says about the signal behind it."""
    out: dict[str, Any] = {"trigger_kind": sig.kind.value, "at": sig.at}
    if sig.bundle_id:
        out["bundle_id"] = sig.bundle_id
    return out


def _link(tx: Tx, known: Known, incident_id: int, sig: Signal, now: float) -> None:
    """Record the signal's bundle in the incident (row + ``bundle`` event)."""
    if not sig.bundle_id:
        return
    tx.execute(
        "INSERT INTO incident_bundles (bundle_id, incident_id, trigger_kind, at) "
        "VALUES (?, ?, ?, ?)",
        (sig.bundle_id, incident_id, sig.kind.value, sig.at),
    )
    known.grouped[sig.bundle_id] = incident_id
    events.record(
        tx,
        incident_id,
        EventKind.BUNDLE,
        SYSTEM_ACTOR,
        {**_ref(sig), "fault_key": sig.key, "severity": sig.severity, "summary": sig.summary},
        at=now,
    )


def _open(tx: Tx, known: Known, sig: Signal, now: float, *, raised: bool) -> int:
    new = Incident(
        id=0,
        device=sig.device,
        site=sig.site,
        fault_key=sig.key,
        source=sig.source.value,
        severity=sig.severity,
        summary=sig.summary,
        status=Status.OPEN,
        assignee="",
        active=raised,
        raised_at=sig.at,
        episode_at=sig.at,
        cleared_at=None if raised else sig.at,
        last_at=sig.at,
        duration_s=0.0,
        repeats=0,
        bundles=1 if sig.bundle_id else 0,
        open_since=sig.seen_at,
        touched_at=sig.seen_at,
        escalated_at=None,
        resolved_at=None,
        created_at=now,
        updated_at=now,
    )
    values = _values(new)
    row = tx.one(
        f"INSERT INTO incidents ({', '.join(_WRITTEN)}) VALUES "
        f"({', '.join('?' for _ in _WRITTEN)}) RETURNING id",
        [values[c] for c in _WRITTEN],
    )
    if row is None:
        raise StorageError("incident id not returned")
    inc = replace(new, id=int(row[0]))
    known.opened(inc)
    detail = {
        "device": sig.device,
        "site": sig.site,
        "fault_key": sig.key,
        "severity": sig.severity,
        "summary": sig.summary,
        "source": sig.source.value,
        **_ref(sig),
    }
    events.record(
        tx, inc.id, EventKind.OPENED, SYSTEM_ACTOR, detail, at=now, incident=_payload(inc)
    )
    if sig.kind is TriggerKind.CLEARED:
        events.record(
            tx, inc.id, EventKind.CLEARED, SYSTEM_ACTOR, {"duration_s": 0.0, **_ref(sig)}, at=now
        )
    _link(tx, known, inc.id, sig, now)
    return inc.id


def _seen(inc: Incident, sig: Signal) -> dict[str, Any]:
    """The columns every grouped signal moves: newest times, count, severity, summary."""
    cols: dict[str, Any] = {
        "last_at": max(inc.last_at, sig.at),
        "touched_at": max(inc.touched_at, sig.seen_at),
        "bundles": inc.bundles + (1 if sig.bundle_id else 0),
    }
    if sev_rank(sig.severity) > sev_rank(inc.severity):
        cols["severity"] = sig.severity
    if sig.kind is not TriggerKind.CLEARED and sig.summary and sig.at >= inc.last_at:
        cols["summary"] = sig.summary
    return cols


def _touch(tx: Tx, known: Known, inc: Incident, sig: Signal, now: float) -> int:
    known.change(inc, now, **_seen(inc, sig))
    _link(tx, known, inc.id, sig, now)
    return inc.id


def _reopen(tx: Tx, known: Known, inc: Incident, sig: Signal, now: float, *, raised: bool) -> int:
    cols = _seen(inc, sig)
    cols.update(
        active=raised,
        episode_at=sig.at,
        cleared_at=None if raised else sig.at,
        repeats=inc.repeats + 1,
        open_since=sig.seen_at,
    )
    if inc.status is Status.RESOLVED:
        cols.update(status=Status.OPEN, resolved_at=None)
    after = known.change(inc, now, **cols)
    events.record(
        tx,
        inc.id,
        EventKind.REOPENED,
        SYSTEM_ACTOR,
        {"repeats": inc.repeats + 1, "was": inc.status.value, **_ref(sig)},
        at=now,
        incident=_payload(after),
    )
    _link(tx, known, inc.id, sig, now)
    return inc.id


def _clear(tx: Tx, known: Known, inc: Incident, sig: Signal, now: float) -> int:
    episode_s = max(0.0, sig.at - inc.episode_at)
    cols = _seen(inc, sig)
    cols.update(active=False, cleared_at=sig.at, duration_s=inc.duration_s + episode_s)
    known.change(inc, now, **cols)
    events.record(
        tx,
        inc.id,
        EventKind.CLEARED,
        SYSTEM_ACTOR,
        {"duration_s": round(episode_s, 3), **_ref(sig)},
        at=now,
    )
    _link(tx, known, inc.id, sig, now)
    return inc.id


# --------------------------------------------------------------------------- entry points


def observe(db: Database, sig: Signal, settings: Settings, now: float) -> int:
    """Group one signal in its own transaction; the incident's id.

    A bundle's grouping commits without waiting for the disk (``durable=False``,
    `collector.storage.sql`): on PostgreSQL that wait was a separate WAL flush after the
    bundle row's own, about a third of grouping's time. A crash of the database server
    may lose the last groupings; nothing else is lost: the bundle row is durable and
    `catch_up` groups every bundle that no ``incident_bundles`` row names (its cursor
    is moved by a durable commit, which puts every earlier commit on disk first). A
    notification it wrote is delivered only after the outbox's claim, a durable commit
    that follows it, so no webhook or mail is sent for a grouping that can still be lost
    (`collector.notify.outbox`). A fleet-side signal (no bundle) is nowhere else to be
    found again: its grouping commits durably."""
    with db.transaction(durable=not sig.bundle_id, pipeline=True) as tx:
        return apply(tx, sig, settings, now)


def observe_many(
    db: Database, sigs: Sequence[Signal], settings: Settings, now: float
) -> list[int | None]:
    """Group signals in few transactions (module docstring: Batches); each one's incident
    id, None where its grouping failed (logged; never raises). Durable like `observe`:
    a transaction with a fleet-side signal in it commits durably. A bundle given twice
    is grouped once (the second gets the first's answer)."""
    out: list[int | None] = [None] * len(sigs)
    first: dict[str, int] = {}
    again: dict[int, int] = {}
    for i, sig in enumerate(sigs):
        if sig.bundle_id in first:
            again[i] = first[sig.bundle_id]
        elif sig.bundle_id:
            first[sig.bundle_id] = i
    for part in _parts(sigs, [i for i in range(len(sigs)) if i not in again]):
        durable = any(not sigs[i].bundle_id for i in part)
        try:
            with db.transaction(durable=durable, pipeline=True) as tx:
                held = Coalesced(tx)
                ids = group(held, [sigs[i] for i in part], settings, now)
                held.flush()
        except Exception as e:  # grouped again one by one: only the bad one is left
            if len(part) > 1:
                log.warning("incident_batch_failed", signals=len(part), error=str(e)[:300])
            for i in part:
                out[i] = _observe_logged(db, sigs[i], settings, now, None if len(part) > 1 else e)
        else:
            for i, inc in zip(part, ids, strict=True):
                out[i] = inc
    for i, j in again.items():
        out[i] = out[j]
    return out


class Coalesced:
    """A `Tx` that holds back its single-row INSERTs without RETURNING (a batch's links,
    events and outbox rows) and sends them at `flush` as one multi-row INSERT per
    statement, each statement's rows in their order (ids as they would have been):
    fewer statements, the same rows. A statement holds up to `PARAMS` values: psycopg
    converts a statement's text once and keeps it when it has no more (a longer one is
    parsed again each time, about 16 us a value: 1 ms for 64 events), and PostgreSQL
    prepares a text run again and again. Everything else goes through at once. Sound for a
    batch of grouping because nothing in it reads those rows back before the end: a
    signal reads only its own bundle's link, and a bundle is in a batch once."""

    PARAMS = STATEMENT_PARAMS  # values in one statement at most

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.dialect = tx.dialect
        self._held: dict[str, list[Sequence[Any]]] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        _, sep, values = sql.partition(" VALUES ")
        if sql.startswith("INSERT INTO ") and sep and values[:1] == "(" and values[-1:] == ")":
            self._held.setdefault(sql, []).append(params)
            return 1
        return self._tx.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._tx.one(sql, params)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._tx.all(sql, params)

    def lock(self, name: str) -> None:
        self._tx.lock(name)

    def lock_all(self, names: Sequence[str]) -> None:
        self._tx.lock_all(names)

    def flush(self) -> None:
        """Send what is held."""
        for sql, rows in self._held.items():
            head, _, row = sql.partition(" VALUES ")
            step = max(1, self.PARAMS // max(1, len(rows[0])))
            for k in range(0, len(rows), step):
                part = rows[k : k + step]
                self._tx.execute(
                    f"{head} VALUES {', '.join([row] * len(part))}", [v for r in part for v in r]
                )
        self._held.clear()


def _observe_logged(
    db: Database, sig: Signal, settings: Settings, now: float, failed: Exception | None
) -> int | None:
    """`observe`, its failure logged (failed: the error of a try already made)."""
    if failed is None:
        try:
            return observe(db, sig, settings, now)
        except Exception as e:  # logged; catch_up tries again
            failed = e
    log.error(
        "incident_grouping_failed",
        bundle_id=sig.bundle_id,
        device=sig.device,
        fault_key=sig.key,
        error=str(failed)[:300],
    )
    return None


def _parts(sigs: Sequence[Signal], todo: list[int]) -> list[list[int]]:
    """The indexes todo of sigs by transaction: runs between startup signals, each sorted
    by lock name (stable) and cut at TX_SIGNALS; each startup signal alone."""
    parts: list[list[int]] = []
    run: list[int] = []

    def flush() -> None:
        run.sort(key=lambda i: lock_name(sigs[i].device, sigs[i].key))
        parts.extend(run[k : k + TX_SIGNALS] for k in range(0, len(run), TX_SIGNALS))
        run.clear()

    for i in todo:
        if sigs[i].kind is TriggerKind.STARTUP:
            flush()
            parts.append([i])
        else:
            run.append(i)
    flush()
    return parts


def _record(row: tuple[Any, ...]) -> BundleRecord:
    d = dict(zip(COLUMNS, row, strict=True))
    d["signature_checked"] = bool(d["signature_checked"])
    return BundleRecord(**d)


def catch_up(
    db: Database,
    settings: Settings,
    *,
    now: float,
    batch: int = BATCH,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Group every bundle after the cursor that no incident groups yet; how many it grouped.

    A bundle whose grouping fails is logged and passed over; the cursor stays before it
    (tried again next pass), and never moves past ``now - SETTLE_S``."""
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT received_at, bundle_id FROM incident_cursor WHERE name = ?", (CURSOR,))
    start: tuple[float, str] = (float(row[0]), str(row[1])) if row else (-1.0, "")
    pos, safe, horizon = start, start, (now - SETTLE_S, "")
    done, failed, complete = 0, False, False
    cols = ", ".join(f"b.{c}" for c in COLUMNS)
    while not stop():
        with db.transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {cols} FROM bundles b WHERE (b.received_at > ? OR "
                "(b.received_at = ? AND b.bundle_id > ?)) AND NOT EXISTS "
                "(SELECT 1 FROM incident_bundles ib WHERE ib.bundle_id = b.bundle_id) "
                "ORDER BY b.received_at, b.bundle_id LIMIT ?",
                (pos[0], pos[0], pos[1], batch),
            )
        recs = [_record(r) for r in rows]
        ids = observe_many(db, [Signal.of_record(r) for r in recs], settings, now)
        for rec, inc in zip(recs, ids, strict=True):
            if inc is None:  # logged; one bundle must not stop the others
                failed = True
            else:
                done += 1
            pos = (rec.received_at, rec.bundle_id)
            if not failed:
                safe = pos
        if len(rows) < batch:
            complete = True
            break
    if complete and not failed:
        safe = max(safe, horizon)  # nothing before the horizon is left ungrouped
    cursor = min(safe, horizon)
    if cursor > start:
        with db.transaction() as tx:
            tx.execute(
                "INSERT INTO incident_cursor (name, received_at, bundle_id) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET received_at = excluded.received_at, "
                "bundle_id = excluded.bundle_id",
                (CURSOR, cursor[0], cursor[1]),
            )
    if done:
        log.info("incident_catch_up", grouped=done)
    return done

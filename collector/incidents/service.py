"""`Incidents`: the collector's incidents on its index (`collector.storage.sql.Database`):
grouping at ingest, the periodic pass, what people change, and the reads, each in its
own transaction.

People (`collector.access.Principal`): an incident out of the principal's reach is
`NotFound` (the same as one that does not exist); a principal who only reads
(``merchant``) gets `Forbidden` for any change. Status changes follow
`model.TRANSITIONS` (`InvalidTransition` otherwise, or when nothing would change); each
change, assignment and note is an event (`collector.incidents.events`) with the
person's name as actor.

The fleet's faults over a window (`fleet_faults`, the home page's charts) are kept
`FAULTS_TTL_S` per (window, sites): they aggregate every incident of the window, and
a fleet's faults over a week do not change in half a minute.

Grouping: ingest hands each stored bundle over (`on_stored`, into the process's
`backlog.Backlog`) and answers; `IncidentWorker` groups the backlog in batches
(`group_many`) as it fills, so an upload never waits for its grouping.

The periodic pass (`sweep`, at start and every ``[collector.incidents] interval_s`` on
every instance; `IncidentWorker`, between batches):
- `catch_up` groups the bundles ingest could not;
- auto-resolve: an incident not resolved, cleared, and with no signal for
  ``auto_resolve_after_s`` (collector time of its last signal) is resolved by
  ``system`` (event ``resolved`` with ``"auto": true``);
- escalation: a critical incident still raised and ``open`` (nobody acknowledged it)
  ``escalate_after_s`` after it was opened or reopened gets one ``escalated`` event in
  its life (``escalated_at``).
Both re-check their condition in the UPDATE under the incident's lock, so any number of
instances running the pass at once change each incident once. Time comes from the
clock given (tests drive it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from collector.access import Principal
from collector.i18n import N_, Word
from collector.incidents import events, grouping, queries
from collector.incidents.backlog import Backlog
from collector.incidents.grouping import Settings
from collector.incidents.model import (
    SYSTEM_ACTOR,
    TRANSITIONS,
    Channel,
    Event,
    EventKind,
    Forbidden,
    Incident,
    IncidentFilter,
    InvalidTransition,
    NotFound,
    OutOfReach,
    Status,
    lock_name,
)
from collector.incidents.queries import Detail, FaultLine, Home
from collector.storage.base import BundleRecord, Query, StorageError
from collector.storage.sql import Database, Tx

log = structlog.get_logger(__name__)

FAULTS_TTL_S = 30.0  # the fleet's faults (home page charts, /v1/fleet/faults) are this fresh
FAULTS_CACHE_SIZE = 256

_STATUS_EVENT = {
    Status.ACKNOWLEDGED: EventKind.ACKNOWLEDGED,
    Status.RESOLVED: EventKind.RESOLVED,
    Status.OPEN: EventKind.REOPENED,
}


def _sites(who: Principal) -> frozenset[str] | None:
    return who.restrict(Query()).sites


def _missing(tx: Tx, incident_id: int, who: Principal) -> NotFound:
    """What to raise for an incident who cannot see: OutOfReach when it exists (audited),
    NotFound when it does not."""
    if _sites(who) is not None and grouping.get(tx, incident_id) is not None:
        return OutOfReach(f"no incident {incident_id}")
    return NotFound(f"no incident {incident_id}")


class Incidents:
    """The incidents of one collector (any number of instances share the database)."""

    def __init__(
        self, db: Database, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._cache: dict[tuple[frozenset[str] | None, float], tuple[float, list[FaultLine]]] = {}
        self._cache_lock = threading.Lock()
        self.backlog = Backlog()

    # ----------------------------------------------------------------- grouping

    def on_stored(self, record: BundleRecord) -> None:
        """Ingest's call after a bundle is committed: handed to the worker; never raises,
        never waits (a full backlog leaves the bundle to the catch-up pass)."""
        self.backlog.put(record)

    def group_many(self, records: Sequence[BundleRecord]) -> list[int | None]:
        """Group stored bundles now, in few transactions; each one's incident id (None:
        failed, logged; the catch-up pass tries again)."""
        sigs = [grouping.Signal.of_record(r) for r in records]
        return grouping.observe_many(self.db, sigs, self.settings, self.clock())

    def group(self, record: BundleRecord) -> int | None:
        """`group_many` of one bundle."""
        return self.group_many([record])[0]

    def observe(self, sig: grouping.Signal) -> int:
        """Group one signal (a fleet-side fault, issue 16); the incident's id."""
        return grouping.observe(self.db, sig, self.settings, self.clock())

    def catch_up(self, stop: Callable[[], bool] = lambda: False) -> int:
        return grouping.catch_up(self.db, self.settings, now=self.clock(), stop=stop)

    # ----------------------------------------------------------------- the periodic pass

    def auto_resolve(self, limit: int = 500) -> list[int]:
        """Resolve what cleared and stayed quiet long enough; the ids resolved."""
        after = self.settings.auto_resolve_after_s
        if after <= 0:
            return []
        now = self.clock()
        cond = "status IN ('open', 'acknowledged') AND active = 0 AND touched_at <= ?"
        return self._each(
            f"SELECT id, device, fault_key FROM incidents WHERE {cond} ORDER BY id LIMIT ?",
            (now - after, limit),
            f"UPDATE incidents SET status = 'resolved', resolved_at = ?, updated_at = ? "
            f"WHERE id = ? AND {cond}",
            lambda i: (now, now, i, now - after),
            EventKind.RESOLVED,
            {"auto": True, "quiet_s": after},
            now,
        )

    def escalate(self, limit: int = 500) -> list[int]:
        """Mark critical incidents open (unacknowledged) and raised for too long; the ids."""
        after = self.settings.escalate_after_s
        if after <= 0:
            return []
        now = self.clock()
        cond = (
            "status = 'open' AND active = 1 AND sev_rank >= 2 AND escalated_at IS NULL "
            "AND open_since <= ?"
        )
        return self._each(
            f"SELECT id, device, fault_key FROM incidents WHERE {cond} ORDER BY id LIMIT ?",
            (now - after, limit),
            f"UPDATE incidents SET escalated_at = ?, updated_at = ? WHERE id = ? AND {cond}",
            lambda i: (now, now, i, now - after),
            EventKind.ESCALATED,
            {"after_s": after},
            now,
        )

    def _each(
        self,
        select: str,
        select_params: tuple[Any, ...],
        update: str,
        update_params: Callable[[int], tuple[Any, ...]],
        kind: EventKind,
        detail: dict[str, Any],
        now: float,
    ) -> list[int]:
        """Candidates read at once; each changed in its own transaction under its lock,
        the condition checked again by the UPDATE (one instance wins, one event)."""
        with self.db.transaction(write=False) as tx:
            rows = tx.all(select, select_params)
        done = []
        for inc_id, device, key in rows:
            with self.db.transaction() as tx:
                tx.lock(lock_name(str(device), str(key)))
                if tx.execute(update, update_params(int(inc_id))) == 1:
                    events.append(tx, int(inc_id), kind, SYSTEM_ACTOR, dict(detail), at=now)
                    done.append(int(inc_id))
        return done

    def sweep(self, stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
        """One periodic pass: catch-up, auto-resolve, escalation; what each changed."""
        return {
            "grouped": self.catch_up(stop),
            "resolved": len(self.auto_resolve()),
            "escalated": len(self.escalate()),
        }

    # ----------------------------------------------------------------- people

    def _writable(self, tx: Tx, incident_id: int, who: Principal) -> Incident:
        inc = queries.visible(tx, incident_id, _sites(who))
        if inc is None:
            raise _missing(tx, incident_id, who)
        if not who.writes:
            raise Forbidden(N_("a {role} may only read incidents"), role=who.role.value)
        tx.lock(inc.lock_name)
        again = grouping.get(tx, incident_id)  # as it is under the lock
        if again is None:
            raise NotFound(N_("no incident {id}"), id=incident_id)
        return again

    def set_status(
        self,
        incident_id: int,
        who: Principal,
        status: Status | None = None,
        assignee: str | None = None,
    ) -> tuple[Incident, list[Event]]:
        """Change the status and/or the assignee; the incident after, and the events."""
        now = self.clock()
        with self.db.transaction() as tx:
            inc = self._writable(tx, incident_id, who)
            cols: dict[str, Any] = {}
            todo: list[tuple[EventKind, dict[str, Any]]] = []
            if status is not None:
                if status is inc.status:
                    raise InvalidTransition(
                        N_("incident {id} is already {status}"),
                        id=incident_id,
                        status=Word(status.value),
                    )
                if status not in TRANSITIONS[inc.status]:
                    allowed = ", ".join(sorted(s.value for s in TRANSITIONS[inc.status]))
                    raise InvalidTransition(
                        N_("{was} -> {status} is not allowed (from {was}: {allowed})"),
                        was=Word(inc.status.value),
                        status=Word(status.value),
                        allowed=allowed,
                    )
                cols["status"] = status.value
                if status is Status.RESOLVED:
                    cols["resolved_at"] = now
                elif status is Status.OPEN:
                    cols.update(resolved_at=None, open_since=now)
                todo.append((_STATUS_EVENT[status], {"from": inc.status.value, "to": status.value}))
            if assignee is not None and assignee != inc.assignee:
                cols["assignee"] = assignee
                todo.append((EventKind.ASSIGNED, {"assignee": assignee, "was": inc.assignee}))
            if not cols:
                if status is None and assignee is None:
                    raise InvalidTransition(N_("nothing to change: give status and/or assignee"))
                return inc, []
            sets = ", ".join(f"{k} = ?" for k in cols)
            tx.execute(
                f"UPDATE incidents SET {sets}, updated_at = ? WHERE id = ?",
                [*cols.values(), now, inc.id],
            )
            # the events after the change: a notification's payload is the incident after it
            written = [events.append(tx, inc.id, k, who.name, d, at=now) for k, d in todo]
            after = grouping.get(tx, inc.id)
        if after is None:
            raise StorageError(f"incident {incident_id} vanished")
        log.info(
            "incident_changed",
            incident=incident_id,
            actor=who.name,
            status=status.value if status else None,
            assignee=assignee,
        )
        return after, written

    def add_note(
        self,
        incident_id: int,
        who: Principal,
        channel: Channel,
        text: str,
        *,
        contact: str = "",
        contact_at: float | None = None,
    ) -> Event:
        """Record a contact with the merchant (when, who, how, what was agreed)."""
        now = self.clock()
        with self.db.transaction() as tx:
            inc = self._writable(tx, incident_id, who)
            detail = {
                "channel": channel.value,
                "contact": contact,
                "text": text,
                "contact_at": now if contact_at is None else contact_at,
            }
            ev = events.append(tx, inc.id, EventKind.NOTE, who.name, detail, at=now)
            tx.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (now, inc.id))
        log.info("incident_note", incident=incident_id, actor=who.name, channel=channel.value)
        return ev

    # ----------------------------------------------------------------- reads

    def page(self, f: IncidentFilter, who: Principal) -> tuple[list[Incident], int]:
        f = IncidentFilter(who.restrict(f.query), f.status, f.assignee)
        with self.db.transaction(write=False) as tx:
            return queries.page(tx, f)

    def get(self, incident_id: int, who: Principal) -> Incident:
        with self.db.transaction(write=False) as tx:
            inc = queries.visible(tx, incident_id, _sites(who))
            if inc is None:
                raise _missing(tx, incident_id, who)
        return inc

    def detail(
        self,
        incident_id: int,
        who: Principal,
        *,
        bundles: int = queries.MAX_BUNDLES_SHOWN,
        history: int = queries.MAX_EVENTS_SHOWN,
    ) -> Detail:
        with self.db.transaction(write=False) as tx:
            d = queries.detail(tx, incident_id, _sites(who), bundles=bundles, history=history)
            if d is None:
                raise _missing(tx, incident_id, who)
        return d

    def fleet_faults(self, who: Principal, since: float) -> list[FaultLine]:
        """The fleet's faults since `since` (rounded down to the minute), as seen by who;
        kept FAULTS_TTL_S per (since, sites): the one read that aggregates a window."""
        return self._faults(_sites(who), since)

    def _faults(self, sites: frozenset[str] | None, since: float) -> list[FaultLine]:
        key = (sites, float(int(since // 60) * 60))
        t = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > t:
                return hit[1]
        with self.db.transaction(write=False) as tx:
            lines = queries.fleet_faults(tx, key[1], sites)
        with self._cache_lock:
            if len(self._cache) >= FAULTS_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = (t + FAULTS_TTL_S, lines)
        return lines

    def home(self, who: Principal) -> Home:
        sites, now = _sites(who), self.clock()
        week = self._faults(sites, now - 7 * 86400.0)
        month = self._faults(sites, now - 30 * 86400.0)
        with self.db.transaction(write=False) as tx:
            return queries.home(tx, now, sites, week, month)


class IncidentWorker:
    """`collector serve`'s incident thread: groups what ingest hands over (batches of up
    to `grouping.BATCH`, as `backlog.Backlog.take` forms them), and runs the periodic pass
    at start, then every interval_s (0: at start only), and as soon as the backlog had
    to refuse a bundle. Stopping groups what is still handed over, then ends."""

    def __init__(self, incidents: Incidents, interval_s: float) -> None:
        self.incidents = incidents
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="collector-incidents", daemon=True)
        self.passes = 0
        self.grouped = 0  # bundles handed over and grouped
        self.failed = 0  # bundles handed over whose grouping failed (logged)

    def start(self) -> IncidentWorker:
        self._thread.start()
        return self

    def _loop(self) -> None:
        backlog = self.incidents.backlog
        due: float | None = time.monotonic()
        dropped = backlog.dropped
        while True:
            if backlog.dropped != dropped or (due is not None and time.monotonic() >= due):
                dropped = backlog.dropped
                self._sweep()
                due = time.monotonic() + self.interval_s if self.interval_s > 0 else None
            stopping = self._stop.is_set()
            wait_s = 0.0 if stopping else 3600.0 if due is None else due - time.monotonic()
            batch = backlog.take(grouping.BATCH, timeout_s=wait_s, stop=self._stop.is_set)
            if batch:
                self._group(batch)
            elif stopping:
                return

    def _group(self, batch: list[BundleRecord]) -> None:
        try:
            ids = self.incidents.group_many(batch)
        except Exception as e:  # the clock, a bug: the catch-up pass groups them later
            log.error("incident_grouping_failed", bundles=len(batch), error=str(e)[:300])
            ids = [None] * len(batch)
        finally:
            self.incidents.backlog.done(len(batch))
        ok = sum(1 for i in ids if i is not None)
        self.grouped += ok
        self.failed += len(ids) - ok

    def _sweep(self) -> None:
        try:
            done = self.incidents.sweep(self._stop.is_set)
        except Exception as e:  # the pass runs again next interval
            log.error("incident_pass_failed", error=str(e)[:300])
        else:
            self.passes += 1
            if any(done.values()):
                log.info("incident_pass", **done)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self.incidents.backlog.wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

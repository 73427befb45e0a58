"""Retention and legal hold (issue 14 item 4): which bundles expire, and deleting them
safely beside ingest, with any number of instances.

Policy (`[collector.retention]`): a bundle is kept for the days its trigger kind and its
severity name (the longer of the two when both do; 0 is forever), else `default_days`
(0, the default: keep forever). Age is taken from the bundle's `created_at`.

A legal hold (`holds` table: scope bundle | device | site, a value, a reason) keeps every
bundle it covers until released; the DELETE itself re-checks the holds, and adding a hold
waits for a batch in flight (PostgreSQL: a transaction-level advisory lock shared by both;
SQLite: one writer at a time), so a bundle is never deleted after its hold was acknowledged.

A run (`run_retention`):
- one at a time across instances: a session advisory lock on PostgreSQL, a file lock
  beside the SQLite index; a run that does not get it does nothing (`skipped`);
- never blocks ingest: rule by rule, oldest first, batches of `batch_size`, each its own
  short transaction (select the candidates that no hold covers, delete their rows, record
  their blobs in ``retention_pending``), then the blobs are deleted and their pending rows
  dropped: an index row is always gone before its blob, so a listed bundle has its bytes;
- a run killed between the two leaves ``retention_pending`` rows: the next run deletes
  those blobs first, and `BundleStore.reconcile` never re-indexes them;
- counted by reason (``default``, ``kind:<kind>``, ``severity:<severity>``): the rule that
  set the bundle's retention; exactly once, by the rows the DELETE returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import structlog

from agent.bundle.format import is_bundle_id
from agent.bundle.trigger import TriggerKind
from agent.core.model import Severity
from collector.storage.base import BundleStore, StorageError

log = structlog.get_logger(__name__)

SCOPES = ("bundle", "device", "site")
KINDS = tuple(k.value for k in TriggerKind)
SEVERITIES = tuple(s.value for s in Severity)
DAY_S = 86400.0
Cursor = tuple[float, str]  # (created_at, bundle_id) of the last candidate seen


@dataclass(frozen=True)
class Hold:
    """A legal hold: every bundle of `scope` = `value` is kept until it is released."""

    scope: str
    value: str
    reason: str
    created_at: float

    def to_dict(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "value": self.value,
            "reason": self.reason,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Rule:
    """Bundles of one (kind, severity) (None, None: any other) older than cutoff expire."""

    kind: str | None
    severity: str | None
    cutoff: float
    reason: str

    def where(self, placeholder: str) -> tuple[str, list[object]]:
        """The rule's condition on ``bundles`` (aliased b) and its values."""
        if self.kind is not None and self.severity is not None:
            return (
                f"b.trigger_kind = {placeholder} AND b.severity = {placeholder} "
                f"AND b.created_at < {placeholder}",
                [self.kind, self.severity, self.cutoff],
            )
        kinds = ", ".join(placeholder for _ in KINDS)
        sevs = ", ".join(placeholder for _ in SEVERITIES)
        return (
            f"(b.trigger_kind NOT IN ({kinds}) OR b.severity NOT IN ({sevs})) "
            f"AND b.created_at < {placeholder}",
            [*KINDS, *SEVERITIES, self.cutoff],
        )


NOT_HELD = (
    "NOT EXISTS (SELECT 1 FROM holds h WHERE (h.scope = 'bundle' AND h.value = b.bundle_id)"
    " OR (h.scope = 'device' AND h.value = b.device) OR (h.scope = 'site' AND h.value = b.site))"
)


@dataclass(frozen=True)
class RetentionPolicy:
    """Days by trigger kind and by severity (the longer wins; 0 is forever), else default."""

    default_days: int = 0
    kind_days: Mapping[str, int] = field(default_factory=dict)
    severity_days: Mapping[str, int] = field(default_factory=dict)

    def days(self, kind: str, severity: str) -> tuple[int, str]:
        """(days, reason) for a bundle of kind and severity; 0 days: kept forever."""
        found = [
            (d, r)
            for d, r in (
                (self.kind_days.get(kind), f"kind:{kind}"),
                (self.severity_days.get(severity), f"severity:{severity}"),
            )
            if d is not None
        ]
        if not found:
            return self.default_days, "default"
        if any(d == 0 for d, _ in found):
            return 0, next(r for d, r in found if d == 0)
        return max(found, key=lambda x: x[0])

    def rules(self, now: float) -> list[Rule]:
        """The rules that delete anything at time now (kept-forever classes have none)."""
        out = []
        for kind in KINDS:
            for sev in SEVERITIES:
                days, reason = self.days(kind, sev)
                if days > 0:
                    out.append(Rule(kind, sev, now - days * DAY_S, reason))
        if self.default_days > 0:
            out.append(Rule(None, None, now - self.default_days * DAY_S, "default"))
        return out

    @property
    def deletes_anything(self) -> bool:
        return bool(self.rules(time.time()))


@runtime_checkable
class RetentionIndex(Protocol):
    """What retention and holds need from an index engine (SQLite and PostgreSQL)."""

    def add_hold(self, scope: str, value: str, reason: str) -> bool:
        """Place a hold (True), or update the reason of the one in place (False)."""

    def remove_hold(self, scope: str, value: str) -> bool:
        """Release a hold; False when there was none."""

    def holds(self) -> list[Hold]:
        """Every hold in place, oldest first."""

    def retention_lock(self) -> AbstractContextManager[bool]:
        """Held for a whole run; yields False when another run (any instance) holds it."""

    def expire_batch(
        self, rule: Rule, after: Cursor | None, limit: int
    ) -> tuple[list[tuple[str, str]], Cursor | None]:
        """One short transaction: delete up to limit unheld rows of rule after the cursor,
        recording their blobs as pending; (deleted (id, sha256), next cursor or None)."""

    def pending(self, limit: int) -> list[tuple[str, str]]:
        """Blobs whose rows retention deleted and whose blobs may still exist."""

    def forget_pending(self, items: list[tuple[str, str]]) -> None:
        """Drop pending rows whose blobs are deleted."""

    def is_pending(self, bundle_id: str) -> bool:
        """True when retention deleted this id's row and its blob is to go."""

    def indexed(self, bundle_ids: list[str]) -> set[str]:
        """Those of bundle_ids that have an index row (one query)."""


def check_scope(scope: str, value: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"hold scope must be one of {', '.join(SCOPES)}")
    if not value or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise ValueError(f"hold {scope} must be 1-200 printable characters")


def parse_hold_target(data: Mapping[str, object]) -> tuple[str, str]:
    """(scope, value) from exactly one of bundle / device / site; ValueError otherwise."""
    named = [(s, data[s]) for s in SCOPES if data.get(s) not in (None, "")]
    if len(named) != 1:
        raise ValueError("name exactly one of bundle, device, site")
    scope, value = named[0]
    if not isinstance(value, str):
        raise ValueError(f"{scope} must be a string")
    value = value.strip()
    check_scope(scope, value)
    if scope == "bundle" and not is_bundle_id(value):
        raise ValueError("bundle must be a canonical lower-case UUID")
    return scope, value


def retention_index(store: BundleStore) -> RetentionIndex:
    index = store.index
    if not isinstance(index, RetentionIndex):
        raise StorageError(f"the {type(index).__name__} index has no retention")
    return index


@dataclass
class RetentionReport:
    """What one run did."""

    skipped: bool = False  # another run held the lock
    deleted: dict[str, int] = field(default_factory=dict)  # by reason
    blobs_deleted: int = 0
    pending_blobs: int = 0  # left for the next run (blob deletion failed)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def _delete_blobs(store: BundleStore, idx: RetentionIndex, items: list[tuple[str, str]]) -> int:
    """Delete the blobs of rows retention removed; returns how many pending rows cleared.

    A row indexed again meanwhile (the same bundle uploaded again) keeps its blob.
    """
    again = idx.indexed([b for b, _ in items])
    gone = [(b, s) for b, s in items if b not in again]
    delete_many: Callable[[list[tuple[str, str]]], None] | None = getattr(
        store.blobs, "delete_many", None
    )
    if delete_many is not None:
        delete_many(gone)
    else:
        for bid, sha in gone:
            store.blobs.delete(bid, sha)
    idx.forget_pending(items)
    return len(gone)


def run_retention(
    store: BundleStore,
    policy: RetentionPolicy,
    *,
    batch_size: int = 500,
    now: float | None = None,
    on_deleted: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
) -> RetentionReport:
    """One retention run (see the module docstring); on_deleted(reason, n) per batch."""
    idx = retention_index(store)
    report = RetentionReport()
    with idx.retention_lock() as got:
        if not got:
            report.skipped = True
            return report
        while True:  # what a previous run left: blobs whose rows are gone
            left = idx.pending(batch_size)
            if not left:
                break
            try:
                report.blobs_deleted += _delete_blobs(store, idx, left)
            except StorageError as e:
                report.errors.append(f"pending blobs: {e}")
                break
        for rule in policy.rules(time.time() if now is None else now):
            cursor: Cursor | None = None
            while stop is None or not stop.is_set():
                deleted, cursor = idx.expire_batch(rule, cursor, batch_size)
                if deleted:
                    report.deleted[rule.reason] = report.deleted.get(rule.reason, 0) + len(deleted)
                    if on_deleted is not None:
                        on_deleted(rule.reason, len(deleted))
                    try:
                        report.blobs_deleted += _delete_blobs(store, idx, deleted)
                    except StorageError as e:  # the rows stay pending: the next run retries
                        report.errors.append(str(e))
                if cursor is None:
                    break
        report.pending_blobs = len(idx.pending(1))
    return report


class RetentionWorker:
    """`collector serve`'s periodic retention: a run every interval_s in a thread (the
    first one interval_s after start); every instance runs it, one at a time wins."""

    def __init__(
        self,
        store: BundleStore,
        policy: RetentionPolicy,
        interval_s: float,
        *,
        batch_size: int = 500,
        on_deleted: Callable[[str, int], None] | None = None,
    ):
        self.store = store
        self.policy = policy
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.on_deleted = on_deleted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="collector-retention", daemon=True)
        self.runs = 0

    def start(self) -> RetentionWorker:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                report = run_retention(
                    self.store,
                    self.policy,
                    batch_size=self.batch_size,
                    on_deleted=self.on_deleted,
                    stop=self._stop,
                )
            except StorageError as e:
                log.error("retention_failed", error=str(e))
                continue
            self.runs += 1
            if report.total or report.errors:
                log.info(
                    "retention_run",
                    deleted=report.deleted,
                    blobs_deleted=report.blobs_deleted,
                    errors=report.errors[:5],
                )

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

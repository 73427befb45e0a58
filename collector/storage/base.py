"""What every storage engine shares: the records, the `BlobStore` and `Index` protocols,
and `BundleStore`, which composes one of each and owns the idempotency rule of upload v1.

Engines (one module each): `files` (bundles as files in data_dir) and `sqlite` (the index
in data_dir) are the embedded default for one instance; `s3` (any S3-compatible server)
and `postgres` (PostgreSQL, with psycopg's pool) are the fleet engines, shared by any
number of instances.

Idempotency (201 created / 200 same digest / 409 other digest):
- with a *shared* blob store (S3: every blob keyed by bundle id AND sha256, so two bodies
  never overwrite each other), no process lock: the blob is written first, then the index
  row is inserted with ``ON CONFLICT (bundle_id) DO NOTHING``; the database's primary key
  decides which upload was first, and the loser compares digests (same: 200, other: 409
  and its own blob is deleted). No index row ever lacks its blob; a blob without a row
  (an instance killed between the two) is harmless and `reconcile` indexes or removes it.
- with the files engine (one file per bundle id) an in-process lock serialises commits:
  that engine is for one instance.

Durability: the blob is the record and the index is derived from it; the blob is durable
(fsync, or the S3 server's acknowledgement) before the row is written, and the row before
the upload is acknowledged.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, runtime_checkable

CommitResult = Literal["created", "exists", "conflict"]
Observer = Callable[[str, str, float], None]  # (engine, operation, seconds)


class StorageError(Exception):
    """The store could not read or write (disk full, permissions, server down, corrupt index).

    Ingest answers it with 503 and Retry-After (`collector.app`): the upload is retried,
    and the store is left as if it had not been attempted, or with a blob no row names.
    """


class StorageFull(StorageError):
    """The store is out of space (ENOSPC, EDQUOT, SQLite's 'database or disk is full')."""


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error(what: str, e: OSError) -> StorageError:
    """The StorageError for an OSError while doing `what` (StorageFull for no space left)."""
    cls = StorageFull if e.errno in FULL_ERRNOS else StorageError
    return cls(f"{what}: {e.strerror or e}")


class SchemaError(StorageError):
    """The index's schema is not the one this collector knows (run `collector migrate`)."""


@dataclass(frozen=True)
class BundleRecord:
    """One indexed bundle: what the list page and `GET /v1/bundles` show."""

    bundle_id: str
    device: str
    site: str
    fault_key: str
    severity: str
    trigger_kind: str
    summary: str
    created_at: float
    received_at: float
    size_bytes: int
    sha256: str
    screenshot: str
    signature_checked: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (times as epoch seconds; the API adds RFC 3339)."""
        return dataclasses.asdict(self)


COLUMNS = tuple(f.name for f in dataclasses.fields(BundleRecord))


@dataclass(frozen=True)
class Query:
    """Filters for the read side; empty strings and None mean 'any'."""

    device: str = ""
    site: str = ""
    fault: str = ""
    severity: str = ""
    since: float | None = None
    until: float | None = None
    limit: int = 50
    offset: int = 0
    # who may see what (`collector.access.Principal.restrict`): None, every site; else only
    # bundles filed under one of these sites (an empty set matches nothing)
    sites: frozenset[str] | None = None


@runtime_checkable
class BlobStore(Protocol):
    """Where bundle zips live, by bundle id (and digest, for a shared store).

    `shared` is True when several instances may write at once: blobs are keyed by
    (bundle id, sha256), so two bodies under one id never overwrite each other. The
    sha256 arguments are optional for a store keyed by id alone, which ignores them.
    """

    shared: bool

    def put(self, bundle_id: str, src: Path, sha256: str | None = None) -> None:
        """Take ownership of the complete local file src; on return the blob is durable."""

    def get(self, bundle_id: str, sha256: str | None = None) -> bytes:
        """The stored bytes; raises KeyError when absent."""

    def exists(self, bundle_id: str, sha256: str | None = None) -> bool:
        """True when a blob is stored under bundle_id (with that digest, when given)."""

    def delete(self, bundle_id: str, sha256: str | None = None) -> None:
        """Remove a blob (that digest's, when given); absent is not an error."""

    def ids(self, modified_since: float | None = None) -> Iterator[str]:
        """Stored bundle ids (those written at or after modified_since, epoch s, when given)."""

    def entries(self, modified_since: float | None = None) -> Iterator[tuple[str, str | None]]:
        """(bundle id, sha256 or None when the store keys by id alone) of stored blobs."""


@runtime_checkable
class Index(Protocol):
    """Searchable metadata of stored bundles."""

    def add(self, record: BundleRecord) -> bool:
        """Insert; False (and no change) when bundle_id is already indexed."""

    def get(self, bundle_id: str) -> BundleRecord | None:
        """The record, or None."""

    def query(self, q: Query) -> list[BundleRecord]:
        """Matching records, newest first (created_at, then bundle_id), paged."""

    def count(self, q: Query) -> int:
        """How many records match q (ignoring limit/offset)."""

    def counts(self, q: Query) -> dict[str, int]:
        """Matching records by fault key (ignoring q.fault, limit and offset)."""

    def latest_received_at(self) -> float | None:
        """The newest received_at in the index, or None when it is empty."""

    def close(self) -> None:
        """Release connections."""


class Limiter(Protocol):
    """A rate limit by key: `take` is 0.0 (go, a token spent) or the seconds to wait."""

    def take(self, key: str) -> float: ...


# --------------------------------------------------------------------------- timing

P = ParamSpec("P")
R = TypeVar("R")


def _no_observer(engine: str, op: str, seconds: float) -> None:
    pass


class Timed:
    """Mixin of the engines: `observe(engine, op, seconds)` sees every timed call."""

    engine = "?"
    observe: Observer = staticmethod(_no_observer)


def timed(
    op: str,
) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[Concatenate[Any, P], R]]:
    """Time an engine method (failures too) and report it to the engine's `observe`."""

    def wrap(fn: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
        def inner(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
            t0 = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                self.observe(self.engine, op, time.perf_counter() - t0)

        functools.update_wrapper(inner, fn)
        return inner

    return wrap


def untimed(q: Query) -> bool:
    """True when q has no time window: its counts come from the summary table
    ``bundle_counts`` (site, device, fault_key, severity -> n; migration 0004), which
    `where_clause` filters like ``bundles`` (the same column names)."""
    return q.since is None and q.until is None


def where_clause(q: Query, placeholder: str, *, with_fault: bool = True) -> tuple[str, list[Any]]:
    """The WHERE of a read query (with the engine's parameter placeholder) and its values."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("device", q.device),
        ("site", q.site),
        ("fault_key", q.fault if with_fault else ""),
        ("severity", q.severity),
    ):
        if value:
            clauses.append(f"{column} = {placeholder}")
            params.append(value)
    if q.sites is not None:
        allowed = sorted(q.sites)
        if allowed:
            clauses.append(f"site IN ({', '.join([placeholder] * len(allowed))})")
            params.extend(allowed)
        else:
            clauses.append("1 = 0")
    if q.since is not None:
        clauses.append(f"created_at >= {placeholder}")
        params.append(q.since)
    if q.until is not None:
        clauses.append(f"created_at <= {placeholder}")
        params.append(q.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def count_query(q: Query, placeholder: str) -> tuple[str, list[Any]]:
    """The SQL (with the engine's placeholder) and values of `Index.count`: the summary
    table `bundle_counts` (migration 0004) when q has no time window, else the rows."""
    where, params = where_clause(q, placeholder)
    table, total = (
        ("bundle_counts", "COALESCE(SUM(n), 0)") if untimed(q) else ("bundles", "COUNT(*)")
    )
    return f"SELECT {total} FROM {table}{where}", params


def counts_query(q: Query, placeholder: str) -> tuple[str, list[Any]]:
    """The SQL and values of `Index.counts` (by fault key, ignoring q.fault), from the
    summary table when q has no time window."""
    where, params = where_clause(q, placeholder, with_fault=False)
    if untimed(q):
        sql = (
            f"SELECT fault_key, SUM(n) FROM bundle_counts{where} "
            "GROUP BY fault_key HAVING SUM(n) > 0 ORDER BY SUM(n) DESC, fault_key"
        )
    else:
        sql = (
            f"SELECT fault_key, COUNT(*) FROM bundles{where} "
            "GROUP BY fault_key ORDER BY COUNT(*) DESC, fault_key"
        )
    return sql, params


# --------------------------------------------------------------------------- composition


class BundleStore:
    """A blob store and an index together, with the idempotency rule of upload v1.

    `limits` is a rate limiter factory shared by every instance (the PostgreSQL index
    provides one), or None: the caller then keeps its limits in memory.
    """

    def __init__(
        self,
        blobs: BlobStore,
        index: Index,
        staging_dir: str | Path,
        *,
        limits: Callable[[int, str], Limiter] | None = None,
    ):
        self.blobs = blobs
        self.index = index
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """True when several instances may commit at once (a content-addressed blob store)."""
        return bool(getattr(self.blobs, "shared", False))

    def set_observer(self, observe: Observer) -> None:
        """Report the latency of every engine call to observe(engine, op, seconds)."""
        for part in (self.blobs, self.index):
            if isinstance(part, Timed):
                part.observe = observe

    def commit(self, record: BundleRecord, staged: Path) -> CommitResult:
        """Store a verified staged file under record.bundle_id, once.

        "created": stored now; "exists": already stored with the same sha256;
        "conflict": already stored with another digest. The staged file is
        consumed on "created" and left for the caller to delete otherwise.
        The blob is made durable before the index row is written, so an
        indexed bundle always has its bytes.
        """
        if self.shared:
            return self._commit_shared(record, staged)
        return self._commit_single(record, staged)

    def _commit_shared(self, record: BundleRecord, staged: Path) -> CommitResult:
        """Any number of instances: the index's primary key decides (no process lock)."""
        bid, sha = record.bundle_id, record.sha256
        known = self.index.get(bid)  # a retry of a stored bundle costs no blob upload
        if known is not None:
            return "exists" if known.sha256 == sha else "conflict"
        self.blobs.put(bid, staged, sha)
        for _ in range(3):
            if self.index.add(record):  # INSERT ... ON CONFLICT (bundle_id) DO NOTHING
                return "created"
            known = self.index.get(bid)
            if known is None:  # the winner's row was deleted meanwhile: insert again
                continue
            if known.sha256 == sha:
                return "exists"
            self.blobs.delete(bid, sha)  # our own blob (another key than the winner's)
            return "conflict"
        raise StorageError(f"index row of {bid} keeps changing")

    def _commit_single(self, record: BundleRecord, staged: Path) -> CommitResult:
        """One instance, a blob store keyed by id alone: an in-process lock serialises.

        A blob without a row (the index lost it) counts as stored: same bytes are
        re-indexed ("exists"), other bytes are a "conflict".
        """
        with self._lock:
            known = self.index.get(record.bundle_id)
            if known is not None:
                return "exists" if known.sha256 == record.sha256 else "conflict"
            if self.blobs.exists(record.bundle_id):
                old = hashlib.sha256(self.blobs.get(record.bundle_id)).hexdigest()
                if old != record.sha256:
                    return "conflict"
                self.index.add(record)
                return "exists"
            self.blobs.put(record.bundle_id, staged, record.sha256)
            self.index.add(record)
            return "created"

    def read(self, record: BundleRecord) -> bytes:
        """The stored bytes of an indexed bundle; KeyError when its blob is gone."""
        return self.blobs.get(record.bundle_id, record.sha256)

    def reconcile(
        self,
        make_record: Callable[[str, bytes, float], BundleRecord | None],
        *,
        margin_s: float = 3600.0,
    ) -> int:
        """Index blobs the index does not know; returns how many were added.

        Only blobs written after the newest indexed receipt minus margin_s are
        looked at (all of them when the index is empty). make_record(id,
        bytes, received_at) builds the row, or returns None to skip a blob.
        In a shared store, a blob whose id is indexed with another digest lost
        a race and its instance died before removing it: it is removed here. A blob
        whose row retention deleted (``retention_pending``) is left for retention.
        """
        latest = self.index.latest_received_at()
        since = None if latest is None else latest - margin_s
        added = 0
        for bid, sha in self.blobs.entries(modified_since=since):
            known = self.index.get(bid)
            if known is not None:
                if sha is not None and known.sha256 != sha:
                    self.blobs.delete(bid, sha)
                continue
            with self._lock:
                if self.index.get(bid) is not None:
                    continue
                is_pending = getattr(self.index, "is_pending", None)
                if callable(is_pending) and is_pending(bid):
                    continue  # retention deleted its row: its blob is to go, not to return
                try:
                    data = self.blobs.get(bid, sha)
                except KeyError:
                    continue
                record = make_record(bid, data, time.time())
                if record is not None and self.index.add(record):
                    added += 1
        return added

    def close(self) -> None:
        self.index.close()
        close = getattr(self.blobs, "close", None)
        if callable(close):
            close()

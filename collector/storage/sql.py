"""Portable SQL on the index's engine, for the operators' tables (accounts, sessions,
audit, incidents, outbox): written once, run by SQLite and PostgreSQL alike.

The dialect of the code is one: ``?`` placeholders and the SQL both engines run
(SQLite 3.40 of Debian 12, PostgreSQL 15): ``INSERT ... ON CONFLICT ... DO
NOTHING/UPDATE``, ``RETURNING``, CTEs, ``COALESCE``, ``LIMIT/OFFSET``. No ``?`` or
``%`` inside string literals (pass values as parameters). Where the engines differ (an
identity column, a type), the difference lives in the versioned migration files
(`collector.storage.schema`), never in the code.

An index engine is a `Database`: ``with db.transaction() as tx:`` runs one transaction,
committed on leaving the block and rolled back on an exception. ``tx.lock(name)``
serialises writers on a name across every instance (PostgreSQL: a transaction-scoped
advisory lock; SQLite: its write transaction already excludes every other writer);
``tx.lock_all(names)`` takes several, in the order given, in one statement (callers
that take several give them in one order, name order, so no two wait on each other in
a cycle).

``db.transaction(pipeline=True)``: on PostgreSQL, a statement whose reply is not read
(``tx.execute``, whose count is then -1) is sent with the next one that is read (or the
COMMIT) in one round trip; an error surfaces there (a unique violation still as
`Conflict`). Same statements, same order, same results: only the waits are fewer.

``db.transaction(durable=False)`` is a write whose commit does not wait for the disk
(PostgreSQL: ``SET LOCAL synchronous_commit = off``; SQLite: no difference). Use it only for a write that can be redone from what is
durable (incident grouping: `collector.incidents.grouping`). Its rows are visible to
others at once but a crash of the server may lose the last of them (up to three
``wal_writer_delay``, 0.6 s by default); they are on disk as soon as any later durable
commit on the same server is (the log is written in order), so a reader that acts on
them outside the database (sends a webhook) must first commit a durable write (the
notify outbox's claim does).

Errors: every engine failure is a `StorageError` (the collector answers 503); a unique
or foreign-key violation is its subtype `Conflict` (the caller answers 409 or retries).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol, runtime_checkable

import structlog

from collector.storage.base import StorageError

log = structlog.get_logger(__name__)

Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]


class Conflict(StorageError):
    """A unique or foreign-key constraint refused the write."""


class Tx(Protocol):
    """One open transaction."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed (-1 when unknown)."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query (or of a statement's RETURNING), or None."""

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query."""

    def lock(self, name: str) -> None:
        """Hold an exclusive lock on name until the transaction ends (every instance)."""

    def lock_all(self, names: Sequence[str]) -> None:
        """`lock` each name, in the order given, in one statement (PostgreSQL)."""


@runtime_checkable
class Database(Protocol):
    """An engine that runs portable SQL (both index engines are)."""

    def transaction(
        self, *, write: bool = True, durable: bool = True, pipeline: bool = False
    ) -> AbstractContextManager[Tx]:
        """One transaction; write=False for a read-only one (no writer lock on SQLite);
        durable=False for a write whose commit need not wait for the disk, pipeline=True
        for statements sent without waiting for their replies (both above)."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class BaseTx:
    """`Tx` from one engine method, `_run` (statement → DB-API cursor), and `lock`."""

    dialect: Dialect

    def _run(self, sql: str, params: Sequence[Any]) -> Cursor:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(sql, params).rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = self._run(sql, params).fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in self._run(sql, params).fetchall()]


# values in one statement at most where statements are merged (multi-row INSERTs and
# UPDATEs): psycopg converts a statement's text once and keeps it when it has no more
# (its MAX_CACHED_STATEMENT_PARAMS; a longer one is parsed again at every call, some 16 us
# a value), and PostgreSQL would prepare a text run again and again
STATEMENT_PARAMS = 50


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def bookkeeping(db: Database, sql: str, params: Sequence[Any], *, what: str) -> bool:
    """One write that only keeps books (a last-used time, an expired row's removal) in its
    own transaction: a failure (a full disk, the server gone) is logged and the request
    it belongs to goes on; False then."""
    try:
        with db.transaction() as tx:
            tx.execute(sql, params)
    except StorageError as e:
        log.warning("bookkeeping_write_failed", what=what, error=str(e)[:300])
        return False
    return True


def database(store: object) -> Database:
    """The `Database` of a `BundleStore` (its index), or StorageError when the index has none."""
    index = getattr(store, "index", store)
    if not isinstance(index, Database):
        raise StorageError(f"{type(index).__name__} does not run portable SQL")
    return index

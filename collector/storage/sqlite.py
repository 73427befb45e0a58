"""The embedded index: one SQLite file in data_dir (one instance), versioned like PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector.storage import schema
from collector.storage.base import (
    COLUMNS,
    BundleRecord,
    Query,
    StorageError,
    StorageFull,
    Timed,
    count_query,
    counts_query,
    timed,
    where_clause,
)
from collector.storage.retention import NOT_HELD, Cursor, Hold, Rule, check_scope
from collector.storage.sql import BaseTx, Conflict, Dialect

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)


def write_error(e: sqlite3.Error) -> StorageError:
    """The StorageError of a failed write (StorageFull when the disk is full)."""
    full = getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return (StorageFull if full else StorageError)(f"index write failed: {e}")


def schema_version(conn: sqlite3.Connection) -> int:
    """The applied version: schema_version's highest; 1 for a store made before versioning
    (a bundles table alone); 0 for an empty file."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)
    return 1 if "bundles" in tables else 0


def apply_migrations(conn: sqlite3.Connection) -> tuple[int, int]:
    """Apply the missing versions, each in its own transaction; (before, after).

    A store made before versioning is stamped at 1 first. SchemaError when the file
    is newer than this collector knows.
    """
    before = schema_version(conn)
    if before > schema.LATEST:
        schema.check(before, "the SQLite index")
    level = conn.isolation_level
    conn.isolation_level = None
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_VERSION_TABLE)
            if before == 1:
                conn.execute(
                    "INSERT OR IGNORE INTO schema_version VALUES (1, 'bundles', ?)", (time.time(),)
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for m in schema.migrations("sqlite"):
            if m.version <= before:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                if schema_version(conn) >= m.version:  # another process was quicker
                    conn.execute("COMMIT")
                    continue
                for stmt in _statements(m.sql):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.isolation_level = level
    return before, schema_version(conn)


def _statements(sql: str) -> list[str]:
    """The statements of a migration file, a trigger's BEGIN ... END; whole
    (`sqlite3.complete_statement` decides where one ends; no semicolons in comments)."""
    out: list[str] = []
    current = ""
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current += line + "\n"
        if sqlite3.complete_statement(current):
            out.append(current.strip().removesuffix(";").strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return [s for s in out if s]


class SqliteIndex(Timed):
    """The index in one SQLite file; one connection per thread.

    WAL mode with synchronous=NORMAL by default: a commit survives a crash of
    the collector, and a power cut may drop the last commits, which
    `BundleStore.reconcile` restores from the blobs. Pass synchronous="FULL"
    to fsync every commit instead.

    A new (empty) file is created at the latest schema; an existing one must be at the
    latest (SchemaError otherwise: `posagent collector migrate`), unless migrate=True.

    Writers in this process take turns on a lock (`_writer`) before SQLite's own: a
    writer that finds the database locked is put to sleep by SQLite's busy handler for
    1, 2, 5, 10 ms and more before it looks again, where the writer ahead of it (an
    upload's row, a batch of grouping, a group of check-ins) takes well under a
    millisecond; on the lock it waits just that long. Another process (the CLI) still
    meets the busy handler.
    """

    engine = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", migrate: bool = False):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.synchronous = synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = threading.RLock()  # this process's writers, one at a time
        self.migrated = (0, 0)  # (before, after) when this open applied migrations
        conn = self._conn()
        try:
            with self._lock:
                conn.execute("PRAGMA journal_mode=WAL")
                version = schema_version(conn)
                if version == 0 or migrate:
                    self.migrated = apply_migrations(conn)
                    version = self.migrated[1]
            schema.check(version, f"index {self.path}")
        except sqlite3.Error as e:
            self.close()
            raise StorageError(f"cannot open index {self.path}: {e}") from e
        except StorageError:
            self.close()
            raise

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as e:
                raise StorageError(f"cannot open index {self.path}: {e}") from e
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @staticmethod
    def _record(row: tuple[Any, ...]) -> BundleRecord:
        data = dict(zip(COLUMNS, row, strict=True))
        data["signature_checked"] = bool(data["signature_checked"])
        return BundleRecord(**data)

    @timed("index_add")
    def add(self, record: BundleRecord) -> bool:
        values = [getattr(record, c) for c in COLUMNS]
        values[COLUMNS.index("signature_checked")] = int(record.signature_checked)
        sql = (
            f"INSERT OR IGNORE INTO bundles ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)})"
        )
        try:
            conn = self._conn()
            with self._writer, conn:
                cur = conn.execute(sql, values)
            return cur.rowcount == 1
        except sqlite3.Error as e:
            raise write_error(e) from e

    @timed("index_update")
    def update(self, record: BundleRecord) -> bool:
        """Rewrite the row of record.bundle_id with the same sha256 (a bundle indexed
        again, `collector reindex`); False when there is no such row."""
        cols = [c for c in COLUMNS if c not in ("bundle_id", "sha256")]
        values = [
            int(v) if c == "signature_checked" else v
            for c, v in ((c, getattr(record, c)) for c in cols)
        ]
        sql = (
            f"UPDATE bundles SET {', '.join(f'{c} = ?' for c in cols)} "
            "WHERE bundle_id = ? AND sha256 = ?"
        )
        try:
            conn = self._conn()
            with self._writer, conn:
                cur = conn.execute(sql, [*values, record.bundle_id, record.sha256])
            return cur.rowcount == 1
        except sqlite3.Error as e:
            raise StorageError(f"index write failed: {e}") from e

    @timed("index_get")
    def get(self, bundle_id: str) -> BundleRecord | None:
        try:
            row = (
                self._conn()
                .execute(
                    f"SELECT {', '.join(COLUMNS)} FROM bundles WHERE bundle_id = ?", (bundle_id,)
                )
                .fetchone()
            )
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return self._record(row) if row else None

    @timed("index_query")
    def query(self, q: Query) -> list[BundleRecord]:
        where, params = where_clause(q, "?")
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM bundles{where} "
            "ORDER BY created_at DESC, bundle_id DESC LIMIT ? OFFSET ?"
        )
        try:
            rows = self._conn().execute(sql, [*params, q.limit, q.offset]).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return [self._record(r) for r in rows]

    @timed("index_count")
    def count(self, q: Query) -> int:
        sql, params = count_query(q, "?")
        try:
            row = self._conn().execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return int(row[0])

    @timed("index_counts")
    def counts(self, q: Query) -> dict[str, int]:
        sql, params = counts_query(q, "?")
        try:
            rows = self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return {str(k): int(n) for k, n in rows}

    def latest_received_at(self) -> float | None:
        try:
            row = self._conn().execute("SELECT MAX(received_at) FROM bundles").fetchone()
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return None if row[0] is None else float(row[0])

    def scan(self, after: str, limit: int) -> list[BundleRecord]:
        """Records by bundle id after `after` (keyset paging of the whole index)."""
        try:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {', '.join(COLUMNS)} FROM bundles WHERE bundle_id > ? "
                    "ORDER BY bundle_id LIMIT ?",
                    (after, limit),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return [self._record(r) for r in rows]

    # ----------------------------------------------------------------- retention, holds

    def _write(self, fn: Any) -> Any:
        """Run fn(conn) in one BEGIN IMMEDIATE transaction (one writer at a time)."""
        conn = self._conn()
        try:
            with self._writer:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return out
        except sqlite3.Error as e:
            raise write_error(e) from e

    def add_hold(self, scope: str, value: str, reason: str) -> bool:
        check_scope(scope, value)

        def go(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE holds SET reason = ? WHERE scope = ? AND value = ?", (reason, scope, value)
            )
            if cur.rowcount:
                return False
            conn.execute(
                "INSERT INTO holds (scope, value, reason, created_at) VALUES (?, ?, ?, ?)",
                (scope, value, reason, time.time()),
            )
            return True

        return bool(self._write(go))

    def remove_hold(self, scope: str, value: str) -> bool:
        def go(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM holds WHERE scope = ? AND value = ?", (scope, value))
            return cur.rowcount == 1

        return bool(self._write(go))

    def holds(self) -> list[Hold]:
        try:
            rows = (
                self._conn()
                .execute(
                    "SELECT scope, value, reason, created_at FROM holds "
                    "ORDER BY created_at, scope, value"
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return [Hold(str(s), str(v), str(r), float(t)) for s, v, r, t in rows]

    @contextmanager
    def retention_lock(self) -> Iterator[bool]:
        """An exclusive flock on ``<index>.retention.lock`` (released when the process dies)."""
        path = self.path.with_name(self.path.name + ".retention.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror or e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @timed("retention_batch")
    def expire_batch(
        self, rule: Rule, after: Cursor | None, limit: int
    ) -> tuple[list[tuple[str, str]], Cursor | None]:
        cond, params = rule.where("?")
        if after is not None:
            cond += " AND (b.created_at, b.bundle_id) > (?, ?)"
            params += [after[0], after[1]]
        select = (
            f"SELECT b.bundle_id, b.sha256, b.created_at FROM bundles b WHERE {cond} "
            f"AND {NOT_HELD} ORDER BY b.created_at, b.bundle_id LIMIT ?"
        )

        def go(conn: sqlite3.Connection) -> tuple[list[tuple[str, str]], Cursor | None]:
            rows = conn.execute(select, [*params, limit]).fetchall()
            if not rows:
                return [], None
            now = time.time()
            deleted = []
            for bid, sha, _ in rows:
                if conn.execute("DELETE FROM bundles WHERE bundle_id = ?", (bid,)).rowcount:
                    deleted.append((str(bid), str(sha)))
            conn.executemany(
                "INSERT OR IGNORE INTO retention_pending (bundle_id, sha256, deleted_at) "
                "VALUES (?, ?, ?)",
                [(b, s, now) for b, s in deleted],
            )
            last = rows[-1]
            return deleted, ((float(last[2]), str(last[0])) if len(rows) == limit else None)

        out: tuple[list[tuple[str, str]], Cursor | None] = self._write(go)
        return out

    def pending(self, limit: int) -> list[tuple[str, str]]:
        try:
            rows = (
                self._conn()
                .execute(
                    "SELECT bundle_id, sha256 FROM retention_pending ORDER BY deleted_at LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return [(str(b), str(s)) for b, s in rows]

    def forget_pending(self, items: list[tuple[str, str]]) -> None:
        def go(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM retention_pending WHERE bundle_id = ? AND sha256 = ?", items
            )

        self._write(go)

    def indexed(self, bundle_ids: list[str]) -> set[str]:
        out: set[str] = set()
        try:
            conn = self._conn()
            for i in range(0, len(bundle_ids), 500):
                chunk = bundle_ids[i : i + 500]
                marks = ", ".join("?" for _ in chunk)
                rows = conn.execute(
                    f"SELECT bundle_id FROM bundles WHERE bundle_id IN ({marks})", chunk
                ).fetchall()
                out.update(str(r[0]) for r in rows)
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return out

    def is_pending(self, bundle_id: str) -> bool:
        try:
            row = (
                self._conn()
                .execute("SELECT 1 FROM retention_pending WHERE bundle_id = ?", (bundle_id,))
                .fetchone()
            )
        except sqlite3.Error as e:
            raise StorageError(f"index read failed: {e}") from e
        return row is not None

    # ----------------------------------------------------------------- portable SQL

    @contextmanager
    def transaction(
        self, *, write: bool = True, durable: bool = True, pipeline: bool = False
    ) -> Iterator[SqliteTx]:
        """One transaction (`collector.storage.sql`); BEGIN IMMEDIATE when it writes.
        durable and pipeline change nothing here: there are no round trips to save."""
        conn = self._conn()
        with self._writer if write else contextlib.nullcontext():
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise write_error(e) from e
            try:
                yield SqliteTx(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise write_error(e) from e

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class SqliteTx(BaseTx):
    """`collector.storage.sql.Tx` on one SQLite connection (the write transaction is the lock)."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def _run(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as e:
            raise Conflict(str(e)) from e
        except sqlite3.Error as e:
            raise write_error(e) from e

    def lock(self, name: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already excludes every other writer."""

    def lock_all(self, names: Sequence[str]) -> None:
        """Nothing to do (`lock`)."""

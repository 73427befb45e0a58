"""The fleet index: PostgreSQL through psycopg 3 and a connection pool (psycopg-pool).

Shared by any number of collector instances: idempotency rests on the primary key of
``bundles`` (`add` is ``INSERT ... ON CONFLICT (bundle_id) DO NOTHING``) and the rate limits
on one token-bucket row per key (`PostgresRateLimiter`). The schema is versioned
(`collector.storage.schema`): `migrate` applies the missing versions under an advisory
lock; `PostgresIndex` refuses any other version than the one it knows.

Needs the fleet extra (``pip install 'posagent[fleet]'``).
"""

from __future__ import annotations

import math
import select
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from collector.storage import schema
from collector.storage.base import (
    COLUMNS,
    BundleRecord,
    Query,
    StorageError,
    Timed,
    count_query,
    counts_query,
    timed,
    where_clause,
)
from collector.storage.retention import NOT_HELD, Cursor, Hold, Rule, check_scope
from collector.storage.sql import BaseTx, Conflict, Dialect, Row, to_pyformat

log = structlog.get_logger(__name__)
MIGRATE_LOCK = 0x706F7361  # pg_advisory_xact_lock key of `collector migrate` ("posa")
RETENTION_LOCK = 0x706F7372  # session lock of a retention run, one at a time ("posr")
HOLDS_LOCK = 0x706F7368  # xact lock: adding a hold waits for a retention batch ("posh")
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
    "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the PostgreSQL index"
    host = info.get("host", "")
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname', '')}"


def _version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(url: str, *, connect_timeout_s: int = 10) -> tuple[int, int]:
    """Apply the missing versions in one transaction under an advisory lock; (before, after).

    SchemaError when the database is newer than this collector knows; StorageError when
    it cannot be reached.
    """
    where = redact_url(url)
    try:
        with (
            psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout_s) as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(_VERSION_TABLE)
            before = _version(conn)
            if before > schema.LATEST:
                schema.check(before, where)
            for m in schema.migrations("postgres"):
                if m.version <= before:
                    continue
                if m.sql:
                    conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
            after = _version(conn)
    except psycopg.Error as e:
        raise StorageError(f"{where}: {e}".strip()) from e
    return before, after


class PostgresIndex(Timed):
    """The index in PostgreSQL; a pool of autocommit connections (one per running query).

    Every connection is checked as it leaves the pool (`_check`: its socket polled, no
    round trip). A broken one (the server restarted, or cut its sessions) is replaced, and
    every idle connection of the pool is checked at once in the background (an empty
    query each), so the next queries after a restart get fresh connections instead of
    failing one stale connection each. While the server is down a query waits up to
    connect_timeout_s for a connection, then raises StorageError (ingest answers 503 with
    Retry-After).
    """

    engine = "postgres"

    def __init__(self, url: str, *, pool_max: int = 16, connect_timeout_s: int = 10):
        self.where = redact_url(url)
        self._purging = False
        self._purge_lock = threading.Lock()
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_s},
            timeout=connect_timeout_s,
            check=self._check,
            open=False,
            name="posagent-index",
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
            with self._conn() as conn:
                version = _version(conn)
        except psycopg.Error as e:
            self.pool.close()
            raise StorageError(f"{self.where}: cannot connect: {e}") from e
        except StorageError:
            self.pool.close()
            raise
        if version != schema.LATEST:
            self.pool.close()
            schema.check(version, self.where)

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out (raising: it is replaced), without
        a round trip: an idle connection has nothing to read, and one the server closed or
        is closing (a restart, a crash, a terminated session) has its goodbye or its end of
        file waiting on the socket. Something else there (an asynchronous notice) costs a
        new connection, never a wrong answer."""
        try:
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("the connection is closed")
            poll = select.poll()
            poll.register(conn.fileno(), select.POLLIN | select.POLLPRI)
            if poll.poll(0):
                conn.close()  # closed, the pool discards it (an open one would come back)
                raise psycopg.OperationalError("the server closed or spoke on an idle connection")
        except Exception:
            self._check_all_soon()
            raise

    def _check_all_soon(self) -> None:
        with self._purge_lock:
            if self._purging:
                return
            self._purging = True
        threading.Thread(target=self._check_all, daemon=True, name="posagent-index-check").start()

    def _check_all(self) -> None:
        """Check every idle connection, replacing the broken ones (psycopg_pool's check)."""
        try:
            self.pool.check()
        except Exception as e:  # the pool closed meanwhile: nothing to check
            log.debug("index_pool_check_failed", error=str(e))
        finally:
            with self._purge_lock:
                self._purging = False

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as e:
            raise StorageError(f"{self.where}: {e}") from e

    @staticmethod
    def _record(row: tuple[Any, ...]) -> BundleRecord:
        return BundleRecord(**dict(zip(COLUMNS, row, strict=True)))

    @timed("index_add")
    def add(self, record: BundleRecord) -> bool:
        sql = (
            f"INSERT INTO bundles ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('%s' for _ in COLUMNS)}) ON CONFLICT (bundle_id) DO NOTHING"
        )
        with self._conn() as conn:
            cur = conn.execute(sql, [getattr(record, c) for c in COLUMNS])
            return cur.rowcount == 1

    @timed("index_update")
    def update(self, record: BundleRecord) -> bool:
        """Rewrite the row of record.bundle_id with the same sha256 (a bundle indexed
        again, `collector reindex`); False when there is no such row."""
        cols = [c for c in COLUMNS if c not in ("bundle_id", "sha256")]
        sql = (
            f"UPDATE bundles SET {', '.join(f'{c} = %s' for c in cols)} "
            "WHERE bundle_id = %s AND sha256 = %s"
        )
        with self._conn() as conn:
            cur = conn.execute(
                sql, [*(getattr(record, c) for c in cols), record.bundle_id, record.sha256]
            )
            return cur.rowcount == 1

    @timed("index_get")
    def get(self, bundle_id: str) -> BundleRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM bundles WHERE bundle_id = %s", (bundle_id,)
            ).fetchone()
        return self._record(row) if row else None

    @timed("index_query")
    def query(self, q: Query) -> list[BundleRecord]:
        where, params = where_clause(q, "%s")
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM bundles{where} "
            "ORDER BY created_at DESC, bundle_id DESC LIMIT %s OFFSET %s"
        )
        with self._conn() as conn:
            rows = conn.execute(sql, [*params, q.limit, q.offset]).fetchall()
        return [self._record(r) for r in rows]

    @timed("index_count")
    def count(self, q: Query) -> int:
        sql, params = count_query(q, "%s")
        with self._conn() as conn:
            row = conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0

    @timed("index_counts")
    def counts(self, q: Query) -> dict[str, int]:
        sql, params = counts_query(q, "%s")
        with self._conn() as conn:
            rows = conn.execute(sql, params).fetchall()
        return {str(k): int(n) for k, n in rows}

    def latest_received_at(self) -> float | None:
        with self._conn() as conn:
            row = conn.execute("SELECT MAX(received_at) FROM bundles").fetchone()
        return None if not row or row[0] is None else float(row[0])

    def scan(self, after: str, limit: int) -> list[BundleRecord]:
        """Records by bundle id after `after` (keyset paging of the whole index)."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM bundles WHERE bundle_id > %s "
                "ORDER BY bundle_id LIMIT %s",
                (after, limit),
            ).fetchall()
        return [self._record(r) for r in rows]

    # ----------------------------------------------------------------- retention, holds

    def add_hold(self, scope: str, value: str, reason: str) -> bool:
        check_scope(scope, value)
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (HOLDS_LOCK,))
            row = conn.execute(
                "INSERT INTO holds (scope, value, reason, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (scope, value) "
                "DO UPDATE SET reason = EXCLUDED.reason RETURNING (xmax = 0)",
                (scope, value, reason, time.time()),
            ).fetchone()
        return bool(row and row[0])

    def remove_hold(self, scope: str, value: str) -> bool:
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM holds WHERE scope = %s AND value = %s", (scope, value))
            return cur.rowcount == 1

    def holds(self) -> list[Hold]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT scope, value, reason, created_at FROM holds "
                "ORDER BY created_at, scope, value"
            ).fetchall()
        return [Hold(str(s), str(v), str(r), float(t)) for s, v, r, t in rows]

    @contextmanager
    def retention_lock(self) -> Iterator[bool]:
        """A session advisory lock on one pooled connection for the whole run (released
        with the session if the process dies)."""
        with self._conn() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()
            got = bool(row and row[0])
            try:
                yield got
            finally:
                if got:
                    try:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))
                    except psycopg.Error:
                        pass  # the session is gone, and its lock with it

    @timed("retention_batch")
    def expire_batch(
        self, rule: Rule, after: Cursor | None, limit: int
    ) -> tuple[list[tuple[str, str]], Cursor | None]:
        cond, params = rule.where("%s")
        if after is not None:
            cond += " AND (b.created_at, b.bundle_id) > (%s, %s)"
            params += [after[0], after[1]]
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (HOLDS_LOCK,))
            rows = conn.execute(
                f"SELECT b.bundle_id, b.created_at FROM bundles b WHERE {cond} AND {NOT_HELD} "
                "ORDER BY b.created_at, b.bundle_id LIMIT %s",
                [*params, limit],
            ).fetchall()
            if not rows:
                return [], None
            deleted = conn.execute(
                f"DELETE FROM bundles b WHERE b.bundle_id = ANY(%s) AND {NOT_HELD} "
                "RETURNING b.bundle_id, b.sha256",
                ([str(r[0]) for r in rows],),
            ).fetchall()
            out = [(str(b), str(s)) for b, s in deleted]
            if out:
                now = time.time()
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO retention_pending (bundle_id, sha256, deleted_at) "
                        "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        [(b, s, now) for b, s in out],
                    )
        last = rows[-1]
        return out, ((float(last[1]), str(last[0])) if len(rows) == limit else None)

    def pending(self, limit: int) -> list[tuple[str, str]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT bundle_id, sha256 FROM retention_pending ORDER BY deleted_at LIMIT %s",
                (limit,),
            ).fetchall()
        return [(str(b), str(s)) for b, s in rows]

    def forget_pending(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        with self._conn() as conn, conn.cursor() as cur:
            cur.executemany(
                "DELETE FROM retention_pending WHERE bundle_id = %s AND sha256 = %s", items
            )

    def indexed(self, bundle_ids: list[str]) -> set[str]:
        if not bundle_ids:
            return set()
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT bundle_id FROM bundles WHERE bundle_id = ANY(%s)", (bundle_ids,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def is_pending(self, bundle_id: str) -> bool:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT 1 FROM retention_pending WHERE bundle_id = %s", (bundle_id,)
            ).fetchone()
        return row is not None

    def connections(self) -> int:
        """Connections the pool holds open to PostgreSQL."""
        return int(self.pool.get_stats().get("pool_size", 0))

    def limiter(self, rate_per_minute: int, scope: str) -> PostgresRateLimiter:
        """A token bucket per key, shared by every instance on this database."""
        return PostgresRateLimiter(self, rate_per_minute, scope)

    @contextmanager
    def transaction(
        self, *, write: bool = True, durable: bool = True, pipeline: bool = False
    ) -> Iterator[PgTx]:
        """One transaction (`collector.storage.sql`) on a pooled connection.

        durable=False: ``SET LOCAL synchronous_commit = off`` after BEGIN (the setting
        ends with the transaction: the pooled connection is as before). pipeline=True:
        psycopg's pipeline mode, so BEGIN, the setting and every statement whose reply
        is not read go to the server with the next read (or the COMMIT) in one round
        trip; an error surfaces there, a unique violation as `Conflict` all the same."""
        if durable and not pipeline:
            with self._conn() as conn, conn.transaction():
                yield PgTx(conn)
            return
        piped = pipeline and psycopg.Pipeline.is_supported()
        with self._conn() as conn:
            try:
                with conn.pipeline() if piped else nullcontext():
                    conn.execute("BEGIN")
                    if not durable:
                        conn.execute("SET LOCAL synchronous_commit = off")
                    yield PgTx(conn)
                    conn.execute("COMMIT")
            except BaseException as e:
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                if isinstance(e, psycopg.errors.IntegrityError):
                    raise Conflict(str(e).splitlines()[0]) from e
                raise

    def close(self) -> None:
        self.pool.close()


class PgTx(BaseTx):
    """`collector.storage.sql.Tx` on one psycopg connection inside a transaction."""

    dialect: Dialect = "postgres"

    def __init__(self, conn: psycopg.Connection[Any]):
        self._conn = conn
        self._locks: set[str] = set()  # held until the transaction ends

    def _run(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(to_pyformat(sql), tuple(params))
        except psycopg.errors.IntegrityError as e:
            raise Conflict(str(e).splitlines()[0]) from e

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        try:  # in a pipeline, an earlier statement's error arrives with this reply
            return super().one(sql, params)
        except psycopg.errors.IntegrityError as e:
            raise Conflict(str(e).splitlines()[0]) from e

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return super().all(sql, params)
        except psycopg.errors.IntegrityError as e:
            raise Conflict(str(e).splitlines()[0]) from e

    def lock(self, name: str) -> None:
        """A transaction-scoped advisory lock on the name's 64-bit hash (one statement the
        first time in the transaction; a name already locked in it is held still)."""
        if name in self._locks:
            return
        self._run("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))
        self._locks.add(name)

    def lock_all(self, names: Sequence[str]) -> None:
        """`lock` of each name not yet held, in the order given, in one statement (the
        function scan gives the array's elements in order; ORDER BY says so)."""
        unheld = [n for n in dict.fromkeys(names) if n not in self._locks]
        if len(unheld) == 1:
            self.lock(unheld[0])
        elif unheld:
            self._run(
                "SELECT pg_advisory_xact_lock(hashtextextended(t.name, 0)) FROM "
                "unnest(CAST(? AS text[])) WITH ORDINALITY AS t(name, i) ORDER BY t.i",
                (unheld,),
            )
            self._locks.update(unheld)


_TAKE = """
INSERT INTO rate_buckets AS b (key, tokens, granted, updated_at)
VALUES (%(key)s, %(cap)s - 1, true, now())
ON CONFLICT (key) DO UPDATE SET
    tokens = LEAST(%(cap)s, b.tokens + %(rate)s * GREATEST(0,
                 EXTRACT(EPOCH FROM now() - b.updated_at)::float8))
           - CASE WHEN LEAST(%(cap)s, b.tokens + %(rate)s * GREATEST(0,
                 EXTRACT(EPOCH FROM now() - b.updated_at)::float8)) >= 1 THEN 1 ELSE 0 END,
    granted = LEAST(%(cap)s, b.tokens + %(rate)s * GREATEST(0,
                 EXTRACT(EPOCH FROM now() - b.updated_at)::float8)) >= 1,
    updated_at = GREATEST(b.updated_at, now())
RETURNING granted, tokens
"""


class PostgresRateLimiter:
    """The token bucket of `collector.ratelimit.RateLimiter`, one row per key in PostgreSQL.

    One statement takes a token atomically (the row lock of ON CONFLICT DO UPDATE orders
    concurrent takes from any instance); time is the database's, so instances with
    different clocks agree. Rows idle long enough to be full again are pruned now and then.
    """

    PRUNE_EVERY_S = 300.0

    def __init__(self, index: PostgresIndex, rate_per_minute: int, scope: str):
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        self.index = index
        self.capacity = float(rate_per_minute)
        self.rate_per_s = rate_per_minute / 60.0
        self.scope = scope
        self._next_prune = time.monotonic() + self.PRUNE_EVERY_S
        self._prune_lock = threading.Lock()

    def take(self, key: str) -> float:
        params = {"key": f"{self.scope}:{key}", "cap": self.capacity, "rate": self.rate_per_s}
        t0 = time.perf_counter()
        try:
            with self.index._conn() as conn:
                row = conn.execute(_TAKE, params).fetchone()
        finally:
            self.index.observe(self.index.engine, "ratelimit_take", time.perf_counter() - t0)
        if row is None:
            raise StorageError("rate limit row not returned")
        granted, tokens = bool(row[0]), float(row[1])
        self._maybe_prune()
        if granted:
            return 0.0
        return float(max(1, math.ceil((1.0 - tokens) / self.rate_per_s)))

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now < self._next_prune or not self._prune_lock.acquire(blocking=False):
            return
        try:
            self._next_prune = now + self.PRUNE_EVERY_S
            full_after_s = self.capacity / self.rate_per_s  # 60 s for every scope
            with self.index._conn() as conn:
                conn.execute(
                    "DELETE FROM rate_buckets WHERE key LIKE %s "
                    "AND updated_at < now() - make_interval(secs => %s)",
                    (f"{self.scope}:%", 2 * full_after_s),
                )
        finally:
            self._prune_lock.release()

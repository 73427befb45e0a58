"""The operators' tables moved by `posagent collector migrate-store` (issue 14 item 7,
grown with migrations 0005-0008), beside the bundles and their blobs
(`collector.storage.copy`), between any two index engines (SQLite <-> PostgreSQL),
through the portable SQL layer (`collector.storage.sql`).

What moves (`TABLES`, in foreign-key order), every row with its own id and keys:
tenants, sites, users (with their password hashes: the same password signs in), the
users' tenants, personal API tokens, the audit log, legal holds, incidents with their
bundles, events and notes and the catch-up position, the notification outbox and its
delivery attempts, enrollment tokens, enrolled devices (their credentials: no terminal
enrolls again), their commands, remote config and outages.

What does not (`NOT_COPIED`, each with why): login sessions (on purpose: everyone signs
in again on the new store), failed-login counters and rate buckets (minutes of
throttling), the bundle counts (the target's triggers count the copied bundles), blobs
awaiting deletion by the source's retention, and the schema version (the target's own).

Per table, in batches in primary-key order, one target transaction each:
- a row the target lacks is inserted, id included;
- a row the target holds identically is skipped: a re-run resumes a killed one, and a
  finished one changes nothing;
- a row the target holds otherwise, or a unique value (a user name, a token hash, a
  delivery id) the target gives to another row, is a conflict: `TableConflict`, nothing of
  the batch is written, and no target row is ever updated or deleted.
`check_tables` runs the same comparison without writing; migrate-store runs it before it
writes anything, so a target that already holds other rows (an instance served it,
another fleet's database) is refused whole, its conflicting rows named.

Ids: a copied row keeps its id, and new rows must not collide with it. PostgreSQL's
identity sequences do not move on explicit ids, so each is set to its table's highest id
(never lowered); SQLite's AUTOINCREMENT keeps the highest id it saw by itself. That, and
``OVERRIDING SYSTEM VALUE`` (explicit ids into PostgreSQL's GENERATED ALWAYS identities),
are the two engine differences here; no migration can express either, so they are
branched on ``tx.dialect`` in `_insert_sql` and `_advance_id`, nowhere else.

The audit log stays append-only: its rows are inserted, never updated (the engine's
trigger refuses it anyway), and a target whose log already holds other entries under the
same ids is a conflict, not a merge.

The source is only read. Its rows should not change during the run whose result is kept
(stop its collector first): a row changed in the source after an earlier run is a
conflict; a new row is copied by the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.storage.sql import Conflict, Database, Row, Tx

MAX_NAMED = 20  # conflicts named in one error; the rest are counted
MAX_PARAMS = 10_000  # parameters in one INSERT (SQLite allows 32,766, PostgreSQL 65,535)


@dataclass(frozen=True)
class Table:
    """One copied table: its columns (every one), primary key, other unique columns."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ("id",)
    unique: tuple[str, ...] = ()
    identity: bool = False  # the key is an id the engine assigns: kept, then advanced
    booleans: tuple[str, ...] = ()  # BOOLEAN on PostgreSQL, 0/1 on SQLite

    def key_of(self, row: Row) -> tuple[Any, ...]:
        return tuple(row[self.columns.index(k)] for k in self.key)


def _t(name: str, columns: str, **kw: Any) -> Table:
    return Table(name, tuple(columns.split()), **kw)


TABLES: tuple[Table, ...] = (
    _t("tenants", "name created_at", key=("name",)),
    _t("sites", "site tenant created_at", key=("site",)),
    _t(
        "users",
        "id name role all_tenants password_hash must_change disabled created_at "
        "password_changed_at language",
        unique=("name",),
        identity=True,
    ),
    _t("user_tenants", "user_id tenant", key=("user_id", "tenant")),
    _t(
        "api_tokens",
        "id user_id name token_hash created_at last_used_at revoked_at",
        unique=("token_hash",),
        identity=True,
    ),
    _t("audit_log", "id at actor action target address detail", identity=True),
    _t("holds", "scope value reason created_at", key=("scope", "value")),
    _t(
        "incidents",
        "id device site fault_key source severity sev_rank summary status assignee active "
        "raised_at episode_at cleared_at last_at duration_s repeats bundles open_since "
        "touched_at escalated_at resolved_at created_at updated_at",
        identity=True,
    ),
    _t("incident_bundles", "bundle_id incident_id trigger_kind at", key=("bundle_id",)),
    _t("incident_events", "id incident_id kind at actor detail", identity=True),
    _t("incident_cursor", "name received_at bundle_id", key=("name",)),
    _t(
        "notify_outbox",
        "id delivery_id channel target event ref body created_at status attempts next_at "
        "lease_until claimed_by done_at last_status last_error",
        unique=("delivery_id",),
        identity=True,
    ),
    _t(
        "notify_attempts",
        "delivery_id attempt at duration_ms status_code error worker",
        key=("delivery_id", "attempt"),
    ),
    _t(
        "enroll_tokens",
        "id token_hash site tenant uses_max uses created_at expires_at revoked_at created_by",
        unique=("token_hash",),
    ),
    _t(
        "devices",
        "id site tenant token_hash next_token_hash pubkeys enrolled_at enrollments "
        "enroll_token_id last_seen interval_s summary agent_version boot_id config_digest "
        "address silent_deadline silent_since",
        unique=("token_hash", "next_token_hash"),
    ),
    _t(
        "device_commands",
        "id device kind args issued_at expires_at issued_by envelope signature status "
        "deliveries delivered_at result_at detail",
    ),
    _t("remote_config", "site key value updated_at updated_by", key=("site", "key")),
    _t(
        "device_outages",
        "id device site last_seen silent_at last_summary back_at outage_s rebooted",
        identity=True,
        booleans=("rebooted",),
    ),
)

# Every other table of the schema, and why it stays behind (a test holds the two lists
# equal to the migrated schema of both engines, so a new table is decided, not forgotten).
NOT_COPIED: dict[str, str] = {
    "bundles": "copied with their blobs, each digest checked (collector.storage.copy)",
    "schema_version": "the target's own: it is migrated to the latest version first",
    "sessions": "dropped on purpose: everyone signs in again on the new store",
    "login_failures": "failed-login counters of the last minutes",
    "rate_buckets": "rate-limit buckets, full again within a minute",
    "bundle_counts": "derived: the target's triggers count the copied bundles",
    "retention_pending": "blobs of the source's store awaiting deletion there",
}


class TableConflict(Exception):
    """The target holds rows the source does not agree with: the conflicts, named."""

    def __init__(self, conflicts: Sequence[str], more: int = 0):
        self.conflicts = list(conflicts)
        self.more = more
        tail = f" (and {more} more)" if more else ""
        super().__init__(f"{len(self.conflicts) + more} conflicting row(s){tail}")


@dataclass
class TablesReport:
    """Per table: rows inserted, rows already there; missing: rows the target lacks
    (what a check found); conflicts: named (at most MAX_NAMED), more counted."""

    copied: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    more: int = 0

    def conflict(self, text: str) -> None:
        if len(self.conflicts) < MAX_NAMED:
            self.conflicts.append(text)
        else:
            self.more += 1

    @property
    def rows(self) -> int:
        return sum(self.copied.values()) + sum(self.skipped.values())


def _norm(value: Any) -> Any:
    """A value as both engines compare it (PostgreSQL's booleans are SQLite's 0/1)."""
    return int(value) if isinstance(value, bool) else value


def _key_text(t: Table, key: tuple[Any, ...]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in zip(t.key, key, strict=True))


def _page(tx: Tx, t: Table, after: tuple[Any, ...] | None, limit: int) -> list[Row]:
    """The next rows of t in key order after the key `after`."""
    order = ", ".join(t.key)
    where, params = "", []
    if after is not None:
        marks = ", ".join("?" for _ in t.key)
        where = f" WHERE ({order}) > ({marks})" if len(t.key) > 1 else f" WHERE {order} > ?"
        params = list(after)
    sql = f"SELECT {', '.join(t.columns)} FROM {t.name}{where} ORDER BY {order} LIMIT ?"
    return tx.all(sql, [*params, limit])


def _in(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({', '.join('?' for _ in values)})"


def _held(tx: Tx, t: Table, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Row]:
    """The target's rows of these keys (looked up by the key's first column, portable
    for composite keys: their first column has few rows each)."""
    firsts = list(dict.fromkeys(k[0] for k in keys))
    rows = tx.all(
        f"SELECT {', '.join(t.columns)} FROM {t.name} WHERE {_in(t.key[0], firsts)}", firsts
    )
    wanted = set(keys)
    return {k: r for r in rows if (k := t.key_of(r)) in wanted}


def _compare(tx: Tx, t: Table, rows: Sequence[Row], report: TablesReport) -> list[Row]:
    """The rows the target lacks; the identical ones counted as skipped, the others and
    unique values held by another target row reported as conflicts."""
    held = _held(tx, t, [t.key_of(r) for r in rows])
    lacking: list[Row] = []
    for row in rows:
        key = t.key_of(row)
        there = held.get(key)
        if there is None:
            lacking.append(row)
        elif [_norm(v) for v in there] == [_norm(v) for v in row]:
            report.skipped[t.name] = report.skipped.get(t.name, 0) + 1
        else:
            diff = [
                c for c, a, b in zip(t.columns, there, row, strict=True) if _norm(a) != _norm(b)
            ]
            report.conflict(
                f"{t.name} {_key_text(t, key)}: the target holds another row "
                f"(differs in {', '.join(diff[:5])})"
            )
    for col in t.unique:
        i = t.columns.index(col)
        by_value = {r[i]: t.key_of(r) for r in lacking if r[i] is not None}
        if not by_value:
            continue
        values = list(by_value)
        found = tx.all(
            f"SELECT {', '.join(t.key)}, {col} FROM {t.name} WHERE {_in(col, values)}", values
        )
        for r in found:
            other, value = tuple(r[: len(t.key)]), r[len(t.key)]
            if other != by_value[value]:
                report.conflict(
                    f"{t.name} {_key_text(t, by_value[value])}: its {col} belongs to another "
                    f"row in the target ({_key_text(t, other)})"
                )
    return lacking


def _insert_sql(t: Table, tx: Tx, rows: int) -> str:
    """One INSERT of `rows` rows (multi-row VALUES: both engines run it)."""
    over = " OVERRIDING SYSTEM VALUE" if t.identity and tx.dialect == "postgres" else ""
    one = "(" + ", ".join("?" for _ in t.columns) + ")"
    values = ", ".join(one for _ in range(rows))
    return f"INSERT INTO {t.name} ({', '.join(t.columns)}){over} VALUES {values}"


def _insert(tx: Tx, t: Table, rows: Sequence[Row]) -> None:
    per = max(1, MAX_PARAMS // len(t.columns))
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        tx.execute(_insert_sql(t, tx, len(chunk)), [v for r in chunk for v in _values(t, r)])


def _values(t: Table, row: Row) -> list[Any]:
    out = list(row)
    for col in t.booleans:
        i = t.columns.index(col)
        out[i] = None if out[i] is None else bool(out[i])
    return out


def _advance_id(tx: Tx, t: Table) -> None:
    """New rows after the copied ones: PostgreSQL's identity sequence set to the highest
    id, never lowered (SQLite's AUTOINCREMENT already keeps the highest id it saw)."""
    if not t.identity or tx.dialect != "postgres":
        return
    top = tx.one(f"SELECT MAX(id) FROM {t.name}")
    if top is None or top[0] is None:
        return
    seq = "CAST(pg_get_serial_sequence(?, 'id') AS regclass)"
    tx.one(
        f"SELECT setval({seq}, GREATEST(?, COALESCE(pg_sequence_last_value({seq}), 0)))",
        (t.name, int(top[0]), t.name),
    )


def _walk(
    src: Database, dst: Database, t: Table, report: TablesReport, *, write: bool, batch: int
) -> None:
    """Compare (write=False: count what the target lacks) or copy t, batch by batch."""
    after: tuple[Any, ...] | None = None
    while True:
        with src.transaction(write=False) as stx:
            rows = _page(stx, t, after, batch)
        if not rows:
            break
        after = t.key_of(rows[-1])
        if not write:
            with dst.transaction(write=False) as tx:
                lacking = _compare(tx, t, rows, report)
            report.missing[t.name] = report.missing.get(t.name, 0) + len(lacking)
            continue
        before = len(report.conflicts) + report.more
        try:
            with dst.transaction() as tx:
                lacking = _compare(tx, t, rows, report)
                if len(report.conflicts) + report.more > before:
                    raise TableConflict(report.conflicts, report.more)
                _insert(tx, t, lacking)
        except Conflict as e:  # a row written meanwhile by someone else
            report.conflict(f"{t.name}: {str(e)[:200]}")
            raise TableConflict(report.conflicts, report.more) from e
        report.copied[t.name] = report.copied.get(t.name, 0) + len(lacking)
    if write:
        with dst.transaction() as tx:
            _advance_id(tx, t)


def check_tables(src: Database, dst: Database, *, batch: int = 500) -> TablesReport:
    """Compare every copied table without writing: `missing` and `conflicts` filled."""
    report = TablesReport()
    for t in TABLES:
        report.missing[t.name] = 0
        _walk(src, dst, t, report, write=False, batch=batch)
    return report


def copy_tables(
    src: Database,
    dst: Database,
    *,
    batch: int = 500,
    progress: Callable[[str, TablesReport], None] | None = None,
) -> TablesReport:
    """Copy every table of `TABLES` (see the module doc); TableConflict at the first batch
    that meets one (that batch not written), StorageError when an engine fails."""
    report = TablesReport()
    for t in TABLES:
        report.copied[t.name] = report.skipped[t.name] = 0
        _walk(src, dst, t, report, write=True, batch=batch)
        if progress is not None:
            progress(t.name, report)
    return report

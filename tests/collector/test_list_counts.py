"""The list's counts from the summary table (migration 0004, `bundle_counts`) on both index
engines: `count` and `counts` answer exactly what counting the rows answers, through
inserts, repeated inserts of one id, retention's deletions, updates, and for a store
migrated from version 3 with bundles already in it."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bundle.format import new_bundle_id
from collector.storage import BundleRecord, Index, Query, SqliteIndex
from collector.storage.retention import Rule
from collector.storage.schema import migrations

FAULTS = (("printer.paper_end", "warning"), ("network.link_down", "error"), ("power", "critical"))
NOW = time.time()
DAY = 86400.0


def records(n: int, seed: int = 3) -> list[BundleRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fault, sev = FAULTS[rng.randrange(3)]
        dev = rng.randrange(6)
        created = NOW - rng.uniform(0, 90) * DAY
        out.append(
            BundleRecord(
                bundle_id=new_bundle_id(int(created * 1000)),
                device=f"T-{dev}",
                site=f"S{dev % 3}" if dev < 5 else "",
                fault_key=fault,
                severity=sev,
                trigger_kind=("fault", "cleared", "manual")[i % 3],
                summary="",
                created_at=created,
                received_at=created,
                size_bytes=100,
                sha256=f"{i:064x}",
                screenshot="captured",
                signature_checked=False,
            )
        )
    return out


QUERIES = [
    Query(),
    Query(device="T-1"),
    Query(device="T-nobody"),
    Query(site="S2"),
    Query(site="S0", severity="error"),
    Query(fault="power"),
    Query(severity="warning"),
    Query(device="T-5", fault="network.link_down"),
    Query(since=NOW - 30 * DAY),
    Query(since=NOW - 60 * DAY, until=NOW - 30 * DAY, site="S1"),
]


def live(rows: dict[str, BundleRecord], q: Query) -> tuple[int, dict[str, int]]:
    """What counting the rows answers."""

    def match(r: BundleRecord, with_fault: bool) -> bool:
        return (
            (not q.device or r.device == q.device)
            and (not q.site or r.site == q.site)
            and (not with_fault or not q.fault or r.fault_key == q.fault)
            and (not q.severity or r.severity == q.severity)
            and (q.since is None or r.created_at >= q.since)
            and (q.until is None or r.created_at <= q.until)
        )

    total = sum(1 for r in rows.values() if match(r, True))
    by: dict[str, int] = {}
    for r in rows.values():
        if match(r, False):
            by[r.fault_key] = by.get(r.fault_key, 0) + 1
    return total, by


def check(index: Index, rows: dict[str, BundleRecord]) -> None:
    for q in QUERIES:
        total, by = live(rows, q)
        assert index.count(q) == total, q
        assert index.counts(q) == by, q


@pytest.fixture(params=["sqlite", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        idx: Index = SqliteIndex(tmp_path / "index.sqlite3")
    else:
        from collector.storage.postgres import PostgresIndex, migrate  # lazy: the fleet extra

        url = request.getfixturevalue("pg_url")
        migrate(url)
        idx = PostgresIndex(url)
    yield idx
    idx.close()


def test_counts_follow_inserts_repeats_and_retention(index: Index) -> None:
    rows = {r.bundle_id: r for r in records(300)}
    check(index, {})
    for r in rows.values():
        assert index.add(r)
    for r in list(rows.values())[:40]:  # a repeat of a stored id changes nothing
        assert not index.add(r)
    check(index, rows)
    # retention deletes the old rows of one class in batches
    rule = Rule("fault", "warning", NOW - 45 * DAY, "kind:fault")
    cursor = None
    gone: list[tuple[str, str]] = []
    while True:
        deleted, cursor = index.expire_batch(rule, cursor, 7)  # type: ignore[attr-defined]
        gone += deleted
        if cursor is None:
            break
    assert gone
    for bid, _ in gone:
        del rows[bid]
    check(index, rows)
    # every row of a fault gone: the fault is no longer listed
    assert index.counts(Query(device="T-nobody")) == {}


def test_counts_follow_an_update_of_the_counted_columns(index: Index) -> None:
    rows = {r.bundle_id: r for r in records(60)}
    for r in rows.values():
        index.add(r)
    bid = next(iter(rows))
    if isinstance(index, SqliteIndex):
        with index._conn() as conn:
            conn.execute(
                "UPDATE bundles SET site = 'S9', fault_key = 'x.y' WHERE bundle_id = ?", (bid,)
            )
    else:
        with index._conn() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "UPDATE bundles SET site = 'S9', fault_key = 'x.y' WHERE bundle_id = %s", (bid,)
            )
    old = rows[bid]
    rows[bid] = BundleRecord(**{**old.to_dict(), "site": "S9", "fault_key": "x.y"})
    check(index, rows)
    assert index.counts(Query(site="S9")) == {"x.y": 1}


def test_migration_4_counts_the_bundles_already_stored(tmp_path: Path) -> None:
    """A SQLite index at version 3 with rows in it, migrated: the counts include them."""
    path = tmp_path / "index.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at REAL NOT NULL)"
    )
    for m in migrations("sqlite"):
        if m.version <= 3:
            conn.executescript(m.sql)
            conn.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (m.version, m.name))
    rows = {r.bundle_id: r for r in records(120, seed=9)}
    conn.executemany(
        "INSERT INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [tuple(r.to_dict().values()) for r in rows.values()],
    )
    conn.commit()
    conn.close()
    index = SqliteIndex(path, migrate=True)
    try:
        assert index.migrated[0] == 3
        check(index, rows)
    finally:
        index.close()

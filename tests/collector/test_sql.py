"""Portable SQL (`collector.storage.sql`) on both index engines: one statement text runs on
SQLite and on a real PostgreSQL; constraints surface as Conflict; a failed block rolls
back; `lock` serialises writers; `Query.sites` narrows the read side."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import CollectorConfig
from collector.storage import BundleStore, Query, StorageError, open_store
from collector.storage.sql import Conflict, Database, database
from tests.bundle.kit import make_bundle
from tests.collector.test_storage import record_for, stage


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BundleStore]:
    over = {"index_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}
    if over:
        from collector.storage.postgres import migrate

        migrate(over["index_url"])
    s = open_store(CollectorConfig(data_dir=str(tmp_path / "data"), **over))
    yield s
    s.close()


def test_one_text_runs_on_both_engines(store: BundleStore) -> None:
    db = database(store)
    assert isinstance(db, Database)
    with db.transaction() as tx:
        tx.execute("CREATE TABLE t_demo (name TEXT PRIMARY KEY, note TEXT NOT NULL, n INTEGER)")
        assert tx.execute("INSERT INTO t_demo VALUES (?, ?, ?)", ("a", "100% sure?", 1)) == 1
        row = tx.one(
            "INSERT INTO t_demo VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING name",
            ("b", "x", 2),
        )
        assert row == ("b",)
        assert (
            tx.one(
                "INSERT INTO t_demo VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING name",
                ("b", "y", 3),
            )
            is None
        )
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT name, note, n FROM t_demo ORDER BY name") == [
            ("a", "100% sure?", 1),
            ("b", "x", 2),
        ]


def test_constraints_are_conflicts_and_a_failed_block_rolls_back(store: BundleStore) -> None:
    db = database(store)
    with db.transaction() as tx:
        tx.execute("CREATE TABLE t_uniq (name TEXT PRIMARY KEY)")
        tx.execute("INSERT INTO t_uniq VALUES (?)", ("a",))
    with pytest.raises(Conflict), db.transaction() as tx:
        tx.execute("INSERT INTO t_uniq VALUES (?)", ("b",))
        tx.execute("INSERT INTO t_uniq VALUES (?)", ("a",))
    assert issubclass(Conflict, StorageError)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO t_uniq VALUES (?)", ("c",))
        raise RuntimeError("the caller changed its mind")
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT name FROM t_uniq") == [("a",)]  # neither b nor c stayed
    with pytest.raises(StorageError), db.transaction() as tx:
        tx.execute("SELECT no_such_column FROM t_uniq")


def test_lock_serialises_writers(store: BundleStore) -> None:
    """Two read-modify-write blocks under one lock name never lose an increment."""
    db = database(store)
    with db.transaction() as tx:
        tx.execute("CREATE TABLE t_counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        tx.execute("INSERT INTO t_counter VALUES (?, ?)", ("x", 0))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(20):
                with db.transaction() as tx:
                    tx.lock("counter:x")
                    row = tx.one("SELECT n FROM t_counter WHERE k = ?", ("x",))
                    assert row is not None
                    time.sleep(0.001)
                    tx.execute("UPDATE t_counter SET n = ? WHERE k = ?", (int(row[0]) + 1, "x"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with db.transaction(write=False) as tx:
        assert tx.one("SELECT n FROM t_counter WHERE k = ?", ("x",)) == (60,)


def test_query_sites_narrows_every_read(store: BundleStore) -> None:
    for i, site in enumerate(["north", "south", ""]):
        b = make_bundle(device=f"dev-{i}")
        rec = record_for(b.data, b.bundle_id, site=site)
        assert store.commit(rec, stage(store, b.data, str(i))) == "created"
    idx = store.index
    assert idx.count(Query()) == 3
    assert {r.site for r in idx.query(Query(sites=frozenset({"north"})))} == {"north"}
    assert idx.count(Query(sites=frozenset({"north", "south"}))) == 2
    assert idx.count(Query(sites=frozenset())) == 0
    assert sum(idx.counts(Query(sites=frozenset({"south"}))).values()) == 1

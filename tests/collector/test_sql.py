"""Portable SQL (`collector.storage.sql`) on both index engines: one statement text runs on
SQLite and on a real PostgreSQL; constraints surface as Conflict; a failed block rolls
back; `lock` serialises writers, `lock_all` takes its names in order; a pipelined transaction whose commit does not wait for
the disk gives the same results and failures, and its setting ends with it;
`Query.sites` narrows the read side."""

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
from tests.conftest import wait_until


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


@pytest.mark.parametrize("fast", [False, True], ids=["durable", "pipelined-lazy"])
def test_lock_serialises_writers(store: BundleStore, fast: bool) -> None:
    """Two read-modify-write blocks under one lock name never lose an increment (also
    when the lock is sent in a pipeline with the read after it)."""
    db = database(store)
    how = {"durable": False, "pipeline": True} if fast else {}
    with db.transaction() as tx:
        tx.execute("CREATE TABLE t_counter (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        tx.execute("INSERT INTO t_counter VALUES (?, ?)", ("x", 0))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(20):
                with db.transaction(**how) as tx:
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


def test_pipelined_lazy_transaction_keeps_results_and_failures(store: BundleStore) -> None:
    """pipeline=True, durable=False: reads see the writes sent before them unanswered; a
    unique violation whose reply comes with a later read or with the COMMIT is still a
    Conflict; every failure rolls the whole block back; the pool goes on working."""
    db = database(store)
    fast = {"durable": False, "pipeline": True}
    with db.transaction() as tx:
        tx.execute("CREATE TABLE t_pipe (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    with db.transaction(**fast) as tx:
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("a", 1))
        tx.execute("UPDATE t_pipe SET n = n + ? WHERE name = ?", (10, "a"))
        assert tx.one("SELECT n FROM t_pipe WHERE name = ?", ("a",)) == (11,)
        assert tx.one("INSERT INTO t_pipe VALUES (?, ?) RETURNING n", ("b", 2)) == (2,)
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("c", 3))
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT name, n FROM t_pipe ORDER BY name") == [
            ("a", 11),
            ("b", 2),
            ("c", 3),
        ]
    with pytest.raises(Conflict), db.transaction(**fast) as tx:
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("d", 4))
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("a", 5))
        tx.one("SELECT COUNT(*) FROM t_pipe")  # the violation's reply comes with this one
    with pytest.raises(Conflict), db.transaction(**fast) as tx:
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("e", 4))
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("a", 5))  # ... with the COMMIT
    with pytest.raises(RuntimeError), db.transaction(**fast) as tx:
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("f", 6))
        raise RuntimeError("the caller changed its mind")
    with pytest.raises(StorageError), db.transaction(**fast) as tx:
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("g", 7))
        tx.execute("SELECT no_such_column FROM t_pipe")
    with db.transaction(**fast) as tx:
        tx.execute("INSERT INTO t_pipe VALUES (?, ?)", ("h", 8))
    with db.transaction(write=False) as tx:
        assert tx.all("SELECT name FROM t_pipe ORDER BY name") == [("a",), ("b",), ("c",), ("h",)]


def test_lazy_commit_setting_ends_with_its_transaction(pg_url: str) -> None:
    """On PostgreSQL durable=False is ``synchronous_commit = off`` for that transaction
    only: the pool's one connection is back to ``on`` after it, committed or failed."""
    from collector.storage.postgres import PostgresIndex, migrate  # lazy: PostgreSQL only

    migrate(pg_url)
    db = PostgresIndex(pg_url, pool_max=1)
    try:
        for pipeline in (False, True):
            with db.transaction(durable=False, pipeline=pipeline) as tx:
                assert tx.one("SHOW synchronous_commit") == ("off",)
            with db.transaction() as tx:
                assert tx.one("SHOW synchronous_commit") == ("on",)
            with pytest.raises(RuntimeError), db.transaction(durable=False, pipeline=pipeline):
                raise RuntimeError("the caller changed its mind")
            with db.transaction(pipeline=pipeline) as tx:
                assert tx.one("SHOW synchronous_commit") == ("on",)
    finally:
        db.close()


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


@pytest.mark.parametrize("names", [["a", "m", "z"], ["z", "m", "a"]], ids=["az", "za"])
def test_lock_all_takes_the_names_in_the_order_given(pg_url: str, names: list[str]) -> None:
    """On PostgreSQL `lock_all` is one statement that takes its locks one after the other
    in the order given: with "m" held elsewhere it waits there, holding the names before
    it and not those after; once "m" is free it holds all three."""
    from collector.storage.postgres import PostgresIndex, migrate  # lazy: PostgreSQL only

    migrate(pg_url)
    db = PostgresIndex(pg_url, pool_max=4)
    try_lock = "SELECT pg_try_advisory_xact_lock(hashtextextended(?, 0))"

    def free(name: str) -> bool:
        with db.transaction() as tx:  # its own connection; its lock ends with it
            row = tx.one(try_lock, (name,))
        return row == (True,)

    held, done = threading.Event(), threading.Event()
    release, end = threading.Event(), threading.Event()  # the holder's, the taker's
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with db.transaction() as tx:
                tx.lock("m")
                held.set()
                release.wait(120)
        except BaseException as e:
            errors.append(e)

    def taker() -> None:
        try:
            with db.transaction(pipeline=True) as tx:
                tx.lock_all(names)
                tx.one("SELECT 1")  # the locks' reply comes with this one
                done.set()
                end.wait(120)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    try:
        assert held.wait(60)
        threads.append(threading.Thread(target=taker))
        threads[1].start()
        assert wait_until(lambda: not free(names[0]), timeout_s=60)  # taken, then waits
        assert not done.is_set() and free(names[2])  # the one after "m": not yet
        release.set()
        threads[0].join(60)
        assert done.wait(60) is True
        assert not free("m") and not free(names[0]) and not free(names[2])
    finally:
        release.set()
        end.set()
        for t in threads:
            t.join(60)
        db.close()
    assert not errors

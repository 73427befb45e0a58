"""Collector storage engines against the real servers: the embedded pair (files + SQLite)
and the fleet pair (SeaweedFS S3 + PostgreSQL), idempotency without a process lock,
reconcile, shared rate limits, schema versions."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from collector.config import CollectorConfig, parse_collector_config
from collector.storage import (
    LATEST,
    BlobStore,
    BundleRecord,
    BundleStore,
    Index,
    Query,
    SchemaError,
    SqliteIndex,
    migrate_store,
    open_store,
)
from tests.bundle.kit import make_bundle
from tests.collector.servers import Seaweed

DEV = "T-0001"


def record_for(data: bytes, bundle_id: str, **kw: object) -> BundleRecord:
    base = BundleRecord(
        bundle_id=bundle_id,
        device=DEV,
        site="S",
        fault_key="f.k",
        severity="error",
        trigger_kind="fault",
        summary="",
        created_at=1.0,
        received_at=2.0,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        screenshot="captured",
        signature_checked=False,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def stage(store: BundleStore, data: bytes, name: str = "x") -> Path:
    p = store.staging_dir / f"{name}.{threading.get_ident()}.part"
    p.write_bytes(data)
    return p


@pytest.fixture(params=["embedded", "fleet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BundleStore]:
    """Files + SQLite in tmp, or S3 + PostgreSQL (a fresh prefix and database)."""
    over = request.getfixturevalue("fleet") if request.param == "fleet" else {}
    s = open_store(CollectorConfig(data_dir=str(tmp_path / "d"), **over))
    yield s
    s.close()


def test_engines_commit_once_and_read_back(store: BundleStore) -> None:
    """Both pairs implement the protocols; commit is 201/200/409-shaped; reads match."""
    assert isinstance(store.blobs, BlobStore) and isinstance(store.index, Index)
    b = make_bundle(device=DEV)
    rec = record_for(b.data, b.bundle_id)
    assert store.commit(rec, stage(store, b.data)) == "created"
    assert store.commit(rec, stage(store, b.data)) == "exists"
    other = make_bundle(device=DEV, summary="other body", bundle_id=b.bundle_id)
    assert store.commit(record_for(other.data, b.bundle_id), stage(store, other.data)) == (
        "conflict"
    )
    assert store.read(rec) == b.data
    assert store.index.get(b.bundle_id) == rec
    assert store.index.query(Query(fault="f.k")) == [rec]
    assert store.index.count(Query(device=DEV)) == 1
    assert store.index.counts(Query()) == {"f.k": 1}
    assert store.index.latest_received_at() == 2.0
    assert list(store.blobs.ids()) == [b.bundle_id]
    with pytest.raises(KeyError):
        store.blobs.get("01900000-0000-7000-8000-000000000000", "0" * 64)


def test_two_instances_racing_are_decided_by_the_index(
    fleet: dict[str, str], seaweed: Seaweed, tmp_path: Path
) -> None:
    """Two stores (two pools, two S3 clients: two instances) commit one id at once, 8
    times each: different bodies give one created and conflicts, and only the winner's
    blob is left; same body gives one created and exists."""
    cfg = CollectorConfig(data_dir=str(tmp_path / "d"), **fleet)
    stores = [open_store(cfg), open_store(replace(cfg, data_dir=str(tmp_path / "e")))]
    try:
        for same in (False, True):
            bid = make_bundle(device=DEV).bundle_id
            one = make_bundle(device=DEV, bundle_id=bid).data
            bodies = [
                one if same else make_bundle(device=DEV, bundle_id=bid, summary=f"b{i}").data
                for i in range(8)
            ]
            results: list[tuple[int, str]] = []
            barrier = threading.Barrier(len(bodies))

            def go(
                i: int,
                bodies: list[bytes] = bodies,
                barrier: threading.Barrier = barrier,
                results: list[tuple[int, str]] = results,
                bid: str = bid,
            ) -> None:
                st = stores[i % 2]
                staged = stage(st, bodies[i], f"r{i}")
                barrier.wait()
                results.append((i, st.commit(record_for(bodies[i], bid), staged)))

            threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            got = sorted(r for _, r in results)
            if same:
                assert got == ["created"] + ["exists"] * 7
            else:
                assert got == ["conflict"] * 7 + ["created"]
            winner = next(i for i, r in results if r == "created")
            row = stores[0].index.get(bid)
            assert row is not None and row.sha256 == hashlib.sha256(bodies[winner]).hexdigest()
            prefix = fleet["blob_url"].removeprefix(f"s3://{seaweed.bucket}/")
            assert seaweed.keys(f"{prefix}/{bid}/") == [f"{prefix}/{bid}/{row.sha256}.zip"]
            assert stores[1].read(row) == bodies[winner]
    finally:
        for st in stores:
            st.close()


def test_fleet_reconcile_indexes_orphans_and_removes_losers(
    fleet: dict[str, str], seaweed: Seaweed, tmp_path: Path
) -> None:
    """A blob without its row (instance killed between the two) is indexed; a blob whose
    id is indexed with another digest (a race loser killed before cleaning up) is removed."""
    store = open_store(CollectorConfig(data_dir=str(tmp_path / "d"), **fleet))
    try:
        orphan = make_bundle(device=DEV)
        store.blobs.put(orphan.bundle_id, stage(store, orphan.data), None)
        won = make_bundle(device=DEV, seed=3)
        assert store.commit(record_for(won.data, won.bundle_id), stage(store, won.data)) == (
            "created"
        )
        lost = make_bundle(device=DEV, seed=4, bundle_id=won.bundle_id, summary="loser")
        store.blobs.put(won.bundle_id, stage(store, lost.data), None)
        assert len(list(store.blobs.entries())) == 3

        def make(bid: str, data: bytes, at: float) -> BundleRecord:
            return record_for(data, bid, received_at=at)

        assert store.reconcile(make, margin_s=10**9) == 1
        assert store.index.get(orphan.bundle_id) is not None
        assert sorted(sha for _, sha in store.blobs.entries()) == sorted(
            hashlib.sha256(d).hexdigest() for d in (orphan.data, won.data)
        )
    finally:
        store.close()


def test_postgres_rate_limit_is_shared_by_instances(fleet: dict[str, str], tmp_path: Path) -> None:
    """Two instances' limiters draw from one bucket per device: 3/min allows 3 in all."""
    cfg = CollectorConfig(data_dir=str(tmp_path / "d"), **fleet)
    a, b = open_store(cfg), open_store(cfg)
    try:
        assert a.limits is not None and b.limits is not None
        la, lb = a.limits(3, "ingest"), b.limits(3, "ingest")
        waits = [(la if i % 2 else lb).take("T-1") for i in range(5)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert all(20 <= w <= 21 for w in waits[3:]), waits
        assert la.take("T-2") == 0.0
        assert a.limits(3, "login").take("T-1") == 0.0  # scopes are separate buckets
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- schema versions


def test_postgres_schema_is_migrated_and_other_versions_refused(
    pg_url: str, tmp_path: Path
) -> None:
    """An empty database is refused until migrated; migrate is idempotent; a database
    newer than this collector is refused by serve and by migrate."""
    import psycopg

    from collector.storage.postgres import PostgresIndex, migrate

    with pytest.raises(SchemaError, match=r"schema 0 is older .*: run posagent collector migrate"):
        PostgresIndex(pg_url)
    cfg = CollectorConfig(data_dir=str(tmp_path), index_url=pg_url)
    where, before, after = migrate_store(cfg)
    assert (before, after) == (0, LATEST) and "@127.0.0.1:" in where
    assert migrate(pg_url) == (LATEST, LATEST)
    PostgresIndex(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, name FROM schema_version ORDER BY 1").fetchall()
        assert [v for v, _ in rows] == list(range(1, LATEST + 1))
        conn.execute(f"INSERT INTO schema_version (version, name) VALUES ({LATEST + 1}, 'x')")
    newer = re.escape(
        f"schema {LATEST + 1} is newer than this collector knows ({LATEST}): upgrade the collector"
    )
    with pytest.raises(SchemaError, match=newer):
        PostgresIndex(pg_url)
    with pytest.raises(SchemaError, match=newer):
        migrate(pg_url)


def test_sqlite_index_has_the_same_versions(tmp_path: Path) -> None:
    """A new file starts at the latest version; a store from before versioning (version 1)
    is refused until migrated; a newer file is refused."""
    fresh = SqliteIndex(tmp_path / "new.sqlite3")
    assert fresh.migrated == (0, LATEST)
    fresh.close()
    old = tmp_path / "d" / "index.sqlite3"
    old.parent.mkdir()
    conn = sqlite3.connect(old)
    conn.executescript(
        (
            Path(__file__).parents[2] / "collector/storage/migrations/0001_bundles.sqlite.sql"
        ).read_text()
    )
    conn.close()
    with pytest.raises(SchemaError, match=r"schema 1 is older .*run posagent collector migrate"):
        SqliteIndex(old)
    assert migrate_store(CollectorConfig(data_dir=str(tmp_path / "d")))[1:] == (1, LATEST)
    assert migrate_store(CollectorConfig(data_dir=str(tmp_path / "d")))[1:] == (LATEST, LATEST)
    SqliteIndex(old).close()
    conn = sqlite3.connect(old)
    with conn:
        conn.execute(f"INSERT INTO schema_version VALUES ({LATEST + 1}, 'x', 0)")
    conn.close()
    with pytest.raises(SchemaError, match=f"schema {LATEST + 1} is newer"):
        SqliteIndex(old)


# --------------------------------------------------------------------------- config


def test_shipped_sample_collector_table_is_the_defaults() -> None:
    """agent/data/agent.toml's [collector] table holds exactly CollectorConfig's defaults."""
    sample = (Path(__file__).parents[2] / "agent" / "data" / "agent.toml").read_text()
    assert parse_collector_config(sample, "agent.toml") == CollectorConfig()
    assert "[collector]" in sample and "index_url" in sample and "s3_region" in sample


@pytest.mark.parametrize(
    "line",
    [
        'index_url = "mysql://x"',
        'blob_url = "/var/lib/blobs"',
        'blob_url = "s3://B"',
        's3_endpoint_url = "127.0.0.1:8333"',
    ],
)
def test_engine_urls_are_checked(line: str) -> None:
    from agent.core.config import ConfigError

    with pytest.raises(ConfigError):
        parse_collector_config(f"[collector]\n{line}\n")

"""Retention and legal hold (issue 14 item 4) and `collector migrate-store` (item 7),
against the real servers (PostgreSQL, SeaweedFS) and the embedded engines: only what is
expired and not held is deleted, two runs at once delete each bundle once, ingest goes on
during a run, holds by API and CLI, and an interrupted copy into PostgreSQL + S3 resumed."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from agent.bundle.format import new_bundle_id
from agent.core.config import ConfigError
from collector.config import CollectorConfig, RetentionConfig, parse_collector_config
from collector.server import CollectorThread
from collector.storage import BundleRecord, BundleStore, Query, open_store
from collector.storage.retention import (
    DAY_S,
    RetentionIndex,
    RetentionPolicy,
    retention_index,
    run_retention,
)
from tests.bundle.kit import make_bundle
from tests.collector.kit import admin_token, bearer
from tests.collector.servers import Seaweed
from tests.collector.test_app import DEV, Env
from tests.conftest import posagent_argv, wait_until, write_config

POLICY = RetentionPolicy(
    default_days=30, kind_days={"manual": 365, "startup": 0}, severity_days={"critical": 90}
)


def rec(
    data: bytes,
    age_days: float,
    *,
    kind: str = "fault",
    severity: str = "error",
    device: str = DEV,
    site: str = "S1",
    now: float,
) -> BundleRecord:
    return BundleRecord(
        bundle_id=new_bundle_id(),
        device=device,
        site=site,
        fault_key="printer.paper_end",
        severity=severity,
        trigger_kind=kind,
        summary="",
        created_at=now - age_days * DAY_S,
        received_at=now,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        screenshot="captured",
        signature_checked=False,
    )


def put(store: BundleStore, r: BundleRecord, data: bytes) -> None:
    p = store.staging_dir / f"{r.bundle_id}.part"
    p.write_bytes(data)
    assert store.commit(r, p) == "created"


@pytest.fixture(params=["embedded", "fleet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BundleStore]:
    over = request.getfixturevalue("fleet") if request.param == "fleet" else {}
    s = open_store(CollectorConfig(data_dir=str(tmp_path / "d"), **over))
    yield s
    s.close()


# --------------------------------------------------------------------------- policy, config


def test_policy_takes_the_longer_of_kind_and_severity_and_zero_is_forever() -> None:
    assert POLICY.days("fault", "error") == (30, "default")
    assert POLICY.days("fault", "critical") == (90, "severity:critical")
    assert POLICY.days("manual", "critical") == (365, "kind:manual")
    assert POLICY.days("startup", "critical") == (0, "kind:startup")
    assert RetentionPolicy().rules(time.time()) == []  # the default keeps everything
    assert not RetentionPolicy().deletes_anything


def test_retention_config_tables_are_checked() -> None:
    cfg = parse_collector_config(
        "[collector.retention]\ndefault_days = 30\nkind_days = { manual = 365 }\n"
        "severity_days = { critical = 0 }\ninterval_s = 60\n"
    )
    assert cfg.retention == RetentionConfig(30, {"manual": 365}, {"critical": 0}, 60.0)
    for bad in (
        "kind_days = { crash = 3 }",
        "severity_days = { info = 3 }",
        "kind_days = { manual = -1 }",
        "default_days = -1",
        "batch_size = 0",
    ):
        with pytest.raises(ConfigError):
            parse_collector_config(f"[collector.retention]\n{bad}\n")


# --------------------------------------------------------------------------- what is deleted


def test_retention_deletes_only_expired_and_unheld(store: BundleStore) -> None:
    """Expired by default, by severity; kept: young, a longer kind, a forever kind, and
    anything under a bundle, device or site hold, until the hold is released."""
    now = time.time()
    data = {name: secrets.token_bytes(64) for name in "abcdefghij"}
    rows = {
        "a": rec(data["a"], 40, now=now),  # expired (default 30)
        "b": rec(data["b"], 10, now=now),  # young
        "c": rec(data["c"], 100, kind="manual", now=now),  # manual: 365
        "d": rec(data["d"], 100, severity="critical", now=now),  # expired (critical 90)
        "e": rec(data["e"], 60, severity="critical", now=now),  # critical: 90
        "f": rec(data["f"], 40, now=now),  # bundle hold
        "g": rec(data["g"], 40, device="T-HELD", now=now),  # device hold
        "h": rec(data["h"], 40, site="S-HELD", now=now),  # site hold
        "i": rec(data["i"], 1000, kind="startup", now=now),  # startup: forever
        "j": rec(data["j"], 5000, kind="manual", severity="critical", now=now),  # expired
    }
    for name, r in rows.items():
        put(store, r, data[name])
    idx = retention_index(store)
    assert idx.add_hold("bundle", rows["f"].bundle_id, "dispute 1") is True
    assert idx.add_hold("device", "T-HELD", "case 7") is True
    assert idx.add_hold("site", "S-HELD", "reconciliation") is True
    assert idx.add_hold("site", "S-HELD", "reconciliation, again") is False  # updated

    report = run_retention(store, POLICY, batch_size=2, now=now)
    assert not report.skipped and report.errors == []
    assert report.deleted == {"default": 1, "severity:critical": 1, "kind:manual": 1}
    assert report.blobs_deleted == 3 and report.pending_blobs == 0
    gone = {"a", "d", "j"}
    for name, r in rows.items():
        listed = store.index.get(r.bundle_id) is not None
        assert listed == (name not in gone), name
        assert store.blobs.exists(r.bundle_id, r.sha256) == (name not in gone), name
    assert run_retention(store, POLICY, now=now).total == 0

    assert idx.remove_hold("device", "T-HELD") is True
    assert idx.remove_hold("device", "T-HELD") is False
    assert [h.value for h in idx.holds()] == [rows["f"].bundle_id, "S-HELD"]
    assert run_retention(store, POLICY, now=now).deleted == {"default": 1}
    assert store.index.get(rows["g"].bundle_id) is None
    assert store.index.count(Query()) == 6


def test_a_blob_left_by_a_killed_run_is_deleted_next_and_never_reindexed(
    store: BundleStore,
) -> None:
    """Row deleted, then the run dies before the blob: reconcile leaves the blob alone (it
    is pending), the next run deletes it; a listed bundle always had its blob."""
    now = time.time()
    data = secrets.token_bytes(64)
    r = rec(data, 40, now=now)
    put(store, r, data)
    idx = retention_index(store)
    (rule,) = [x for x in POLICY.rules(now) if x.kind == "fault" and x.severity == "error"]
    deleted, _ = idx.expire_batch(rule, None, 10)
    assert deleted == [(r.bundle_id, r.sha256)]
    assert store.index.get(r.bundle_id) is None and store.blobs.exists(r.bundle_id, r.sha256)
    assert idx.is_pending(r.bundle_id)
    assert store.reconcile(lambda b, d, t: replace(r, received_at=t), margin_s=10**9) == 0
    report = run_retention(store, RetentionPolicy(), now=now)  # keeps all, drains pending
    assert report.blobs_deleted == 1 and report.pending_blobs == 0
    assert not store.blobs.exists(r.bundle_id, r.sha256) and not idx.is_pending(r.bundle_id)


# --------------------------------------------------------------------------- several instances


def _insert_rows(store: BundleStore, rows: list[BundleRecord]) -> None:
    """Generated index rows, in bulk (their blobs need not exist: deleting none is fine)."""
    from collector.storage import COLUMNS

    values = [
        [int(v) if isinstance(v, bool) else v for v in (getattr(r, c) for c in COLUMNS)]
        for r in rows
    ]
    index = store.index
    if hasattr(index, "pool"):
        cols = ", ".join(COLUMNS)
        with (
            index.pool.connection() as conn,
            conn.cursor() as cur,
            cur.copy(f"COPY bundles ({cols}) FROM STDIN") as copy,
        ):
            for r in rows:
                copy.write_row([getattr(r, c) for c in COLUMNS])
        return
    conn = sqlite3.connect(index.path)  # type: ignore[attr-defined]
    with conn:
        conn.executemany(
            f"INSERT INTO bundles ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
            values,
        )
    conn.close()


def _generated(n: int, now: float, age_days: float = 40) -> list[BundleRecord]:
    sha = "0" * 64
    return [replace(rec(b"", age_days, now=now), sha256=sha, size_bytes=1) for _ in range(n)]


def test_two_runs_at_once_on_postgres_delete_each_bundle_once(
    fleet: dict[str, str], tmp_path: Path
) -> None:
    """Two instances' runs at once: one holds the lock, the other does nothing; and even
    batches without the lock (two sessions racing on one rule) delete each row once."""
    now = time.time()
    cfg = CollectorConfig(data_dir=str(tmp_path / "d"), **fleet)
    stores = [open_store(cfg) for _ in range(2)]
    try:
        _insert_rows(stores[0], _generated(1200, now) + _generated(30, now, age_days=1))
        data = secrets.token_bytes(64)
        real = rec(data, 40, now=now)
        put(stores[0], real, data)
        reports: list[object] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def go(s: BundleStore) -> None:
            try:
                barrier.wait()
                reports.append(run_retention(s, POLICY, batch_size=50, now=now))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=go, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        totals = sorted(r.total for r in reports)  # type: ignore[attr-defined]
        assert sum(totals) == 1201, totals
        assert any(r.skipped for r in reports) or 0 in totals  # type: ignore[attr-defined]
        assert stores[0].index.count(Query()) == 30
        assert not stores[1].blobs.exists(real.bundle_id, real.sha256)

        _insert_rows(stores[0], _generated(800, now))
        (rule,) = [x for x in POLICY.rules(now) if x.kind == "fault" and x.severity == "error"]
        counts = [0, 0]

        def lockless(i: int) -> None:
            idx: RetentionIndex = retention_index(stores[i])
            barrier.wait()
            cursor = None
            while True:
                deleted, cursor = idx.expire_batch(rule, cursor, 40)
                counts[i] += len(deleted)
                if cursor is None:
                    break

        threads = [threading.Thread(target=lockless, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(counts) == 800 and stores[0].index.count(Query()) == 30
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("engines", ["embedded", "fleet"])
def test_ingest_keeps_working_during_retention(
    tmp_path: Path, request: pytest.FixtureRequest, engines: str
) -> None:
    """A thread uploads while retention deletes 3,000 generated rows in batches of 200:
    every upload is stored (201) promptly, and nothing fresh is deleted."""
    over = request.getfixturevalue("fleet") if engines == "fleet" else {}
    e = Env(tmp_path, **over)
    try:
        store = open_store(e.cfg)
        now = time.time()
        _insert_rows(store, _generated(3000, now))
        done = threading.Event()
        codes: list[int] = []
        slowest = [0.0]

        def upload() -> None:
            i = 0
            while not done.is_set() or i < 5:
                b = make_bundle(device=DEV, seed=i, screenshot=False)
                t0 = time.monotonic()
                codes.append(e.upload(b).status_code)
                slowest[0] = max(slowest[0], time.monotonic() - t0)
                i += 1

        uploader = threading.Thread(target=upload)
        uploader.start()
        try:
            report = run_retention(store, POLICY, batch_size=200, now=now)
        finally:
            done.set()
            uploader.join(60)
            store.close()
        assert report.deleted == {"default": 3000} and report.errors == []
        assert codes and set(codes) == {201}, codes
        assert slowest[0] < 5.0, slowest
        assert e.count() == len(codes)
    finally:
        e.close()


# --------------------------------------------------------------------------- API, CLI, serve


def _metric(url: str, name: str, headers: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", headers=headers, timeout=10).text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                total += s.value
    return total


def test_holds_by_api_and_cli_and_serve_runs_retention(tmp_path: Path) -> None:
    """POST/GET/DELETE /v1/holds for admins; `collector hold add|list|remove`
    on the same store; serve's periodic run deletes the expired bundle that no hold covers
    and counts it in /metrics; `collector retention run` prints its counts."""
    e = Env(tmp_path, retention=RetentionConfig(default_days=2, interval_s=0.2))
    auth = bearer(e.admin_token)
    try:
        old = make_bundle(device=DEV, seed=1, created_at=time.time() - 5 * DAY_S)
        held = make_bundle(device=DEV, seed=2, created_at=time.time() - 5 * DAY_S)
        url = f"{e.url}/v1/holds"
        body = {"bundle": held.bundle_id, "reason": "chargeback 991"}
        assert requests.post(url, json=body, timeout=10).status_code == 401
        r = requests.post(url, json=body, headers=auth, timeout=10)
        assert r.status_code == 201 and r.json()["status"] == "placed"
        assert requests.post(url, json=body, headers=auth, timeout=10).status_code == 200
        for bad in ({"reason": "x"}, {"device": "A", "site": "B", "reason": "x"}, {"site": "B"}):
            assert requests.post(url, json=bad, headers=auth, timeout=10).status_code == 400
        assert e.upload(old).status_code == 201 and e.upload(held).status_code == 201
        assert wait_until(
            lambda: e.http.get(f"{e.url}/v1/bundles", headers=auth).json()["total"] == 1, 15
        )
        listed = e.http.get(f"{e.url}/v1/bundles", headers=auth).json()["bundles"]
        assert [b["bundle_id"] for b in listed] == [held.bundle_id]
        deleted = "posagent_collector_retention_deletions_total"
        assert wait_until(lambda: _metric(e.url, deleted, auth) == 1, 5)

        conf = write_config(
            tmp_path / "cli",
            f'[collector]\ndata_dir = "{e.cfg.data_dir}"\n\n'
            "[collector.retention]\ndefault_days = 2\n",
        )

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                posagent_argv("collector", *args, "--config", str(conf)),
                capture_output=True,
                text=True,
                timeout=60,
            )

        r2 = cli("hold", "add", "--device", DEV, "--reason", "audit 2026")
        assert r2.returncode == 0 and f"hold placed: device {DEV}" in r2.stdout, r2.stderr
        got = requests.get(url, headers=auth, timeout=10).json()["holds"]
        assert [(h["scope"], h["value"]) for h in got] == [
            ("bundle", held.bundle_id),
            ("device", DEV),
        ]
        r2 = cli("hold", "list")
        assert f"device\t{DEV}\t" in r2.stdout and "audit 2026" in r2.stdout
        assert (
            requests.delete(url, params={"bundle": held.bundle_id}, headers=auth).status_code == 200
        )
        assert (
            requests.delete(url, params={"bundle": held.bundle_id}, headers=auth).status_code == 404
        )
    finally:
        e.close()
    # serve stopped: from here only the CLI's runs delete
    r2 = cli("retention", "run")  # the device hold covers the bundle now
    assert r2.returncode == 0 and "deleted 0 bundle(s)" in r2.stdout, r2.stdout + r2.stderr
    r2 = cli("hold", "remove", "--device", DEV)
    assert r2.returncode == 0, r2.stderr
    assert cli("hold", "remove", "--device", DEV).returncode == 1
    r2 = cli("retention", "run")
    assert r2.returncode == 0 and "deleted\tdefault\t1" in r2.stdout, r2.stdout + r2.stderr
    store = open_store(e.cfg)
    assert store.index.count(Query()) == 0
    store.close()


# --------------------------------------------------------------------------- migrate-store


def _pg_count(url: str) -> int:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM bundles").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def test_migrate_store_interrupted_then_resumed(
    tmp_path: Path, pg_url: str, s3_url: str, seaweed: Seaweed
) -> None:
    """50 bundles (and a hold) from files + SQLite into PostgreSQL + SeaweedFS: the copy is
    killed half-way, run again: exit 0, every bundle there and verified, and a collector
    on the new store lists and serves them all."""
    src = Env(tmp_path)
    bundles = [make_bundle(device=DEV, seed=i, diag_pad_bytes=200_000) for i in range(50)]
    try:
        for b in bundles:
            assert src.upload(b).status_code == 201
    finally:
        src.close()
    embedded = open_store(src.cfg)
    retention_index(embedded).add_hold("device", DEV, "dispute 12")
    embedded.close()
    conf = write_config(tmp_path / "cli", f'[collector]\ndata_dir = "{src.cfg.data_dir}"\n')
    argv = posagent_argv(
        "collector", "migrate-store", "--config", str(conf), "--to-index", pg_url,
        "--to-blob", s3_url, "--s3-endpoint-url", seaweed.endpoint, "--workers", "1",
    )  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _pg_count(pg_url) >= 10 or proc.poll() is not None, 60, 0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    copied_before = _pg_count(pg_url)
    assert 10 <= copied_before < 50, copied_before
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    want = f"copied {50 - copied_before}, skipped {copied_before} (already there), failed 0"
    assert want in r.stdout, r.stdout
    assert "50 bundle(s) in the target, digests verified" in r.stdout
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "copied 0, skipped 50" in r.stdout, r.stdout + r.stderr

    cfg = replace(src.cfg, index_url=pg_url, blob_url=s3_url, s3_endpoint_url=seaweed.endpoint)
    cfg = replace(cfg, data_dir=str(tmp_path / "new"))
    admin = bearer(admin_token(cfg))
    with CollectorThread(cfg) as c:
        listed = requests.get(f"{c.url}/v1/bundles?limit=100", headers=admin, timeout=10).json()
        assert listed["total"] == 50
        assert {b["bundle_id"] for b in listed["bundles"]} == {b.bundle_id for b in bundles}
        for b in bundles[::7]:
            dl = requests.get(
                f"{c.url}/v1/bundles/{b.bundle_id}/download", headers=admin, timeout=10
            )
            assert dl.content == b.data
        holds = requests.get(f"{c.url}/v1/holds", headers=admin, timeout=10).json()["holds"]
        assert [(h["scope"], h["value"]) for h in holds] == [("device", DEV)]

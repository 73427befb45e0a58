"""The collector on its fleet engines, against real servers (PostgreSQL, SeaweedFS S3):
the API/ingest tests of test_app.py again, two `posagent collector serve` processes
racing on one bundle id, shared rate limits, `collector migrate` and the schema refusal,
and /metrics."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from collector.auth import add_device
from collector.config import CollectorConfig
from collector.server import CollectorThread
from tests.bundle.kit import make_bundle
from tests.collector.kit import admin_token, bearer, upload_headers
from tests.collector.servers import Seaweed
from tests.collector.test_app import (  # run again below with the fleet `env`
    DEV,
    Env,
    test_concurrent_uploads_of_one_bundle_store_it_once,
    test_hmac_checked_when_the_device_key_is_known,
    test_hostile_uploads_are_refused_and_write_nothing,
    test_page_escapes_everything_from_the_bundle,
    test_per_bundle_endpoints_serve_the_stored_entries,
    test_read_api_filters_and_orders_newest_first,
    test_traversal_ids_in_the_path_are_refused,
)
from tests.conftest import posagent_argv, wait_until, write_config

__all__ = [
    "test_concurrent_uploads_of_one_bundle_store_it_once",
    "test_hmac_checked_when_the_device_key_is_known",
    "test_hostile_uploads_are_refused_and_write_nothing",
    "test_page_escapes_everything_from_the_bundle",
    "test_per_bundle_endpoints_serve_the_stored_entries",
    "test_read_api_filters_and_orders_newest_first",
    "test_traversal_ids_in_the_path_are_refused",
]


@pytest.fixture
def env(tmp_path: Path, fleet: dict[str, str]) -> Iterator[Env]:
    """test_app's collector, on PostgreSQL + S3 (the imported tests above use this one)."""
    e = Env(tmp_path, **fleet)
    yield e
    e.close()


def test_fleet_ingest_created_then_repeat_then_conflict(env: Env, seaweed: Seaweed) -> None:
    """201, 200, 409 on the fleet engines; one object in S3, the first body; nothing staged."""
    b = make_bundle(device=DEV)
    assert env.upload(b).status_code == 201
    assert env.upload(b).json()["status"] == "already_stored"
    other = make_bundle(device=DEV, summary="another capture", bundle_id=b.bundle_id)
    assert env.upload(other).status_code == 409
    dl = env.http.get(f"{env.url}/v1/bundles/{b.bundle_id}/download", timeout=10)
    assert dl.content == b.data
    prefix = env.cfg.blob_url.removeprefix(f"s3://{seaweed.bucket}/")
    sha = hashlib.sha256(b.data).hexdigest()
    assert seaweed.keys(prefix + "/") == [f"{prefix}/{b.bundle_id}/{sha}.zip"]
    assert list((env.tmp / "store" / "incoming").iterdir()) == []
    assert not (env.tmp / "store" / "bundles").exists()
    assert not (env.tmp / "store" / "index.sqlite3").exists()


def _serve(
    tmp: Path, name: str, fleet: dict[str, str], tokens: Path
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    cfg = tmp / name
    cfg.mkdir()
    conf = write_config(
        cfg,
        "[collector]\n"
        f'listen = "127.0.0.1:{port}"\ntokens_file = "{tokens}"\n'
        f'data_dir = "{cfg / "data"}"\nrate_per_minute = 100000\n'
        + "".join(f'{k} = "{v}"\n' for k, v in fleet.items()),
    )
    proc = subprocess.Popen(
        posagent_argv("collector", "serve", "--config", str(conf)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, f"http://127.0.0.1:{port}", conf


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_two_serve_processes_racing_on_one_bundle_id(
    tmp_path: Path, fleet: dict[str, str], seaweed: Seaweed
) -> None:
    """Two `posagent collector serve` on one PostgreSQL + S3: the same id PUT to both at
    once, ten times: different bodies give one 201 and one 409 (the first body kept, one
    object left), the same body gives 201 and 200."""
    tokens = tmp_path / "tokens"
    token = add_device(tokens, DEV)
    admin = bearer(admin_token(CollectorConfig(data_dir=str(tmp_path / "admin"), **fleet)))
    procs = [_serve(tmp_path, f"c{i}", fleet, tokens) for i in range(2)]
    try:
        for proc, url, _ in procs:
            assert wait_until(
                lambda url=url, proc=proc: _healthy(url) or proc.poll() is not None, 30
            )
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        prefix = fleet["blob_url"].removeprefix(f"s3://{seaweed.bucket}/")
        for round_ in range(10):
            same = round_ % 2 == 1
            first = make_bundle(device=DEV, seed=round_)
            bodies = [
                first,
                first if same else make_bundle(device=DEV, bundle_id=first.bundle_id, summary="x"),
            ]
            codes: dict[int, int] = {}
            barrier = threading.Barrier(2)

            def put(i: int, bodies: list = bodies, codes: dict = codes, barrier=barrier) -> None:  # type: ignore[type-arg,no-untyped-def]
                b = bodies[i]
                h = upload_headers(b.bundle_id, b.data, token, DEV)
                barrier.wait()
                r = requests.put(
                    f"{procs[i][1]}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=30
                )
                codes[i] = r.status_code

            threads = [threading.Thread(target=put, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            want = [200, 201] if same else [201, 409]
            assert sorted(codes.values()) == want, (round_, codes)
            winner = bodies[0] if same else bodies[next(i for i, c in codes.items() if c == 201)]
            for _, url, _ in procs:
                dl = requests.get(
                    f"{url}/v1/bundles/{first.bundle_id}/download", headers=admin, timeout=10
                )
                assert dl.content == winner.data
            sha = hashlib.sha256(winner.data).hexdigest()
            assert seaweed.keys(f"{prefix}/{first.bundle_id}/") == [
                f"{prefix}/{first.bundle_id}/{sha}.zip"
            ]
        listed = requests.get(f"{procs[0][1]}/v1/bundles", headers=admin, timeout=10).json()
        assert listed["total"] == 10
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert [p.returncode for p, _, _ in procs] == [0, 0]


def test_rate_limit_is_shared_by_two_instances(tmp_path: Path, fleet: dict[str, str]) -> None:
    """rate_per_minute = 3 on PostgreSQL: three uploads spread over two instances use the
    device's bucket up; the next one is 429 on either instance."""
    (tmp_path / "a").mkdir()
    a = Env(tmp_path / "a", rate_per_minute=3, **fleet)
    b_dir = tmp_path / "b"
    try:
        other = CollectorThread(replace(a.cfg, data_dir=str(b_dir / "store"))).start()
        try:
            urls = [a.url, other.url, a.url, other.url, a.url]
            codes = []
            for i, url in enumerate(urls):
                bundle = make_bundle(device=DEV, seed=i)
                h = upload_headers(bundle.bundle_id, bundle.data, a.token, DEV)
                r = requests.put(
                    f"{url}/v1/bundles/{bundle.bundle_id}", data=bundle.data, headers=h, timeout=10
                )
                codes.append(r.status_code)
            assert codes == [201, 201, 201, 429, 429]
        finally:
            other.stop()
    finally:
        a.close()


def test_migrate_command_and_serve_refusing_other_schemas(tmp_path: Path, pg_url: str) -> None:
    """serve on an empty database exits 78 and says to migrate; `collector migrate` brings
    it to the latest (then says it is current); a database newer than the collector: 78."""
    import psycopg

    from collector.storage import LATEST

    tokens = tmp_path / "tokens"
    add_device(tokens, DEV)
    conf = write_config(
        tmp_path,
        f'[collector]\nlisten = "127.0.0.1:{_free_port()}"\ntokens_file = "{tokens}"\n'
        f'data_dir = "{tmp_path / "data"}"\nindex_url = "{pg_url}"\n',
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            posagent_argv("collector", *args, "--config", str(conf)),
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = run("serve")
    assert r.returncode == 78, r.stderr
    assert (
        f"schema 0 is older than this collector knows ({LATEST}): run posagent collector migrate"
        in r.stderr
    )
    r = run("migrate")
    assert r.returncode == 0, r.stderr
    assert f"schema 0 -> {LATEST}" in r.stdout and "postgresql://postgres@127.0.0.1" in r.stdout
    r = run("migrate")
    assert r.returncode == 0 and f"schema {LATEST} is current" in r.stdout
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, name) VALUES (%s, 'future')", (LATEST + 1,)
        )
    newer = (
        f"schema {LATEST + 1} is newer than this collector knows ({LATEST}): upgrade the collector"
    )
    r = run("serve")
    assert r.returncode == 78 and newer in r.stderr, r.stderr
    r = run("migrate")
    assert r.returncode == 78 and newer in r.stderr, r.stderr


# --------------------------------------------------------------------------- metrics


def _metrics(e: Env) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = e.http.get(e.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.parametrize("engines", ["embedded", "fleet"])
def test_metrics_in_prometheus_text(
    tmp_path: Path, request: pytest.FixtureRequest, engines: str
) -> None:
    """/metrics parses as Prometheus text: ingest by result, rejects by reason, storage
    latency by engine and op, bytes stored, open connections."""
    over = request.getfixturevalue("fleet") if engines == "fleet" else {}
    e = Env(tmp_path, **over)
    try:
        b = make_bundle(device=DEV)
        assert e.upload(b).status_code == 201
        assert e.upload(b).status_code == 200
        assert (
            e.upload(make_bundle(device=DEV, bundle_id=b.bundle_id, summary="x")).status_code == 409
        )
        assert e.upload(make_bundle(device=DEV, seed=5), token="wrong").status_code == 401
        bad = make_bundle(device=DEV, seed=6)
        assert e.put(b"not a zip", bad.bundle_id).status_code == 422
        m = _metrics(e)
        ingest = {
            r: m[("posagent_collector_ingest_total", (("result", r),))]
            for r in ("created", "already_stored", "conflict", "rejected")
        }
        assert ingest == {"created": 1, "already_stored": 1, "conflict": 1, "rejected": 2}
        assert m[("posagent_collector_ingest_rejects_total", (("reason", "unauthorized"),))] == 1
        assert m[("posagent_collector_ingest_rejects_total", (("reason", "invalid_bundle"),))] == 1
        assert m[("posagent_collector_stored_bytes_total", ())] == len(b.data)
        index, blobs = ("postgres", "s3") if engines == "fleet" else ("sqlite", "files")
        count = "posagent_collector_storage_seconds_count"
        assert m[(count, (("engine", blobs), ("op", "blob_put")))] >= 1
        assert m[(count, (("engine", index), ("op", "index_add")))] >= 1
        assert m[(count, (("engine", index), ("op", "index_get")))] >= 3
        assert m[("posagent_collector_open_connections", ())] >= 1  # this session's keep-alive
        pool = m[("posagent_collector_index_connections", ())]
        assert pool >= 1 if engines == "fleet" else pool == 0
        if engines == "fleet":
            assert m[(count, (("engine", "postgres"), ("op", "ratelimit_take")))] >= 4
    finally:
        e.close()

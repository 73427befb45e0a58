"""Fleet-scale figures of the collector (issue 14): ingest, the list at 1,000,000 bundles,
retention beside ingest. Real servers: PostgreSQL (initdb/pg_ctl) and SeaweedFS
(`weed mini`, under the machine-wide lock), started by tests/collector/servers.py.

1. Ingest. 1,000 terminals (devices registered with `collector.auth.add_device`), each
   uploading sealed ~124 KB bundles (built once per run, a few per device, each its own
   id) over upload protocol v1 from a lean load generator: CONCURRENCY threads, one
   keep-alive `http.client` connection each. Measured, each on a fresh store:
   - the embedded store (files + SQLite) in 1 `posagent collector serve`;
   - PostgreSQL + SeaweedFS in 1 instance, and in 2 instances (the generator spreads
     its connections round-robin over the instances: no balancer process on this
     2-core machine; tests/collector/test_balancer.py covers HAProxy);
   - the engines' own limit: a bare loop, at the same concurrency, of boto3 PUT of the
     same bodies + one PostgreSQL INSERT of the same row into the same table.
   Goal: fleet instance(s) ≥ 0.7 × the bare loop.
2. The list API and page at 1,000,000 indexed bundles (rows generated: 1,000 devices
   over 100 sites, 12 fault keys, 3 severities, created over 180 days; COPY on
   PostgreSQL then VACUUM ANALYZE, one executemany transaction on SQLite; no blobs):
   p95 of GET /v1/bundles (default page and each filter) and GET / over one keep-alive
   connection. Target ≤ 50 ms.
3. Retention of 100,000 expired bundles (index rows 400 days old, default_days = 365;
   their blobs are not written, S3 deletes of absent keys still run) by the instance's
   own retention worker while the generator uploads: ingest rate during the deletions
   vs. the same instance config on the same data without retention; deletions/s.
   Goal: within 20 %.

Sizes: the issue's by default; BENCH_FLEET_QUICK=1 (or `--quick`) runs small ones;
BENCH_FLEET_ONLY=list (ingest, retention; comma-separated) runs only those phases.
Run: python -m bench.bench_fleet [--quick]
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.bundle.format import DeviceInfo, Entry, json_entry, seal, text_entry
from collector.auth import add_device
from collector.storage.base import COLUMNS
from tests.bundle.kit import _REDACTOR, KEY, screenshot_png
from tests.collector.kit import upload_headers
from tests.collector.servers import Postgres, Seaweed
from tests.collector.servers import run_postgres as postgres_server
from tests.collector.servers import run_seaweed as seaweed_server
from tests.conftest import posagent_argv

CopyRows = Callable[[str, Sequence[str], Iterable[tuple[Any, ...]]], None]

QUICK = os.environ.get("BENCH_FLEET_QUICK") == "1" or "--quick" in sys.argv[1:]
# BENCH_FLEET_ONLY=list (or ingest, retention; comma-separated) runs those phases only
ONLY = {p for p in os.environ.get("BENCH_FLEET_ONLY", "").split(",") if p}
DEVICES = 1000
SITES = 100
CONCURRENCY = 64
UPLOADS = 600 if QUICK else 4000  # bundles built (the pool of every ingest phase)
PER_PHASE = 300 if QUICK else 3000  # uploads per ingest phase
LIST_ROWS = 50_000 if QUICK else 1_000_000
LIST_SAMPLES = 12 if QUICK else 40
EXPIRED = 5_000 if QUICK else 100_000
NOISE_PX = 38_000  # screenshot noise: the bundle comes out at about 124 KB
TARGET_RATIO = 0.7
TARGET_LIST_MS = 50.0
TARGET_RETENTION_KEEP = 0.8
FAULTS = (  # (key, severity, kind, weight): a fleet's mix
    ("network.link_down", "error", "fault", 18),
    ("printer.paper_end", "warning", "fault", 16),
    ("printer.offline", "error", "fault", 10),
    ("printer.cover_open", "warning", "fault", 8),
    ("power.ac_lost", "critical", "fault", 6),
    ("disk.full", "critical", "fault", 3),
    ("scanner.offline", "error", "fault", 7),
    ("drawer.open_too_long", "warning", "fault", 5),
    ("pinpad.offline", "critical", "fault", 4),
    ("network.link_down", "error", "cleared", 12),
    ("printer.paper_end", "warning", "cleared", 9),
    ("manual.report", "error", "manual", 2),
)


def _device(i: int) -> str:
    return f"T-{i:05d}"


def _site(i: int) -> str:
    return f"Store {i % SITES:03d}"


def _say(text: str) -> None:
    sys.stdout.write(f"   {text}\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- bundles

_PNG: list[bytes] = []


def _seal_one(i: int) -> tuple[str, str, bytes]:
    """(device, bundle id, bytes) of the i-th bundle: terminal i % DEVICES (a pool worker)."""
    if not _PNG:
        _PNG.append(screenshot_png(label="PAPER END", noise_px=NOISE_PX, seed=7))
    dev = i % DEVICES
    key, sev, kind, _ = FAULTS[i % len(FAULTS)]
    now = time.time()
    readings = [
        {"source": "printer:receipt", "ts": now - 300 + s * 5, "ok": True, "values": {"n": s}}
        for s in range(60)
    ]
    b = seal(
        device=DeviceInfo(id=_device(dev), site=_site(dev), model="TX-100", serial=f"SN-{dev}"),
        trigger={"kind": kind, "key": key, "severity": sev, "summary": f"{key} on {dev}"},
        entries=[
            text_entry("report.txt", f"posagent report\nWhat: {key}\nTerminal {_device(dev)}\n"),
            json_entry("timeline.json", {"readings": readings}),
            text_entry("diagnostics/dmesg.txt", "[  1.0] usb 1-1: new device\n" * 20),
            Entry("screenshot.png", _PNG[0], "image/png"),
        ],
        key=KEY,
        redactor=_REDACTOR,
        screenshot="captured",
        agent_version="0.1.0",
    )
    return _device(dev), b.bundle_id, b.data


@dataclass(frozen=True)
class Upload:
    device: str
    bundle_id: str
    body: bytes
    headers: dict[str, str]


def build_uploads(n: int, tokens: dict[str, str]) -> list[Upload]:
    """n sealed bundles over the DEVICES terminals, built on every core."""
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 2) as pool:
        made = pool.map(_seal_one, range(n), chunksize=50)
    return [Upload(d, b, data, upload_headers(b, data, tokens[d], d)) for d, b, data in made]


# --------------------------------------------------------------------------- load generator


@dataclass
class Load:
    """What one run of the generator saw: completion times (perf_counter) and answers."""

    started: float = 0.0
    ended: float = 0.0
    done: list[float] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    reconnects: int = 0

    @property
    def rate(self) -> float:
        return len(self.done) / (self.ended - self.started)

    def rate_between(self, t0: float, t1: float) -> float:
        return sum(1 for t in self.done if t0 <= t <= t1) / (t1 - t0)


def run_load(
    ports: list[int],
    uploads: list[Upload],
    *,
    concurrency: int = CONCURRENCY,
    stop: threading.Event | None = None,
) -> Load:
    """PUT every upload once (or until stop) over `concurrency` keep-alive connections,
    connection i to ports[i % len(ports)]; a cut connection is reopened and the upload
    sent again."""
    items = iter(uploads)
    take = threading.Lock()
    out = Load()
    per_thread: list[tuple[list[float], Counter[int], int]] = []

    def worker(i: int) -> None:
        port = ports[i % len(ports)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        done: list[float] = []
        codes: Counter[int] = Counter()
        again = 0
        while stop is None or not stop.is_set():
            with take:
                u = next(items, None)
            if u is None:
                break
            for _ in range(5):
                try:
                    conn.request("PUT", f"/v1/bundles/{u.bundle_id}", u.body, u.headers)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    again += 1
                    continue
                codes[resp.status] += 1
                done.append(time.perf_counter())
                break
        conn.close()
        per_thread.append((done, codes, again))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    out.started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.ended = time.perf_counter()
    for done, codes, again in per_thread:
        out.done += done
        out.codes += codes
        out.reconnects += again
    out.done.sort()
    return out


def _check(load: Load, what: str) -> None:
    bad = {c: n for c, n in load.codes.items() if c not in (200, 201)}
    if bad:
        raise RuntimeError(f"{what}: answers other than 201/200: {bad}")


# --------------------------------------------------------------------------- collector instances


def _free_port() -> int:
    import socket  # lazy: only for picking ports

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def collectors(
    root: Path, tokens: Path, n: int = 1, extra: str = "", **engines: str
) -> Iterator[list[int]]:
    """n `posagent collector serve` processes on one store (engines: index_url, blob_url,
    s3_endpoint_url; none: files + SQLite in root/data); yields their ports.

    max_idle_per_client is raised: the generator is one address holding CONCURRENCY
    connections, where a fleet is one connection per terminal address."""
    procs = []
    ports = []
    try:
        for i in range(n):
            port = _free_port()
            d = root / f"c{i}-{port}"
            d.mkdir(parents=True)
            cfg = d / "agent.toml"
            cfg.write_text(
                '[agent]\nlog_format = "json"\n[collector]\n'
                f'listen = "127.0.0.1:{port}"\ntokens_file = "{tokens}"\n'
                f'data_dir = "{root / "data"}"\nrate_per_minute = 1000000\n'
                "max_idle_per_client = 1024\n"
                + "".join(f'{k} = "{v}"\n' for k, v in engines.items())
                + extra
            )
            log = (d / "serve.log").open("wb")
            procs.append(
                subprocess.Popen(
                    posagent_argv("collector", "serve", "--config", str(cfg)),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            ports.append(port)
        for proc, port in zip(procs, ports, strict=True):
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError):
                    if _get(port, "/healthz", 2)[0] == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector on {port} did not start: see {root}")
                time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def fleet_engines(pg: Postgres, sw: Seaweed, tag: str) -> dict[str, str]:
    """A fresh, migrated database and a fresh S3 prefix."""
    from collector.storage.postgres import migrate  # lazy: the fleet extra

    url = pg.create_database("bench_")
    migrate(url)
    return {
        "index_url": url,
        "blob_url": f"s3://{sw.bucket}/bench-{tag}-{os.urandom(4).hex()}",
        "s3_endpoint_url": sw.endpoint,
    }


# --------------------------------------------------------------------------- 1. ingest


def bare_loop(pg_url: str, sw: Seaweed, prefix: str, uploads: list[Upload]) -> Load:
    """The engines' own limit: per bundle one boto3 PUT and one INSERT of its row, at
    CONCURRENCY (each thread its own PostgreSQL connection, one boto3 client)."""
    import hashlib  # lazy: the bare loop only

    import boto3  # lazy: the fleet extra
    import psycopg  # lazy: the fleet extra
    from botocore.config import Config as BotoConfig  # lazy: the fleet extra

    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=sw.endpoint,
        region_name="us-east-1",
        config=BotoConfig(max_pool_connections=CONCURRENCY, s3={"addressing_style": "path"}),
    )
    sql = (
        f"INSERT INTO bundles ({', '.join(COLUMNS)}) VALUES "
        f"({', '.join('%s' for _ in COLUMNS)}) ON CONFLICT (bundle_id) DO NOTHING"
    )
    items = iter(uploads)
    take = threading.Lock()
    out = Load()
    results: list[list[float]] = []

    def worker() -> None:
        done: list[float] = []
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while True:
                with take:
                    u = next(items, None)
                if u is None:
                    break
                sha = hashlib.sha256(u.body).hexdigest()
                s3.put_object(
                    Bucket=sw.bucket,
                    Key=f"{prefix}/{u.bundle_id}/{sha}.zip",
                    Body=u.body,
                    ContentType="application/zip",
                )
                now = time.time()
                conn.execute(
                    sql,
                    (u.bundle_id, u.device, "Store", "printer.paper_end", "warning", "fault")
                    + ("bare", now, now, len(u.body), sha, "captured", False),
                )
                done.append(time.perf_counter())
        results.append(done)

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    out.started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.ended = time.perf_counter()
    for done in results:
        out.done += done
    out.codes[201] = len(out.done)
    if len(out.done) != len(uploads):
        raise RuntimeError(f"bare loop stored {len(out.done)} of {len(uploads)}")
    s3.close()
    return out


def ingest(
    root: Path, pg: Postgres, sw: Seaweed, tokens: Path, ups: list[Upload]
) -> dict[str, Any]:
    batch = ups[:PER_PHASE]
    f: dict[str, Any] = {}
    with collectors(root / "embedded", tokens) as ports:
        load = run_load(ports, batch)
    _check(load, "embedded")
    f["embedded_1_instance_per_s"] = round(load.rate, 1)
    _say(f"embedded (files + SQLite), 1 instance: {load.rate:.1f} bundles/s")

    eng = fleet_engines(pg, sw, "bare")
    bare = bare_loop(eng["index_url"], sw, eng["blob_url"].split("/", 3)[3], batch)
    f["bare_s3_put_pg_insert_per_s"] = round(bare.rate, 1)
    _say(f"bare loop boto3 PUT + INSERT: {bare.rate:.1f} /s")

    for n in (1, 2):
        eng = fleet_engines(pg, sw, f"i{n}")
        with collectors(root / f"fleet{n}", tokens, n, **eng) as ports:
            load = run_load(ports, batch)
        _check(load, f"fleet, {n} instance(s)")
        f[f"fleet_{n}_instance_per_s"] = round(load.rate, 1)
        f[f"fleet_{n}_instance_reconnects"] = load.reconnects
        f[f"fleet_{n}_instance_vs_bare"] = round(load.rate / bare.rate, 3)
        _say(
            f"PostgreSQL + SeaweedFS, {n} instance(s): {load.rate:.1f} bundles/s = "
            f"{load.rate / bare.rate:.3f} x the bare loop (goal >= {TARGET_RATIO})"
        )
    f["uploads_per_phase"] = len(batch)
    f["concurrency"] = CONCURRENCY
    f["devices"] = DEVICES
    f["two_instances_via"] = "generator round-robin (connection i to instance i % 2)"
    return f


# --------------------------------------------------------------------------- 2. the list at 1M


_62 = (1 << 62) - 1


def list_rows(
    n: int, *, seed: int = 14, start: float | None = None, span_s: float = 180 * 86400.0
) -> Iterator[tuple[Any, ...]]:
    """n generated index rows in COLUMNS order, created over span_s up to start (UUIDv7
    ids of their creation time, random digests; the fleet's fault mix)."""
    rng = random.Random(seed)
    now = time.time() if start is None else start
    picks = rng.choices(range(len(FAULTS)), [w for *_, w in FAULTS], k=n)
    devices = [rng.randrange(DEVICES) for _ in range(n)]
    times = sorted(now - rng.random() * span_s for _ in range(n))
    summaries: dict[tuple[int, int], str] = {}
    for i, t in enumerate(times):
        dev, f = devices[i], picks[i]
        key, sev, kind, _ = FAULTS[f]
        summary = summaries.get((f, dev))
        if summary is None:
            summary = summaries[(f, dev)] = f"{key} on {_device(dev)}"
        r = rng.getrandbits(74)  # UUIDv7: ms, version 7, 12 bits, variant 10, 62 bits
        v = (int(t * 1000) << 80) | (0x7 << 76) | (r >> 62 << 64) | (0b10 << 62) | (r & _62)
        h = f"{v:032x}"
        yield (
            f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
            _device(dev),
            _site(dev),
            key,
            sev,
            kind,
            summary,
            t,
            t + 2.0,
            120_000 + (i % 9000),
            f"{rng.getrandbits(256):064x}",
            "captured",
            False,
        )


@contextlib.contextmanager
def bulk_postgres(url: str, tables: Sequence[str] = ("bundles",)) -> Iterator[CopyRows]:
    """Bulk load into a migrated database: the tables' secondary indexes dropped, yields
    ``copy(table, columns, rows)`` (one COPY per call, any number of calls), then the same
    indexes created again and VACUUM ANALYZE (what autovacuum does after a load). The
    triggers and foreign keys stay on: the rows are checked as the collector's would be."""
    import psycopg  # lazy: the fleet extra

    with psycopg.connect(url, autocommit=True) as conn:
        defs = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conindid = format('%%I.%%I', i.schemaname, i.indexname)::regclass)",
            (list(tables),),
        ).fetchall()
        for name, _ in defs:
            conn.execute(f"DROP INDEX {name}")

        def copy(table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
            if table not in tables:
                raise ValueError(f"{table} is not one of the tables loaded: {tables}")
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp,
            ):
                for row in rows:
                    cp.write_row(row)

        yield copy
        for _, sql in defs:
            conn.execute(sql)
        conn.execute("VACUUM ANALYZE")


def fill_postgres(url: str, rows: Iterator[tuple[Any, ...]]) -> float:
    """Bulk load of index rows (`bulk_postgres`); returns seconds."""
    t0 = time.perf_counter()
    with bulk_postgres(url) as copy:
        copy("bundles", COLUMNS, rows)
    return time.perf_counter() - t0


def fill_sqlite(path: Path, rows: Iterator[tuple[Any, ...]]) -> float:
    """Bulk load into a new index at the latest schema: the secondary indexes dropped,
    executemany in one transaction, the same indexes created again, ANALYZE; seconds."""
    from collector.storage.sqlite import SqliteIndex  # lazy: bench setup only

    SqliteIndex(path).close()
    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    defs = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'bundles' "
        "AND sql IS NOT NULL"
    ).fetchall()
    with conn:
        for name, _ in defs:
            conn.execute(f"DROP INDEX {name}")
        conn.executemany(
            f"INSERT INTO bundles ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in COLUMNS)})",
            rows,
        )
        for _, sql in defs:
            conn.execute(sql)
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def _variants(now: float) -> list[tuple[str, str]]:
    week = 7 * 86400
    return [
        ("default page", "/v1/bundles"),
        ("device", "/v1/bundles?" + urlencode({"device": _device(42)})),
        ("site", "/v1/bundles?" + urlencode({"site": _site(7)})),
        ("fault", "/v1/bundles?" + urlencode({"fault": "printer.paper_end"})),
        ("severity", "/v1/bundles?" + urlencode({"severity": "critical"})),
        ("since (last 7 days)", "/v1/bundles?" + urlencode({"since": f"{now - week:.0f}"})),
        (
            "since+until (a week, 60 days ago)",
            "/v1/bundles?"
            + urlencode(
                {"since": f"{now - 60 * 86400 - week:.0f}", "until": f"{now - 60 * 86400:.0f}"}
            ),
        ),
        ("page GET /", "/"),
        ("page GET /?fault=", "/?" + urlencode({"fault": "network.link_down"})),
    ]


def measure_list(port: int, now: float) -> dict[str, dict[str, float]]:
    """p95 / p50 (ms) of each variant: LIST_SAMPLES sequential GETs on one connection."""
    out: dict[str, dict[str, float]] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for name, path in _variants(now):
            lat = []
            for i in range(LIST_SAMPLES + 2):
                t0 = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                dt = time.perf_counter() - t0
                if resp.status != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:200]!r}")
                if i >= 2:  # two warm-ups
                    lat.append(dt * 1000)
            p95 = statistics.quantiles(lat, n=20)[18]
            out[name] = {"p95_ms": round(p95, 1), "p50_ms": round(statistics.median(lat), 1)}
            _say(f"  {name:36} p95 {p95:7.1f} ms  p50 {statistics.median(lat):7.1f} ms")
    finally:
        conn.close()
    return out


def listing(root: Path, pg: Postgres, sw: Seaweed, tokens: Path) -> dict[str, Any]:
    now = time.time()
    f: dict[str, Any] = {"rows": LIST_ROWS, "samples": LIST_SAMPLES}
    eng = fleet_engines(pg, sw, "list")
    t0 = time.perf_counter()
    rows = list(list_rows(LIST_ROWS, start=now))  # the same rows for both engines
    f["generate_rows_s"] = round(time.perf_counter() - t0, 1)
    f["postgres_fill_s"] = round(fill_postgres(eng["index_url"], iter(rows)), 1)
    _say(
        f"{LIST_ROWS} rows generated in {f['generate_rows_s']} s; PostgreSQL: COPY, "
        f"indexes, VACUUM ANALYZE in {f['postgres_fill_s']} s"
    )
    with collectors(root / "list-pg", tokens, **eng) as ports:
        f["postgres"] = measure_list(ports[0], now)
    sq = root / "list-sqlite" / "data"
    sq.mkdir(parents=True)
    f["sqlite_fill_s"] = round(fill_sqlite(sq / "index.sqlite3", iter(rows)), 1)
    del rows
    _say(f"SQLite: {LIST_ROWS} rows by executemany in one transaction in {f['sqlite_fill_s']} s")
    with collectors(root / "list-sqlite", tokens) as ports:
        f["sqlite"] = measure_list(ports[0], now)
    return f


# --------------------------------------------------------------------------- 3. retention


def _expired_left(url: str, cutoff: float) -> int:
    import psycopg  # lazy: the fleet extra

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM bundles WHERE created_at < %s", (cutoff,)
        ).fetchone()
    return int(row[0]) if row else 0


def retention(
    root: Path, pg: Postgres, sw: Seaweed, tokens: Path, ups: list[Upload]
) -> dict[str, Any]:
    """Ingest with the instance's retention worker deleting EXPIRED rows, and without."""
    f: dict[str, Any] = {"expired_rows": EXPIRED}
    now = time.time()
    old = now - 400 * 86400
    keep = "[collector.retention]\ndefault_days = 365\ninterval_s = 3\nbatch_size = 500\n"
    cutoff = now - 365 * 86400
    # with retention first: its deletion window sets how long the run without lasts
    eng = fleet_engines(pg, sw, "ret")
    fill_postgres(eng["index_url"], list_rows(EXPIRED, seed=1, start=old, span_s=30 * 86400))
    stop = threading.Event()
    box: dict[str, Load] = {}
    with collectors(root / "ret-on", tokens, extra=keep, **eng) as ports:
        gen = threading.Thread(
            target=lambda: box.setdefault("load", run_load(ports, ups, stop=stop))
        )
        gen.start()
        t_first = t_last = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            left = _expired_left(eng["index_url"], cutoff)
            t = time.perf_counter()
            if left < EXPIRED and t_first is None:
                t_first = t
            if left == 0:
                t_last = t
                break
            time.sleep(0.25)
        stop.set()
        gen.join()
    load = box["load"]
    _check(load, "ingest during retention")
    if t_first is None or t_last is None:
        raise RuntimeError(f"retention did not delete the {EXPIRED} expired rows in 15 min")
    window_end = min(t_last, load.ended)
    if window_end - t_first < 1.0:
        raise RuntimeError("the uploads ended before retention began: build more (UPLOADS)")
    with_rate = load.rate_between(t_first, window_end)
    f["deletions_per_s"] = round(EXPIRED / (t_last - t_first), 1)
    f["retention_s"] = round(t_last - t_first, 1)
    f["ingest_per_s_with_retention"] = round(with_rate, 1)
    f["overlap_s"] = round(window_end - t_first, 1)
    f["uploads_during_retention"] = sum(1 for t in load.done if t_first <= t <= window_end)
    _say(
        f"retention: {EXPIRED} expired rows deleted in {f['retention_s']} s "
        f"({f['deletions_per_s']}/s); ingest meanwhile {with_rate:.1f} bundles/s"
    )
    # without: the same data and instance config, retention keeping everything
    eng = fleet_engines(pg, sw, "noret")
    fill_postgres(eng["index_url"], list_rows(EXPIRED, seed=1, start=old, span_s=30 * 86400))
    stop = threading.Event()
    span = max(window_end - t_first, 10.0)
    with collectors(root / "ret-off", tokens, extra=keep.replace("365", "0"), **eng) as ports:
        gen = threading.Thread(
            target=lambda: box.__setitem__("load", run_load(ports, ups, stop=stop))
        )
        gen.start()
        time.sleep(span + 3)
        stop.set()
        gen.join()
    base = box["load"]
    _check(base, "ingest without retention")
    lo = base.started + 2.0
    without = base.rate_between(lo, min(lo + span, base.ended))
    f["ingest_per_s_without_retention"] = round(without, 1)
    f["ingest_ratio_with_vs_without"] = round(with_rate / without, 3)
    _say(
        f"ingest without retention {without:.1f} bundles/s; with/without "
        f"{with_rate / without:.3f} (goal >= {TARGET_RETENTION_KEEP})"
    )
    return f


# --------------------------------------------------------------------------- main


def _phase(figures: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """One phase's figures, or its error (the other phases still run)."""
    if ONLY and name not in ONLY:
        return
    _say(f"-- {name}")
    t0 = time.perf_counter()
    try:
        figures[name] = fn()
    except Exception as e:
        figures[name] = {"error": f"{type(e).__name__}: {e}"}
        _say(f"{name} FAILED: {type(e).__name__}: {e}")
    _say(f"({name}: {time.perf_counter() - t0:.0f} s)")


def main() -> dict[str, Any]:
    """Measure and print the fleet figures."""
    figures: dict[str, Any] = {
        "quick": QUICK,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        tokens_file = root / "tokens"
        t0 = time.perf_counter()
        tokens = {
            _device(i): add_device(tokens_file, _device(i), site=_site(i)) for i in range(DEVICES)
        }
        uploading = not ONLY or bool(ONLY & {"ingest", "retention"})
        ups = build_uploads(UPLOADS if uploading else 1, tokens)
        sizes = sorted(len(u.body) for u in ups)
        figures["bundle_kb_median"] = round(statistics.median(sizes) / 1000, 1)
        _say(
            f"{DEVICES} devices registered, {len(ups)} bundles built "
            f"(median {figures['bundle_kb_median']} KB) in {time.perf_counter() - t0:.0f} s"
        )
        with postgres_server() as pg, seaweed_server() as sw:
            _phase(figures, "ingest", lambda: ingest(root, pg, sw, tokens_file, ups))
            _phase(figures, "list", lambda: listing(root, pg, sw, tokens_file))
            _phase(figures, "retention", lambda: retention(root, pg, sw, tokens_file, ups))
    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    figures["total_s"] = round(time.perf_counter() - t_all, 1)
    _say(f"bench_fleet: {figures['total_s']} s in all")
    return figures


if __name__ == "__main__":
    import json  # lazy: the stand-alone run prints its figures

    from bench import quiet_logs  # lazy: as bench/__main__ does

    quiet_logs()
    sys.stdout.write(json.dumps(main(), indent=2) + "\n")

"""Benchmark: incidents at fleet scale (issue 15's figures), on both index engines: the
embedded index (SQLite) and the fleet's (PostgreSQL, issue 14; started by
tests/collector/servers.py's run_postgres, skipped with its reason when none can be had).
The same measurements run on each, on the same generated data; each engine's figure is
reported beside the other's.

1. Read side: an index of 1,000,000 bundles in 50,000 incidents over 5,000 terminals in
   500 sites (90 days; about 3 % of the incidents unresolved), written in bulk (SQLite:
   executemany; PostgreSQL: COPY into a migrated database, bench_fleet.bulk_postgres),
   with the grouping cursor at the newest bundle (as on a running collector: the
   start-up catch-up has nothing to walk). Then the collector (uvicorn in this process)
   answers, N times each, to an admin's API token: the incident list page
   (``/incidents``, all and unresolved), the list API unfiltered, unresolved, by site, by
   fault and by device, the home page (``/``), one incident's page and the fleet's
   faults over 30 days; and the service's list and home figures for a support user of 50
   sites (the principal's restriction).
   p50/p95 per request (target p95 <= 100 ms); the home page's figures again with its
   fault charts' 30-s cache emptied before every run.
2. Grouping, on that index. Ingest answers an upload once its bundle is stored and hands
   it to the collector's incident worker, which groups what it was handed in batches
   (`collector.incidents.service.IncidentWorker`). The figure (target: ingest within 10 %
   of the rate without grouping) is the sustained ingest rate with the worker running
   and keeping up, the time until the last bundle of a round is grouped counted, against
   the rate with grouping off (the hand-over a no-op), in the same run: 6 pairs of
   rounds of 200 uploads over HTTP (verify + store + index; grouping off then on, or on
   then off, in turns), the median of the pairs' time on ÷ off (a burst of the
   machine's other load spoils a pair, not the figure). An "on" round's time includes
   its tail: the worker's wait for more (`backlog.Backlog.take`) and its last batch. Each
   round's CPU time beside it (this process: the client, the collector and its worker;
   and the PostgreSQL server's, from /proc), which the machine's other load moves less
   than it moves the rates.
   Beside them: grouping's time per bundle there (1,000 new bundles grouped one at a time,
   and in batches of 20), and uploads on a fresh collector of the same engine (grouping
   on, off, on again, the last bundle grouped counted; on a shared machine these vary
   more between runs than grouping costs).

Run: python -m bench.bench_incidents   (POSAGENT_BENCH_INCIDENTS_SCALE=0.1 for a quick run;
POSAGENT_BENCH_INCIDENTS_ENGINES=postgres for one engine)
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from agent.bundle.format import new_bundle_id
from bench.bench_fleet import bulk_postgres
from collector.access import Principal, Role
from collector.auth import add_device
from collector.config import CollectorConfig, IncidentsConfig
from collector.incidents.grouping import CURSOR
from collector.incidents.model import IncidentFilter
from collector.incidents.service import Incidents
from collector.server import CollectorThread
from collector.storage import COLUMNS, BundleRecord, SqliteIndex
from tests.bundle.kit import make_bundle
from tests.collector.kit import admin_token, bearer, upload_headers
from tests.collector.servers import Postgres, run_postgres

SCALE = float(os.environ.get("POSAGENT_BENCH_INCIDENTS_SCALE", "1"))
ENGINES = [
    e for e in os.environ.get("POSAGENT_BENCH_INCIDENTS_ENGINES", "sqlite,postgres").split(",") if e
]
DEVICES = int(5000 * SCALE)
PER_DEVICE = 10  # incidents
PER_INCIDENT = 20  # bundles
SITES_PER = 10  # terminals per site
DAYS = 90
RUNS = 60
TARGET_MS = 100.0
KEYS = [
    ("printer.paper_end", "critical", 30),
    ("printer.cover_open", "error", 12),
    ("printer.offline", "critical", 10),
    ("network.link_down", "critical", 12),
    ("network.payment_host_unreachable", "critical", 8),
    ("power.ac_lost", "error", 8),
    ("power.battery_low", "warning", 6),
    ("app.crash", "error", 5),
    ("app.not_running", "critical", 3),
    ("disk.full", "warning", 2),
    ("serial.pinpad_missing", "critical", 2),
    ("clock.unsynced", "warning", 1),
    ("manual.report", "error", 1),
]
INCIDENT_COLUMNS = [
    "id",
    "device",
    "site",
    "fault_key",
    "source",
    "severity",
    "sev_rank",
    "summary",
    "status",
    "assignee",
    "active",
    "raised_at",
    "episode_at",
    "cleared_at",
    "last_at",
    "duration_s",
    "repeats",
    "bundles",
    "open_since",
    "touched_at",
    "escalated_at",
    "resolved_at",
    "created_at",
    "updated_at",
]
LINK_COLUMNS = ("bundle_id", "incident_id", "trigger_kind", "at")
EVENT_COLUMNS = ("incident_id", "kind", "at", "actor", "detail")
TABLES = ("bundles", "incidents", "incident_bundles", "incident_events", "incident_cursor")
CHUNK = 50_000  # bundles per chunk written
PAIRS = 6  # pairs of rounds of uploads into the built index, grouping off and on
PER_ROUND = 200
UPLOADS_AT_SCALE = 2 * PAIRS * PER_ROUND


def _p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


@dataclass
class Chunk:
    """Rows of the four tables, in the order they are written (incidents before the rows
    that reference them)."""

    bundles: list[tuple[Any, ...]] = field(default_factory=list)
    incidents: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)


def generate(now: float, counts: dict[str, Any]) -> Iterator[Chunk]:
    """The fleet's index in chunks (seeded: the same rows for both engines); counts gets
    the totals and the newest bundle (the grouping cursor)."""
    rng = random.Random(7)
    weights = [w for _, _, w in KEYS]
    rank = {"warning": 0, "error": 1, "critical": 2}
    counts.update(bundles=0, incidents=0, events=0, unresolved=0, newest=(-1.0, ""))
    chunk, inc_id = Chunk(), 0
    for d in range(DEVICES):
        dev, site = f"T-{d:05d}", f"Store {d // SITES_PER:04d}"
        for _ in range(PER_DEVICE):
            inc_id += 1
            key, sev, _w = rng.choices(KEYS, weights)[0]
            raised = now - rng.uniform(0, DAYS * 86400)
            recent = now - raised < 3 * 86400
            status = "resolved"
            if recent and rng.random() < 0.9:
                status = rng.choice(("open", "acknowledged"))
            active = status != "resolved" and rng.random() < 0.5
            t = raised
            for j in range(PER_INCIDENT):
                kind = "fault" if j % 2 == 0 or (active and j == PER_INCIDENT - 1) else "cleared"
                bid = new_bundle_id(int(t * 1000))
                chunk.bundles.append(
                    (bid, dev, site, key, sev, kind, f"{key} on {dev}", t, t + 2)
                    + (90_000, "0" * 64, "captured", True)
                )
                counts["newest"] = max(counts["newest"], (t + 2, bid))
                chunk.links.append((bid, inc_id, kind, t))
                chunk.events.append((inc_id, "bundle", t + 2, "system", f'{{"bundle_id":"{bid}"}}'))
                t += rng.uniform(30, 600)
            last = t
            chunk.events.append((inc_id, "opened", raised + 2, "system", "{}"))
            if status == "resolved":
                chunk.events.append((inc_id, "resolved", last + 86400, "system", '{"auto":true}'))
            else:
                counts["unresolved"] += 1
            chunk.incidents.append(
                (inc_id, dev, site, key, "bundle", sev, rank[sev], f"{key} on {dev}", status)
                + ("sam" if status == "acknowledged" else "", 1 if active else 0, raised)
                + (last - 300, None if active else last, last, (last - raised) / 2)
                + (PER_INCIDENT // 2 - 1, PER_INCIDENT, raised, last, None)
                + (last + 86400 if status == "resolved" else None, raised, last)
            )
            counts["bundles"] += PER_INCIDENT
            counts["incidents"] += 1
            counts["events"] += PER_INCIDENT + 1 + (status == "resolved")
            if len(chunk.bundles) >= CHUNK:
                yield chunk
                chunk = Chunk()
    if chunk.bundles:
        yield chunk


def build_sqlite(db_path: Path, now: float) -> dict[str, Any]:
    """The embedded index filled in bulk: bundles, incidents, their links and events."""
    SqliteIndex(db_path).close()  # the schema, by its migrations
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA synchronous=OFF")
    counts: dict[str, Any] = {}

    def insert(table: str, columns: tuple[str, ...] | list[str], rows: list[Any]) -> None:
        marks = ", ".join("?" for _ in columns)
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    for c in generate(now, counts):
        insert("bundles", COLUMNS, c.bundles)
        insert("incidents", INCIDENT_COLUMNS, c.incidents)
        insert("incident_bundles", LINK_COLUMNS, c.links)
        insert("incident_events", EVENT_COLUMNS, c.events)
        conn.commit()
    insert("incident_cursor", ("name", "received_at", "bundle_id"), [(CURSOR, *counts["newest"])])
    conn.commit()
    conn.close()
    return counts


def build_postgres(url: str, now: float) -> dict[str, Any]:
    """The fleet index (migrated) filled by COPY; the incidents' identity moved past the
    ids written, as grouping's next incident needs."""
    import psycopg  # lazy: the fleet extra

    counts: dict[str, Any] = {}
    with bulk_postgres(url, TABLES) as copy:
        for c in generate(now, counts):
            copy("bundles", COLUMNS, c.bundles)
            copy("incidents", INCIDENT_COLUMNS, c.incidents)
            copy("incident_bundles", LINK_COLUMNS, c.links)
            copy("incident_events", EVENT_COLUMNS, c.events)
        copy("incident_cursor", ("name", "received_at", "bundle_id"), [(CURSOR, *counts["newest"])])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('incidents', 'id'), "
            "(SELECT MAX(id) FROM incidents))"
        )
    return counts


def _time_get(http: requests.Session, url: str, runs: int) -> dict[str, float]:
    """p50/p95 (ms) of `runs` GETs after one warm-up; anything but a 200 (a redirect to
    the login page, an error) stops the benchmark: it would time the wrong page."""

    def one() -> float:
        t0 = time.perf_counter()
        r = http.get(url, timeout=60, allow_redirects=False)
        dt = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"GET {url}: HTTP {r.status_code}: {r.text[:200]}")
        return dt

    one()  # and warm
    ms = [one() for _ in range(runs)]
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(_p(ms, 0.95), 1)}


def _bundles(n: int) -> list[Any]:
    """n sealed bundles of T-BENCH: raise and clear of two fault keys in turn."""
    return [
        make_bundle(
            device="T-BENCH",
            fault=("printer.paper_end", "network.link_down")[i % 4 // 2],
            kind=("fault", "cleared")[i % 2],
            seed=i,
        )
        for i in range(n)
    ]


def reads(
    root: Path,
    counts: dict[str, Any],
    engine: dict[str, str],
    server_cpu: Callable[[], float] = lambda: 0.0,
) -> dict[str, Any]:
    """The read side's figures on a built index (engine: the collector config's index
    settings, none for the embedded index in root/data; server_cpu: the CPU seconds its
    server has used, 0 for none)."""
    cfg = CollectorConfig(
        data_dir=str(root / "data"),
        tokens_file=str(root / "tokens"),
        rate_per_minute=10**6,
        incidents=IncidentsConfig(interval_s=0),  # the pass at start only: no sweep in a round
        **engine,
    )
    add_device(cfg.tokens_file, "T-00001", site="Store 0000")
    device_token = add_device(cfg.tokens_file, "T-BENCH", site="Store 1")
    uploads = _bundles(UPLOADS_AT_SCALE)
    token = admin_token(cfg)  # the read side is closed: an admin's API token
    out: dict[str, Any] = {}
    with CollectorThread(cfg) as server, requests.Session() as http:
        http.headers.update(bearer(token))
        col = server.server.config.app.state.collector
        base = server.url
        paths = {
            "incident_list_page": "/incidents",
            "incident_list_page_unresolved": "/incidents?status=unresolved",
            "api_list": "/v1/incidents",
            "api_list_unresolved": "/v1/incidents?status=unresolved",
            "api_list_site": "/v1/incidents?site=Store%200042",
            "api_list_fault": "/v1/incidents?fault=printer.offline",
            "api_list_device": "/v1/incidents?device=T-00042",
            "home_page": "/",
            "incident_page": f"/incidents/{counts['incidents'] // 2}",
            "fleet_faults_30d": "/v1/fleet/faults?days=30",
        }
        for name, path in paths.items():
            out[name] = _time_get(http, base + path, RUNS)
            print(
                f"   {name:32s} p50 {out[name]['p50_ms']:7.1f} ms  p95 {out[name]['p95_ms']:7.1f} ms"
            )
        # a support user of 50 sites: the list narrowed before paging
        who = Principal("s", Role.SUPPORT, frozenset(f"Store {i:04d}" for i in range(0, 500, 10)))
        ms = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            col.incidents.page(IncidentFilter(), who)
            col.incidents.home(who)
            ms.append((time.perf_counter() - t0) * 1000)
        out["scoped_list_and_home_service"] = {
            "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(_p(ms, 0.95), 1),
        }
        print(
            f"   scoped list + home (service)     p95 {out['scoped_list_and_home_service']['p95_ms']:7.1f} ms"
        )
        # the home page's figures with the fault charts' cache emptied before each run
        ms = []
        for _ in range(RUNS):
            col.incidents._cache.clear()
            t0 = time.perf_counter()
            col.incidents.home(Principal("a", Role.ADMIN))
            ms.append((time.perf_counter() - t0) * 1000)
        out["home_service_uncached"] = {
            "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(_p(ms, 0.95), 1),
        }
        print(
            f"   home figures, charts uncached    p95 {out['home_service_uncached']['p95_ms']:7.1f} ms"
        )
        # grouping on the big index: 1,000 new bundles (raise/clear of 500 terminals)
        inc: Incidents = col.incidents
        index = col.store.index
        for name, size in (("one_at_a_time", 1), ("batches_of_20", 20)):
            recs = _new_records(1000)
            for r in recs:
                index.add(r)
            ms_g = []
            for k in range(0, len(recs), size):
                t0 = time.perf_counter()
                if None in inc.group_many(recs[k : k + size]):
                    raise RuntimeError("grouping failed (see the log)")
                ms_g.append((time.perf_counter() - t0) * 1000 / size)
            out[f"grouping_ms_per_bundle_{name}"] = {
                "mean_ms": round(statistics.fmean(ms_g), 3),
                "p95_ms": round(_p(ms_g, 0.95), 3),
            }
            print(
                f"   grouping at scale, {name:14s}  mean {statistics.fmean(ms_g):6.3f} ms per bundle"
            )
        out["uploads_at_scale"] = paired_rounds(http, base, inc, device_token, uploads, server_cpu)
    return out


def _new_records(n: int) -> list[BundleRecord]:
    """n new bundles of 500 terminals of the built index (raise and clear in turn)."""
    now = time.time()
    return [
        BundleRecord(
            new_bundle_id(int((now + i) * 1000)),
            f"T-{(i // 2) * 7 % max(1, DEVICES):05d}",
            "Store 0001",
            "printer.jam",
            "error",
            "fault" if i % 2 == 0 else "cleared",
            "",
            now + i,
            now + i,
            1000,
            "0" * 64,
            "captured",
            True,
        )
        for i in range(n)
    ]


def _upload(http: requests.Session, base: str, b: Any, token: str) -> None:
    h = upload_headers(b.bundle_id, b.data, token, "T-BENCH")
    r = http.put(f"{base}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=60)
    if r.status_code != 201:
        raise RuntimeError(f"upload answered {r.status_code}: {r.text[:200]}")


def _until_grouped(inc: Incidents, timeout_s: float = 300.0) -> None:
    """Wait for the incident worker to have grouped everything handed to it."""
    deadline = time.monotonic() + timeout_s
    while inc.backlog.pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{inc.backlog.pending} bundles still ungrouped after {timeout_s} s")
        time.sleep(0.0005)


def server_cpu_s(pg: Postgres) -> float:
    """CPU seconds the PostgreSQL server has used: the postmaster's own and its ended
    children's, and its live children's (backends, WAL writer, ...), from /proc."""
    assert pg.data is not None
    tick = os.sysconf("SC_CLK_TCK")
    main = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        pid, ppid = int(proc.name), int(fields[1])
        if pid == main:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == main:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def paired_rounds(
    http: requests.Session,
    base: str,
    inc: Incidents,
    token: str,
    uploads: list[Any],
    server_cpu: Callable[[], float],
) -> dict[str, Any]:
    """Pairs of rounds of uploads, grouping off and on (off first in one pair, on first
    in the next): each pair's time with grouping ÷ without, an "on" round's time running
    until its last bundle is grouped; the median of the pairs is the figure (a burst of
    the machine's other load spoils a pair, not the figure). The same for the CPU time
    of each round, this process's (the client, the collector and its worker) and the
    database server's. The worker's batches counted."""
    handed = inc.on_stored
    group_many = inc.group_many
    batches: list[int] = []
    grouping_ms: list[float] = []

    def counted(records: Any) -> list[int | None]:
        t0 = time.perf_counter()
        try:
            return group_many(records)
        finally:
            grouping_ms.append((time.perf_counter() - t0) * 1000)
            batches.append(len(records))

    def round_(mode: str, bundles: list[Any]) -> tuple[float, float]:
        inc.on_stored = handed if mode == "on" else (lambda record: None)  # type: ignore[method-assign]
        c0, t0 = time.process_time() + server_cpu(), time.perf_counter()
        for b in bundles:
            _upload(http, base, b, token)
        if mode == "on":
            _until_grouped(inc)
        return time.perf_counter() - t0, time.process_time() + server_cpu() - c0

    inc.group_many = counted  # type: ignore[method-assign]
    took: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for n in range(PAIRS):
            for k, mode in enumerate(("off", "on") if n % 2 == 0 else ("on", "off")):
                start = (2 * n + k) * PER_ROUND
                t, c = round_(mode, uploads[start : start + PER_ROUND])
                took[mode].append(t)
                cpu[mode].append(c)
    finally:
        del inc.on_stored, inc.group_many  # the methods again
    count = PAIRS * PER_ROUND
    if sum(batches) != count:
        raise RuntimeError(f"the worker grouped {sum(batches)} bundles of {count} handed over")
    slower = [100 * (on / off - 1) for on, off in zip(took["on"], took["off"], strict=True)]
    more = [100 * (on / off - 1) for on, off in zip(cpu["on"], cpu["off"], strict=True)]
    out = {
        "n_per_mode": count,
        "pairs": PAIRS,
        "ingest_per_s_off": round(count / sum(took["off"]), 1),
        "ingest_per_s_on": round(count / sum(took["on"]), 1),
        "slower_pct": round(statistics.median(slower), 1),
        "slower_pct_pairs": [round(x, 1) for x in slower],
        "slower_pct_of_totals": round(100 * (sum(took["on"]) / sum(took["off"]) - 1), 1),
        "cpu_ms_per_upload_off": round(1000 * sum(cpu["off"]) / count, 2),
        "cpu_ms_per_upload_on": round(1000 * sum(cpu["on"]) / count, 2),
        "cpu_more_pct": round(statistics.median(more), 1),
        "batches": len(batches),
        "batch_mean": round(statistics.fmean(batches), 1),
        "worker_ms_per_bundle": round(sum(grouping_ms) / count, 3),
    }
    print(
        f"   ingest into the built index, {PAIRS} pairs of rounds off/on: off "
        f"{out['ingest_per_s_off']}/s, on {out['ingest_per_s_on']}/s (last bundle grouped "
        f"counted): {out['slower_pct']} % slower (median of the pairs "
        f"{out['slower_pct_pairs']}; of the totals {out['slower_pct_of_totals']} %); "
        f"{out['batches']} batches of {out['batch_mean']} on average; CPU per upload "
        f"{out['cpu_ms_per_upload_off']} ms off, {out['cpu_ms_per_upload_on']} ms on "
        f"({out['cpu_more_pct']:+} %, median of the pairs)"
    )
    return out


def ingest(root: Path, fresh: Any = lambda: {}, n: int = 200) -> dict[str, Any]:
    """Uploads over HTTP with grouping (the time until the last is grouped counted), then
    with grouping switched off (a no-op), then with it again; each on a fresh store
    (fresh(): its index settings)."""
    out: dict[str, Any] = {}
    for mode in ("on", "off", "on2"):
        d = root / f"ingest-{mode}"
        cfg = CollectorConfig(
            data_dir=str(d / "data"),
            tokens_file=str(d / "tokens"),
            rate_per_minute=10**6,
            **fresh(),
        )
        token = add_device(cfg.tokens_file, "T-BENCH", site="Store 1")
        bundles = _bundles(n)
        with CollectorThread(cfg) as server, requests.Session() as http:
            col = server.server.config.app.state.collector
            if mode == "off":
                col.incidents.on_stored = lambda record: None
            t0 = time.perf_counter()
            for b in bundles:
                h = upload_headers(b.bundle_id, b.data, token, "T-BENCH")
                r = http.put(f"{server.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h)
                if r.status_code != 201:
                    raise RuntimeError(f"upload answered {r.status_code}: {r.text[:200]}")
            if mode != "off":
                _until_grouped(col.incidents)
            rate = n / (time.perf_counter() - t0)
        out[f"ingest_per_s_grouping_{mode}"] = round(rate, 1)
        print(f"   ingest, grouping {mode:3s}: {rate:6.1f} bundles/s")
    return out


def summarize(f: dict[str, Any]) -> None:
    """Grouping's cost to ingest and the worst read, with their verdicts, into f.

    The verdict's figure is paired: how much slower sustained ingest into the built index
    is with the incident worker grouping and keeping up than with grouping off, rounds
    in turns. Beside it, across runs: grouping's time per bundle at scale (batches of 20)
    ÷ the fastest upload of the three fresh-collector runs, which a shared machine's load
    moves between the two measurements."""
    fastest = max(f[f"ingest_per_s_grouping_{m}"] for m in ("on", "off", "on2"))
    per_upload_ms = 1000.0 / max(fastest, 0.001)
    share = f["reads"]["grouping_ms_per_bundle_batches_of_20"]["mean_ms"] / per_upload_ms
    f["grouping_share_of_ingest_pct"] = round(100 * share, 1)
    paired = f["reads"]["uploads_at_scale"]["slower_pct"]
    f["grouping_slows_ingest_pct"] = paired
    worst = max(
        v["p95_ms"]
        for k, v in f["reads"].items()
        if k != "uploads_at_scale" and not k.startswith("grouping_ms_per_bundle")
    )
    f["worst_read_p95_ms"] = worst
    f["meets_read_target"] = worst <= TARGET_MS
    f["meets_grouping_target"] = paired <= 10.0
    print(
        f"   worst read p95 {worst} ms (target {TARGET_MS}); ingest with grouping {paired} % "
        f"slower than without (target 10 %); across runs {f['grouping_share_of_ingest_pct']} %"
    )


def on_sqlite(root: Path, now: float) -> dict[str, Any]:
    (root / "data").mkdir(parents=True)
    t0 = time.perf_counter()
    counts = build_sqlite(root / "data" / "index.sqlite3", now)
    f: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 1)}
    print(f"   SQLite: built {_shown(counts)} in {f['build_s']} s (executemany)")
    f["load_avg_1m_before_reads"] = round(os.getloadavg()[0], 2)
    f["reads"] = reads(root, counts, {})
    f["load_avg_1m_after_reads"] = round(os.getloadavg()[0], 2)
    f.update(ingest(root))
    summarize(f)
    return f


def on_postgres(root: Path, now: float, pg: Postgres) -> dict[str, Any]:
    from collector.storage.postgres import migrate  # lazy: the fleet extra

    def fresh() -> dict[str, str]:
        url = pg.create_database("bench_inc_")
        migrate(url)
        return {"index_url": url}

    (root / "data").mkdir(parents=True)
    engine = fresh()
    t0 = time.perf_counter()
    counts = build_postgres(engine["index_url"], now)
    f: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 1)}
    print(f"   PostgreSQL: built {_shown(counts)} in {f['build_s']} s (COPY, VACUUM ANALYZE)")
    f["load_avg_1m_before_reads"] = round(os.getloadavg()[0], 2)
    f["reads"] = reads(root, counts, engine, lambda: server_cpu_s(pg))
    f["load_avg_1m_after_reads"] = round(os.getloadavg()[0], 2)
    f.update(ingest(root, fresh))
    summarize(f)
    return f


def _shown(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counts.items() if k != "newest"}


def _engine(figures: dict[str, Any], name: str, run: Any) -> None:
    """One engine's figures, or its error (the other engine still runs)."""
    if name not in ENGINES:
        return
    print(f"   -- {name}")
    try:
        figures[name] = run()
    except Exception as e:
        figures[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"   {name} FAILED: {type(e).__name__}: {e}")


def main() -> dict[str, Any]:
    now = time.time()
    counts: dict[str, Any] = {}
    for _ in generate(now, counts):  # the totals, for the report (the rows are not kept)
        pass
    figures: dict[str, Any] = {
        "scale": SCALE,
        "runs": RUNS,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "devices": DEVICES,
        "sites": (DEVICES + SITES_PER - 1) // SITES_PER,
        **_shown(counts),
    }
    with tempfile.TemporaryDirectory(prefix="bench-incidents") as tmp:
        root = Path(tmp)
        _engine(figures, "sqlite", lambda: on_sqlite(root / "sqlite", now))
        with contextlib.ExitStack() as stack:

            def postgres() -> dict[str, Any]:
                pg = stack.enter_context(run_postgres())
                return on_postgres(root / "postgres", now, pg)

            _engine(figures, "postgres", postgres)
    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return figures


if __name__ == "__main__":
    import json  # lazy: the stand-alone run prints its figures

    from bench import quiet_logs  # lazy: as bench/__main__ does

    quiet_logs()
    print(json.dumps(main(), indent=2))

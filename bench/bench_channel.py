"""Benchmark: the two-way channel on the collector (issue 16 figures).

- Check-ins handled per second: `posagent collector serve` processes (uvicorn, their own
  processes) answer check-ins of DEVICES enrolled terminals, sent for RUN_S seconds (after
  WARM_S) by wrk, a C load generator (Debian's, `WRK_SCRIPT` gives each request its
  device's token and body), over CLIENTS keep-alive connections, and again over
  FEW_CLIENTS, where the rate is bound by latency, not capacity (a check-in with a
  realistic summary, no command, the remote config unchanged: the common case), as the
  agent sends them (only what changed since the collector's state: the payment host's
  latency) and, beside it, whole every time (the first cut's). On the embedded store
  (SQLite, 1 instance) and on PostgreSQL with 1 and 2 instances (two ports, one wrk
  each with half the connections and half the terminals: the even share of a TCP
  balancer in front, which itself is not measured). Beside the rate: the collectors' CPU
  time per check-in (and PostgreSQL's and wrk's), which says what a core would do
  without wrk and the database sharing the machine (2 cores here), wrk's latency
  percentiles and the load average.
- Check-in bytes per terminal per day at the default interval (300 s: 288 a day),
  counted by the kernel on a veth pair whose far end, in a network namespace, runs the
  agent's upload child (bench/channel_wire.py): plain HTTP and TLS 1.3, the connection
  kept between check-ins (the channel's default) beside a new connection per check-in.

Run: python -m bench.bench_channel
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from bench.channel_wire import wire_bytes
from collector.channel import enroll
from collector.channel.signing import keygen
from collector.config import CollectorConfig
from collector.storage import open_store
from collector.storage.sql import Database, database
from tests.collector.hookserver import free_port
from tests.conftest import posagent_argv

DEVICES = 500
# A fleet's check-ins come from as many terminals as there are: none waits for another's
# answer. 64 keep-alive connections (the ingest bench's concurrency) give the check-in writer
# groups to commit together, the figure of what the collector can take. A closed loop of
# only FEW_CLIENTS connections is bound by latency instead (connections / p50, Little's
# law: since the group commit the collector idles there between groups); it is measured
# too, beside it.
CLIENTS = 64
FEW_CLIENTS = 8
RUN_S = 10.0
WARM_S = 3.0
REPEATS = 3  # the shared machine's other work moves a run by a third: the median of 3
WRK_SCRIPT = Path(__file__).with_name("checkin_wrk.lua")
PER_DAY = 86400 // 300
TARGET_PER_S = 100_000 / 60  # 100,000 terminals at one check-in a minute
TARGET_BYTES_DAY = 200_000


def enroll_fleet(db: Database, n: int) -> dict[str, str]:
    """n enrolled devices (through the enrollment code, not HTTP); device -> token."""
    token, _ = enroll.create_token(db, site="Store 1", uses=0, by="bench", now=time.time())
    pem = public_pem(Ed25519PrivateKey.generate().public_key())
    out = {}
    for i in range(n):
        dev = f"T-{i:05d}"
        req = enroll.parse_request(
            {"enrollment_token": token, "device_id": dev, "ed25519_public_key": pem}
        )
        out[dev] = enroll.enroll(db, req, address="bench", now=time.time()).device_token
    return out


@contextlib.contextmanager
def serving(
    root: Path, n: int, index_url: str = "", key: Path | None = None
) -> Iterator[tuple[list[int], list[int]]]:
    """n `collector serve` processes on one index; (ports, pids)."""
    procs, ports = [], []
    try:
        for i in range(n):
            port = free_port()
            cfg = root / f"serve-{i}.toml"
            cfg.write_text(
                '[agent]\nlog_format = "json"\nlog_level = "warning"\n[collector]\n'
                f'listen = "127.0.0.1:{port}"\ndata_dir = "{root / "data"}"\n'
                f'tokens_file = "{root / "tokens"}"\nrate_per_minute = 1000000\n'
                f'signing_key_file = "{root / "command.key"}"\nmax_idle_per_client = 1024\n'
                + (f'index_url = "{index_url}"\n' if index_url else "")
            )
            log = (root / f"serve-{i}.log").open("wb")
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
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector on {port} did not start: see {root}")
                time.sleep(0.1)
        yield ports, [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def load(
    ports: list[int],
    pids: list[int],
    devices: Path,
    *,
    delta: bool = True,
    postgres_port: int | None = None,
    clients: int = CLIENTS,
) -> dict[str, Any]:
    """wrk (`WRK_SCRIPT`: `clients` connections, one a thread) checking in the devices of the
    devices file round-robin for RUN_S seconds, REPEATS times after WARM_S of the same;
    the run of the median rate (with every run's rate beside it): the rate, the
    collectors' CPU per check-in (and PostgreSQL's, its server processes', when
    postgres_port is given) and the load average. Several ports: one wrk per port, the
    connections shared out, every instance as loaded as the others (a TCP balancer's
    share).

    delta: each device's check-ins as the agent sends them (whole first, then only what
    changed on the reply's state token: the payment latency); else whole every time."""
    servers = [psutil.Process(p) for p in pids]
    pg = _postmaster(postgres_port) if postgres_port else None

    def cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(proc.cpu_times()[:2])
        return total

    def pg_procs() -> list[psutil.Process]:
        return [pg, *pg.children(recursive=True)] if pg is not None else []

    def wrk(seconds: float) -> list[dict[str, Any]]:
        per = max(1, clients // len(ports))
        procs = [
            subprocess.Popen(
                [
                    "wrk",
                    "-t",
                    str(per),
                    "-c",
                    str(per),
                    "-d",
                    f"{seconds:g}s",
                    "--timeout",
                    "30s",
                    "-s",
                    str(WRK_SCRIPT),
                    f"http://127.0.0.1:{port}",
                    "--",
                    str(_share(devices, i, len(ports))),
                    str(per),
                    "0" if delta else "1",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i, port in enumerate(ports)
        ]
        outs = [p.communicate(timeout=seconds + 120)[0] for p in procs]
        results = []
        for out in outs:
            if "RESULT " not in out:
                raise RuntimeError(f"wrk: {out.strip()[-300:]}")
            results.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
        failed = [r for r in results if r["failures"]]
        if failed:
            raise RuntimeError(f"check-ins failed: {failed[0]}")
        return results

    def reaped() -> float:  # the CPU of the children waited for: the wrk processes
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def once() -> dict[str, float]:
        c0, p0, w0 = cpu(servers), cpu(pg_procs()), reaped()
        results = wrk(RUN_S)
        c1, p1, w1 = cpu(servers), cpu(pg_procs()), reaped()
        n = sum(r["requests"] for r in results)
        dt = max(r["seconds"] for r in results)
        out = {
            "checkins_per_s": round(n / dt, 1),
            "server_cpu_ms_per_checkin": round((c1 - c0) / n * 1000, 3),
            "wrk_cpu_ms_per_checkin": round((w1 - w0) / n * 1000, 3),
            "p50_ms": max(r["p50_ms"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "clients": clients,
        }
        if pg is not None:
            out["postgres_cpu_ms_per_checkin"] = round((p1 - p0) / n * 1000, 3)
        return out

    wrk(WARM_S)
    runs = sorted((once() for _ in range(REPEATS)), key=lambda r: r["checkins_per_s"])
    median: dict[str, Any] = dict(runs[len(runs) // 2])
    median["checkins_per_s_runs"] = [r["checkins_per_s"] for r in runs]
    return median


def _share(devices: Path, i: int, n: int) -> Path:
    """The i-th of n shares of the devices file (every n-th line): one instance's terminals."""
    if n == 1:
        return devices
    lines = devices.read_text().splitlines(keepends=True)
    share = devices.with_name(f"{devices.name}.{i}-of-{n}")
    share.write_text("".join(lines[i::n]))
    return share


def _postmaster(port: int) -> psutil.Process | None:
    """The PostgreSQL server listening on port (its postmaster), or None when not found."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return psutil.Process(conn.pid) if conn.pid else None
    return None


def devices_file(root: Path, tokens: dict[str, str]) -> Path:
    """The devices file of `WRK_SCRIPT`: "<device> <token>" a line."""
    path = root / "devices"
    path.write_text("".join(f"{d} {t}\n" for d, t in sorted(tokens.items())))
    return path


# --------------------------------------------------------------------------- check-in bodies


def psycopg_port(url: str) -> int:
    """The port of a postgresql:// URL (5432 when it names none)."""
    return urllib.parse.urlsplit(url).port or 5432


@contextlib.contextmanager
def _postgres() -> Iterator[str | None]:
    """A PostgreSQL server's URL for the run (None when there is none here)."""
    from tests.collector import servers  # lazy: the bench alone needs a PostgreSQL

    make = getattr(servers, "postgres_server", None)
    if make is None:  # before the fleet bench's helper: the test fixture's generator
        make = contextlib.contextmanager(servers.postgres.__wrapped__)  # type: ignore[attr-defined]
    stack = contextlib.ExitStack()
    try:
        pg = stack.enter_context(make())
    except BaseException as e:  # pytest's skip, or a server that cannot start here
        if type(e).__name__ not in ("Skipped", "Unavailable"):
            raise
        yield None
        return
    with stack:
        yield pg.url()


def main() -> dict[str, Any]:
    """Measure and print the channel's figures."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-channel") as tmp:
        root = Path(tmp)
        keygen(root / "command.key")
        figures.update(wire_bytes(root))
        store = open_store(CollectorConfig(data_dir=str(root / "data")))
        try:
            tokens = enroll_fleet(database(store), DEVICES)
        finally:
            store.close()
        devices = devices_file(root, tokens)
        with serving(root, 1) as (ports, pids):
            figures["sqlite_1"] = load(ports, pids, devices)
            figures["sqlite_1_whole"] = load(ports, pids, devices, delta=False)
            figures["sqlite_1_few"] = load(ports, pids, devices, clients=FEW_CLIENTS)
        with _postgres() as url:
            if url is None:
                figures["postgres"] = "skipped: no PostgreSQL here"
            else:
                from collector.storage.postgres import migrate  # lazy: the fleet extra

                migrate(url)
                store = open_store(CollectorConfig(data_dir=str(root / "pgdata"), index_url=url))
                try:
                    tokens = enroll_fleet(database(store), DEVICES)
                finally:
                    store.close()
                (root / "pg").mkdir()
                devices = devices_file(root / "pg", tokens)
                pg_port = psycopg_port(url)
                for n in (1, 2):
                    (root / f"pg{n}").mkdir()
                    with serving(root / f"pg{n}", n, url) as (ports, pids):
                        figures[f"postgres_{n}"] = load(ports, pids, devices, postgres_port=pg_port)
                        figures[f"postgres_{n}_whole"] = load(
                            ports, pids, devices, delta=False, postgres_port=pg_port
                        )
                        figures[f"postgres_{n}_few"] = load(
                            ports, pids, devices, postgres_port=pg_port, clients=FEW_CLIENTS
                        )
    figures["cpus"] = float(os.cpu_count() or 0)
    for k, v in figures.items():
        print(f"   {k:34} {v}")
    total = figures.get("tls_kept_kb_per_day")
    print(
        f"   target <= {TARGET_BYTES_DAY / 1000:.0f} KB/day per terminal over TLS: "
        + (
            "not measured"
            if total is None
            else f"{'met' if total * 1000 <= TARGET_BYTES_DAY else 'MISSED'} ({total} KB)"
        )
    )
    rates = {
        k: figures[k]["checkins_per_s"]
        for k in ("sqlite_1", "postgres_1", "postgres_2")
        if isinstance(figures.get(k), dict)
    }
    missed = {k: v for k, v in rates.items() if v < TARGET_PER_S}
    print(
        f"   target >= {TARGET_PER_S:.0f} check-ins/s at {CLIENTS} connections: "
        + ("not measured" if not rates else f"MISSED by {missed}" if missed else "met")
        + f" ({rates}; this {os.cpu_count()}-core machine, wrk on the same cores)"
    )
    return figures


if __name__ == "__main__":
    main()

"""Benchmark: the two-way channel on the collector (issue 16 figures).

- Check-ins handled per second: `posagent collector serve` processes (uvicorn, their own
  processes) answer check-ins of DEVICES enrolled terminals, sent for RUN_S seconds by
  CLIENTS threads over keep-alive connections (a check-in with a realistic summary, no
  command, the remote config unchanged: the common case), as the agent sends them
  (only what changed since the collector's state: the payment host's latency) and,
  beside it, whole every time (the first cut's). On the embedded store
  (SQLite, 1 instance) and on PostgreSQL with 1 and 2 instances. Beside the rate: the
  servers' CPU time per check-in, which says what a core would do without the load
  generator sharing the machine (2 cores here), and the load average.
- Check-in bytes per terminal per day at the default interval (300 s: 288 a day),
  counted by the kernel on a veth pair whose far end, in a network namespace, runs the
  agent's upload child (bench/channel_wire.py): plain HTTP and TLS 1.3, the connection
  kept between check-ins (the channel's default) beside a new connection per check-in.

Run: python -m bench.bench_channel
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from agent.channel.delta import Acked, acked_after, checkin_body
from bench.channel_wire import wire_bytes
from collector.channel import enroll
from collector.channel.signing import keygen
from collector.config import CollectorConfig
from collector.storage import open_store
from collector.storage.sql import Database, database
from tests.collector.hookserver import free_port
from tests.conftest import posagent_argv

DEVICES = 500
CLIENTS = 8
RUN_S = 10.0
PER_DAY = 86400 // 300
TARGET_PER_S = 100_000 / 60  # 100,000 terminals at one check-in a minute
TARGET_BYTES_DAY = 200_000
SUMMARY = {
    "battery_pct": 54,
    "ac_online": True,
    "link": "up",
    "payment_latency_ms": 41.5,
    "printer": "ok",
    "queue_depth": 0,
    "queue_oldest_age_s": None,
    "active_faults": [],
    "config_digest": "sha256:6f1c0d9e2a4b7c31",
}


def _body(device: str) -> bytes:
    return json.dumps(
        {
            "device_id": device,
            "sent_at": "2026-12-06T08:00:00.000Z",
            "boot_id": "8d3c2f7e-6a51-4a0e-9b7b-3f1d2c4e5a60",
            "agent_version": "0.1.0",
            "config_digest": "",
            "interval_s": 300,
            "summary": SUMMARY,
            "results": [],
        },
        separators=(",", ":"),
    ).encode()


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
    ports: list[int], pids: list[int], tokens: dict[str, str], *, delta: bool = True
) -> dict[str, float]:
    """CLIENTS threads checking in round-robin for RUN_S seconds; rate and server CPU.

    delta: each device's check-ins as the agent sends them (whole first, then only what
    changed on the reply's state token: the payment latency); else whole every time."""
    devices = sorted(tokens)
    counts = [0] * CLIENTS
    errors: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=30)
        acked: dict[str, Acked | None] = {}
        mine = devices[i::CLIENTS]  # a terminal talks to one connection, as the agent does
        k = 0
        while not stop.is_set():
            dev = mine[k % len(mine)]
            fields = _fields(dev, k)
            k += 1
            body = checkin_body(fields, [], acked.get(dev) if delta else None)
            conn.request(
                "POST",
                "/v1/checkins",
                body=json.dumps(body, separators=(",", ":")),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {tokens[dev]}",
                    "X-Posagent-Device": dev,
                },
            )
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200:
                errors.append(f"{dev}: {resp.status}")
                return
            acked[dev] = acked_after(json.loads(answer), fields)
            counts[i] += 1
        conn.close()

    servers = [psutil.Process(p) for p in pids]

    def cpu() -> float:
        return sum(sum(s.cpu_times()[:2]) for s in servers)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    c0, t0 = cpu(), time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(RUN_S)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    dt, c1 = time.perf_counter() - t0, cpu()
    if errors:
        raise RuntimeError(f"check-ins failed: {errors[:3]}")
    n = sum(counts)
    return {
        "checkins_per_s": round(n / dt, 1),
        "server_cpu_ms_per_checkin": round((c1 - c0) / n * 1000, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# --------------------------------------------------------------------------- check-in bodies


def _fields(device: str, i: int) -> dict[str, Any]:
    """The i-th check-in's fields: the payment host's latency moves, the rest holds."""
    body = json.loads(_body(device))
    del body["results"]
    body["summary"] = {**body["summary"], "payment_latency_ms": 40.0 + (i * 7) % 13 / 2}
    return dict(body)


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
        with serving(root, 1) as (ports, pids):
            figures["sqlite_1"] = load(ports, pids, tokens)
            figures["sqlite_1_whole"] = load(ports, pids, tokens, delta=False)
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
                for n in (1, 2):
                    (root / f"pg{n}").mkdir()
                    with serving(root / f"pg{n}", n, url) as (ports, pids):
                        figures[f"postgres_{n}"] = load(ports, pids, tokens)
                        figures[f"postgres_{n}_whole"] = load(ports, pids, tokens, delta=False)
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
    best = max(
        (
            v["checkins_per_s"]
            for v in figures.values()
            if isinstance(v, dict) and "checkins_per_s" in v
        ),
        default=0.0,
    )
    print(
        f"   target >= {TARGET_PER_S:.0f} check-ins/s: {'met' if best >= TARGET_PER_S else 'MISSED'} "
        f"(best {best}/s on this {os.cpu_count()}-core machine, load generator included)"
    )
    return figures


if __name__ == "__main__":
    main()

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
- Check-in bytes per terminal per day at the default interval (300 s: 288 a day): a
  counting TCP proxy between a client and the collector sees every byte of the HTTP
  exchange as the agent makes it (the body of agent.channel.delta: only what changed
  since the collector's state; the upload child's RequestsPutter, a new one per
  check-in as a fresh child: a new connection), in plain HTTP and over TLS 1.3 (a
  self-signed P-256 certificate: the handshake of a real chain, with an intermediate,
  is some 1-2 KB more). Beside it, in the same run: the first cut's check-in (the whole
  body, requests' default headers) and the agent's on a kept-alive connection (no
  handshake: a long-poll's connection). The payment host's latency changes at every
  check-in, the rest holds. TCP/IP headers are estimated apart (about 12 packets of 52
  bytes per connection).

Run: python -m bench.bench_channel
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from agent.channel.delta import Acked, acked_after, checkin_body
from agent.upload.protocol import channel_headers
from agent.upload.worker import PostJsonRequest, RequestsPutter, TlsSettings
from collector.channel import enroll
from collector.channel.signing import keygen
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import open_store
from collector.storage.sql import Database, database
from tests.collector.hookserver import free_port, self_signed
from tests.collector.proxy import TcpProxy
from tests.conftest import posagent_argv

DEVICES = 500
CLIENTS = 8
RUN_S = 10.0
PER_DAY = 86400 // 300
TARGET_PER_S = 100_000 / 60  # 100,000 terminals at one check-in a minute
TARGET_BYTES_DAY = 200_000
TCP_IP_PER_CONNECTION = 12 * 52
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


# --------------------------------------------------------------------------- bytes on the wire


def _fields(device: str, i: int) -> dict[str, Any]:
    """The i-th check-in's fields: the payment host's latency moves, the rest holds."""
    body = json.loads(_body(device))
    del body["results"]
    body["summary"] = {**body["summary"], "payment_latency_ms": 40.0 + (i * 7) % 13 / 2}
    return dict(body)


def _v1_checkin(url: str, dev: str, token: str, i: int) -> None:
    """The check-in as the agent sent it before (issue 16's first cut): the whole body
    and requests' default headers, a new connection."""
    with requests.Session() as s:
        r = s.post(
            url,
            data=json.dumps({**_fields(dev, i), "results": []}, separators=(",", ":")),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "X-Posagent-Device": dev,
            },
            timeout=10,
            verify=False,
        )
        r.raise_for_status()


def wire_bytes(root: Path) -> dict[str, float]:
    """Bytes of one check-in as the agent makes it (agent.channel.delta's body, the upload
    child's RequestsPutter: a new one per check-in, as a fresh child; a new connection),
    beside the first cut's (whole body, default headers) and the agent's on a kept-alive
    connection (a long-poll's, or a child kept between check-ins)."""
    figures: dict[str, float] = {}
    cert, key = self_signed(root)
    for tls in (False, True):
        figures.update(_wire(root, str(cert), str(key), tls))
    figures["checkin_json_body_bytes"] = len(_body("T-00001"))
    figures["tls_overhead_kb_per_day"] = round(
        figures["checkin_tls_kb_per_day"] - figures["checkin_http_kb_per_day"], 1
    )
    figures["tcp_ip_headers_kb_per_day_est"] = round(TCP_IP_PER_CONNECTION * PER_DAY / 1000, 1)
    for mode in ("", "_v1"):
        figures[f"checkin_total{mode}_kb_per_day_est"] = round(
            figures[f"checkin_tls{mode}_kb_per_day"] + figures["tcp_ip_headers_kb_per_day_est"], 1
        )
    return figures


class _AgentWire:
    """Check-ins of one device as the agent sends them (its body, headers and client)."""

    def __init__(self, url: str, device: str, token: str) -> None:
        self.url, self.device, self.token = url, device, token
        self.acked: Acked | None = None

    def checkin(self, i: int, putter: RequestsPutter) -> None:
        fields = _fields(self.device, i)
        reply = putter.post_json(
            PostJsonRequest(
                url=self.url,
                body=json.dumps(checkin_body(fields, [], self.acked), separators=(",", ":")),
                headers=channel_headers(self.device, self.token),
                connect_timeout_s=10,
                read_timeout_s=10,
                tls=TlsSettings(verify_tls=False),
            )
        )
        if reply.status != 200:
            raise RuntimeError(f"check-in: {reply.status} {reply.error} {reply.body}")
        self.acked = acked_after(json.loads(reply.body), fields)

    def fresh(self, i: int) -> None:
        """A check-in from a fresh upload child: a new session, a new connection."""
        putter = RequestsPutter()
        try:
            self.checkin(i, putter)
        finally:
            putter.close()


def _wire(root: Path, cert: str, key: str, tls: bool) -> dict[str, float]:
    """wire_bytes' figures over plain HTTP or TLS."""
    tag = "tls" if tls else "http"
    d = root / f"wire-{tag}"
    d.mkdir()
    cfg = CollectorConfig(
        data_dir=str(d / "data"),
        tokens_file=str(d / "tokens"),
        signing_key_file=str(root / "command.key"),
        rate_per_minute=1_000_000,
        tls_cert_file=cert if tls else "",
        tls_key_file=key if tls else "",
    )
    store = open_store(cfg)
    try:
        ((dev, token),) = enroll_fleet(database(store), 1).items()
    finally:
        store.close()
    figures: dict[str, float] = {}
    with CollectorThread(cfg) as server, TcpProxy(server.port) as proxy:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{proxy.port}/v1/checkins"
        agent = _AgentWire(url, dev, token)
        kept = RequestsPutter()
        modes: list[tuple[str, Callable[[int], None]]] = [
            ("_v1", lambda i: _v1_checkin(url, dev, token, i)),
            ("", agent.fresh),
            ("_keepalive", lambda i: agent.checkin(i, kept)),
        ]
        for mode, once in modes:
            sizes = []
            for i in range(21):
                once(i)
                time.sleep(0.05)  # the proxy sees the close (or the answer, kept alive)
                sizes.append(proxy.take())
            sizes = sizes[1:]  # the first: a whole check-in (or the kept one's handshake)
            up = statistics.median(u for u, _ in sizes)
            down = statistics.median(dn for _, dn in sizes)
            figures[f"checkin_{tag}{mode}_up_bytes"] = up
            figures[f"checkin_{tag}{mode}_down_bytes"] = down
            figures[f"checkin_{tag}{mode}_kb_per_day"] = round((up + down) * PER_DAY / 1000, 1)
        kept.close()
    return figures


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
    total = figures["checkin_total_kb_per_day_est"]
    print(
        f"   target <= {TARGET_BYTES_DAY / 1000:.0f} KB/day per terminal: "
        f"{'met' if total * 1000 <= TARGET_BYTES_DAY else 'MISSED'} ({total} KB)"
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

"""Check-in bytes on the wire, counted by the kernel (issue 16: ≤ 200 KB per terminal per day).

The terminal's side runs in a network namespace joined to this one by a veth pair: the
agent's own upload child (`python -m agent.upload.worker` under `ip netns exec`, driven
by `WorkerTransport` as the channel drives it) checks in with the agent's body
(agent.channel.delta: only what changed since the collector's state) and headers
(agent.upload.protocol.channel_headers) to a real collector (`CollectorThread`, its
default config) listening on the host end. Every byte of every packet the check-ins
cause crosses the veth, whose counters (/sys/class/net/<if>/statistics) this reads: IP
bytes (the frames less their 14-byte Ethernet header, which a cellular link does not
carry), TCP/IP headers, handshakes, ACKs and closes included. IPv6 is off and the
neighbours are static on the pair, so nothing else crosses it.

Per transport (plain HTTP, TLS 1.3 with a self-signed P-256 certificate; a real chain
with an intermediate adds some 1-2 KB to each handshake):
- kept: one child, its connection kept between check-ins (the channel's default); a
  check-in's bytes (the median of ROUNDS after the first, which opens the connection
  and sends the whole check-in), and the packets that cross while the connection sits
  idle IDLE_S (TCP sends no keep-alive probes: none);
- new: the peer, a new child and connection per check-in (as before the connection was
  kept), its close counted;
- per day at the default interval (300 s, 288 check-ins): kept = 287 kept check-ins and
  one on a new connection (a reconnect a day: a NAT or a restart); new = 288 new ones.
The child's RSS (and USS, the pages no other process shares) after the kept check-ins
is reported too: it lives as long as the channel (the daemon's own RSS is
bench_channel_live's). And what the kept connections cost the collector: the RSS of a
`posagent collector serve` before and after IDLE_CONNECTIONS connections (loopback) each
made one request and stayed open, per connection, plain and TLS.

Needs root (network namespaces); without it the figures say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.channel.delta import Acked, acked_after, checkin_body
from agent.upload.protocol import CHECKIN_PATH, channel_headers
from agent.upload.worker import PostJsonRequest, TlsSettings, WorkerTransport
from collector.channel.signing import keygen
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import open_store
from collector.storage.sql import database

PER_DAY = 86400 // 300
IDLE_CONNECTIONS = 2000
ROUNDS = 12
IDLE_S = 20.0
SETTLE_S = 0.6  # counters unchanged this long: the exchange (and its last ACK) is over
ETHERNET_HEADER = 14
TARGET_BYTES_DAY = 200_000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass(frozen=True)
class Link:
    """A veth pair: host end here, peer end in namespace `ns`."""

    ns: str
    host_if: str
    host_ip: str

    def counters(self) -> tuple[int, int, int, int]:
        """(IP bytes up, packets up, IP bytes down, packets down) so far; up = from the ns."""
        stats = Path("/sys/class/net") / self.host_if / "statistics"

        def read(name: str) -> int:
            return int((stats / name).read_text())

        rxp, txp = read("rx_packets"), read("tx_packets")
        return (
            read("rx_bytes") - ETHERNET_HEADER * rxp,
            rxp,
            read("tx_bytes") - ETHERNET_HEADER * txp,
            txp,
        )

    def settled(self) -> tuple[int, int, int, int]:
        """The counters once nothing has crossed for SETTLE_S (at most 10 s)."""
        last, since = self.counters(), time.monotonic()
        deadline = since + 10
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.counters()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= SETTLE_S:
                break
        return last


@contextlib.contextmanager
def netns_link() -> Iterator[Link]:
    """A fresh namespace and veth pair with addresses, no IPv6, static neighbours."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer_if = f"pw-{tag}", f"vpw{tag}h", f"vpw{tag}p"
    net = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    host_ip, peer_ip = f"{net}.1", f"{net}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6").write_text("1")
        _ip("link", "set", peer_if, "netns", ns)
        _ip("netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{peer_if}.disable_ipv6=1")
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("-n", ns, "addr", "add", f"{peer_ip}/30", "dev", peer_if)
        host_mac = Path(f"/sys/class/net/{host_if}/address").read_text().strip()
        peer_mac = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{peer_if}/address"],
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        _ip("neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", host_if, "nud", "permanent")
        _ip(
            "-n",
            ns,
            "neigh",
            "replace",
            host_ip,
            "lladdr",
            host_mac,
            "dev",
            peer_if,
            "nud",
            "permanent",
        )
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", peer_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield Link(ns, host_if, host_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def self_signed(root: Path) -> tuple[Path, Path]:
    """The collector's certificate (tests.collector.hookserver's: P-256, self-signed)."""
    from tests.collector.hookserver import self_signed as make  # lazy: the TLS rows only

    return make(root)


def enrolled(cfg: CollectorConfig) -> tuple[str, str]:
    """One device enrolled on cfg's store: (device, token)."""
    from bench.bench_channel import enroll_fleet  # lazy: bench_channel imports this module

    store = open_store(cfg)
    try:
        ((dev, token),) = enroll_fleet(database(store), 1).items()
    finally:
        store.close()
    return dev, token


def fields(device: str, i: int) -> dict[str, Any]:
    """The i-th check-in's fields: the payment host's latency moves, the rest holds."""
    return {
        "device_id": device,
        "sent_at": "2026-12-06T08:00:00.000Z",
        "boot_id": "8d3c2f7e-6a51-4a0e-9b7b-3f1d2c4e5a60",
        "agent_version": "0.1.0",
        "config_digest": "",
        "interval_s": 300,
        "summary": {
            "battery_pct": 54,
            "ac_online": True,
            "link": "up",
            "payment_latency_ms": 40.0 + (i * 7) % 13 / 2,
            "printer": "ok",
            "queue_depth": 0,
            "queue_oldest_age_s": None,
            "active_faults": [],
            "config_digest": "sha256:6f1c0d9e2a4b7c31",
        },
    }


class Terminal:
    """One device's check-ins as the channel makes them, from the namespace."""

    def __init__(self, link: Link, url: str, device: str, token: str) -> None:
        self.argv = ["ip", "netns", "exec", link.ns, sys.executable]
        self.argv += ["-W", "ignore::Warning", "-m", "agent.upload.worker"]  # verify_tls off
        self.url, self.device, self.token = url, device, token
        self.acked: Acked | None = None

    def child(self) -> WorkerTransport:
        return WorkerTransport(argv=self.argv)

    def checkin(self, i: int, transport: WorkerTransport) -> None:
        f = fields(self.device, i)
        reply = transport.put(
            PostJsonRequest(
                url=self.url + CHECKIN_PATH,
                body=json.dumps(checkin_body(f, [], self.acked), separators=(",", ":")),
                headers=channel_headers(self.device, self.token),
                connect_timeout_s=10,
                read_timeout_s=30,
                tls=TlsSettings(verify_tls=False),
                resend_safe=True,
            ),
            lambda _n: None,
            threading.Event(),
        )
        if reply.status != 200:
            raise RuntimeError(f"check-in: {reply.status} {reply.error} {reply.body[:200]}")
        self.acked = acked_after(json.loads(reply.body), f)


def _delta(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(y - x for x, y in zip(a, b, strict=True))


def _transport(link: Link, root: Path, tls: bool) -> dict[str, float]:
    """The figures of one transport (plain or TLS) on the link."""
    tag = "tls" if tls else "http"
    d = root / tag
    d.mkdir()
    cert, key = self_signed(d) if tls else ("", "")
    cfg = CollectorConfig(
        data_dir=str(d / "data"),
        tokens_file=str(d / "tokens"),
        signing_key_file=str(root / "command.key"),
        rate_per_minute=1_000_000,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
    )
    dev, token = enrolled(cfg)
    out: dict[str, float] = {}
    with CollectorThread(cfg, host=link.host_ip) as server:
        url = f"{'https' if tls else 'http'}://{link.host_ip}:{server.port}"
        term = Terminal(link, url, dev, token)
        # kept: one child and connection for every check-in
        kept = term.child()
        per: list[tuple[int, ...]] = []
        try:
            c = link.settled()
            for i in range(ROUNDS + 1):
                term.checkin(i, kept)
                n = link.settled()
                per.append(_delta(c, n))
                c = n
            time.sleep(IDLE_S)
            idle = _delta(c, link.settled())
            assert kept._proc is not None
            mem = psutil.Process(kept._proc.pid).memory_full_info()
        finally:
            kept.close()
        out[f"{tag}_kept_first_bytes"] = per[0][0] + per[0][2]
        out[f"{tag}_idle_{IDLE_S:.0f}s_packets"] = idle[1] + idle[3]
        out[f"{tag}_child_rss_mib"] = round(mem.rss / 2**20, 1)
        out[f"{tag}_child_uss_mib"] = round(mem.uss / 2**20, 1)  # its own pages
        _summarize(out, f"{tag}_kept", per[1:])
        # new: a child and a connection per check-in (its close included)
        per = []
        c = link.settled()
        for i in range(ROUNDS + 1):
            child = term.child()
            try:
                term.checkin(ROUNDS + 1 + i, child)
            finally:
                child.close()
            n = link.settled()
            per.append(_delta(c, n))
            c = n
        _summarize(out, f"{tag}_new", per[1:])
    k, f = out[f"{tag}_kept_bytes"], out[f"{tag}_new_bytes"]
    out[f"{tag}_kept_kb_per_day"] = round(((PER_DAY - 1) * k + f) / 1000, 1)
    out[f"{tag}_new_kb_per_day"] = round(PER_DAY * f / 1000, 1)
    return out


def _summarize(out: dict[str, float], key: str, per: list[tuple[int, ...]]) -> None:
    out[f"{key}_up_bytes"] = statistics.median_low(p[0] for p in per)
    out[f"{key}_down_bytes"] = statistics.median_low(p[2] for p in per)
    out[f"{key}_bytes"] = statistics.median_low(p[0] + p[2] for p in per)
    out[f"{key}_packets"] = statistics.median_low(p[1] + p[3] for p in per)


def idle_connection_cost(root: Path, tls: bool) -> float:
    """KiB of a collector's RSS per idle kept connection (IDLE_CONNECTIONS of them)."""
    import resource  # lazy: only this figure raises the descriptor limit
    import socket  # lazy: as above
    import ssl  # lazy: as above

    import requests  # lazy: as above

    from tests.collector.hookserver import free_port  # lazy: as above
    from tests.conftest import posagent_argv  # lazy: as above

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * IDLE_CONNECTIONS + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        raise RuntimeError(f"needs {want} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    tag = "tls" if tls else "http"
    d = root / f"idle-{tag}"
    d.mkdir()
    cert, key = self_signed(d) if tls else ("", "")
    port = free_port()
    conf = d / "serve.toml"
    conf.write_text(
        '[agent]\nlog_format = "json"\nlog_level = "warning"\n[collector]\n'
        f'listen = "127.0.0.1:{port}"\ndata_dir = "{d / "data"}"\n'
        f'tokens_file = "{d / "tokens"}"\nmax_idle_per_client = 0\n'
        + (f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n' if tls else "")
    )
    proc = subprocess.Popen(
        posagent_argv("collector", "serve", "--config", str(conf)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socks: list[socket.socket] = []
    try:
        url = f"{tag.replace('tls', 'https')}://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2, verify=False).ok:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"collector serve did not start: {conf}")
            time.sleep(0.1)
        server = psutil.Process(proc.pid)
        time.sleep(1.0)
        before = server.memory_info().rss
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        for _ in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            if tls:
                s = ctx.wrap_socket(s)
            socks.append(s)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("collector closed a connection before its answer")
                got += chunk
        time.sleep(2.0)
        after = server.memory_info().rss
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return round((after - before) / IDLE_CONNECTIONS / 1024, 1)


def wire_bytes(root: Path) -> dict[str, Any]:
    """Both transports' figures, or why they were not measured."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return {"wire": "skipped: needs root and iproute2 for a network namespace"}
    figures: dict[str, Any] = {"wire_rounds": ROUNDS}
    if not (root / "command.key").exists():
        keygen(root / "command.key")
    with netns_link() as link:
        for tls in (False, True):
            figures.update(_transport(link, root, tls))
    for tls in (False, True):
        figures[f"collector_kib_per_idle_{'tls' if tls else 'http'}"] = idle_connection_cost(
            root, tls
        )
    return figures


def main() -> dict[str, Any]:
    """Measure and print."""
    with tempfile.TemporaryDirectory(prefix="bench-wire") as tmp:
        figures = wire_bytes(Path(tmp))
    for k, v in figures.items():
        print(f"   {k:34} {v}")
    return figures


if __name__ == "__main__":
    main()

"""The channel's connection kept between check-ins (docs/CHANNEL.md §2): a real collector
(plain and TLS) behind a TCP proxy that counts connections and kills idle ones the ways a
server or a NAT does, the real upload child (`python -m agent.upload.worker`).

Check-ins share one child and one connection; a request leaves in one write; an idle
connection that died costs one reconnect, never a lost or doubled check-in result; a
request that is not safe to resend (an enrollment) is never sent twice."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from agent.channel.client import Channel
from agent.channel.delta import checkin_body
from agent.core.config import load_config
from agent.upload.protocol import CHECKIN_PATH, ENROLL_PATH, channel_headers
from agent.upload.worker import (
    PostJsonRequest,
    PutReply,
    RequestsPutter,
    TlsSettings,
    WorkerTransport,
)
from collector.channel import commands, enroll
from collector.channel.signing import Signer, keygen
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import open_store
from collector.storage.sql import database
from tests.collector.hookserver import self_signed
from tests.collector.proxy import Fate, TcpProxy
from tests.conftest import wait_until, write_config

DEV = "T-TEST"


@dataclass
class Fleet:
    """A running collector with DEV enrolled, reached through `proxy`."""

    cfg: CollectorConfig
    server: CollectorThread
    proxy: TcpProxy
    token: str
    tls: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.proxy.port}"

    def request(self, i: int, **kw: Any) -> PostJsonRequest:
        """DEV's i-th check-in (whole), as the channel sends it."""
        fields = {
            "device_id": DEV,
            "sent_at": f"2026-12-06T08:{i % 60:02d}:00Z",
            "boot_id": "b",
            "agent_version": "1",
            "config_digest": "",
            "interval_s": 300,
            "summary": {"battery_pct": 50 + i % 40, "link": "up"},
        }
        return PostJsonRequest(
            url=self.url + kw.pop("path", CHECKIN_PATH),
            body=json.dumps(checkin_body(fields, [], None), separators=(",", ":")),
            headers=channel_headers(DEV, self.token),
            connect_timeout_s=10,
            read_timeout_s=kw.pop("read_timeout_s", 30),
            tls=TlsSettings(verify_tls=False),
            resend_safe=kw.pop("resend_safe", True),
        )


def _fleet(tmp: Path, tls: bool, **cfg: Any) -> Iterator[Fleet]:
    cert, key = self_signed(tmp) if tls else ("", "")
    ccfg = CollectorConfig(
        data_dir=str(tmp / "store"),
        tokens_file=str(tmp / "tokens"),
        signing_key_file=str(tmp / "command.key"),
        rate_per_minute=10_000,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        **cfg,
    )
    keygen(ccfg.signing_key_file)
    store = open_store(ccfg)
    try:
        db = database(store)
        etoken, _ = enroll.create_token(db, site="S", uses=0, by="test", now=time.time())
        req = enroll.parse_request(
            {
                "enrollment_token": etoken,
                "device_id": DEV,
                "ed25519_public_key": public_pem(Ed25519PrivateKey.generate().public_key()),
            }
        )
        token = enroll.enroll(db, req, address="test", now=time.time()).device_token
    finally:
        store.close()
    with CollectorThread(ccfg) as server, TcpProxy(server.port) as proxy:
        yield Fleet(ccfg, server, proxy, token, tls)


@pytest.fixture(params=[False, True], ids=["http", "tls"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(tmp_path, request.param)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(tmp_path, False)


@pytest.fixture
def transport() -> Iterator[WorkerTransport]:
    t = WorkerTransport()
    yield t
    t.close()


def _send(t: WorkerTransport, req: PostJsonRequest) -> tuple[PutReply, list[int]]:
    """The reply and the progress lines (a resend announces itself with one)."""
    progress: list[int] = []
    return t.put(req, progress.append, threading.Event()), progress


def test_checkins_share_one_child_and_one_connection(
    fleet: Fleet, transport: WorkerTransport
) -> None:
    """Five check-ins a second apart: one upload child, one TCP (and TLS) connection."""
    for i in range(5):
        reply, progress = _send(transport, fleet.request(i))
        assert reply.status == 200, reply
        assert progress == []
        time.sleep(1.0)  # idle between check-ins: the span under test
    assert transport.spawned == 1
    assert fleet.proxy.accepted == 1


def test_a_request_leaves_in_one_write(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The head and body of a check-in go to the socket in one sendall (one TCP segment,
    one TLS record), on a new connection and on a kept one."""
    calls: list[int] = []
    cls = ssl.SSLSocket if fleet.tls else socket.socket
    real = cls.sendall

    def counting(self: Any, data: Any, *args: Any) -> Any:
        if self.getpeername()[1] == fleet.proxy.port:  # the client's (not the proxy's)
            calls.append(len(data))
        return real(self, data, *args)

    monkeypatch.setattr(cls, "sendall", counting)
    putter = RequestsPutter()
    try:
        for i in range(2):
            calls.clear()
            req = fleet.request(i)
            reply = putter.post_json(req)
            assert reply.status == 200, reply
            assert len(calls) == 1, calls
            assert calls[0] > len(req.body)  # the head came with it
    finally:
        putter.close()
    assert fleet.proxy.accepted == 1


@pytest.mark.parametrize("fate", ["reset", "reset_at_request", "drop_reply", "blackhole"])
def test_an_idle_connection_that_died_costs_one_reconnect(
    plain: Fleet, transport: WorkerTransport, fate: Fate
) -> None:
    """Killed while idle (reset by a NAT or server; closed as the request came; the
    request handled and its answer lost; swallowed by a NAT that forgot it): the next
    check-in is answered 200 on a second connection. Where the request went out on the
    dead connection the child says so ({"sent": 0}) and sends it once more."""
    reply, _ = _send(transport, plain.request(0))
    assert reply.status == 200
    one, _ = plain.proxy.take()  # a check-in's bytes to the collector (the next: as many)
    assert plain.proxy.cut(fate) == 1
    reply, progress = _send(transport, plain.request(1, read_timeout_s=3))
    assert reply.status == 200, reply
    assert plain.proxy.accepted == 2
    assert transport.spawned == 1
    assert progress == ([] if fate == "reset" else [0])
    # reached the collector twice only where its first answer was lost
    assert plain.proxy.take()[0] == one * (2 if fate == "drop_reply" else 1)


def test_a_path_that_swallows_idle_connections_is_learned(
    plain: Fleet, transport: WorkerTransport
) -> None:
    """A kept connection swallowed after some idle: that check-in waits its read timeout
    and goes again; the next one idle as long opens a new connection at once (no
    request lost in the dead one), and one sooner still reuses the connection."""
    reply, _ = _send(transport, plain.request(0))
    assert reply.status == 200
    time.sleep(0.2)  # the idle that kills (with what the cut adds)
    plain.proxy.cut("blackhole")
    reply, progress = _send(transport, plain.request(1, read_timeout_s=3))
    assert reply.status == 200 and progress == [0]
    time.sleep(3.0)  # idle longer than the connection that was swallowed
    plain.proxy.cut("blackhole")
    reply, progress = _send(transport, plain.request(2, read_timeout_s=30))
    # no resend: the request went on a new connection, never into the swallowed one
    assert reply.status == 200 and progress == [], (reply, progress)
    assert plain.proxy.accepted == 3
    reply, progress = _send(transport, plain.request(3))  # idle far shorter: reused
    assert reply.status == 200 and progress == []
    assert plain.proxy.accepted == 3


def test_a_request_not_safe_to_resend_is_sent_once(
    plain: Fleet, transport: WorkerTransport
) -> None:
    """An enrollment (it uses up a token) on a connection closed as it came is an error,
    never sent again."""
    reply, _ = _send(transport, plain.request(0))
    assert reply.status == 200
    plain.proxy.cut("reset_at_request")
    reply, progress = _send(transport, plain.request(1, path=ENROLL_PATH, resend_safe=False))
    assert reply.status is None and reply.error.startswith("connection"), reply
    assert progress == []
    assert plain.proxy.accepted == 1


def test_the_collector_closing_after_keepalive_costs_no_error(
    tmp_path: Path, transport: WorkerTransport
) -> None:
    """A collector whose keepalive_s (1 s) is shorter than the interval closes the idle
    connection; the next check-in opens a new one without any failed attempt."""
    fleets = _fleet(tmp_path, False, keepalive_s=1)
    fleet = next(fleets)
    try:
        reply, _ = _send(transport, fleet.request(0))
        assert reply.status == 200
        assert wait_until(lambda: fleet.proxy.server_closed == 1, timeout_s=60)
        reply, progress = _send(transport, fleet.request(1))
        assert reply.status == 200, reply
        assert progress == []
        assert fleet.proxy.accepted == 2
    finally:
        fleets.close()  # the collector and the proxy stop


def test_a_result_whose_answer_was_lost_is_recorded_once(plain: Fleet, tmp_path: Path) -> None:
    """The daemon's Channel: a command's result goes up in a check-in that the collector
    handles but whose answer is lost with the connection; the child sends it again on a
    new connection: the command is done once, one result in the audit log, and the
    terminal holds no pending result."""
    agent_dir = tmp_path / "agent"
    path = write_config(agent_dir)
    path.write_text(path.read_text().replace("[upload]\n", f'[upload]\nendpoint = "{plain.url}"\n'))
    (agent_dir / "token").write_text(plain.token + "\n")
    pub = Signer(plain.cfg.signing_key_file).public_pem()
    (agent_dir / "state" / "collector.pub").write_text(pub)
    store = open_store(plain.cfg)
    try:
        with database(store).transaction() as tx:
            cmd = commands.queue(
                tx,
                Signer(plain.cfg.signing_key_file),
                DEV,
                "selftest",
                {},
                expires_in_s=600,
                by="test",
                address="test",
                now=time.time(),
            )
    finally:
        store.close()
    ran: list[str] = []
    channel = Channel(
        load_config(path),
        summary=lambda: {"battery_pct": 50},
        run_command=lambda c: (ran.append(c.id), ("done", "selftest passed"))[1],
        on_layers_changed=lambda: None,
    )
    try:
        channel._checkin()  # delivers the command, which runs
        assert ran == [cmd.id] and len(channel.results.pending()) == 1
        plain.proxy.cut("drop_reply")
        channel._checkin()  # carries the result: handled, answer lost, sent again
        assert channel.state["last_error"] is None
        assert channel.results.pending() == []
        assert plain.proxy.accepted == 2
        assert channel._transport.spawned == 1  # one child for the channel's life
    finally:
        channel.stop()
    assert ran == [cmd.id]
    store = open_store(plain.cfg)
    try:
        with database(store).transaction(write=False) as tx:
            got = commands.get(tx, cmd.id)
            n = tx.one(
                "SELECT count(*) FROM audit_log WHERE action = ? AND detail LIKE ?",
                ("command.result", f"%{cmd.id}%"),
            )
    finally:
        store.close()
    assert got is not None and got.status == "done" and got.detail == "selftest passed"
    assert n is not None and n[0] == 1

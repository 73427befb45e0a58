"""The control socket under bad and hostile clients: every one refused with a reason, the
daemon's thread unharmed, the next good request answered."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.model import Severity
from agent.daemon.control import (
    MAX_REQUEST_BYTES,
    ControlServer,
    NoDaemon,
    Peer,
    Reply,
    ReportRequest,
    send_report,
)
from tests.conftest import wait_until


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ControlServer, list[tuple[ReportRequest, Peer]]]]:
    seen: list[tuple[ReportRequest, Peer]] = []

    def handler(req: ReportRequest, peer: Peer) -> Reply:
        seen.append((req, peer))
        return Reply(True, bundle_id=f"b{len(seen)}", path="/spool/new/x.zip")

    srv = ControlServer(tmp_path / "run" / "control.sock", handler).open()
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    yield srv, seen
    srv.close()
    t.join(3)
    assert not t.is_alive()


def raw(path: Path, data: bytes, *, shut: bool = True) -> dict[str, object]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(path))
    try:
        s.sendall(data)
    except OSError:
        pass  # the daemon may answer and close before a flood is sent
    if shut:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except ConnectionResetError:  # refused before the flood was read: the answer may be lost
        return {}
    finally:
        s.close()
    return dict(json.loads(got))


GOOD = ReportRequest("drawer stuck", "Ana", Severity.WARNING)


def test_good_request_answered_with_peer_credentials(server: tuple[ControlServer, list]) -> None:  # type: ignore[type-arg]
    srv, seen = server
    reply = send_report(srv.path, GOOD, 5)
    assert reply == Reply(True, "b1", "/spool/new/x.zip", "")
    assert seen[0][0] == GOOD
    assert seen[0][1].uid >= 0 and seen[0][1].pid > 0
    assert (srv.path.stat().st_mode & 0o777) == 0o660


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"v":1,"op":"report","note":"x","path":"/etc/shadow"}\n', "unknown field(s): path"),
        (b'{"v":1,"op":"report"}\n', "missing field(s): note"),
        (b'{"v":1,"op":"report","note":5}\n', "note: not a str"),
        (b'{"v":true,"op":"report","note":"x"}\n', "v: not a int"),
        (b'{"v":2,"op":"report","note":"x"}\n', "protocol 2 not supported"),
        (b'{"v":1,"op":"shutdown","note":"x"}\n', "is not an operation"),
        (b'{"v":1,"op":"report","note":"x","severity":"fatal"}\n', "severity: not one of"),
        (b'{"v":1,"op":"report","note":"' + b"n" * 10_001 + b'"}\n', "note: longer than"),
        (b"[" * 100_000, "larger than"),
        (b"x" * (MAX_REQUEST_BYTES + 10), "larger than"),
        (b"", "not JSON"),
    ],
)
def test_bad_requests_refused_by_name(
    server: tuple[ControlServer, list],  # type: ignore[type-arg]
    data: bytes,
    reason: str,
) -> None:
    srv, seen = server
    reply = raw(srv.path, data)
    assert wait_until(lambda: srv.refused == 1, 5)
    if reply or len(data) < MAX_REQUEST_BYTES:
        assert reply["ok"] is False and reason in str(reply["error"]), reply
    assert not seen
    assert send_report(srv.path, GOOD, 5).ok  # the server goes on


def test_silent_client_cannot_hold_the_socket(server: tuple[ControlServer, list]) -> None:  # type: ignore[type-arg]
    """A client that connects and sends nothing is dropped after READ_TIMEOUT_S."""
    srv, _ = server
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(srv.path))
    t0 = time.monotonic()
    reply = send_report(srv.path, GOOD, 10)  # queued behind the idle one
    assert reply.ok and time.monotonic() - t0 < 5
    idle.settimeout(5)
    assert b"no request in time" in idle.recv(4096)
    idle.close()
    assert srv.refused == 1 and srv.served == 1


def test_failing_handler_answers_and_server_survives(tmp_path: Path) -> None:
    calls = []

    def handler(req: ReportRequest, peer: Peer) -> Reply:
        calls.append(req)
        if len(calls) == 1:
            raise RuntimeError("spool exploded")
        return Reply(True, bundle_id="b2")

    srv = ControlServer(tmp_path / "control.sock", handler).open()
    t = threading.Thread(target=srv.serve, daemon=True)
    t.start()
    try:
        bad = send_report(srv.path, GOOD, 5)
        assert not bad.ok and "spool exploded" in bad.error
        assert send_report(srv.path, GOOD, 5).bundle_id == "b2"
    finally:
        srv.close()
        t.join(3)


def test_no_daemon_and_stale_socket_and_long_path(tmp_path: Path) -> None:
    """No socket / a stale one → NoDaemon at once; a path too long for sun_path still works."""
    with pytest.raises(NoDaemon):
        send_report(tmp_path / "missing.sock", GOOD, 5)
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    t0 = time.monotonic()
    with pytest.raises(NoDaemon):
        send_report(stale, GOOD, 5)
    assert time.monotonic() - t0 < 1
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    srv = ControlServer(deep / "control.sock", lambda r, p: Reply(True, bundle_id="long")).open()
    th = threading.Thread(target=srv.serve, daemon=True)
    th.start()
    try:
        assert send_report(deep / "control.sock", GOOD, 5).bundle_id == "long"
        srv2 = ControlServer(stale, lambda r, p: Reply(True, bundle_id="replaced")).open()
        th2 = threading.Thread(target=srv2.serve, daemon=True)
        th2.start()
        assert send_report(stale, GOOD, 5).bundle_id == "replaced"  # the stale socket replaced
        srv2.close()
        th2.join(3)
    finally:
        srv.close()
        th.join(3)

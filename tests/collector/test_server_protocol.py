"""collector.server's HTTP protocol (httptools) on a real collector, over raw sockets: an
answer leaves in one TCP segment, pipelined requests are answered in order, an
unparsable request is answered 400 and a head over MAX_HEAD_BYTES 431 (whole or
trickled), each followed by the close."""

from __future__ import annotations

import json
import select
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.server import MAX_HEAD_BYTES
from tests.collector.test_app import Env
from tests.collector.test_ingest_guard import _closed
from tests.collector.test_keepalive import HEALTH, _answer
from tests.conftest import wait_until

TCP_INFO_DATA_SEGS_IN = 152  # struct tcp_info: tcpi_data_segs_in (Linux 4.6+)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, header_timeout_s=60, keepalive_s=60)
    yield e
    e.close()


def _connect(env: Env) -> socket.socket:
    return socket.create_connection(("127.0.0.1", env.server.port), timeout=10)


def _data_segments_in(s: socket.socket) -> int:
    """How many TCP segments carrying data this socket has received."""
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= TCP_INFO_DATA_SEGS_IN + 4, "kernel without tcpi_data_segs_in"
    return int(struct.unpack_from("I", info, TCP_INFO_DATA_SEGS_IN)[0])


def _answers(s: socket.socket, n: int) -> list[bytes]:
    """The heads of the next n answers on s (however they were split into reads)."""
    s.settimeout(10)
    buf, heads = b"", []
    while len(heads) < n:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            None,
        )
        if sep and length is not None and len(rest) >= length:
            heads.append(head)
            buf = rest[length:]
            continue
        chunk = s.recv(65536)
        assert chunk, f"closed after {len(heads)} answers"
        buf += chunk
    assert not buf, buf
    return heads


def _until_closed(s: socket.socket) -> bytes:
    """Everything s receives until the server closes it."""
    s.settimeout(30)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _refusal(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """(status, headers, JSON body) of one answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_an_answer_leaves_in_one_tcp_segment(env: Env) -> None:
    """The head and body of an answer are one write (CoalescingTransport): the client
    receives one data segment per answer, on a new connection and on the kept one."""
    s = _connect(env)
    for _ in range(3):
        before = _data_segments_in(s)
        s.sendall(HEALTH)
        assert _answer(s).startswith(b"HTTP/1.1 200")
        assert _data_segments_in(s) - before == 1
    s.close()


def test_pipelined_requests_are_answered_in_order_on_one_connection(env: Env) -> None:
    """Three requests sent at once (the second for a page that does not exist) get three
    answers in the order asked; the connection is then kept."""
    s = _connect(env)
    missing = b"GET /no-such-page HTTP/1.1\r\nHost: c\r\n\r\n"
    s.sendall(HEALTH + missing + HEALTH)
    heads = _answers(s, 3)
    assert [h.split(b" ")[1] for h in heads] == [b"200", b"404", b"200"]
    s.sendall(HEALTH)
    assert _answer(s).startswith(b"HTTP/1.1 200")
    assert not _closed(s)
    s.close()


def test_an_unparsable_request_is_answered_400_and_closed(env: Env) -> None:
    s = _connect(env)
    s.sendall(b"GET / HTTP/1.1\r\nHost: c\r\nBad Header Name: x\r\n\r\n")
    status, headers, body = _refusal(_until_closed(s))
    assert status == 400
    assert headers["connection"] == "close"
    assert body["status"] == "bad_request"
    s.close()
    # the server goes on
    s = _connect(env)
    s.sendall(HEALTH)
    assert _answer(s).startswith(b"HTTP/1.1 200")
    s.close()


def test_a_head_over_the_limit_sent_whole_is_answered_431(env: Env) -> None:
    """A head of MAX_HEAD_BYTES + 1 KiB in one send: 431 and the close; one just under
    the limit is answered."""
    pad = b"a" * (MAX_HEAD_BYTES - 200)
    s = _connect(env)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: c\r\nX-Pad: " + pad + b"\r\n\r\n")
    assert _answer(s).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: c\r\nX-Pad: " + pad + b"a" * 1400 + b"\r\n\r\n")
    status, headers, body = _refusal(_until_closed(s))
    assert (status, headers["connection"], body["status"]) == (431, "close", "head_too_large")
    s.close()


def test_a_head_trickled_past_the_limit_is_answered_431_before_the_header_deadline(
    env: Env,
) -> None:
    """A header value sent 1 KiB at a time and never ended: the server answers 431 and
    closes once it holds some MAX_HEAD_BYTES of it (the read that began the head is not
    counted: at most that much more), well before the header deadline (60 s)."""
    s = _connect(env)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: c\r\nX-Pad: ")
    sent = 0
    while not select.select([s], [], [], 0.01)[0]:
        s.sendall(b"b" * 1024)
        sent += 1024
        assert sent < 4 * MAX_HEAD_BYTES + 512 * 1024, "no answer to an endless head"
    status, _, body = _refusal(_until_closed(s))
    assert (status, body["status"]) == (431, "head_too_large")
    assert sent > MAX_HEAD_BYTES
    s.close()
    assert wait_until(lambda: env.http.get(f"{env.url}/healthz", timeout=10).ok, timeout_s=30)


def test_bytes_that_begin_no_request_end_keep_alive_at_the_header_deadline(
    tmp_path: Path,
) -> None:
    """A kept connection that sends blank lines after an answer (no request begins) is
    closed at the header deadline (1 s), not kept the keepalive_s (10 minutes) of an
    idle one."""
    env = Env(tmp_path, header_timeout_s=1, keepalive_s=600)
    try:
        s = _connect(env)
        s.sendall(HEALTH)
        assert _answer(s).startswith(b"HTTP/1.1 200")
        s.sendall(b"\r\n")
        assert wait_until(lambda: _closed(s), timeout_s=120, step_s=0.05)
        s.close()
    finally:
        env.close()

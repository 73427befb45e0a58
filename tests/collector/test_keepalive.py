"""The collector keeps an idle connection `keepalive_s` after an answer (a terminal's
check-ins reuse it), still cuts a silent new connection or trickled headers at
`header_timeout_s`, and counts only requests in progress against limit_concurrency."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from collector.server import bind, uvicorn_config
from tests.collector.test_app import Env
from tests.collector.test_ingest_guard import _closed
from tests.conftest import wait_until

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n"


def _answer(s: socket.socket) -> bytes:
    """One whole HTTP answer read from s (its head says its length)."""
    s.settimeout(10)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before the answer's head: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed in the answer's body"
        body += chunk
    return head


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, header_timeout_s=1, keepalive_s=6)
    yield e
    e.close()


def test_an_idle_connection_is_kept_past_the_header_deadline_until_keepalive(env: Env) -> None:
    """After an answer the connection waits for the next request keepalive_s (6 s), not
    header_timeout_s (1 s): a second request 2 s later is answered on it; then it is
    closed, not before keepalive_s after the last answer."""
    s = socket.create_connection(("127.0.0.1", env.server.port), timeout=10)
    s.sendall(HEALTH)
    assert _answer(s).startswith(b"HTTP/1.1 200")
    time.sleep(2.0)  # twice the header deadline: the span under test, not a wait for a state
    s.setblocking(True)
    s.sendall(HEALTH)
    head = _answer(s)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nserver:" not in head.lower()
    t0 = time.monotonic()
    assert wait_until(lambda: _closed(s), timeout_s=60, step_s=0.1)
    assert time.monotonic() - t0 >= 5.0  # keep-alive's end, not the 1 s header deadline
    s.close()


def test_silent_or_trickling_connections_still_meet_the_header_deadline(tmp_path: Path) -> None:
    """A new connection that sends nothing, and a kept one whose next request's head
    stops half-way, are both closed at the header deadline (1 s), not kept the
    keepalive_s (10 minutes) of an idle one."""
    env = Env(tmp_path, header_timeout_s=1, keepalive_s=600)
    try:
        silent = socket.create_connection(("127.0.0.1", env.server.port), timeout=10)
        kept = socket.create_connection(("127.0.0.1", env.server.port), timeout=10)
        kept.sendall(HEALTH)
        assert _answer(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert wait_until(lambda: _closed(silent) and _closed(kept), timeout_s=120, step_s=0.05)
        silent.close()
        kept.close()
    finally:
        env.close()


def test_idle_connections_do_not_count_against_limit_concurrency(tmp_path: Path) -> None:
    """uvicorn answers 503 once open connections reach limit_concurrency; here eight idle
    kept connections leave a server limited to 2 requests answering 200."""
    env = Env(tmp_path, keepalive_s=60, max_idle_per_client=0)
    env.close()  # only its config: this test runs its own server with a small limit
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(env.cfg, limit_concurrency=2, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout_s=30)
        port = sock.getsockname()[1]
        idle = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(HEALTH)
            assert _answer(s).startswith(b"HTTP/1.1 200")
            idle.append(s)
        for s in idle:
            s.sendall(HEALTH)
            assert _answer(s).startswith(b"HTTP/1.1 200")
        assert not any(_closed(s) for s in idle)
        for s in idle:
            s.close()
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()

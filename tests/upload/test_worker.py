"""The upload worker child: real PUTs against a loopback server, and a parent that survives its failures.

`WorkerTransport` is driven with the real `python -m agent.upload.worker`
against the fault server, and with small stand-in children (python -c
scripts) that misbehave the ways a child can: die, stall, print garbage.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.upload.protocol import content_digest
from agent.upload.worker import (
    Aborted,
    PutReply,
    PutRequest,
    WorkerTransport,
)
from tests.bundle.kit import small_bundle
from tests.upload.faultserver import FaultServer, Hang, Reply


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A plain-HTTP fault server on loopback."""
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def transport() -> Iterator[WorkerTransport]:
    """The real worker; closed after the test."""
    t = WorkerTransport()
    yield t
    t.close()


def _request(tmp_path: Path, url: str, size_bytes: int = 5000, **kw: object) -> PutRequest:
    b = small_bundle("worker", size_bytes=size_bytes)
    path = tmp_path / f"{b.bundle_id}.zip"
    path.write_bytes(b.data)
    fields: dict[str, object] = {
        "url": f"{url}/v1/bundles/{b.bundle_id}",
        "path": str(path),
        "size_bytes": len(b.data),
        "headers": {
            "Content-Type": "application/zip",
            "Idempotency-Key": str(b.bundle_id),
            "Content-Digest": content_digest(b.data),
            "Authorization": "Bearer tok",
        },
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
    }
    fields.update(kw)
    return PutRequest(**fields)  # type: ignore[arg-type]


def _fake_child(code: str) -> WorkerTransport:
    """A transport whose child is `python -c code` (a misbehaving worker)."""
    return WorkerTransport(argv=[sys.executable, "-c", code])


def test_put_stores_the_body_and_reuses_one_child(
    tmp_path: Path, server: FaultServer, transport: WorkerTransport
) -> None:
    """Three PUTs go through one child; the server stores each body with the right digest."""
    sent: list[int] = []
    for _ in range(3):
        req = _request(tmp_path, server.url, 70_000)
        reply = transport.put(req, sent.append, threading.Event())
        assert reply.status == 201 and not reply.error
        assert reply.bytes_sent == req.size_bytes
    assert transport.spawned == 1
    assert sent and sent[-1] == req.size_bytes
    stored = server.state()["store"]
    assert len(stored) == 3
    data = Path(req.path).read_bytes()
    assert stored[req.headers["Idempotency-Key"]]["digest"] == hashlib.sha256(data).hexdigest()


def test_error_status_carries_retry_after_and_a_body_snippet(
    tmp_path: Path, server: FaultServer, transport: WorkerTransport
) -> None:
    """A 429 comes back with its Retry-After header and the start of its body."""
    server.script(Reply(429, {"Retry-After": "7"}, b"slow down please"))
    reply = transport.put(_request(tmp_path, server.url), lambda n: None, threading.Event())
    assert reply.status == 429 and reply.retry_after == "7"
    assert "slow down" in reply.body


def test_connection_refused_is_a_transport_error(
    tmp_path: Path, transport: WorkerTransport
) -> None:
    """Nothing listening: no status, a 'connection' error, and the child stays usable."""
    with FaultServer() as srv:
        url = srv.url
    reply = transport.put(_request(tmp_path, url), lambda n: None, threading.Event())
    assert reply.status is None and reply.error.startswith("connection")
    assert transport.running


def test_missing_file_is_reported_not_raised(tmp_path: Path, transport: WorkerTransport) -> None:
    """A spool file that vanished is 'cannot read bundle' from the child."""
    req = _request(tmp_path, "http://127.0.0.1:9")
    Path(req.path).unlink()
    reply = transport.put(req, lambda n: None, threading.Event())
    assert reply.status is None and "cannot read bundle" in reply.error


def test_stop_kills_the_child_and_raises_aborted(
    tmp_path: Path, server: FaultServer, transport: WorkerTransport
) -> None:
    """The uploader stopping during a hung request ends the child at once."""
    server.script(Hang())
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Aborted):
        transport.put(_request(tmp_path, server.url, read_timeout_s=30.0), lambda n: None, stop)
    assert time.monotonic() - t0 < 3
    assert not transport.running


def test_paced_body_reports_progress_while_sending(
    tmp_path: Path, server: FaultServer, transport: WorkerTransport
) -> None:
    """With a 200 KB/s cap a 100 KB body takes about half a second and reports progress on the way."""
    seen: list[tuple[float, int]] = []
    req = _request(tmp_path, server.url, 100_000, rate_bytes_per_s=200_000)
    transport.put(_request(tmp_path, server.url), lambda n: None, threading.Event())  # warm
    t0 = time.monotonic()
    reply = transport.put(req, lambda n: seen.append((time.monotonic(), n)), threading.Event())
    assert reply.status == 201
    assert time.monotonic() - t0 >= 0.35
    assert len(seen) >= 4 and seen[-1][1] == req.size_bytes


def test_child_death_mid_request_is_retriable_and_a_new_child_starts(
    tmp_path: Path, server: FaultServer, transport: WorkerTransport
) -> None:
    """SIGKILL of the worker during a hung PUT: an error reply, then the next PUT works."""
    server.script(Hang())
    result: list[PutReply] = []
    t = threading.Thread(
        target=lambda: result.append(
            transport.put(
                _request(tmp_path, server.url, read_timeout_s=30.0),
                lambda n: None,
                threading.Event(),
            )
        )
    )
    t.start()
    assert server.wait_requests(1, 10)
    kids = psutil.Process().children()
    worker = [k for k in kids if "agent.upload.worker" in " ".join(k.cmdline())]
    assert len(worker) == 1
    worker[0].send_signal(signal.SIGKILL)
    t.join(10)
    assert result and result[0].status is None and "exited" in result[0].error
    ok = transport.put(_request(tmp_path, server.url), lambda n: None, threading.Event())
    assert ok.status == 201 and transport.spawned == 2


def test_idle_child_is_closed_and_respawned_on_demand(tmp_path: Path, server: FaultServer) -> None:
    """close_if_idle ends a child unused for idle_exit_s; the next PUT starts another."""
    t = WorkerTransport(idle_exit_s=0.2)
    try:
        assert t.put(_request(tmp_path, server.url), lambda n: None, threading.Event()).status
        t.close_if_idle()
        assert t.running  # just used
        time.sleep(0.3)
        t.close_if_idle()
        assert not t.running
        assert t.put(_request(tmp_path, server.url), lambda n: None, threading.Event()).status
        assert t.spawned == 2
    finally:
        t.close()


def test_child_gone_between_requests_is_replaced_transparently(
    tmp_path: Path, server: FaultServer, transport: WorkerTransport
) -> None:
    """A worker that died while idle costs nothing: the request goes to a fresh child."""
    assert transport.put(_request(tmp_path, server.url), lambda n: None, threading.Event()).status
    proc = transport._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    reply = transport.put(_request(tmp_path, server.url), lambda n: None, threading.Event())
    assert reply.status == 201 and transport.spawned == 2


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("import sys; sys.stdin.readline(); print('not json', flush=True)", "unreadable reply"),
        (
            'import sys; sys.stdin.readline(); print(\'{"reply": {"nope": 1}}\', flush=True)',
            "malformed reply",
        ),
        ("import sys; sys.stdin.readline(); sys.exit(3)", "exited (3)"),
        (
            "import sys; sys.stdout.write('x' * 600000); sys.stdout.flush(); sys.stdin.read()",
            "too long",
        ),
    ],
)
def test_misbehaving_child_becomes_an_error_reply(tmp_path: Path, code: str, why: str) -> None:
    """Garbage, a wrong reply shape, an early exit or an endless line: an error, never a raise."""
    t = _fake_child(code)
    try:
        reply = t.put(_request(tmp_path, "http://127.0.0.1:9"), lambda n: None, threading.Event())
        assert reply.status is None and why in reply.error
    finally:
        t.close()


def test_silent_child_is_killed_after_its_bound(tmp_path: Path) -> None:
    """A child that never answers is killed after connect + read + grace (shortened here)."""
    import agent.upload.worker as uw

    t = _fake_child("import sys, time; sys.stdin.readline(); time.sleep(60)")
    old = uw.STALL_GRACE_S, uw.START_TIMEOUT_S
    uw.STALL_GRACE_S, uw.START_TIMEOUT_S = 0.2, 0.0
    try:
        req = _request(tmp_path, "http://127.0.0.1:9", connect_timeout_s=0.2, read_timeout_s=0.2)
        t0 = time.monotonic()
        reply = t.put(req, lambda n: None, threading.Event())
        assert reply.status is None and "no reply" in reply.error
        assert time.monotonic() - t0 < 3 and not t.running
    finally:
        uw.STALL_GRACE_S, uw.START_TIMEOUT_S = old
        t.close()


def test_worker_answers_a_bad_request_line_and_keeps_serving(tmp_path: Path) -> None:
    """The child itself: a malformed line gets an error reply, EOF ends it with exit 0."""
    p = subprocess.run(
        [sys.executable, "-m", "agent.upload.worker"],
        input=b'{"url": 1}\nnot json\n',
        capture_output=True,
        timeout=30,
    )
    assert p.returncode == 0
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(lines) == 2
    assert all("bad request" in x["reply"]["error"] for x in lines)


def test_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: killing the process that started the worker ends the worker too."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from agent.upload.worker import WorkerTransport;"
        "t = WorkerTransport(); p = t._ensure(); print(p.pid, flush=True); time.sleep(60)"
    )
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, "-c", code, root], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        time.sleep(0.3)  # the worker has set its death signal
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and psutil.pid_exists(worker_pid):
            try:
                if psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        alive = psutil.pid_exists(worker_pid) and (
            psutil.Process(worker_pid).status() != psutil.STATUS_ZOMBIE
        )
        assert not alive
    finally:
        if parent.poll() is None:
            parent.kill()

"""Uploader against a real loopback fault server: the whole v1 response matrix, TLS, pacing, wake-up."""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.core.config import Config, load_config
from agent.spool.maildir import Limits, Spool
from agent.upload.protocol import content_digest
from agent.upload.uploader import (
    AUTH_CONDITION,
    MAX_RETRY_AFTER_S,
    Outcome,
    Uploader,
    backoff_delay,
    classify,
    parse_retry_after,
)
from tests.bundle.kit import small_bundle
from tests.conftest import posagent_argv, write_config
from tests.conftest import wait_until as wait_for
from tests.upload.faultserver import (
    CommitThenDrop,
    FaultServer,
    Garbage,
    Hang,
    Reply,
    ResetMidBody,
    Stored,
    Trickle,
    make_pki,
    server_tls_context,
)

TOKEN = "tok-3f9a1c5e7b"


def make_cfg(tmp_path: Path, endpoint: str, **upload: Any) -> Config:
    """A loaded config for tmp_path with fast backoff and short timeouts (overridable)."""
    cfg = load_config(write_config(tmp_path))
    (tmp_path / "token").write_text(TOKEN + "\n")
    base: dict[str, Any] = {
        "endpoint": endpoint,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
    }
    base.update(upload)
    return dataclasses.replace(cfg, upload=dataclasses.replace(cfg.upload, **base))


def make_spool(cfg: Config) -> Spool:
    return Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()


def enqueue(spool: Spool, size_bytes: int = 4000, rank: int = 1, note: str = "x") -> str:
    b = small_bundle(note, size_bytes=size_bytes)
    spool.enqueue(b.bundle_id, b.data, rank)
    return str(b.bundle_id)


def names(spool: Spool, state: str) -> set[str]:
    return {i.bundle_id for i in spool.items(state)}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A plain-HTTP fault server on loopback."""
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def env(tmp_path: Path, server: FaultServer) -> tuple[Config, Spool, Uploader]:
    """A config, spool and uploader pointed at the fault server."""
    cfg = make_cfg(tmp_path, server.url)
    spool = make_spool(cfg)
    return cfg, spool, Uploader(cfg, spool)


# --------------------------------------------------------------------------- pure parts


def test_parse_retry_after_seconds_date_and_junk() -> None:
    """Retry-After is read as delta-seconds or an HTTP date, capped at one hour, junk ignored."""
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("99999999", now) == MAX_RETRY_AFTER_S
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True), now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_classify_matches_the_protocol_table() -> None:
    """Every status of the v1 table maps to its outcome; Retry-After only counts for 408/429/503."""
    assert classify(201, None) is Outcome.DONE and classify(200, None) is Outcome.DONE
    for s in (400, 409, 413, 422):
        assert classify(s, None) is Outcome.REJECTED
    assert classify(401, None) is Outcome.AUTH and classify(403, None) is Outcome.AUTH
    for s in (408, 429, 503):
        assert classify(s, 5.0) is Outcome.WAIT
        assert classify(s, None) is Outcome.RETRY
    for s in (500, 502, 504, 404, 302):
        assert classify(s, 5.0) is Outcome.RETRY


def test_classify_tells_a_refused_bundle_from_refused_credentials() -> None:
    """A 403 whose JSON body refuses the bundle itself (device_mismatch, or the text older
    collectors sent) is permanent for that bundle; any other 401/403 is about the credentials."""
    mismatch = '{"status": "device_mismatch", "bundle_id": "x", "error": "manifest device"}'
    legacy = (
        '{"status": "forbidden", "bundle_id": "x", '
        '"error": "manifest device differs from the token\'s device"}'
    )
    header = (
        '{"status": "forbidden", "error": "X-Posagent-Device does not match the token\'s device"}'
    )
    assert classify(403, None, mismatch) is Outcome.REJECTED
    assert classify(403, None, legacy) is Outcome.REJECTED
    assert classify(403, None, header) is Outcome.AUTH
    assert classify(403, None, "<html>forbidden</html>") is Outcome.AUTH
    assert classify(403, None, "[1]") is Outcome.AUTH
    assert classify(401, None, mismatch) is Outcome.AUTH  # never a reason to skip auth on 401
    assert classify(422, None, mismatch) is Outcome.REJECTED


def test_a_403_refusing_one_bundle_fails_it_and_the_queue_goes_on(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """An older collector's 403 for a manifest of another device: that bundle goes to failed/
    with the reason, the others upload, no auth pause and no auth condition."""
    cfg, spool, _ = env
    conds: list[tuple[str, bool]] = []
    up = Uploader(cfg, spool, on_condition=lambda k, bad, s: conds.append((k, bad)))
    bad = enqueue(spool, rank=2)
    good = {enqueue(spool, rank=1) for _ in range(2)}
    body = b'{"status": "forbidden", "error": "manifest device differs from the token\'s device"}'
    server.script(Reply(403, body=body))
    s = up.drain_once()
    assert (s.uploaded, s.failed, s.remaining) == (2, 1, 0), s
    assert names(spool, "failed") == {bad} and names(spool, "sent") == good
    assert "manifest device differs" in spool.failure_reason(next(spool.items("failed")))
    assert not up.status()["paused_for_auth"] and conds == []


def test_backoff_is_full_jitter_under_the_cap() -> None:
    """The delay is uniform in [0, min(cap, base*2**attempt)]."""
    rng = random.Random(7)
    samples = [backoff_delay(3, 5.0, 900.0, rng) for _ in range(2000)]
    assert 0 <= min(samples) < 2 and 38 < max(samples) <= 40
    capped = [backoff_delay(40, 5.0, 900.0, rng) for _ in range(2000)]
    assert max(capped) <= 900.0 and max(capped) > 850


# --------------------------------------------------------------------------- success


def test_put_sends_exact_protocol_headers_and_acks(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """A 201 acks the bundle to sent/, and the PUT carries exactly the v1 headers and body."""
    _, spool, up = env
    bid = enqueue(spool, 30_000)
    data = (spool.root / "new").joinpath(next(spool.items("new")).path.name).read_bytes()
    s = up.drain_once()
    assert (s.uploaded, s.failed, s.deferred, s.remaining) == (1, 0, 0, 0)
    assert s.bytes_sent == len(data) and s.stopped == "empty"
    assert names(spool, "sent") == {bid}
    req = server.requests[0]
    assert req.method == "PUT" and req.path == f"/v1/bundles/{bid}"
    h = req.headers
    assert h["content-type"] == "application/zip"
    assert h["authorization"] == f"Bearer {TOKEN}"
    assert h["idempotency-key"] == bid
    assert h["x-posagent-device"] == "T-TEST"
    assert h["content-length"] == str(len(data))
    assert "transfer-encoding" not in h
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    assert h["content-digest"] == expected == content_digest(data)
    assert req.body_sha256 == hashlib.sha256(data).hexdigest() and req.complete
    st = up.status()
    assert st["last_success_bundle"] == bid and st["queue_depth"] == 0
    assert st["uploaded_total"] == 1 and st["configured"] is True


def test_endpoint_path_prefix_is_kept(tmp_path: Path, server: FaultServer) -> None:
    """An endpoint with a path prefix puts under that prefix."""
    cfg = make_cfg(tmp_path, server.url + "/collector/")
    spool = make_spool(cfg)
    bid = enqueue(spool)
    assert Uploader(cfg, spool).drain_once().uploaded == 1
    assert server.requests[0].path == f"/collector/v1/bundles/{bid}"


def test_already_stored_200_is_done(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """A 200 "already stored" (same digest) counts as done."""
    _, spool, up = env
    bid = enqueue(spool)
    server.script(Reply(200, body=b'{"stored": "already"}'))
    assert up.drain_once().uploaded == 1
    assert names(spool, "sent") == {bid}


def test_critical_first_then_oldest(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """Critical bundles go first, then by rank, oldest first within a rank."""
    _, spool, up = env
    w1 = enqueue(spool, rank=0)
    e1 = enqueue(spool, rank=1)
    w2 = enqueue(spool, rank=0)
    c1 = enqueue(spool, rank=2)
    e2 = enqueue(spool, rank=1)
    assert up.drain_once().uploaded == 5
    assert [r.bundle_id for r in server.requests] == [c1, e1, e2, w1, w2]


def test_keep_sent_false_deletes_after_upload(tmp_path: Path, server: FaultServer) -> None:
    """With keep_sent off an uploaded bundle is deleted, not kept in sent/."""
    cfg = make_cfg(tmp_path, server.url)
    spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0, keep_sent=False)).open()
    enqueue(spool)
    assert Uploader(cfg, spool).drain_once().uploaded == 1
    assert not names(spool, "sent") and not names(spool, "new")


# --------------------------------------------------------------------------- permanent rejection


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_permanent_rejections_go_to_failed_and_are_kept(
    env: tuple[Config, Spool, Uploader], server: FaultServer, status: int
) -> None:
    """400/409/413/422 move the bundle to failed/ with the reason, logged, and the drain goes on."""
    _, spool, up = env
    bad = enqueue(spool, rank=2)
    good = enqueue(spool, rank=1)
    server.script(Reply(status, body=b'{"error": "nope"}'))
    with capture_logs() as logs:
        s = up.drain_once()
    assert (s.uploaded, s.failed, s.remaining) == (1, 1, 0)
    assert names(spool, "failed") == {bad} and names(spool, "sent") == {good}
    item = next(spool.items("failed"))
    assert item.path.exists() and f"HTTP {status}" in spool.failure_reason(item)
    ev = [e for e in logs if e["event"] == "upload_rejected"]
    assert ev and ev[0]["bundle_id"] == bad and ev[0]["status"] == status
    assert up.status()["last_failure_reason"].startswith(f"HTTP {status}")


def test_conflicting_digest_from_the_store_is_rejected(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """The store already holding the id with another digest answers 409: failed/, kept."""
    _, spool, up = env
    bid = enqueue(spool)
    server.store[bid] = Stored("0" * 64, 10)
    s = up.drain_once()
    assert s.failed == 1 and names(spool, "failed") == {bid}
    assert server.requests[0].status == 409


# --------------------------------------------------------------------------- retriable


def _assert_deferred(spool: Spool, bid: str, t0: float, max_wait_s: float) -> None:
    assert names(spool, "new") == {bid} and not names(spool, "cur")
    rs = spool.retry_state(bid)
    assert rs.attempts == 1 and rs.last_error
    assert t0 - 0.5 <= rs.next_at <= time.time() + max_wait_s


@pytest.mark.parametrize("status", [500, 502, 503, 504, 404])
def test_server_errors_back_off_and_keep_the_bundle(
    env: tuple[Config, Spool, Uploader], server: FaultServer, status: int
) -> None:
    """Other 5xx (and 503 without Retry-After, and unknown statuses) retry with backoff."""
    cfg, spool, up = env
    bid = enqueue(spool)
    server.script(Reply(status, body=b"broken"))
    t0 = time.time()
    with capture_logs() as logs:
        s = up.drain_once()
    assert (s.uploaded, s.deferred, s.stopped) == (0, 1, "retriable")
    assert s.last_error.startswith(f"HTTP {status}")
    _assert_deferred(spool, bid, t0, cfg.upload.backoff_cap_s + 0.5)
    assert any(e["event"] == "upload_retry" and e["bundle_id"] == bid for e in logs)
    up.notify_online()
    assert up.drain_once().uploaded == 1


@pytest.mark.parametrize("status", [408, 429, 503])
def test_retry_after_seconds_is_obeyed(
    env: tuple[Config, Spool, Uploader], server: FaultServer, status: int
) -> None:
    """408/429/503 with Retry-After in seconds: the bundle waits exactly as told."""
    _, spool, up = env
    bid = enqueue(spool)
    server.script(Reply(status, headers={"Retry-After": "120"}))
    t0 = time.time()
    s = up.drain_once()
    assert s.deferred == 1 and s.stopped == "retriable"
    rs = spool.retry_state(bid)
    assert t0 + 119 <= rs.next_at <= time.time() + 121
    st = up.status()
    assert st["next_attempt_at"] == pytest.approx(rs.next_at, abs=0.01)
    assert up.drain_once().stopped == "not_due" and len(server.requests) == 1


def test_retry_after_http_date_and_absurd_values(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """Retry-After as an HTTP date is honoured; a year-long value is capped at one hour."""
    _, spool, up = env
    a = enqueue(spool, rank=2)
    b = enqueue(spool, rank=1)
    when = time.time() + 300
    server.script(Reply(429, headers={"Retry-After": email.utils.formatdate(when, usegmt=True)}))
    up.drain_once()
    assert spool.retry_state(a).next_at == pytest.approx(when, abs=2)
    server.script(Reply(503, headers={"Retry-After": str(365 * 86400)}))
    t0 = time.time()
    up.drain_once()
    assert t0 + MAX_RETRY_AFTER_S - 1 <= spool.retry_state(b).next_at <= time.time() + 3601


def test_reset_in_the_middle_of_the_body_is_retried(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """The server resetting the connection mid-body leaves the bundle queued; the retry stores it once."""
    cfg, spool, up = env
    bid = enqueue(spool, 400_000)
    server.script(ResetMidBody(0.3))
    t0 = time.time()
    s = up.drain_once()
    assert s.deferred == 1 and "connection" in s.last_error.lower()
    _assert_deferred(spool, bid, t0, cfg.upload.backoff_cap_s + 0.5)
    assert not server.requests[0].complete and bid not in server.store
    up.notify_online()
    assert up.drain_once().uploaded == 1
    assert server.store[bid].creations == 1


def test_hang_hits_the_read_timeout(tmp_path: Path, server: FaultServer) -> None:
    """A server that never answers is a read timeout: retried, bounded by read_timeout_s."""
    cfg = make_cfg(tmp_path, server.url, read_timeout_s=0.5)
    spool = make_spool(cfg)
    bid = enqueue(spool)
    server.script(Hang())
    t = time.monotonic()
    s = Uploader(cfg, spool).drain_once()
    assert time.monotonic() - t < 5
    assert s.deferred == 1 and "read timeout" in s.last_error
    assert spool.retry_state(bid).attempts == 1


def test_waiting_for_a_reply_counts_as_progress_for_the_watchdog(
    tmp_path: Path, server: FaultServer
) -> None:
    """While a reply is awaited within its timeouts, last_progress stays fresh."""
    cfg = make_cfg(tmp_path, server.url, read_timeout_s=4.0)
    spool = make_spool(cfg)
    bid = enqueue(spool)
    server.script(Hang())
    up = Uploader(cfg, spool)
    up.start()
    try:
        assert server.wait_requests(1, 5)
        time.sleep(1.0)
        assert up.status()["current_bundle"] == bid
        assert time.monotonic() - up.last_progress() < 0.5
        # the read timeout is recorded (the retry may already have succeeded since)
        assert wait_for(lambda: up.status()["last_failure_at"] is not None, 10)
        assert "read timeout" in (up.status()["last_failure_reason"] or "")
    finally:
        assert up.stop(5)


def test_trickled_success_is_done_without_waiting_for_the_body(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """A 201 whose head trickles in and whose body never ends is done, in bounded time."""
    _, spool, up = env
    bid = enqueue(spool)
    server.script(Trickle(201, delay_s=0.005, endless_body=True))
    t = time.monotonic()
    s = up.drain_once()
    assert time.monotonic() - t < 10
    assert s.uploaded == 1 and names(spool, "sent") == {bid}


def test_trickled_error_is_retried(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """A trickled 502 with an endless body is a retriable error, read only briefly."""
    _, spool, up = env
    enqueue(spool)
    server.script(Trickle(502, delay_s=0.005, endless_body=True))
    t = time.monotonic()
    s = up.drain_once()
    assert time.monotonic() - t < 10
    assert s.deferred == 1 and s.last_error.startswith("HTTP 502")


def test_non_http_reply_is_retried(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """Garbage instead of an HTTP status line is a retriable connection error."""
    _, spool, up = env
    bid = enqueue(spool)
    server.script(Garbage())
    s = up.drain_once()
    assert s.deferred == 1 and s.last_error.startswith("connection")
    assert names(spool, "new") == {bid}


def test_garbage_body_after_201_is_done(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """The status decides: a 201 with a binary garbage body is done."""
    _, spool, up = env
    enqueue(spool)
    server.script(Reply(201, body=os.urandom(3000)))
    assert up.drain_once().uploaded == 1


def test_response_lost_after_commit_is_stored_once(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """The store commits then drops the reply; the retry gets 200 and the bundle is stored once."""
    _, spool, up = env
    bid = enqueue(spool, 50_000)
    server.script(CommitThenDrop())
    s1 = up.drain_once()
    assert s1.deferred == 1 and bid in server.store
    up.notify_online()
    s2 = up.drain_once()
    assert s2.uploaded == 1 and names(spool, "sent") == {bid}
    assert [r.bundle_id for r in server.requests] == [bid, bid]
    assert server.requests[1].status == 200 and server.store[bid].creations == 1


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    """Nobody listening: a retriable connection error, status shows the failure."""
    port = _free_port()
    cfg = make_cfg(tmp_path, f"http://127.0.0.1:{port}")
    spool = make_spool(cfg)
    bid = enqueue(spool)
    up = Uploader(cfg, spool)
    s = up.drain_once()
    assert s.deferred == 1 and s.last_error.startswith("connection")
    st = up.status()
    assert st["last_failure_bundle"] == bid and st["queue_depth"] == 1
    assert st["consecutive_failures"] == 1


# --------------------------------------------------------------------------- the thread


def test_auth_failure_pauses_raises_condition_and_clears(
    tmp_path: Path, server: FaultServer
) -> None:
    """401 then 403 pause the queue and raise upload.auth_failed once; success clears it."""
    cfg = make_cfg(tmp_path, server.url, backoff_cap_s=0.3)
    spool = make_spool(cfg)
    conds: list[tuple[str, bool, str]] = []
    up = Uploader(cfg, spool, on_condition=lambda k, bad, s: conds.append((k, bad, s)))
    a = enqueue(spool, rank=2)
    b = enqueue(spool, rank=1)
    server.script(Reply(401), Reply(403))
    with capture_logs() as logs:
        up.start()
        try:
            assert wait_for(lambda: up.status()["paused_for_auth"], 5)
            assert conds and conds[0][:2] == (AUTH_CONDITION, True)
            assert names(spool, "new") == {a, b}
            assert wait_for(lambda: names(spool, "sent") == {a, b}, 10)
        finally:
            assert up.stop(5)
    assert [c[:2] for c in conds] == [(AUTH_CONDITION, True), (AUTH_CONDITION, False)]
    assert [r.headers.get("authorization") for r in server.requests] == [f"Bearer {TOKEN}"] * 4
    arrivals = [r.arrived_mono for r in server.requests]
    assert arrivals[1] - arrivals[0] >= 0.25 and arrivals[2] - arrivals[1] >= 0.25  # slowly
    assert sum(e["event"] == "upload_auth_failed" for e in logs) == 2
    assert not up.status()["paused_for_auth"]


def test_notify_online_starts_upload_promptly_after_long_backoff(tmp_path: Path) -> None:
    """After a 10-minute backoff, notify_online makes the upload start within a few seconds."""

    class MaxRandom(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    port = _free_port()
    cfg = make_cfg(tmp_path, f"http://127.0.0.1:{port}", backoff_base_s=600.0, backoff_cap_s=900.0)
    spool = make_spool(cfg)
    bid = enqueue(spool, rank=2)
    up = Uploader(cfg, spool, rng=MaxRandom())
    up.start()
    try:
        assert wait_for(lambda: up.status()["last_failure_at"] is not None, 5)
        st = up.status()
        assert st["next_attempt_at"] - time.time() > 500
        with FaultServer(port=port) as srv:
            t0 = time.monotonic()
            up.notify_online()
            assert srv.wait_requests(1, 5)
            assert srv.requests[0].arrived_mono - t0 < 5
            assert wait_for(lambda: names(spool, "sent") == {bid}, 5)
    finally:
        assert up.stop(5)


def test_wake_picks_up_a_new_bundle_and_idle_thread_uses_no_cpu(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """An idle uploader sleeps (no busy loop); wake() after an enqueue uploads it at once."""
    import psutil

    _, spool, up = env
    up.start()
    try:
        assert wait_for(lambda: up.status()["state"] == "idle", 5)
        tid = up._thread.native_id if up._thread else None
        proc = psutil.Process()

        def cpu() -> float:
            return sum(t.user_time + t.system_time for t in proc.threads() if t.id == tid)

        before_progress = up.last_progress()
        c0 = cpu()
        time.sleep(1.0)
        assert cpu() - c0 < 0.05
        bid = enqueue(spool)
        up.wake()
        assert wait_for(lambda: names(spool, "sent") == {bid}, 5)
        assert up.last_progress() > before_progress
    finally:
        assert up.stop(5)
    assert up.status()["state"] == "stopped"


def test_bandwidth_cap_paces_the_body(tmp_path: Path, server: FaultServer) -> None:
    """A 200 KB bundle at 100 KB/s takes about two seconds, with Content-Length set."""
    cfg = make_cfg(tmp_path, server.url, bandwidth_bytes_per_s=100_000)
    spool = make_spool(cfg)
    enqueue(spool, 200_000)
    size = next(spool.items("new")).size
    t = time.monotonic()
    s = Uploader(cfg, spool).drain_once()
    elapsed = time.monotonic() - t
    assert s.uploaded == 1 and s.bytes_sent == size
    assert 1.5 <= elapsed < 10
    assert server.requests[0].headers["content-length"] == str(size)


def test_stop_abandons_a_slow_upload_and_requeues_it(tmp_path: Path, server: FaultServer) -> None:
    """stop() during a paced upload ends the thread promptly and the bundle is back in new/."""
    cfg = make_cfg(tmp_path, server.url, bandwidth_bytes_per_s=20_000)
    spool = make_spool(cfg)
    bid = enqueue(spool, 200_000)
    up = Uploader(cfg, spool)
    up.start()
    assert wait_for(lambda: up.status()["current_bundle"] == bid, 5)
    time.sleep(0.2)
    t = time.monotonic()
    assert up.stop(5)
    assert time.monotonic() - t < 3
    assert names(spool, "new") == {bid} and not names(spool, "cur")
    assert bid not in server.store


def test_missing_endpoint_or_token_is_a_clear_state(tmp_path: Path, server: FaultServer) -> None:
    """No endpoint, or no token, leaves a clear error in status and the thread alive."""
    cfg = make_cfg(tmp_path, "")
    spool = make_spool(cfg)
    enqueue(spool)
    up = Uploader(cfg, spool)
    up.start()
    try:
        assert wait_for(lambda: up.status()["state"] == "not_configured", 5)
        st = up.status()
        assert not st["configured"] and "endpoint" in st["error"] and st["queue_depth"] == 1
    finally:
        assert up.stop(5)
    cfg2 = make_cfg(tmp_path, server.url)
    (tmp_path / "token").unlink()
    up2 = Uploader(cfg2, spool)
    s = up2.drain_once()
    assert s.stopped == "not_configured" and "token" in s.last_error
    assert up2.status()["error"].startswith("no device token") and not server.requests
    (tmp_path / "token").write_text(TOKEN)
    assert up2.drain_once().uploaded == 1 and up2.status()["configured"]


def test_proxy_setting_routes_requests_through_the_proxy(
    tmp_path: Path, server: FaultServer
) -> None:
    """With [upload] proxy set, the PUT goes to the proxy in absolute form."""
    cfg = make_cfg(tmp_path, "http://collector.invalid:8080", proxy=server.url)
    spool = make_spool(cfg)
    bid = enqueue(spool)
    assert Uploader(cfg, spool).drain_once().uploaded == 1
    assert server.requests[0].target == f"http://collector.invalid:8080/v1/bundles/{bid}"


def test_log_events_never_carry_the_token(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """Upload log events name the bundle and status but never the device token."""
    _, spool, up = env
    enqueue(spool)
    enqueue(spool)
    server.script(Reply(401))
    with capture_logs() as logs:
        up.drain_once()
        up.notify_online()
        up.drain_once()
    assert {"upload_auth_failed", "upload_ok"} <= {e["event"] for e in logs}
    assert TOKEN not in json.dumps(logs, default=str)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA with server and client certificates (openssl CLI)."""
    try:
        return make_pki(tmp_path_factory.mktemp("pki"))
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"openssl CLI unusable: {e}")


def test_tls_verified_with_the_configured_ca(tmp_path: Path, pki: dict[str, Path]) -> None:
    """HTTPS to a loopback server whose certificate chains to ca_file uploads."""
    with FaultServer(tls=server_tls_context(pki)) as srv:
        cfg = make_cfg(tmp_path, srv.url, ca_file=str(pki["ca"]))
        spool = make_spool(cfg)
        bid = enqueue(spool)
        assert Uploader(cfg, spool).drain_once().uploaded == 1
        assert bid in srv.store


def test_tls_unverified_certificate_fails_retriably(tmp_path: Path, pki: dict[str, Path]) -> None:
    """A certificate from an unknown CA is refused: retriable, logged, nothing sent."""
    with FaultServer(tls=server_tls_context(pki)) as srv:
        for ca in ("", str(pki["other_ca"])):
            sub = tmp_path / ("other" if ca else "system")
            cfg = make_cfg(sub, srv.url, ca_file=ca)
            spool = make_spool(cfg)
            bid = enqueue(spool)
            with capture_logs() as logs:
                s = Uploader(cfg, spool).drain_once()
            assert s.deferred == 1 and s.last_error.startswith("tls")
            assert "certificate" in s.last_error.lower()
            assert names(spool, "new") == {bid}
            assert any(e["event"] == "upload_retry" for e in logs)
        assert not srv.requests and srv.store == {}


def test_mtls_client_certificate(tmp_path: Path, pki: dict[str, Path]) -> None:
    """A server requiring a client certificate refuses without one and accepts the configured one."""
    with FaultServer(tls=server_tls_context(pki, require_client_cert=True)) as srv:
        cfg = make_cfg(tmp_path / "a", srv.url, ca_file=str(pki["ca"]))
        spool = make_spool(cfg)
        bid = enqueue(spool)
        s = Uploader(cfg, spool).drain_once()
        assert s.deferred == 1 and not srv.requests
        cfg2 = dataclasses.replace(
            cfg,
            upload=dataclasses.replace(
                cfg.upload,
                client_cert_file=str(pki["client_crt"]),
                client_key_file=str(pki["client_key"]),
            ),
        )
        up = Uploader(cfg2, spool)
        up.notify_online()
        assert up.drain_once().uploaded == 1
        cert = srv.requests[0].peer_cert
        assert cert is not None
        assert ((("commonName", "T-TEST"),)) in cert["subject"]
        assert bid in srv.store


# --------------------------------------------------------------------------- flush CLI


def _flush_config(tmp_path: Path, endpoint: str) -> Path:
    path = write_config(tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    text = path.read_text().replace(
        "[upload]\n",
        f'[upload]\nendpoint = "{endpoint}"\nbackoff_base_s = 0.01\nconnect_timeout_s = 2.0\n'
        "read_timeout_s = 2.0\n",
    )
    path.write_text(text)
    return path


def _run_flush(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(posagent_argv("flush", *args), capture_output=True, text=True, timeout=60)


def test_flush_cli_uploads_and_exits_zero(tmp_path: Path, server: FaultServer) -> None:
    """`posagent flush` uploads every queued bundle, prints plain lines and a summary, exits 0."""
    path = _flush_config(tmp_path, server.url)
    spool = make_spool(load_config(path))
    ids = {enqueue(spool, 20_000) for _ in range(3)}
    r = _run_flush("--config", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert (
        sum(line.startswith("uploaded 0") or line.startswith("uploaded 1") for line in lines) >= 3
    )
    assert "uploaded 3, failed 0, still queued 0" in r.stdout
    assert set(server.store) == ids


def test_flush_cli_json_and_tempfail_when_unreachable(tmp_path: Path) -> None:
    """With the collector down, flush --json reports the queue left and exits 75."""
    path = _flush_config(tmp_path, f"http://127.0.0.1:{_free_port()}")
    spool = make_spool(load_config(path))
    enqueue(spool)
    enqueue(spool)
    r = _run_flush("--config", str(path), "--json")
    assert r.returncode == 75, r.stderr
    doc = json.loads(r.stdout)
    assert doc["uploaded"] == 0 and doc["deferred"] == 1 and doc["remaining"] == 2
    assert doc["last_error"].startswith("connection")


def test_flush_cli_rejections_and_no_endpoint(tmp_path: Path, server: FaultServer) -> None:
    """A rejected bundle still empties the queue (exit 0); no endpoint exits 69."""
    path = _flush_config(tmp_path, server.url)
    spool = make_spool(load_config(path))
    enqueue(spool)
    server.script(Reply(413))
    r = _run_flush("--config", str(path), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["failed"] == 1
    no_ep = tmp_path / "noep"
    p2 = write_config(no_ep)
    r2 = _run_flush("--config", str(p2))
    assert r2.returncode == 69 and "endpoint" in r2.stderr


def test_flush_progress_bar_on_a_tty(tmp_path: Path, server: FaultServer) -> None:
    """On a TTY flush draws a redrawn progress bar ending at n/n."""
    import pty

    path = _flush_config(tmp_path, server.url)
    spool = make_spool(load_config(path))
    for _ in range(4):
        enqueue(spool, 10_000)
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout is the pty
        os.execv(posagent_argv()[0], [*posagent_argv("flush", "--config", str(path))])
    chunks = []
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "\r[" in text and "] 4/4" in text
    assert "uploaded 4, failed 0, still queued 0" in text


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_is_thread_safe_under_load(
    env: tuple[Config, Spool, Uploader], server: FaultServer
) -> None:
    """status() can be called from another thread while the uploader drains."""
    _, spool, up = env
    for _ in range(20):
        enqueue(spool, 5000)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append(up.status())

    t = threading.Thread(target=poll)
    t.start()
    try:
        assert up.drain_once().uploaded == 20
    finally:
        stop.set()
        t.join(5)
    assert seen and all(s["state"] in ("idle", "uploading", "waiting") for s in seen)
    totals = [s["uploaded_total"] for s in seen]
    assert totals == sorted(totals) and up.status()["uploaded_total"] == 20


def test_a_critical_bundle_queued_mid_drain_goes_next(tmp_path: Path, server: FaultServer) -> None:
    """A critical bundle queued (and woken for) during an upload overtakes older queued bundles."""
    cfg = make_cfg(tmp_path, server.url, bandwidth_bytes_per_s=200_000)
    spool = make_spool(cfg)
    a = enqueue(spool, 100_000, rank=0)
    b = enqueue(spool, 4000, rank=0)
    up = Uploader(cfg, spool)
    up.start()
    try:
        assert wait_for(lambda: up.status()["current_bundle"] == a, 5)
        c = enqueue(spool, 4000, rank=2)
        up.wake()
        assert wait_for(lambda: len(names(spool, "sent")) == 3, 10)
    finally:
        assert up.stop(5)
    assert [r.bundle_id for r in server.requests] == [a, c, b]


def test_next_bundle_is_claimed_while_one_is_sent_and_given_back_on_failure(
    tmp_path: Path, server: FaultServer
) -> None:
    """Claim-ahead: bundle 2 is checked during bundle 1's PUT; a 500 on 1 returns 2 to new/ unattempted."""
    cfg = make_cfg(tmp_path, server.url)
    spool = make_spool(cfg)
    first = enqueue(spool, 4000, rank=0)
    second = enqueue(spool, 4000, rank=0)
    seen_in_cur: list[set[str]] = []
    server.script(Reply(500))
    up = Uploader(cfg, spool)
    orig = up._claim_ahead

    def spy() -> None:
        orig()
        seen_in_cur.append(names(spool, "cur"))

    up._claim_ahead = spy  # type: ignore[method-assign]
    s = up.drain_once()
    assert s.deferred == 1 and s.stopped == "retriable"
    assert seen_in_cur == [{first, second}]  # both claimed while the first was being sent
    assert names(spool, "new") == {first, second} and not names(spool, "cur")
    assert spool.retry_state(first).attempts == 1
    assert spool.retry_state(second).attempts == 0
    s = up.drain_once()
    assert s.uploaded == 2 and [r.bundle_id for r in server.requests][-2:] == [first, second]


def test_stop_gives_back_the_bundle_claimed_ahead(tmp_path: Path, server: FaultServer) -> None:
    """Stopping during a paced upload leaves nothing in cur/: both bundles back in new/."""
    cfg = make_cfg(tmp_path, server.url, bandwidth_bytes_per_s=100_000)
    spool = make_spool(cfg)
    a = enqueue(spool, 100_000, rank=0)
    b = enqueue(spool, 4000, rank=0)
    up = Uploader(cfg, spool)
    up.start()
    try:
        assert wait_for(lambda: names(spool, "cur") == {a, b}, 10)
    finally:
        assert up.stop(5)
    assert not names(spool, "cur") and names(spool, "new") == {a, b}
    assert spool.retry_state(b).attempts == 0

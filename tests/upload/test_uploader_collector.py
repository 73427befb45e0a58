"""End to end: the agent's uploader against the real collector (uvicorn on loopback)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.core.config import Config, load_config
from agent.spool.maildir import Limits, Spool
from agent.upload.uploader import AUTH_CONDITION, Uploader
from collector.config import CollectorConfig
from tests.bundle.kit import KEY, small_bundle
from tests.collector.kit import admin_token, bearer
from tests.conftest import write_config

collector_server = pytest.importorskip("collector.server", reason="collector extra not installed")
collector_auth = pytest.importorskip("collector.auth", reason="collector extra not installed")

DEV = "T-TEST"  # the device id write_config gives the agent


class Collector:
    """A collector with the agent's device registered and its HMAC key known."""

    def __init__(self, tmp: Path, **overrides: object) -> None:
        (tmp / "keys").mkdir(parents=True, exist_ok=True)
        (tmp / "keys" / f"{DEV}.key").write_bytes(KEY)
        self.cfg = dataclasses.replace(
            CollectorConfig(
                data_dir=str(tmp / "store"),
                tokens_file=str(tmp / "etc" / "tokens"),
                device_keys_dir=str(tmp / "keys"),
                max_body_mib=2,
                rate_per_minute=10_000,
            ),
            **overrides,  # type: ignore[arg-type]
        )
        self.token = collector_auth.add_device(self.cfg.tokens_file, DEV)
        self.admin = bearer(admin_token(self.cfg))  # the read side is closed
        self.thread = collector_server.CollectorThread(self.cfg).start()
        self.url: str = self.thread.url

    def listing(self) -> dict[str, Any]:
        r = requests.get(
            f"{self.url}/v1/bundles", params={"device": DEV}, headers=self.admin, timeout=10
        )
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def download(self, bid: str) -> bytes:
        r = requests.get(f"{self.url}/v1/bundles/{bid}/download", headers=self.admin, timeout=10)
        r.raise_for_status()
        return r.content


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """A running collector under tmp_path/collector."""
    c = Collector(tmp_path / "collector")
    yield c
    c.thread.stop()


def agent_setup(tmp_path: Path, endpoint: str, token: str) -> tuple[Config, Spool]:
    agent_dir = tmp_path / "agent"
    cfg = load_config(write_config(agent_dir))
    (agent_dir / "token").write_text(token + "\n")
    up = dataclasses.replace(
        cfg.upload, endpoint=endpoint, backoff_base_s=0.01, backoff_cap_s=0.3, read_timeout_s=5.0
    )
    cfg = dataclasses.replace(cfg, upload=up)
    return cfg, Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()


def enqueue(spool: Spool, size_bytes: int = 20_000, rank: int = 1) -> str:
    b = small_bundle("upload test", size_bytes=size_bytes)
    spool.enqueue(b.bundle_id, b.data, rank)
    return str(b.bundle_id)


def test_uploads_land_in_the_collector_byte_for_byte(tmp_path: Path, collector: Collector) -> None:
    """Queued bundles are stored by the collector (HMAC checked) and read back identical."""
    cfg, spool = agent_setup(tmp_path, collector.url, collector.token)
    ids = [enqueue(spool, size, rank) for size, rank in ((5000, 0), (150_000, 2), (60_000, 1))]
    s = Uploader(cfg, spool).drain_once()
    assert (s.uploaded, s.failed, s.remaining) == (3, 0, 0), s
    listing = collector.listing()
    assert {b["bundle_id"] for b in listing["bundles"]} == set(ids)
    for item in spool.items("sent"):
        assert collector.download(item.bundle_id) == item.path.read_bytes()


def test_lost_reply_replay_is_already_stored(tmp_path: Path, collector: Collector) -> None:
    """A bundle sent again after a lost reply gets 200 from the collector and is stored once."""
    cfg, spool = agent_setup(tmp_path, collector.url, collector.token)
    bid = enqueue(spool)
    up = Uploader(cfg, spool)
    assert up.drain_once().uploaded == 1
    item = next(spool.items("sent"))
    shutil.copy(item.path, spool.root / "new" / item.path.name)  # as if the ack was lost
    assert up.drain_once().uploaded == 1
    assert collector.listing()["total"] == 1
    assert up.status()["last_success_bundle"] == bid


def test_wrong_token_pauses_then_recovers(tmp_path: Path, collector: Collector) -> None:
    """An unknown token gets 401: queue paused, auth condition raised; the right token clears it."""
    cfg, spool = agent_setup(tmp_path, collector.url, "not-the-token-123")
    bid = enqueue(spool)
    conds: list[tuple[str, bool]] = []
    up = Uploader(cfg, spool, on_condition=lambda k, bad, s: conds.append((k, bad)))
    s = up.drain_once()
    assert s.stopped == "auth" and "HTTP 401" in s.last_error
    assert up.status()["paused_for_auth"] and conds == [(AUTH_CONDITION, True)]
    (tmp_path / "agent" / "token").write_text(collector.token)
    up.notify_online()
    assert up.drain_once().uploaded == 1
    assert conds == [(AUTH_CONDITION, True), (AUTH_CONDITION, False)]
    assert {i.bundle_id for i in spool.items("sent")} == {bid}


def test_bundle_signed_with_another_key_is_rejected_and_kept(
    tmp_path: Path, collector: Collector
) -> None:
    """The collector refuses a bundle whose HMAC does not verify (422): failed/, kept."""
    (Path(collector.cfg.device_keys_dir) / f"{DEV}.key").write_bytes(b"another-key-entirely-000")
    cfg, spool = agent_setup(tmp_path, collector.url, collector.token)
    bid = enqueue(spool)
    s = Uploader(cfg, spool).drain_once()
    assert s.failed == 1 and "HTTP 422" in s.last_error
    item = next(spool.items("failed"))
    assert item.bundle_id == bid and "HTTP 422" in spool.failure_reason(item)


def test_a_bundle_of_another_device_fails_alone_and_the_queue_goes_on(
    tmp_path: Path, collector: Collector
) -> None:
    """3 good bundles and 1 whose manifest names another device (a renamed terminal's old
    bundle): the collector answers 422 device_mismatch, the 3 upload, the bad one is in
    failed/ with the reason, and no auth fault is raised."""
    cfg, spool = agent_setup(tmp_path, collector.url, collector.token)
    foreign = small_bundle("before the rename", device="T-OLD-NAME")
    spool.enqueue(foreign.bundle_id, foreign.data, 2)  # critical: sent first
    good = {enqueue(spool) for _ in range(3)}
    conds: list[tuple[str, bool]] = []
    up = Uploader(cfg, spool, on_condition=lambda k, bad, s: conds.append((k, bad)))
    s = up.drain_once()
    assert (s.uploaded, s.failed, s.remaining) == (3, 1, 0), s
    assert {b["bundle_id"] for b in collector.listing()["bundles"]} == good
    failed = list(spool.items("failed"))
    assert [i.bundle_id for i in failed] == [foreign.bundle_id]
    reason = spool.failure_reason(failed[0])
    assert "HTTP 422" in reason and "device_mismatch" in reason and "T-OLD-NAME" in reason
    assert conds == [] and not up.status()["paused_for_auth"]


def test_rate_limit_retry_after_is_obeyed(tmp_path: Path) -> None:
    """Past the collector's per-minute rate the agent waits as told by Retry-After."""
    c = Collector(tmp_path / "collector", rate_per_minute=2)
    try:
        cfg, spool = agent_setup(tmp_path, c.url, c.token)
        ids = [enqueue(spool) for _ in range(3)]
        t0 = time.time()
        s = Uploader(cfg, spool).drain_once()
        assert (s.uploaded, s.deferred, s.stopped) == (2, 1, "retriable"), s
        assert "HTTP 429" in s.last_error
        rs = spool.retry_state(ids[2])
        assert rs.next_at > t0 + 1
    finally:
        c.thread.stop()


def test_oversized_bundle_is_rejected_413(tmp_path: Path) -> None:
    """A bundle over the collector's body limit is refused (413) before upload: failed/, kept."""
    c = Collector(tmp_path / "collector", max_body_mib=1)
    try:
        cfg, spool = agent_setup(tmp_path, c.url, c.token)
        big = enqueue(spool, 1_300_000, rank=2)
        small = enqueue(spool, 5000, rank=1)
        s = Uploader(cfg, spool).drain_once()
        assert (s.uploaded, s.failed) == (1, 1), s
        assert {i.bundle_id for i in spool.items("failed")} == {big}
        assert {i.bundle_id for i in spool.items("sent")} == {small}
    finally:
        c.thread.stop()

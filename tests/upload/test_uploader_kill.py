"""Uploader durability: SIGKILL an uploading process (or its upload worker) at random points.

Every bundle ends stored exactly once with the right digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.core.config import load_config
from agent.spool.maildir import Limits, Spool
from agent.upload.uploader import Uploader
from tests.bundle.kit import small_bundle
from tests.conftest import write_config
from tests.upload.faultserver import store_process, store_state

KILLS = 60
BUNDLES = 90
PACE_BYTES_PER_S = 2_000_000  # paced bodies outlast the socket buffers, so kills cut them


def _child_upload_forever(cfg_path: Path, endpoint: str) -> None:
    """In a forked child: recover the spool like a restarted daemon and drain it forever."""
    try:
        cfg = load_config(cfg_path)
        cfg = dataclasses.replace(
            cfg,
            upload=dataclasses.replace(
                cfg.upload,
                endpoint=endpoint,
                backoff_base_s=0.01,
                backoff_cap_s=0.02,
                bandwidth_bytes_per_s=PACE_BYTES_PER_S,
            ),
        )
        spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
        up = Uploader(cfg, spool)
        while True:
            s = up.drain_once()
            if s.stopped != "empty":
                up.notify_online()
            time.sleep(0.002)
    finally:
        os._exit(0)


def _worker_connected(pid: int) -> bool:
    """The forked uploader's worker holds a TCP connection: a PUT is under way (or next)."""
    with contextlib.suppress(psutil.Error):
        for w in psutil.Process(pid).children():
            conns = (
                w.net_connections("tcp") if hasattr(w, "net_connections") else w.connections("tcp")
            )
            if any(c.status == psutil.CONN_ESTABLISHED for c in conns):
                return True
    return False


def kill_uploading_child(pid: int, rng: random.Random, spool: Spool) -> int:
    """SIGKILL a forked `_child_upload_forever` while its upload worker is sending.

    The kill waits until the worker (a grandchild, slower to start on a busy
    machine) is connected, or the spool has nothing left to send, then lands
    0-150 ms later: within a paced body or a few bundles on. Three times in
    ten the worker is killed first, mid-body, and the uploader gets a moment
    to retry with a new one. Returns how many workers were killed.
    """
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _worker_connected(pid):
        if not any(spool.items("new")) and not any(spool.items("cur")):
            break  # all uploaded: no worker will connect again
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.15))
    workers = 0
    if rng.random() < 0.3:
        with contextlib.suppress(psutil.Error):
            for w in psutil.Process(pid).children():
                w.kill()
                workers += 1
        time.sleep(rng.uniform(0.05, 0.3))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return workers


@pytest.fixture
def store_server(tmp_path: Path) -> Iterator[str]:
    """The idempotent store server in its own process (a slow reader, so kills land mid-body)."""
    with store_process(tmp_path) as url:
        yield url


@pytest.mark.slow
def test_kill9_loop_stores_every_bundle_exactly_once(tmp_path: Path, store_server: str) -> None:
    """An uploading child SIGKILLed 60 times mid-body (its worker too, at times): stored once each."""
    cfg_path = write_config(tmp_path)
    (tmp_path / "token").write_text("tok-kill-loop\n")
    cfg = load_config(cfg_path)
    spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
    rng = random.Random(4321)
    ids = set()
    for i in range(BUNDLES):
        b = small_bundle(f"kill {i}", size_bytes=rng.choice((40_000, 80_000, 120_000)))
        spool.enqueue(b.bundle_id, b.data, rng.choice((0, 1, 2)))
        ids.add(b.bundle_id)
    kills = worker_kills = 0

    def left() -> bool:
        return any(spool.items("new")) or any(spool.items("cur"))

    def truncated() -> int:
        n = store_state(store_server)["truncated_bodies"]
        assert isinstance(n, int)
        return n

    # KILLS kills, and more (up to 3 x KILLS) while fewer than 10 landed mid-body: on a
    # busy machine more of them land before a worker sends or between bundles
    while kills < KILLS or (kills < 3 * KILLS and left() and truncated() < 10):
        pid = os.fork()
        if pid == 0:
            _child_upload_forever(cfg_path, store_server)
        worker_kills += kill_uploading_child(pid, rng, spool)
        kills += 1
    mid = store_state(store_server)
    assert kills >= KILLS and worker_kills >= 5
    # a final clean drain, as the restarted daemon would do
    spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
    up_cfg = dataclasses.replace(cfg, upload=dataclasses.replace(cfg.upload, endpoint=store_server))
    s = Uploader(up_cfg, spool).drain_once(deadline_s=120)
    assert s.remaining == 0 and s.failed == 0, s
    state = store_state(store_server)
    store = state["store"]
    assert isinstance(store, dict) and set(store) == ids
    sent = {i.bundle_id: i for i in spool.items("sent")}
    assert set(sent) == ids
    for bid, rec in store.items():
        assert rec["creations"] == 1, f"{bid} stored {rec['creations']} times"
        assert rec["digest"] == hashlib.sha256(sent[bid].path.read_bytes()).hexdigest()
    for state_dir in ("cur", "new", "failed"):
        assert not list(spool.items(state_dir)), state_dir
    # the kills really interrupted bodies, and uploads progressed between kills
    assert isinstance(mid["truncated_bodies"], int) and mid["truncated_bodies"] >= 10, mid
    assert isinstance(mid["store"], dict) and len(mid["store"]) >= 10, len(mid["store"])

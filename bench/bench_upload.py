"""Uploader figures: drain rate vs a bare requests loop, and reconnect latency after notify_online.

1. 500 queued ~200 KB bundles drained over loopback by the Uploader (claim,
   check, digest, streamed PUT in the upload worker child, ack) against a
   bare `requests` loop PUTting the same files to the same fast threaded
   server (reads the body, answers 201). Target: uploader rate / bare rate
   ≥ 0.8, with the worker already running (the daemon's steady state: one
   worker serves a whole drain); the same with the worker's start-up
   (python + requests import, once per drain after an idle minute) counted
   in each round is reported as the cold ratio.
2. The server is down and the uploader has backed off for minutes; the
   server comes up and the network monitor calls notify_online: time until
   the server receives the first PUT. Target ≤ 2 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import structlog

from agent.bundle.format import DeviceInfo, Entry, seal, text_entry
from agent.core.config import Config, UploadConfig
from agent.core.redact import Redactor
from agent.spool.maildir import Limits, Spool, file_name
from agent.upload.protocol import file_digest
from agent.upload.uploader import Uploader
from agent.upload.worker import WorkerTransport
from tests.upload.faultserver import FaultServer, Reply

N_BUNDLES = 500
BUNDLE_BYTES = 200_000
RECONNECT_RUNS = 5
ROUNDS = 5
KEY = b"bench-upload-key-0123456789"
TOKEN = "bench-token-0123456789"


class _MaxRandom(random.Random):
    """Full jitter always drawing its maximum: the longest backoff."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _fill(spool: Spool, n: int, size: int) -> None:
    """n sealed bundles of about size bytes written straight into new/ (setup, not measured)."""
    redactor = Redactor()
    for i in range(n):
        b = seal(
            device=DeviceInfo(id="T-BENCH"),
            trigger={"kind": "manual", "note": f"bench {i}"},
            entries=[
                text_entry("report.txt", f"bench bundle {i}"),
                Entry("screenshot.png", os.urandom(size - 2048)),
            ],
            key=KEY,
            redactor=redactor,
            screenshot="captured",
        )
        (spool.root / "new" / file_name(b.bundle_id, i % 3)).write_bytes(b.data)


def _cfg(state: Path, endpoint: str, **upload: object) -> Config:
    base = Config()
    up = dataclasses.replace(UploadConfig(), endpoint=endpoint, token=TOKEN, **upload)  # type: ignore[arg-type]
    return dataclasses.replace(
        base, agent=dataclasses.replace(base.agent, state_dir=str(state)), upload=up
    )


def _requeue(spool: Spool) -> None:
    for item in list(spool.items("sent")):
        os.replace(item.path, spool.root / "new" / item.path.name)


def _bare_loop(url: str, paths: list[Path]) -> float:
    """PUT every file with a plain requests session; returns seconds."""
    session = requests.Session()
    t0 = time.perf_counter()
    for p in paths:
        bid = p.name[:36]
        digest, _ = file_digest(p)
        with open(p, "rb") as f:
            r = session.put(
                f"{url}/v1/bundles/{bid}",
                data=f,
                headers={
                    "Content-Type": "application/zip",
                    "Authorization": f"Bearer {TOKEN}",
                    "Idempotency-Key": bid,
                    "Content-Digest": digest,
                    "X-Posagent-Device": "T-BENCH",
                },
                timeout=(10, 60),
            )
        if r.status_code != 201:
            raise RuntimeError(f"bare loop got HTTP {r.status_code}")
    dt = time.perf_counter() - t0
    session.close()
    return dt


@contextlib.contextmanager
def _server_process(root: Path) -> Iterator[str]:
    """The fast loopback server (reads each body, answers 201) in its own process."""
    port_file = root / "server.port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.upload.faultserver",
            "--port-file",
            str(port_file),
            "--accept-all",
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        end = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("benchmark server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reconnect_once(root: Path) -> float:
    """Seconds from notify_online to the first PUT arriving, after a long backoff."""
    port = _free_port()
    state = root / f"reconnect-{port}"
    spool = Spool(state, Limits(reserve_bytes=0)).open()
    _fill(spool, 1, 20_000)
    cfg = _cfg(state, f"http://127.0.0.1:{port}", backoff_base_s=120.0, backoff_cap_s=900.0)
    up = Uploader(cfg, spool, rng=_MaxRandom())
    up.start()
    try:
        end = time.monotonic() + 10
        while up.status()["last_failure_at"] is None:
            if time.monotonic() > end:
                raise RuntimeError("uploader never tried the unreachable server")
            time.sleep(0.01)
        time.sleep(0.2)  # now asleep in its backoff (next attempt minutes away)
        with FaultServer(port=port, default=Reply(201), hash_bodies=False) as srv:
            t0 = time.monotonic()
            up.notify_online()
            if not srv.wait_requests(1, 10):
                raise RuntimeError("no upload within 10 s of notify_online")
            return srv.requests[0].arrived_mono - t0
    finally:
        up.stop(5)


def main() -> dict[str, float]:
    """Measure and print the upload figures."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        figures = _measure()
    finally:
        structlog.configure(**saved)
    for k, v in figures.items():
        sys.stdout.write(f"   {k:36} {v}\n")
    return figures


def _measure() -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-upload") as tmp:
        root = Path(tmp)
        spool = Spool(root / "drain", Limits(reserve_bytes=0, max_bytes=1 << 40)).open()
        _fill(spool, N_BUNDLES, BUNDLE_BYTES)
        paths = sorted(i.path for i in spool.items("new"))
        total_bytes = sum(p.stat().st_size for p in paths)
        with _server_process(root) as url:
            cfg = _cfg(root / "drain", url)
            bare: list[float] = []
            ours: list[float] = []
            cold: list[float] = []
            warm = WorkerTransport()
            try:
                for r in range(ROUNDS + 1):  # alternate: page cache and load hit both alike
                    b = _bare_loop(url, paths)
                    for transport, times in ((warm, ours), (None, cold)):
                        up = Uploader(cfg, spool, transport=transport)
                        t0 = time.perf_counter()
                        s = up.drain_once()
                        if r:  # round 0 warms the page cache and the shared worker
                            times.append(time.perf_counter() - t0)
                        up.stop(1)
                        if s.uploaded != N_BUNDLES or s.remaining:
                            raise RuntimeError(f"drain incomplete: {s}")
                        _requeue(spool)
                    if r:
                        bare.append(b)
            finally:
                warm.close()
        ratios = [b / o for b, o in zip(bare, ours, strict=True)]
        cold_ratios = [b / o for b, o in zip(bare, cold, strict=True)]
        bare_rate = N_BUNDLES / statistics.median(bare)
        our_rate = N_BUNDLES / statistics.median(ours)
        figures["bundles"] = N_BUNDLES
        figures["bundle_kb"] = round(total_bytes / N_BUNDLES / 1000, 1)
        figures["bare_requests_bundles_per_s"] = round(bare_rate, 1)
        figures["uploader_bundles_per_s"] = round(our_rate, 1)
        figures["uploader_mb_per_s"] = round(total_bytes / statistics.median(ours) / 1e6, 1)
        figures["uploader_vs_bare_ratio"] = round(statistics.median(ratios), 3)
        figures["uploader_vs_bare_ratio_min"] = round(min(ratios), 3)
        figures["uploader_vs_bare_ratio_cold"] = round(statistics.median(cold_ratios), 3)
        figures["worker_start_ms_per_drain"] = round(
            (statistics.median(cold) - statistics.median(ours)) * 1000, 1
        )
        # the largest per-bundle cost the bare loop does not have: the spool's
        # integrity check when a bundle is claimed (new/ → cur/, full verify)
        t0 = time.perf_counter()
        for item in spool.queued():
            spool.claim(item)
        figures["spool_claim_ms_per_bundle"] = round(
            (time.perf_counter() - t0) / N_BUNDLES * 1000, 3
        )
        lat = [_reconnect_once(root) for _ in range(RECONNECT_RUNS)]
        figures["reconnect_first_put_ms_median"] = round(statistics.median(lat) * 1000, 1)
        figures["reconnect_first_put_ms_max"] = round(max(lat) * 1000, 1)
    return figures


if __name__ == "__main__":
    main()

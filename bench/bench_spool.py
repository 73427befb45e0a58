"""Spool figures: enqueue rate with full fsync discipline, start-up and `spool list` with 10,000 queued."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from agent.bundle.format import DeviceInfo, seal, text_entry
from agent.core.redact import Redactor
from agent.spool.maildir import Limits, Spool

KEY = b"bench-key-0123456789"


def _bundle(i: int) -> tuple[str, bytes]:
    b = seal(
        device=DeviceInfo(id="T-B"),
        trigger={"kind": "manual", "note": f"bench {i}"},
        entries=[text_entry("report.txt", f"bench bundle {i}\n" + os.urandom(800).hex())],
        key=KEY,
        redactor=Redactor(),
    )
    return b.bundle_id, b.data


def fill(state: Path, n: int) -> None:
    """Put n small sealed bundles into new/ (written directly: the figure is the reading side)."""
    sp = Spool(state, Limits(max_items=10**6, max_bytes=1 << 40, reserve_bytes=0)).open()
    new = sp.root / "new"
    _, data = _bundle(0)
    from agent.bundle.format import new_bundle_id
    from agent.spool.maildir import file_name

    for i in range(n):
        bid = new_bundle_id()
        (new / file_name(bid, i % 3)).write_bytes(data)


def main() -> dict[str, float]:
    """Measure and print the spool figures."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-spool") as tmp:
        root = Path(tmp)
        sp = Spool(
            root / "rate", Limits(max_items=10**6, max_bytes=1 << 40, reserve_bytes=0)
        ).open()
        bundles = [_bundle(i) for i in range(200)]
        t0 = time.perf_counter()
        for bid, data in bundles:
            sp.enqueue(bid, data, 1)
        dt = time.perf_counter() - t0
        figures["enqueue_per_s_fsync"] = round(len(bundles) / dt, 1)

        fill(root / "big", 10_000)
        opens = []
        for _ in range(5):
            t0 = time.perf_counter()
            Spool(root / "big").open()
            opens.append(time.perf_counter() - t0)
        figures["startup_open_ms_10k"] = round(statistics.median(opens) * 1000, 2)
        t0 = time.perf_counter()
        q = Spool(root / "big").open().queued()
        figures["queued_order_ms_10k"] = round((time.perf_counter() - t0) * 1000, 1)
        assert len(q) == 10_000
        rss0 = psutil.Process().memory_info().rss
        figures["queue_scan_rss_delta_mib"] = round(
            (psutil.Process().memory_info().rss - rss0) / 2**20, 2
        )

        cfg = root / "agent.toml"
        cfg.write_text(f'[agent]\nstate_dir = "{root / "big"}"\n[spool]\nreserve_mib = 0\n')
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agent.commands.main",
                    "spool",
                    "list",
                    "--json",
                    "--config",
                    str(cfg),
                ],
                capture_output=True,
            )
            runs.append(time.perf_counter() - t0)
            assert r.returncode == 0, r.stderr
        figures["spool_list_cli_s_10k"] = round(statistics.median(runs), 3)
    for k, v in figures.items():
        sys.stdout.write(f"   {k:32} {v}\n")
    return figures


if __name__ == "__main__":
    main()

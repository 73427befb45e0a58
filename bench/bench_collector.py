"""Benchmark: collector ingest rate over loopback (target >= 100 bundles/s).

Starts `posagent collector serve` (uvicorn, its own process) on 127.0.0.1 with
the embedded storage (files + SQLite, fsync on every bundle), registers one
device, and PUTs realistic bundles of ~50-200 KB (screenshot with noisy
pixels, timeline, diagnostics with an incompressible log tail): 300 in
sequence from one requests.Session, then 300 more from 4 concurrent clients.
Also measures a repeat upload (200, already stored), the list query, and the
server's CPU time per stored bundle (less sensitive to a busy machine than
the wall-clock rate; the load average is printed beside the figures).
Run: python -m bench.bench_collector
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from collector.auth import add_device
from collector.config import CollectorConfig
from tests.bundle.kit import make_bundle
from tests.collector.kit import admin_token, bearer, upload_headers

DEVICE = "T-BENCH"
N_SEQ = 300
N_CONC = 300
CLIENTS = 4
TARGET_PER_S = 100.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bundles(n: int, seed0: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        b = make_bundle(
            device=DEVICE,
            fault=("printer.paper_end", "network.link_down", "power.ac_lost")[i % 3],
            severity=("critical", "error", "warning")[i % 3],
            noise_px=12_000 + (i % 7) * 4_000,
            diag_pad_bytes=40_000 + (i % 5) * 20_000,
            seed=seed0 + i,
        )
        out.append((b.bundle_id, b.data))
    return out


def _put(session: requests.Session, url: str, token: str, bid: str, data: bytes) -> int:
    r = session.put(
        f"{url}/v1/bundles/{bid}", data=data, headers=upload_headers(bid, data, token, DEVICE)
    )
    return r.status_code


def main() -> dict[str, float]:
    """Measure and print the collector figures."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-collector") as tmp:
        root = Path(tmp)
        port = _free_port()
        tokens = root / "tokens"
        cfg = root / "agent.toml"
        cfg.write_text(
            '[agent]\nlog_format = "json"\n'
            f'[collector]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{root / "data"}"\n'
            f'tokens_file = "{tokens}"\nrate_per_minute = 1000000\n'
        )
        token = add_device(tokens, DEVICE)
        admin = bearer(admin_token(CollectorConfig(data_dir=str(root / "data"))))
        seq = _bundles(N_SEQ, 0)
        conc = _bundles(N_CONC, 10_000)
        sizes = [len(d) for _, d in seq + conc]
        figures["bundle_kb_median"] = round(statistics.median(sizes) / 1024, 1)
        figures["bundle_kb_min"] = round(min(sizes) / 1024, 1)
        figures["bundle_kb_max"] = round(max(sizes) / 1024, 1)
        log = (root / "serve.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.commands.main",
                "collector",
                "serve",
                "--config",
                str(cfg),
            ],
            stdout=log,
            stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("collector did not start")
                time.sleep(0.05)

            server = psutil.Process(proc.pid)
            with requests.Session() as s:
                lat = []
                cpu0 = server.cpu_times()
                t0 = time.perf_counter()
                for bid, data in seq:
                    t1 = time.perf_counter()
                    code = _put(s, url, token, bid, data)
                    lat.append(time.perf_counter() - t1)
                    if code != 201:
                        raise RuntimeError(f"upload answered {code}")
                dt = time.perf_counter() - t0
                cpu1 = server.cpu_times()
                figures["ingest_per_s_1_client"] = round(N_SEQ / dt, 1)
                figures["server_cpu_ms_per_bundle"] = round(
                    ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / N_SEQ * 1000, 2
                )
                figures["ingest_mib_per_s_1_client"] = round(
                    sum(len(d) for _, d in seq) / dt / 2**20, 1
                )
                figures["put_p50_ms"] = round(statistics.median(lat) * 1000, 2)
                figures["put_p95_ms"] = round(statistics.quantiles(lat, n=20)[18] * 1000, 2)

                t0 = time.perf_counter()
                for bid, data in seq[:100]:
                    if _put(s, url, token, bid, data) != 200:
                        raise RuntimeError("repeat upload not 200")
                figures["repeat_200_per_s"] = round(100 / (time.perf_counter() - t0), 1)

            errors: list[str] = []

            def client(part: list[tuple[str, bytes]]) -> None:
                with requests.Session() as cs:
                    for bid, data in part:
                        code = _put(cs, url, token, bid, data)
                        if code != 201:
                            errors.append(f"{bid}: {code}")

            parts = [conc[i::CLIENTS] for i in range(CLIENTS)]
            threads = [threading.Thread(target=client, args=(p,)) for p in parts]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"concurrent uploads failed: {errors[:3]}")
            figures[f"ingest_per_s_{CLIENTS}_clients"] = round(N_CONC / dt, 1)

            with requests.Session() as s:
                s.headers.update(admin)  # the read side is closed
                q = []
                for _ in range(20):
                    t1 = time.perf_counter()
                    body = s.get(f"{url}/v1/bundles", params={"limit": 50}).json()
                    q.append(time.perf_counter() - t1)
                if body["total"] != N_SEQ + N_CONC:
                    raise RuntimeError(f"index holds {body['total']} bundles")
                figures["list_50_of_600_ms"] = round(statistics.median(q) * 1000, 2)
                t1 = time.perf_counter()
                s.get(url + "/", params={"fault": "printer.paper_end"}).raise_for_status()
                figures["page_list_ms"] = round((time.perf_counter() - t1) * 1000, 2)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    figures["cpus"] = float(os.cpu_count() or 0)
    ok = figures["ingest_per_s_1_client"] >= TARGET_PER_S
    for k, v in figures.items():
        sys.stdout.write(f"   {k:28} {v}\n")
    sys.stdout.write(
        f"   target >= {TARGET_PER_S:.0f} bundles/s (1 client): {'met' if ok else 'MISSED'}\n"
    )
    return figures


if __name__ == "__main__":
    main()

"""Sealing figures (issue 17): age encryption throughput on one core, and the cost per
bundle of the sealed path (Ed25519 + age + envelope) beside the plain path (HMAC only),
on a realistic bundle (a 480 KB incompressible screenshot and text entries); the RSS
that `cryptography` and `pyrage` add to a process holding the daemon's other imports; the
daemon's path: the sealing worker (agent.bundle.finish.SealWorker) cold (started for the
bundle, what every bundle cost when a child was started per bundle) and warm (started as
the capture began), and its RSS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyrage
from pyrage import x25519

from agent.bundle.finish import finisher
from agent.bundle.format import DeviceInfo, Entry, json_entry, seal, text_entry
from agent.bundle.sealed import generate_signing_key, seal_envelope
from agent.core.config import load_config
from agent.core.redact import Redactor

KEY = b"bench-key-0123456789"
DAEMON_PROBE = """
import sys, psutil
import agent.daemon.runner, agent.commands.run
crypto = any(m.startswith(("cryptography", "pyrage")) for m in sys.modules)
print(psutil.Process().memory_info().rss, int(crypto))
"""
RSS_PROBE = """
import psutil, structlog, requests, watchdog.observers  # the daemon's own imports
import agent.bundle.format, agent.core.config, agent.spool.maildir, agent.upload.uploader
{extra}
print(psutil.Process().memory_info().rss)
"""


def _entries() -> list[Entry]:
    return [
        Entry("screenshot.png", os.urandom(480 * 1024), "image/png"),
        text_entry("report.txt", "printer paper end at till 3\n" * 200),
        json_entry("diagnostics/system.json", {"k": ["v" * 60] * 400}),
        text_entry("diagnostics/logs.txt", os.urandom(60 * 1024).hex()),
    ]


def _median_ms(fn: object, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def _rss_mb(extra: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE.format(extra=extra)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return round(int(out) / 1e6, 1)


def main() -> dict[str, float]:
    """Measure and print the sealing figures."""
    figures: dict[str, float] = {}
    recipients = [str(x25519.Identity.generate().to_public()) for _ in range(2)]
    parsed = [x25519.Recipient.from_str(r) for r in recipients]
    blob = os.urandom(16 * 1024 * 1024)
    t0 = time.process_time()
    for _ in range(4):
        pyrage.encrypt(blob, parsed)
    figures["age_encrypt_mb_per_s_one_core"] = round(4 * 16 / (time.process_time() - t0), 1)
    entries = _entries()
    redactor = Redactor()
    with tempfile.TemporaryDirectory(prefix="bench-seal") as tmp:
        sk = generate_signing_key(Path(tmp) / "k")

        def plain() -> object:
            return seal(
                device=DeviceInfo(id="T-B"),
                trigger={"kind": "manual"},
                entries=entries,
                key=KEY,
                redactor=redactor,
            )

        def sealed() -> bytes:
            b = seal(
                device=DeviceInfo(id="T-B"),
                trigger={"kind": "manual"},
                entries=entries,
                key=KEY,
                redactor=redactor,
                signing_key=sk,
            )
            return seal_envelope(b.data, b.manifest, recipients=recipients, signing_key=sk, rank=2)

        size = len(plain().data)  # type: ignore[attr-defined]
        figures["bundle_kb"] = round(size / 1024, 1)
        figures["plain_ms_per_bundle"] = _median_ms(plain, 15)
        figures["sealed_ms_per_bundle"] = _median_ms(sealed, 15)
        figures["sealed_extra_ms_per_bundle"] = round(
            figures["sealed_ms_per_bundle"] - figures["plain_ms_per_bundle"], 2
        )
        figures["sealed_size_overhead_bytes"] = len(sealed()) - size
        # the daemon's path: each bundle finished in a child (agent.bundle.finish)
        cfg_path = Path(tmp) / "agent.toml"
        cfg_path.write_text(
            f'[bundle]\nhmac_key_file = "{tmp}/device.key"\n'
            f'signing_key_file = "{tmp}/k"\nencrypt_to = {json.dumps(recipients)}\n'
        )
        cfg = load_config(str(cfg_path))
        b = seal(
            device=DeviceInfo(id="T-B"),
            trigger={"kind": "manual"},
            entries=entries,
            key=KEY,
            redactor=redactor,
        )

        def cold() -> None:  # what each bundle cost when a child was started per bundle
            w = finisher(cfg)
            try:
                w(b.data, b.manifest, 2)
            finally:
                w.close()

        figures["sealed_worker_cold_ms_per_bundle"] = _median_ms(cold, 5)
        worker = finisher(cfg)
        try:
            worker.prewarm()  # as a capture does when it begins
            worker(b.data, b.manifest, 2)
            figures["sealed_worker_warm_ms_per_bundle"] = _median_ms(
                lambda: worker(b.data, b.manifest, 2), 7
            )
            proc = getattr(worker, "_proc", None)
            if proc is not None:
                figures["sealed_worker_rss_mb"] = round(
                    psutil.Process(proc.pid).memory_info().rss / 1e6, 1
                )
        finally:
            worker.close()
    daemon = subprocess.run(
        [sys.executable, "-c", DAEMON_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    figures["rss_mb_daemon_modules"] = round(int(daemon[0]) / 1e6, 1)
    figures["daemon_imports_crypto"] = int(daemon[1])
    base = _rss_mb("")
    figures["rss_mb_daemon_imports"] = base
    figures["rss_mb_plus_cryptography_pyrage"] = _rss_mb("import agent.bundle.sealed")
    figures["rss_mb_cost_of_sealing_imports"] = round(
        figures["rss_mb_plus_cryptography_pyrage"] - base, 1
    )
    for k, v in figures.items():
        sys.stdout.write(f"   {k:40} {v}\n")
    return figures


if __name__ == "__main__":
    main()

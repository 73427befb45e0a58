"""Benchmark: redaction throughput on realistic POS terminal log text (target >= 10 MB/s).

Builds a deterministic corpus of log lines of the kinds a bundle carries (POS app log,
structlog console and JSON events, journald JSON, dmesg, logcat, HTTP traces) with a
few card numbers, track data and secrets mixed in, then measures Redactor.text() on
whole 64 KiB entries (the bundle writer's case) and line by line (the log processor's
case), on one core. The MB/s figures are per CPU-second of this process (best of 5, so
a busy shared machine does not hide the engine's own speed); *_wall_* are wall-clock.
Run: python -m bench.bench_redact
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

from agent.core.redact import Redactor

_PANS = ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117")


def _line(rng: random.Random, i: int) -> str:
    ts = f"2026-11-23T22:{i // 3600 % 60:02d}:{i // 60 % 60:02d}.{i % 1000:03d}Z"
    k = rng.randrange(100)
    if k < 22:
        return (
            f"{ts} INFO  [TxnManager] txn_done amount={rng.randrange(100, 99999) / 100:.2f} "
            f"currency=EUR stan={rng.randrange(10**6):06d} rrn={rng.randrange(10**11, 10**12)} "
            f"tid=T{rng.randrange(10**7):07d} mid=0000000{rng.randrange(10**8):08d} "
            f"result=APPROVED elapsed_ms={rng.randrange(200, 4000)}"
        )
    if k < 40:
        return (
            f"{ts} [info     ] printer_poll_ok          port=/dev/ttyS0 status=0x12 "
            f"latency_ms={rng.random() * 40:.1f} paper=ok drawer_pin=2"
        )
    if k < 52:
        return (
            f'{{"ts": "{ts}", "level": "info", "event": "net_probe", "host": "pay.example.com", '
            f'"ip": "203.0.113.{rng.randrange(255)}", "connect_ms": {rng.random() * 90:.2f}, '
            f'"ok": true, "uptime_s": {rng.randrange(10**6)}}}'
        )
    if k < 62:
        return (
            f'{{"__REALTIME_TIMESTAMP":"{1700000000000000 + i * 1234}","_PID":"{rng.randrange(99999)}",'
            f'"_BOOT_ID":"9f1c{rng.randrange(16**28):028x}","MESSAGE":"Started Session {i} of user pos."}}'
        )
    if k < 72:
        return (
            f"[{i * 0.37:12.6f}] usb 1-1.{rng.randrange(4)}: new full-speed USB device number "
            f"{rng.randrange(2, 60)} using xhci_hcd; idVendor=0403, idProduct=6001, SerialNumber=A50285BI"
        )
    if k < 82:
        return (
            f"11-23 22:21:57.{i % 1000:03d}  {rng.randrange(900, 9999)}  {rng.randrange(900, 9999)} "
            f"I PaymentService: state=IDLE->CARD_WAIT ui=com.example.pos/.MainActivity "
            f"mac=3c:22:fb:{rng.randrange(256):02x}:10:7e fe80::3e22:fbff:fe1a:107e"
        )
    if k < 90:
        return (
            f"{ts} DEBUG http PUT https://collector.example.com/v1/bundles/"
            f"0190f6c2-7b1e-7c3a-9d2e-{rng.randrange(16**12):012x} status=201 "
            f"sha256=3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"
        )
    if k < 97:
        return (
            f"{ts} WARN  [Emv] kernel=VISA aid=A0000000031010 tvr=0000008000 tsi=E800 "
            f"atc={rng.randrange(65536):04X} order={rng.randrange(10**9)} phone=+4915123456789"
        )
    # the rare sensitive lines; injected() tells main() what each one holds
    pan = rng.choice(_PANS)
    pick = rng.randrange(5)
    return (
        f"{ts} ERROR [Host] declined pan={pan} exp=2512 cvv=123",
        f"{ts} DEBUG [Emv] tlv=9F02060000000010005A08{pan[:16].ljust(16, 'F')}5F2403251231",
        f"{ts} DEBUG [Reader] track2=;{pan}=25121010000000000000? len=37",
        f"{ts} DEBUG [Http] Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc{i}",
        f"{ts} INFO  [Ui] card {pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]} entered",
    )[pick]


_INJECTED = {
    "declined pan=": ("pan", "cvv"),
    "tlv=9F02": ("emv_tlv",),
    "track2=;": ("track2",),
    "Authorization: Bearer": ("authorization",),
    "[Ui] card ": ("pan",),
}


def injected(text: str) -> Counter[str]:
    """What the corpus holds by kind: the finds a perfect redactor makes."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        for marker, kinds in _INJECTED.items():
            if marker in line:
                out.update(kinds)
    return out


def corpus(size_bytes: int = 4 * 1024 * 1024, seed: int = 7) -> str:
    """Deterministic realistic log text of about size_bytes."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    i = 0
    while total < size_bytes:
        line = _line(rng, i)
        lines.append(line)
        total += len(line) + 1
        i += 1
    return "\n".join(lines) + "\n"


def _best_of(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Best CPU seconds and best wall seconds of runs calls of fn."""
    best_cpu = best_wall = float("inf")
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall


def main() -> dict[str, float]:
    """Measure and print redaction throughput; return the figures."""
    text = corpus()
    size_mb = len(text.encode()) / 1e6
    redactor = Redactor(secrets=["tok_live_8f3b2c1d9e"], allow=["356938035643809"])
    chunk = 64 * 1024
    chunks = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    lines = text.splitlines()

    counts: Counter[str] = Counter()
    for c in chunks:
        redactor.text(c, counts)
    expected = injected(text)

    cpu_chunks, wall_chunks = _best_of(5, lambda: [redactor.text(c) for c in chunks])
    cpu_lines, wall_lines = _best_of(5, lambda: [redactor.text(ln) for ln in lines])
    figures: dict[str, float] = {
        "corpus_mb": round(size_mb, 2),
        "entries_mb_per_s": round(size_mb / cpu_chunks, 1),
        "entries_wall_mb_per_s": round(size_mb / wall_chunks, 1),
        "lines_mb_per_s": round(size_mb / cpu_lines, 1),
        "lines_wall_mb_per_s": round(size_mb / wall_lines, 1),
        "lines_per_s": round(len(lines) / cpu_lines),
        "expected_finds": sum(expected.values()),
        "found": sum(counts.values()),
        "false_positives": sum((counts - expected).values()),
        "misses": sum((expected - counts).values()),
        "target_mb_per_s": 10.0,
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    return figures


if __name__ == "__main__":
    main()

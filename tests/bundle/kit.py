"""Test doubles for bundles: realistic sealed bundles and small ones of a chosen size.

The one place tests and benchmarks get a bundle from (`make_bundle` for the
collector's pages and API, `small_bundle` for the spool and the uploader, `many_sources`,
`big_entries` and `long_timeline` for the bounds of the pages).
"""

from __future__ import annotations

import io
import os
import random
import secrets
import time
from typing import Any

from agent.bundle.format import (
    DeviceInfo,
    Entry,
    SealedBundle,
    json_entry,
    new_bundle_id,
    seal,
    text_entry,
)
from agent.core.redact import Redactor

KEY = b"posagent-test-device-key-0123456789"
_REDACTOR = Redactor()


def small_bundle(
    note: str = "x", pad: int = 0, *, size_bytes: int = 0, device: str = "T-TEST"
) -> SealedBundle:
    """A valid sealed manual bundle: `pad` adds hex text to report.txt, `size_bytes`
    pads the bundle to about that size with a random (incompressible) screenshot."""
    body = note + (secrets.token_hex(pad // 2) if pad else "")
    entries = [text_entry("report.txt", body)]
    if size_bytes > 2048:
        entries.append(Entry("screenshot.png", os.urandom(size_bytes - 2048)))
    return seal(
        device=DeviceInfo(id=device),
        trigger={"kind": "manual", "key": "manual.report", "severity": "error", "note": note},
        entries=entries,
        key=KEY,
        redactor=_REDACTOR,
        screenshot="captured" if size_bytes > 2048 else "skipped:none",
    )


def screenshot_png(
    width: int = 480,
    height: int = 320,
    *,
    label: str = "PAPER END",
    noise_px: int = 0,
    seed: int = 1,
) -> bytes:
    """A PNG that looks like a POS screen with an error banner; noise_px adds incompressible pixels."""
    from PIL import Image, ImageDraw  # lazy: only the tests that draw need Pillow

    img = Image.new("RGB", (width, height), (236, 240, 245))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, width, 36), fill=(31, 42, 68))
    d.text((12, 12), "POS  Till 3  12:04", fill=(255, 255, 255))
    for i in range(5):
        y = 50 + i * 28
        d.rectangle((12, y, width - 12, y + 22), fill=(255, 255, 255), outline=(200, 205, 215))
        d.text((20, y + 6), f"Item {i + 1}", fill=(30, 30, 30))
        d.text((width - 80, y + 6), f"{(i + 1) * 2.5:.2f}", fill=(30, 30, 30))
    d.rectangle((40, height - 90, width - 40, height - 30), fill=(196, 0, 32))
    d.text((60, height - 66), label, fill=(255, 255, 255))
    if noise_px:
        rng = random.Random(seed)
        side = max(1, int(noise_px**0.5))
        patch = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        img.paste(patch, (width - side - 4, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_bundle(
    *,
    device: str = "T-0001",
    site: str = "Store 12",
    fault: str = "printer.paper_end",
    severity: str = "critical",
    kind: str = "fault",
    summary: str = "",
    created_at: float | None = None,
    key: bytes = KEY,
    screenshot: bool = True,
    noise_px: int = 0,
    diag_pad_bytes: int = 0,
    seed: int = 1,
    bundle_id: str | None = None,
) -> SealedBundle:
    """A realistic sealed bundle: report, screenshot, timeline, diagnostics."""
    now = time.time() if created_at is None else created_at
    rng = random.Random(seed)
    readings = []
    for i in range(60):
        ts = now - 300 + i * 5
        readings.append(
            {
                "source": "printer:receipt",
                "ts": ts,
                "ok": True,
                "values": {"online": True, "paper_end": i >= 50},
            }
        )
        readings.append(
            {
                "source": "network:eth0",
                "ts": ts + 1,
                "ok": i % 17 != 0,
                "values": {"carrier": True, "connect_ms": round(rng.uniform(20, 90), 1)},
            }
        )
    summary = summary or f"{fault} on {device}"
    entries: list[Entry] = [
        text_entry(
            "report.txt",
            f"posagent report\n===============\nWhat:      {summary}\n"
            f"Fault:     {fault} ({severity}, {kind})\nWhere:     site {site}, terminal {device}\n",
        ),
        json_entry("timeline.json", {"readings": readings}),
        json_entry(
            "diagnostics/printer.json", {"port": "/dev/ttyS0", "status": {"paper_end": True}}
        ),
        text_entry("diagnostics/dmesg.txt", "[  1.0] usb 1-1: new device\n" * 20),
    ]
    if diag_pad_bytes:
        entries.append(
            text_entry("diagnostics/log_tail.txt", rng.randbytes(diag_pad_bytes // 2).hex())
        )
    if screenshot:
        entries.append(
            Entry(
                "screenshot.png",
                screenshot_png(label=fault.upper(), noise_px=noise_px, seed=seed),
                "image/png",
            )
        )
    trigger: dict[str, Any] = {"kind": kind, "key": fault, "severity": severity, "summary": summary}
    return seal(
        device=DeviceInfo(id=device, site=site, model="TX-100", serial="SN-1"),
        trigger=trigger,
        entries=entries,
        key=key,
        redactor=_REDACTOR,
        screenshot="captured" if screenshot else "skipped:none",
        agent_version="0.1.0",
        bundle_id=bundle_id or new_bundle_id(int(now * 1000)),
        created_at=now,
    )


# --------------------------------------------------------------------------- hostile shapes
# that ingest accepts (issue 15 item 9: the pages stay bounded whatever a bundle holds)


def _hostile(entries: list[Entry], summary: str) -> SealedBundle:
    return seal(
        device=DeviceInfo(id="T-0001", site="Store 12", model="TX-100", serial="SN-1"),
        trigger={
            "kind": "fault",
            "key": "printer.paper_end",
            "severity": "critical",
            "summary": summary,
        },
        entries=entries,
        key=KEY,
        redactor=_REDACTOR,
        screenshot="captured",
        agent_version="0.1.0",
    )


def many_sources(n: int = 50_000) -> SealedBundle:
    """A timeline with one reading for each of n sources (about 300 KB, 6 MB of JSON)."""
    now = time.time()
    readings = [
        {
            "source": f"sensor:{i:05d}",
            "ts": now - n + i,
            "ok": i % 7 != 0,
            "values": {"online": i % 7 != 0},
        }
        for i in range(n)
    ]
    shot = Entry("screenshot.png", screenshot_png(), "image/png")
    return _hostile([json_entry("timeline.json", {"readings": readings}), shot], "50,000 sources")


def big_entries(n: int = 62) -> SealedBundle:
    """n diagnostics entries of 1 MiB of '<' each (each escapes to 4 MiB): about 72 KB."""
    entries = [text_entry(f"diagnostics/big{i:02d}.txt", "<" * (1 << 20)) for i in range(n)]
    return _hostile([*entries, text_entry("report.txt", "<" * (1 << 20))], "62 entries of 1 MiB")


def long_timeline(n: int = 100_000) -> SealedBundle:
    """n readings of two sources, every 10 ms: about 12 MB of JSON, more than the chart reads."""
    t0 = time.time() - n / 100
    readings = [
        {
            "source": "printer:receipt" if i % 2 else "network:eth0",
            "ts": round(t0 + i / 100, 3),
            "ok": True,
            "values": {"online": i % 1000 != 0, "paper_end": False},
        }
        for i in range(n)
    ]
    return _hostile([json_entry("timeline.json", {"readings": readings})], "100,000 readings")

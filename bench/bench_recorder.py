"""Flight recorder: what persisting it costs the state dir (eMMC) per hour, against the old scheme.

One simulated hour at the default intervals, the same readings for both:
- ours: `FlightRecorder.tick()` — the new readings appended to `recorder.journal`
  and fdatasynced every `journal_interval_s` (4 s), the window compacted into
  `recorder.json` once per window (10 min);
- peer, the old scheme: the whole window rewritten atomically (`atomic_write`:
  staging file, fsync, rename, fsync the dir) every `persist_interval_s` (30 s);
- peer, the old scheme held to the same bound: rewritten every 4 s.

Two measures:
- syscalls: write() calls, bytes written, fsync/fdatasync calls (counted by
  wrapping `os`; independent of the filesystem);
- the block device: write requests and bytes that reached a fresh ext4 file
  system on a loop device (/sys/block/loopN/stat), journal and metadata
  included — what the eMMC sees. Needs root and a loop device; skipped otherwise.

The readings: the default config's monitors on a terminal with one printer,
two serial devices, one interface and one payment host, about 2.8 a second
(power 5 s, network 5 s ×4, printer 2 s, serial 2 s ×2, system 10 s, app 5 s).
Worst case lost to a cut: the journal interval (ours) vs the persist interval
(peer). Run: python -m bench recorder
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.core.config import CaptureConfig
from agent.core.files import atomic_write
from agent.core.model import Reading
from agent.faults.recorder import FlightRecorder

HOUR_S = 3600
SOURCES: list[tuple[float, str, dict[str, Any]]] = [
    (5.0, "power", {"ac_online": True, "battery_pct": 87, "status": "Charging", "temp_c": 31.5,
                    "health": "Good", "voltage_mv": 4120, "plugged": "ac"}),
    (5.0, "network:eth0", {"carrier": True, "operstate": "up", "speed_mbps": 100,
                           "rx_errors": 0, "tx_errors": 0, "ipv4": "192.168.1.23"}),
    (5.0, "network:route", {"default_route": True, "gateway": "192.168.1.1", "iface": "eth0"}),
    (5.0, "network:dns", {"ok": True, "host": "pay.example.com", "ms": 12.4}),
    (5.0, "payment:pay.example.com:443", {"ok": True, "connect_ms": 48.2, "tls": False}),
    (2.0, "printer:receipt", {"online": True, "cover_open": False, "paper_end": False,
                              "paper_near_end": False, "cutter_error": False, "drawer_open": False,
                              "reply": True}),
    (2.0, "serial:/dev/ttyUSB0", {"present": True, "vid": "0x0b00", "pid": "0x0080",
                                  "serial": "PP123", "reply": True}),
    (2.0, "serial:/dev/ttyACM0", {"present": True, "vid": "0x0c2e", "pid": "0x0b61",
                                  "serial": "", "reply": True}),
    (10.0, "system", {"cpu_pct": 7.5, "mem_available_pct": 61.2, "disk_free_pct": 72.4,
                      "disk_free_mib": 5120, "clock_synced": True, "load1": 0.21}),
    (5.0, "app", {"running": True, "pid": 1234, "restarts_10min": 0, "heartbeat_age_s": 1.2}),
]  # fmt: skip


def hour_of_readings() -> Iterator[Reading]:
    """The readings of one hour at the default intervals, in time order (ts from 1e9)."""
    t0 = 1_000_000_000.0
    events: list[tuple[float, int]] = []
    for i, (interval, _, _) in enumerate(SOURCES):
        t = 0.0
        while t < HOUR_S:
            events.append((t, i))
            t += interval
    events.sort()
    for t, i in events:
        _, source, values = SOURCES[i]
        yield Reading(source, dict(values), ts=t0 + t, mono=t)


class OldRecorder:
    """The old scheme: a ring buffer written whole, atomically, at each persist."""

    def __init__(self, path: Path, window_s: float):
        self.path, self.window_s = path, window_s
        self._buf: deque[dict[str, Any]] = deque(maxlen=20_000)
        self._dirty = False

    def add(self, r: Reading) -> None:
        self._buf.append(r.to_json())
        self._dirty = True
        while self._buf and self._buf[0]["ts"] < r.ts - self.window_s:
            self._buf.popleft()

    def persist(self) -> bool:
        if not self._dirty:
            return False
        self._dirty = False
        data = json.dumps({"version": 1, "readings": list(self._buf)}, separators=(",", ":"))
        atomic_write(self.path, data.encode())
        return True


class Counters:
    """os.write / fsync / fdatasync / rename calls and bytes, while installed."""

    def __init__(self) -> None:
        self.writes = self.bytes = self.fsyncs = self.renames = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[Counters]:
        real = {n: getattr(os, n) for n in ("write", "fsync", "fdatasync", "replace", "rename")}

        def write(fd: int, data: Any) -> int:
            n: int = real["write"](fd, data)
            self.writes += 1
            self.bytes += n
            return n

        def sync(name: str) -> Callable[[int], None]:
            def f(fd: int) -> None:
                self.fsyncs += 1
                real[name](fd)

            return f

        def rename(name: str) -> Callable[..., None]:
            def f(*a: Any, **kw: Any) -> None:
                self.renames += 1
                real[name](*a, **kw)

            return f

        os.write = write  # type: ignore[assignment]
        os.fsync = sync("fsync")  # type: ignore[assignment]
        os.fdatasync = sync("fdatasync")  # type: ignore[assignment]
        os.replace = rename("replace")  # type: ignore[assignment]
        os.rename = rename("rename")  # type: ignore[assignment]
        try:
            yield self
        finally:
            for n, f in real.items():
                setattr(os, n, f)


def simulate(scheme: str, state: Path, old_every_s: float = 30.0) -> dict[str, float]:
    """One hour of readings into `scheme` ("journal" or "old", rewriting every old_every_s)
    in state; the counters."""
    cap = CaptureConfig()
    window = cap.timeline_minutes * 60
    path = state / "recorder.json"
    ours = FlightRecorder(path, window, journal_interval_s=cap.journal_interval_s)
    old = OldRecorder(path, window)
    c = Counters()
    next_old = old_every_s
    max_gap = 0.0
    last_durable = 0.0
    with c.installed():
        if scheme == "journal":
            ours.tick(now=0.0)
        for r in hour_of_readings():
            now = r.mono
            if scheme == "journal":
                if ours.tick(now=now):
                    max_gap = max(max_gap, now - last_durable)
                    last_durable = now
                ours.add(r)
            else:
                if now >= next_old:
                    old.persist()
                    max_gap = max(max_gap, now - last_durable)
                    last_durable = now
                    next_old += old_every_s
                old.add(r)
    ours.close()
    return {
        "write_calls_per_h": c.writes,
        "bytes_written_per_h": c.bytes,
        "fsyncs_per_h": c.fsyncs,
        "renames_per_h": c.renames,
        "max_s_between_durable_writes": round(max_gap, 1),
        "state_bytes_at_end": sum(p.stat().st_size for p in state.iterdir() if p.is_file()),
    }


@contextlib.contextmanager
def loop_ext4(size_mib: int = 64) -> Iterator[tuple[Path, str] | None]:
    """A fresh ext4 on a loop device (root only), or None."""
    if os.geteuid() != 0:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-rec-") as tmp:
        img, mnt = Path(tmp) / "fs.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with img.open("wb") as f:
            f.truncate(size_mib * 2**20)
        dev = ""
        try:
            subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
            dev = subprocess.run(
                ["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True
            ).stdout.strip()
            subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            if dev:
                subprocess.run(["losetup", "-d", dev], capture_output=True)
            yield None
            return
        try:
            yield mnt, Path(dev).name
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)


def device_writes(name: str) -> tuple[int, int]:
    """(write requests, bytes written) of a block device so far."""
    f = Path(f"/sys/block/{name}/stat").read_text().split()
    return int(f[4]), int(f[6]) * 512


def main() -> dict[str, Any]:
    """Measure and print both schemes."""
    figures: dict[str, Any] = {}
    runs = (
        ("journal", "ours_journal_4s", 0.0),
        ("old", "peer_rewrite_30s", 30.0),
        ("old", "peer_rewrite_4s", 4.0),  # the old scheme held to the same 4 s bound
    )
    for scheme, label, every in runs:
        with loop_ext4() as fs:
            if fs is None:
                with tempfile.TemporaryDirectory(prefix="bench-rec-") as tmp:
                    row = simulate(scheme, Path(tmp), every)
            else:
                mnt, dev = fs
                state = mnt / "state"
                state.mkdir()
                os.sync()
                before = device_writes(dev)
                row = simulate(scheme, state, every)
                os.sync()
                after = device_writes(dev)
                row["device_write_requests_per_h"] = after[0] - before[0]
                row["device_bytes_written_per_h"] = after[1] - before[1]
        figures[label] = row
        print(f"   {label}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    ours = figures["ours_journal_4s"]
    for peer in ("peer_rewrite_30s", "peer_rewrite_4s"):
        for k in ("bytes_written_per_h", "device_bytes_written_per_h"):
            if k in ours and k in figures[peer] and ours[k]:
                figures[f"{k}_{peer}_over_ours"] = round(figures[peer][k] / ours[k], 2)
    print(f"   ratios: { {k: v for k, v in figures.items() if 'over' in k} }")
    return figures


if __name__ == "__main__":
    from bench import quiet_logs

    quiet_logs()
    main()

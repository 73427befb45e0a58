"""Flight recorder: the readings of the last minutes, persisted so they survive a power cut."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import structlog

from agent.core.files import atomic_write
from agent.core.model import Reading

log = structlog.get_logger(__name__)

MAX_READINGS = 20_000


class FlightRecorder:
    """A ring buffer of readings bounded by age and count; `persist()` writes it atomically."""

    def __init__(self, path: Path, window_s: float = 600.0, max_readings: int = MAX_READINGS):
        self.path = path
        self.window_s = window_s
        self._buf: deque[dict[str, Any]] = deque(maxlen=max_readings)
        self._lock = threading.Lock()
        self._dirty = False

    def add(self, reading: Reading) -> None:
        """Record one reading and drop the ones older than the window."""
        row = reading.to_json()
        with self._lock:
            self._buf.append(row)
            self._dirty = True
            cutoff = reading.ts - self.window_s
            while self._buf and self._buf[0]["ts"] < cutoff:
                self._buf.popleft()

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        """The readings inside the window, oldest first."""
        cutoff = (time.time() if now is None else now) - self.window_s
        with self._lock:
            return [r for r in self._buf if r["ts"] >= cutoff]

    def persist(self) -> bool:
        """Write the buffer atomically (fsynced) if it changed; returns whether it wrote."""
        with self._lock:
            if not self._dirty:
                return False
            data = json.dumps({"version": 1, "readings": list(self._buf)}, separators=(",", ":"))
            self._dirty = False
        try:
            atomic_write(self.path, data.encode())
        except OSError as e:
            log.error("recorder_persist_failed", path=str(self.path), error=str(e))
            with self._lock:
                self._dirty = True
            return False
        return True

    def load(self) -> int:
        """Read a persisted buffer back (after a restart); a bad file is ignored and reported."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.warning("recorder_load_failed", path=str(self.path), error=str(e))
            return 0
        try:
            data = json.loads(raw)
            rows = [
                r
                for r in data["readings"]
                if isinstance(r, dict) and isinstance(r.get("ts"), int | float)
            ]
        except (ValueError, KeyError, TypeError) as e:
            log.warning("recorder_file_corrupt", path=str(self.path), error=str(e))
            return 0
        with self._lock:
            self._buf.extend(rows)
        return len(rows)

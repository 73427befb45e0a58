"""Capture policy: which fault events become bundles (docs/ARCHITECTURE.md §1, issue Evidence).

Per-fault cooldown, a global token bucket on the monotonic clock (its level
carried across restarts), a reserve only critical faults may draw on, storm
suppression with the suppressed count carried in the next bundle, and small
`cleared` bundles for faults whose raise was captured.

Manual reports (`manual.report`: a person asked, through the trigger dir or
`posagent report`) skip the cooldown and the fault bucket but draw on a bucket
of their own (`manual_per_hour`, `manual_burst`), so a stuck trigger file or a
script dropping files cannot flood the spool, and faults keep their budget.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.config import CaptureConfig
from agent.core.files import atomic_write
from agent.core.model import FaultEvent, FaultState, Severity

MANUAL_KEY = "manual.report"


@dataclass(frozen=True)
class Decision:
    """Whether to capture an event, and how."""

    capture: bool
    reason: str
    keep: bool = False  # first bundle of a storm: evicted last
    suppressed: int = 0  # repeats suppressed since the last bundle of this fault
    with_screen: bool = True


class TokenBucket:
    """A token bucket refilled at `rate_per_s` up to `capacity`."""

    def __init__(self, rate_per_s: float, capacity: float, clock: Callable[[], float]):
        self.rate = rate_per_s
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def level(self) -> float:
        self._refill()
        return self.tokens


class CapturePolicy:
    """Decides per fault event; thread-safe; state persisted with `save()`/restored at start."""

    def __init__(
        self,
        cfg: CaptureConfig,
        state_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg = cfg
        self.clock = clock
        self.state_path = state_path
        rate = cfg.bundles_per_hour / 3600.0
        self.bucket = TokenBucket(rate, float(cfg.burst), clock)
        self.reserve = TokenBucket(rate, float(cfg.critical_reserve), clock)
        self.manual = TokenBucket(cfg.manual_per_hour / 3600.0, float(cfg.manual_burst), clock)
        self._last_capture: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._captured_raise: set[str] = set()
        self._lock = threading.Lock()
        self._restore()

    def decide(self, event: FaultEvent) -> Decision:
        """Capture or suppress one event."""
        inst = event.instance
        with self._lock:
            if event.key == MANUAL_KEY:
                if not self.manual.take():
                    self._suppressed[MANUAL_KEY] = self._suppressed.get(MANUAL_KEY, 0) + 1
                    return Decision(False, "manual report rate limit (manual bucket empty)")
                return Decision(
                    True, "manual", keep=True, suppressed=self._suppressed.pop(MANUAL_KEY, 0)
                )
            if event.state == FaultState.CLEARED:
                if not self.cfg.cleared_bundles:
                    return Decision(False, "cleared bundles disabled")
                if inst not in self._captured_raise:
                    return Decision(False, "raise was not captured")
                self._captured_raise.discard(inst)
                return Decision(True, "cleared", with_screen=False)
            now = self.clock()
            last = self._last_capture.get(event.key)
            if last is not None and now - last < self.cfg.cooldown_s:
                self._suppressed[event.key] = self._suppressed.get(event.key, 0) + 1
                return Decision(False, f"cooldown ({self.cfg.cooldown_s:g} s)")
            ok = self.bucket.take()
            if not ok and event.severity == Severity.CRITICAL:
                ok = self.reserve.take()
            if not ok:
                self._suppressed[event.key] = self._suppressed.get(event.key, 0) + 1
                return Decision(False, "rate limit (token bucket empty)")
            suppressed = self._suppressed.pop(event.key, 0)
            storm_first = last is None or now - last >= 4 * max(self.cfg.cooldown_s, 60.0)
            self._last_capture[event.key] = now
            self._captured_raise.add(inst)
            return Decision(True, "captured", keep=storm_first, suppressed=suppressed)

    def suppressed_total(self) -> dict[str, int]:
        """Suppressed repeats not yet carried by a bundle, by fault key."""
        with self._lock:
            return dict(self._suppressed)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """Plain data: token levels and suppressed counts (monotonic stamps are not portable)."""
        with self._lock:
            return {
                "version": 1,
                "tokens": round(self.bucket.level(), 3),
                "reserve": round(self.reserve.level(), 3),
                "manual": round(self.manual.level(), 3),
                "suppressed": dict(self._suppressed),
                "captured_raise": sorted(self._captured_raise),
            }

    def save(self) -> None:
        """Persist the snapshot atomically (best effort: a failure only loses rate state)."""
        if self.state_path is None:
            return
        try:
            atomic_write(self.state_path, json.dumps(self.snapshot()).encode(), durable=False)
        except OSError:
            pass

    def _restore(self) -> None:
        if self.state_path is None:
            return
        try:
            data = json.loads(self.state_path.read_text())
            tokens = float(data["tokens"])
            reserve = float(data.get("reserve", self.reserve.capacity))
            manual = float(data.get("manual", self.manual.capacity))
            suppressed = {str(k): int(v) for k, v in dict(data.get("suppressed", {})).items()}
            captured = {str(x) for x in data.get("captured_raise", [])}
        except (OSError, ValueError, KeyError, TypeError):
            return
        # No refill credit for the time the agent was down: a restart loop must
        # not turn into a bundle flood.
        self.bucket.tokens = max(0.0, min(self.bucket.capacity, tokens))
        self.reserve.tokens = max(0.0, min(self.reserve.capacity, reserve))
        self.manual.tokens = max(0.0, min(self.manual.capacity, manual))
        self._suppressed = suppressed
        self._captured_raise = captured

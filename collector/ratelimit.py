"""Per-device token buckets for the ingest endpoint."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket per key: capacity rate_per_minute, refilled at rate_per_minute / 60 per second.

    `take(key)` returns 0.0 when a request may proceed (and spends a token),
    else the whole seconds until one token is back (the Retry-After value).
    """

    def __init__(
        self,
        rate_per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ):
        if rate_per_minute < 1:
            raise ValueError("rate_per_minute must be at least 1")
        self.capacity = float(rate_per_minute)
        self.rate_per_s = rate_per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = float(max(1, math.ceil((1.0 - tokens) / self.rate_per_s)))
            if len(self._buckets) > self._max_keys:
                self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        full_after_s = self.capacity / self.rate_per_s
        for k, (_, last) in list(self._buckets.items()):
            if now - last >= full_after_s:
                del self._buckets[k]

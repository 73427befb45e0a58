"""The bundles this collector process has stored and not yet grouped: ingest `put`s each
one after its commit and answers the upload; the incident worker
(`collector.incidents.service.IncidentWorker`) `take`s them in batches and groups them
(`collector.incidents.grouping.observe_many`).

In memory only. What it holds when the process dies (a crash, a kill) is grouped by the
catch-up pass at the next start (`grouping.catch_up`: every bundle no incident groups);
nothing is lost but time. Bounded: past ``limit`` records `put` refuses the record and
counts it in ``dropped`` (the bundle is stored; the worker runs the catch-up pass when it
sees a drop).

`take` waits for a first record, then for more while they keep coming (a batch is one
transaction: the fewer and larger, the less grouping costs per bundle): it hands the
batch when ``n`` are queued, when none came for a quiet time, or when the first is
``LINGER_S`` old, whichever is first. The quiet time follows the hand-overs' pace:
``QUIET_GAPS`` times their usual gap (a moving average), within ``QUIET_MIN_S`` and
``QUIET_MAX_S``: the batch waits about as long as two or three more uploads would take
to arrive, so a burst's last batch is not held back for long. ``pending`` counts what was put and is not yet
`done` (queued or being grouped): 0 means every bundle handed over so far has been grouped (or failed, logged).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from collector.storage.base import BundleRecord

LIMIT = 100_000  # records held at most (a few hundred bytes each)
LINGER_S = 0.25  # a batch waits at most this long from its first record for more,
QUIET_GAPS = 2.5  # and no longer than this many usual gaps between records after the last,
QUIET_MIN_S = 0.005  # within these bounds
QUIET_MAX_S = 0.05


class Backlog:
    """The hand-over from ingest (any thread) to one grouping thread."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.dropped = 0  # refused (full) since the start
        self._items: deque[tuple[float, BundleRecord]] = deque()
        self._busy = 0  # taken and not yet done
        self._last_at = 0.0  # when the newest record came (monotonic)
        self._gap_s = QUIET_MAX_S  # the usual gap between records (moving average)
        self._want = 1  # how many records a waiting take hands at most
        self._cond = threading.Condition()

    def put(self, record: BundleRecord) -> bool:
        """Hand a stored bundle over; False (counted in dropped) when the backlog is full."""
        with self._cond:
            if len(self._items) >= self.limit:
                self.dropped += 1
                self._cond.notify()  # the worker runs the catch-up pass for it
                return False
            now = time.monotonic()
            gap = min(QUIET_MAX_S, now - self._last_at)  # a pause counts as a long gap
            self._gap_s += (gap - self._gap_s) / 8
            self._last_at = now
            self._items.append((now, record))
            if len(self._items) == 1 or len(self._items) >= self._want:
                self._cond.notify()
        return True

    def take(
        self,
        n: int,
        *,
        timeout_s: float,
        linger_s: float = LINGER_S,
        stop: Callable[[], bool] = lambda: False,
    ) -> list[BundleRecord]:
        """Up to n records: waits up to timeout_s for the first, then for more (module
        docstring; at once when stop() is true); [] on the timeout or when a record was
        refused meanwhile. What it returns is pending until `done`."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            self._want = max(1, n)
            dropped = self.dropped
            while not self._items and not stop() and self.dropped == dropped:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            while self._items and len(self._items) < n and not stop():
                quiet_s = min(QUIET_MAX_S, max(QUIET_MIN_S, QUIET_GAPS * self._gap_s))
                until = min(self._items[0][0] + linger_s, self._last_at + quiet_s)
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out = [self._items.popleft()[1] for _ in range(min(n, len(self._items)))]
            self._busy += len(out)
            return out

    def done(self, k: int) -> None:
        """k records taken are grouped (or failed, logged)."""
        with self._cond:
            self._busy = max(0, self._busy - k)

    def wake(self) -> None:
        """Wake a waiting `take` (its stop() has become true)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items) + self._busy

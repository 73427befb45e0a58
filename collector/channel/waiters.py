"""The long-poll (docs/CHANNEL.md §2, ``POST /v1/checkins?wait=``): a check-in with nothing
to deliver waits until a command is queued for its device, or its wait is over.

No database connection is held while waiting. A waiting check-in is an `asyncio.Event`
per device; it is set

- at once when the command is queued on this instance (`notify`);
- within ``poll_s`` when it is queued on another one: while anyone waits, one task per
  instance reads the ids of the commands queued in the last `WINDOW_S` seconds (one
  small query per ``poll_s``, whatever the number of waiters) and wakes the devices of
  those it had not seen.

The waiter registers first and looks at the database after (`Waiters.wait`'s ``check``),
so a command committed at any moment is either found by that look or seen as new by the
poll: none is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from starlette.concurrency import run_in_threadpool

from collector.storage.base import StorageError
from collector.storage.sql import Database

log = structlog.get_logger(__name__)

WINDOW_S = 60.0  # commands queued this recently are looked at (clock skew, slow commits)


class Waiters:
    """Check-ins waiting for a command, by device, on this instance."""

    def __init__(self, db: Database, poll_s: float = 0.5):
        self.db = db
        self.poll_s = poll_s
        self._events: dict[str, set[asyncio.Event]] = {}
        self._seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def notify(self, device: str) -> None:
        """Wake the check-ins of device waiting here (call on the event loop)."""
        for ev in self._events.get(device, ()):
            ev.set()

    @property
    def waiting(self) -> int:
        return sum(len(s) for s in self._events.values())

    async def wait(
        self, device: str, timeout_s: float, check: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Wait until check() is true (asked now, then on every wake) or timeout_s passes."""
        ev = asyncio.Event()
        self._events.setdefault(device, set()).add(ev)
        self._ensure_poller()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                ev.clear()
                if await check():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), left)
        finally:
            group = self._events.get(device)
            if group is not None:
                group.discard(ev)
                if not group:
                    del self._events[device]

    def _ensure_poller(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())

    def _recent(self) -> list[tuple[str, str]]:
        with self.db.transaction(write=False) as tx:
            rows = tx.all(
                "SELECT id, device FROM device_commands WHERE issued_at > ? AND status = 'queued'",
                (time.time() - WINDOW_S,),
            )
        return [(str(i), str(d)) for i, d in rows]

    async def _poll(self) -> None:
        while self._events:
            await asyncio.sleep(self.poll_s)
            try:
                rows = await run_in_threadpool(self._recent)
            except StorageError as e:
                log.warning("longpoll_poll_failed", error=str(e))
                continue
            now = time.monotonic()
            for cid, device in rows:
                if cid not in self._seen:
                    self._seen[cid] = now
                    self.notify(device)
            for cid in [c for c, t in self._seen.items() if now - t > 2 * WINDOW_S]:
                del self._seen[cid]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

"""Check-ins written in groups: one transaction, one commit for what arrived together.

The check-in handler parses the body on the event loop and `submit`s the check-in
(`checkin.Incoming`) to its collector process's writer: one thread that takes every
check-in queued (up to `BATCH`), does their work in one transaction
(`checkin.receive_many`, in the order they came), commits, and only then answers each:
a check-in answered 200 is on disk as surely as one in a transaction of its own (the
commit it waited for is the one that holds it). Nothing waits to make a group: the
check-ins that came while the writer was busy with the last group are the next one, so
one alone is answered as soon as before, and under load the commits, the thread hops
and (on SQLite) the writers' wait for the database's lock are shared.

A refusal (401, 403, 429, 400, 409 resend) is one check-in's answer and comes before
its writes, so the others commit (`checkin.receive_many`). When the group's transaction
fails as a whole (a database error, a bug), each of its check-ins is tried again in a
transaction of its own, so only a check-in that fails alone gets the error (each one's
`admit` is asked once: its answer is kept for the second try).

The thread starts with the first check-in and ends after `IDLE_S` without any, or at
`stop` once what was submitted before is answered; the next check-in starts it again.
Answers reach each caller's event loop with one `call_soon_threadsafe` per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog

from collector.channel import checkin
from collector.channel.errors import ChannelError
from collector.storage.sql import Database

log = structlog.get_logger(__name__)

BATCH = 64  # check-ins in one transaction at most
IDLE_S = 30.0  # the thread ends after this long without a check-in

Outcome = checkin.Received | BaseException
_Item = tuple[checkin.Incoming, asyncio.AbstractEventLoop, "asyncio.Future[checkin.Received]"]


class Once:
    """An `admit` that asks the handler's once and gives the same answer again."""

    def __init__(self, admit: checkin.Admit) -> None:
        self._admit = admit
        self._answer: tuple[checkin.CheckIn, int] | ChannelError | None = None

    def __call__(self, device: str, site: str) -> tuple[checkin.CheckIn, int]:
        if self._answer is None:
            try:
                self._answer = self._admit(device, site)
            except ChannelError as e:
                self._answer = e
        if isinstance(self._answer, ChannelError):
            raise self._answer
        return self._answer


class CheckinWriter:
    """The process's check-in writer on db (module docstring)."""

    def __init__(self, db: Database, *, silent_after: int, keys_cfg: Any = None) -> None:
        self.db = db
        self.silent_after = silent_after
        self.keys_cfg = keys_cfg
        self.groups = 0  # transactions written (groups, not counting second tries)
        self.checkins = 0  # check-ins answered
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def submit(self, item: checkin.Incoming) -> checkin.Received:
        """The check-in's outcome once its group is committed; its refusal raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[checkin.Received] = loop.create_future()
        with self._lock:
            self._queue.put((item, loop, future))
            if self._thread is None:
                self._start()
        return await future

    def _start(self) -> None:  # under _lock
        self._thread = threading.Thread(target=self._run, name="posagent-checkins", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Answer what was submitted, then end the thread (a later submit starts another)."""
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout_s)

    # -- the thread
    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with self._lock:  # ended (stopped, or a bug): another for what came since
                if self._thread is threading.current_thread():
                    self._thread = None
                    if not self._queue.empty():
                        self._start()

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:  # a submit holds the lock from its put to its check
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            try:
                outcomes = self._write([item for item, _, _ in group])
            except BaseException as e:  # never leave a caller waiting
                self._answer(group, [e] * len(group))
                raise
            self._answer(group, outcomes)
            if stop:
                return

    def _write(self, items: Sequence[checkin.Incoming]) -> list[Outcome]:
        """Each check-in's outcome: the group in one transaction, or each alone (a
        group's check-ins are asked their `admit` once: `Once`)."""
        if len(items) > 1:
            items = [replace(item, admit=Once(item.admit)) for item in items]
        try:
            outcomes: list[Outcome] = list(
                checkin.receive_many(
                    self.db, items, silent_after=self.silent_after, keys_cfg=self.keys_cfg
                )
            )
        except Exception as e:
            if len(items) == 1:
                return [e]
            log.warning("checkin_group_failed", checkins=len(items), error=str(e)[:300])
            outcomes = []
            for item in items:
                try:
                    outcomes.append(
                        checkin.receive(
                            self.db, item, silent_after=self.silent_after, keys_cfg=self.keys_cfg
                        )
                    )
                except Exception as alone:
                    outcomes.append(alone)
        self.groups += 1
        return outcomes

    def _answer(self, group: list[_Item], outcomes: list[Outcome]) -> None:
        self.checkins += len(group)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for (_, loop, future), outcome in zip(group, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    """Give each waiting caller its outcome (on its event loop)."""
    for future, outcome in answers:
        if future.done():  # the caller went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

"""Runs every monitor at its interval on a small pool of worker threads.

One dispatcher thread keeps a due time per monitor and hands due monitors to
`workers` daemon threads. A monitor is never started again while a call of it
is still running, so a hung device costs at most one thread:

- a poll that raises yields ``Reading(source=name, ok=False, error=...)``;
- a poll that overruns `timeout_s` yields ``ok=False`` "timeout after X s" at
  the deadline, then one more such reading each interval while it stays stuck
  (so agent.monitor_failed counts consecutive failures); its worker is written
  off and replaced, so the pool keeps its healthy size; whatever the late call
  returns is dropped (its cycle was already reported), and the monitor is due
  again as soon as it returns.

Every monitor polls once at start; after that, monitor i of n runs i/n of the
shortest interval late (its phase, taken once), so that monitors of the same or
commensurate intervals (2 s, 5 s, 10 s) do not all wake at the same moment and
fight over the GIL: at the defaults they did, every 5 s, and a sixth of the idle
daemon's syscalls were that fight's futex calls (issue 6: idle CPU).

Readings go to `sink` (a callable: `queue.Queue.put` will do). Progress
timestamps (`last_progress()`, time.monotonic) let the daemon's watchdog tell
a stuck dispatcher ("scheduler") or a stuck monitor ("monitor:<name>", time of
the last completed poll) from a healthy one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from agent.core.model import Reading
from agent.monitors import Monitor

log = structlog.get_logger(__name__)

Sink = Callable[[Reading], object]


def failed_reading(name: str, error: str) -> Reading:
    """The reading that stands for a failed monitor cycle."""
    return Reading(source=name, values={}, ok=False, error=error)


def timeout_error(timeout_s: float, running_s: float | None = None) -> str:
    """The error text of an overrun: "timeout after X s" (plus how long it has been stuck)."""
    text = f"timeout after {timeout_s:g} s"
    if running_s is not None:
        text += f" (still running after {running_s:.0f} s)"
    return text


def _poll(monitor: Monitor) -> list[Reading]:
    """One poll, with exceptions and wrong return types turned into an ok=False reading."""
    try:
        readings = monitor.poll()
    except Exception as e:
        return [failed_reading(monitor.name, f"{type(e).__name__}: {e}")]
    if not isinstance(readings, list) or not all(isinstance(r, Reading) for r in readings):
        return [
            failed_reading(
                monitor.name, f"poll returned {type(readings).__name__}, not list[Reading]"
            )
        ]
    return readings


@dataclass
class _Slot:
    """Scheduling state of one monitor."""

    monitor: Monitor
    next_due: float
    phase: float = 0.0  # added once, to the due time after the first poll
    in_flight: bool = False  # queued or running
    running_since: float | None = None  # set by the worker when the poll starts
    deadline: float = 0.0  # next time an overrun reading is due while running
    overrun: bool = False
    generation: int = 0
    polls: int = 0
    failures: int = 0
    timeouts: int = 0
    last_done: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class MonitorStats:
    """Counters for `posagent status`."""

    name: str
    interval_s: float
    polls: int
    failures: int
    timeouts: int
    running: bool
    last_done: float


class Scheduler:
    """Polls monitors at their intervals; see the module docstring for the rules."""

    def __init__(
        self,
        monitors: Sequence[Monitor],
        sink: Sink,
        *,
        workers: int = 4,
    ) -> None:
        names = [m.name for m in monitors]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"monitor names must be unique: {sorted(dup)}")
        now = time.monotonic()
        shortest = max(0.0, min((m.interval_s for m in monitors), default=0.0))
        self._slots = [
            _Slot(m, now, phase=i * shortest / len(monitors)) for i, m in enumerate(monitors)
        ]
        self._sink = sink
        self._pool_size = max(1, min(workers, len(self._slots) or 1))
        self._jobs: queue.SimpleQueue[tuple[_Slot, int] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._dispatcher: threading.Thread | None = None
        self._progress: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the dispatcher and the worker pool."""
        if self._dispatcher is not None:
            raise RuntimeError("scheduler already started")
        for _ in range(self._pool_size):
            self._spawn_worker()
        self._dispatcher = threading.Thread(target=self._dispatch, name="scheduler", daemon=True)
        self._dispatcher.start()
        log.info("scheduler_started", monitors=len(self._slots), workers=self._pool_size)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop dispatching and release idle workers; never waits on a hung poll."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        for t in self._threads:
            t.join(max(0.0, min(0.2, deadline - time.monotonic())))
        alive = [t.name for t in self._threads if t.is_alive()]
        log.info("scheduler_stopped", threads_still_busy=alive)

    # ------------------------------------------------------------------ introspection

    def last_progress(self) -> dict[str, float]:
        """Monotonic time of the dispatcher's last loop and of each monitor's last completed poll."""
        with self._lock:
            out = dict(self._progress)
            for s in self._slots:
                out[f"monitor:{s.monitor.name}"] = s.last_done
            return out

    def stats(self) -> list[MonitorStats]:
        """Per-monitor counters."""
        with self._lock:
            return [
                MonitorStats(
                    s.monitor.name,
                    s.monitor.interval_s,
                    s.polls,
                    s.failures,
                    s.timeouts,
                    s.in_flight,
                    s.last_done,
                )
                for s in self._slots
            ]

    def thread_count(self) -> int:
        """Worker threads alive (healthy plus written-off ones still stuck in a poll)."""
        return sum(1 for t in self._threads if t.is_alive())

    # ------------------------------------------------------------------ internals

    def _spawn_worker(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        t = threading.Thread(
            target=self._work, name=f"monitor-worker-{len(self._threads)}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def _emit(self, readings: list[Reading]) -> None:
        for r in readings:
            try:
                self._sink(r)
            except Exception as e:  # a broken sink must not kill the scheduler
                log.error("scheduler_sink_failed", source=r.source, error=repr(e))

    def _dispatch(self) -> None:
        while True:
            overdue: list[Reading] = []
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                self._progress["scheduler"] = now
                wake_at = now + 1.0
                for s in self._slots:
                    m = s.monitor
                    if s.in_flight:
                        if s.running_since is None:
                            continue  # queued behind other polls: its clock has not started
                        if now >= s.deadline:
                            running = now - s.running_since
                            overdue.append(
                                failed_reading(
                                    m.name,
                                    timeout_error(m.timeout_s, running if s.overrun else None),
                                )
                            )
                            s.timeouts += 1
                            if not s.overrun:
                                s.overrun = True
                                self._spawn_worker()  # keep the healthy pool size
                                log.warning(
                                    "monitor_timeout", monitor=m.name, timeout_s=m.timeout_s
                                )
                            s.deadline = now + max(m.interval_s, 0.01)
                        wake_at = min(wake_at, s.deadline)
                        continue
                    if now >= s.next_due:
                        s.generation += 1
                        s.in_flight = True
                        s.overrun = False
                        s.next_due += m.interval_s + s.phase
                        s.phase = 0.0
                        if s.next_due <= now:  # fell behind: do not burst to catch up
                            s.next_due = now + m.interval_s
                        self._jobs.put((s, s.generation))
                    else:
                        wake_at = min(wake_at, s.next_due)
            self._emit(overdue)
            with self._lock:
                if self._stopping:
                    return
                self._wake.wait(max(0.0, wake_at - time.monotonic()))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            slot, generation = job
            with self._lock:
                slot.running_since = time.monotonic()
                slot.deadline = slot.running_since + slot.monitor.timeout_s
                self._wake.notify_all()
            readings = _poll(slot.monitor)
            with self._lock:
                stale = slot.generation != generation or slot.overrun
                slot.in_flight = False
                slot.running_since = None
                slot.polls += 1
                slot.last_done = time.monotonic()
                if any(not r.ok for r in readings):
                    slot.failures += 1
                written_off = slot.overrun
                slot.overrun = False
                self._wake.notify_all()
                stopping = self._stopping
            if stale:
                log.info("monitor_late_result_dropped", monitor=slot.monitor.name)
            elif not stopping:
                self._emit(readings)
            if written_off:
                return  # a replacement worker took this one's place


def poll_once(monitors: Sequence[Monitor], timeout_s: float | None = None) -> list[Reading]:
    """Run every monitor once in parallel, each bounded by its timeout (or `timeout_s`).

    For `posagent selftest`. Returns readings in monitor order; a monitor that
    raises or overruns gives one ok=False reading. Hung polls are left on
    daemon threads and never delay the answer past the longest timeout.
    """
    results: dict[int, list[Reading]] = {}
    done = threading.Condition()

    def run(i: int, m: Monitor) -> None:
        readings = _poll(m)
        with done:
            results[i] = readings
            done.notify_all()

    start = time.monotonic()
    deadlines: list[float] = []
    for i, m in enumerate(monitors):
        limit = timeout_s if timeout_s is not None else m.timeout_s
        deadlines.append(start + limit)
        threading.Thread(target=run, args=(i, m), name=f"selftest-{m.name}", daemon=True).start()
    with done:
        for i, deadline in enumerate(deadlines):
            while i not in results:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done.wait(left)
        out: list[Reading] = []
        for i, m in enumerate(monitors):
            if i in results:
                out.extend(results[i])
            else:
                limit = timeout_s if timeout_s is not None else m.timeout_s
                out.append(failed_reading(m.name, timeout_error(limit)))
    return out

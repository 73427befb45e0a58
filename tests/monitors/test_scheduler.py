"""Scheduler and monitor registry with real threads: fast, raising, hanging and broken monitors."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.monitors as registry
from agent.core.config import Config
from agent.core.model import Reading
from agent.monitors import BrokenMonitor, Monitor, MonitorContext, build_monitors, register
from agent.monitors.scheduler import Scheduler, poll_once
from tests.conftest import wait_until as wait_for


class Fast:
    """Returns one good reading per poll and counts its polls."""

    def __init__(self, name: str = "fast", interval_s: float = 0.05) -> None:
        self.name = name
        self.interval_s = interval_s
        self.timeout_s = 1.0
        self.calls = 0

    def poll(self) -> list[Reading]:
        self.calls += 1
        return [Reading(self.name, {"n": self.calls})]


class Raising:
    """Raises on every poll."""

    def __init__(self) -> None:
        self.name = "raising"
        self.interval_s = 0.05
        self.timeout_s = 1.0
        self.calls = 0

    def poll(self) -> list[Reading]:
        self.calls += 1
        raise OSError(5, "Input/output error")


class Hanging:
    """Blocks until released; records how many calls ran at once."""

    def __init__(self, timeout_s: float = 0.1) -> None:
        self.name = "hanging"
        self.interval_s = 0.05
        self.timeout_s = timeout_s
        self.release = threading.Event()
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def poll(self) -> list[Reading]:
        with self._lock:
            self.calls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.release.wait(10.0)
            return [Reading(self.name, {"late": True})]
        finally:
            with self._lock:
                self.concurrent -= 1


def drain(q: queue.Queue[Reading]) -> list[Reading]:
    """Everything currently in the queue."""
    out: list[Reading] = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    """A hanging monitor that is released at teardown so no thread outlives the test."""
    h = Hanging()
    yield h
    h.release.set()


def test_fast_raising_and_hanging_monitors_run_side_by_side(hanging: Hanging) -> None:
    """The fast monitor keeps its rate, the raising one yields ok=False, the hanging one times out without pile-up."""
    fast, raising = Fast(), Raising()
    q: queue.Queue[Reading] = queue.Queue()
    sched = Scheduler([fast, raising, hanging], q.put, workers=2)
    sched.start()
    try:
        time.sleep(1.0)
        readings = drain(q)
        threads = sched.thread_count()
    finally:
        sched.stop()
    by = {
        name: [r for r in readings if r.source == name] for name in ("fast", "raising", "hanging")
    }
    assert len(by["fast"]) >= 8 and all(r.ok for r in by["fast"])
    assert len(by["raising"]) >= 8
    assert all(
        not r.ok and r.error == "OSError: [Errno 5] Input/output error" for r in by["raising"]
    )
    assert hanging.calls == 1 and hanging.max_concurrent == 1
    assert len(by["hanging"]) >= 3
    assert all(not r.ok for r in by["hanging"])
    assert by["hanging"][0].error == "timeout after 0.1 s"
    assert by["hanging"][-1].error.startswith("timeout after 0.1 s (still running after")
    assert threads <= 3  # the pool of 2 plus the one written off in the hung call


def test_a_hung_monitor_is_restarted_only_after_it_returns(hanging: Hanging) -> None:
    """No second call starts while the first hangs; once it returns the monitor runs again and its late result is dropped."""
    q: queue.Queue[Reading] = queue.Queue()
    sched = Scheduler([hanging], q.put, workers=1)
    sched.start()
    try:
        assert wait_for(lambda: any(not r.ok for r in list(q.queue)))
        time.sleep(0.3)
        assert hanging.calls == 1
        hanging.release.set()
        assert wait_for(lambda: hanging.calls >= 2)
        assert wait_for(lambda: any(r.ok for r in list(q.queue)))
    finally:
        sched.stop()
    readings = drain(q)
    assert hanging.max_concurrent == 1
    first_ok = next(i for i, r in enumerate(readings) if r.ok)
    assert all(not r.ok for r in readings[:first_ok])
    assert readings[first_ok].values == {"late": True}
    assert sched.stats()[0].timeouts >= 1


def test_one_worker_and_a_hung_monitor_do_not_starve_the_others(hanging: Hanging) -> None:
    """With a pool of one, a hung poll is replaced by a new worker so the fast monitor keeps running."""
    fast = Fast()
    q: queue.Queue[Reading] = queue.Queue()
    sched = Scheduler([hanging, fast], q.put, workers=1)
    sched.start()
    try:
        assert wait_for(lambda: fast.calls >= 10)
    finally:
        sched.stop()


def test_stop_returns_promptly_with_a_poll_still_hung(hanging: Hanging) -> None:
    """stop() does not wait for a hung poll."""
    sched = Scheduler([hanging, Fast()], lambda r: None, workers=2)
    sched.start()
    assert wait_for(lambda: hanging.calls == 1)
    t0 = time.monotonic()
    sched.stop(timeout_s=1.0)
    assert time.monotonic() - t0 < 2.0


def test_progress_timestamps_advance() -> None:
    """last_progress() reports the dispatcher loop and each monitor's last completed poll."""
    fast = Fast(interval_s=0.02)
    sched = Scheduler([fast], lambda r: None)
    sched.start()
    try:
        assert wait_for(lambda: fast.calls >= 2)
        first = sched.last_progress()
        assert wait_for(lambda: fast.calls >= 6)
        second = sched.last_progress()
    finally:
        sched.stop()
    assert set(first) == {"scheduler", "monitor:fast"}
    assert second["monitor:fast"] > first["monitor:fast"]
    assert second["scheduler"] >= first["scheduler"]


def test_a_failing_sink_does_not_stop_polling() -> None:
    """Exceptions raised by the sink are logged and polling continues."""
    fast = Fast()

    def sink(r: Reading) -> None:
        raise RuntimeError("queue closed")

    sched = Scheduler([fast], sink)
    sched.start()
    try:
        assert wait_for(lambda: fast.calls >= 5)
    finally:
        sched.stop()


def test_wrong_return_type_is_a_failed_reading() -> None:
    """A poll that returns something other than list[Reading] yields ok=False."""

    class Bad:
        name, interval_s, timeout_s = "bad", 1.0, 1.0

        def poll(self) -> list[Reading]:
            return {"not": "a list"}  # type: ignore[return-value]

    (r,) = poll_once([Bad()])
    assert not r.ok and "not list[Reading]" in r.error


def test_duplicate_monitor_names_are_refused() -> None:
    """Two monitors with one name would mix their progress and failures."""
    with pytest.raises(ValueError):
        Scheduler([Fast("a"), Fast("a")], lambda r: None)


def test_poll_once_runs_every_monitor_in_parallel_with_timeouts(hanging: Hanging) -> None:
    """poll_once gives each monitor's readings in order, ok=False for raising and hanging ones, within the longest timeout."""
    t0 = time.monotonic()
    readings = poll_once([Fast("a"), Raising(), hanging, Fast("b")])
    elapsed = time.monotonic() - t0
    assert [(r.source, r.ok) for r in readings] == [
        ("a", True),
        ("raising", False),
        ("hanging", False),
        ("b", True),
    ]
    assert readings[2].error == "timeout after 0.1 s"
    assert elapsed < 2.0


def test_registry_builds_monitors_and_isolates_broken_factories(tmp_path: Path) -> None:
    """register() adds a factory in one line; a factory that raises becomes a BrokenMonitor that fails its polls."""

    @register("test-fast")
    def fast_factory(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
        return [Fast("fast-1"), Fast("fast-2")]

    @register("test-broken")
    def broken_factory(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
        raise ValueError("printer[0].device missing")

    try:
        with pytest.raises(ValueError):
            register("test-fast")(broken_factory)
        ctx = MonitorContext(state_dir=tmp_path)
        built = build_monitors(Config(), ctx, names=["test-fast", "test-broken"])
        assert [m.name for m in built] == ["fast-1", "fast-2", "test-broken"]
        assert isinstance(built[2], BrokenMonitor)
        readings = poll_once(built)
        assert [r.ok for r in readings] == [True, True, False]
        assert "printer[0].device missing" in readings[2].error
    finally:
        registry.unregister("test-fast")
        registry.unregister("test-broken")
    assert "test-fast" not in registry.registered()


def test_context_from_config_and_load_all() -> None:
    """MonitorContext follows the config's roots and target; load_all imports the package's modules."""
    ctx = MonitorContext.from_config(Config())
    assert ctx.roots.sys == Path("/sys") and ctx.shell.mode == "local"
    package_dir = Path(registry.__file__).parent
    for name in registry.load_all():
        assert (package_dir / f"{name}.py").exists() or (package_dir / name).is_dir()

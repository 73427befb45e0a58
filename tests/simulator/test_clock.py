"""The steppable wall clock (libfaketime preloaded into one child), checked on a real child process.

A Python child reports time.time(), CLOCK_BOOTTIME and CLOCK_MONOTONIC on
request; stepping the FakeClock must move only the first, and the agent's
clock-offset reader must see exactly that step. The host clock is never
touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.clock import FakeClock, find_libfaketime, format_offset

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from drivers.system import read_clock_offset
for line in sys.stdin:
    threading.Event().wait(0.05)  # timed waits keep working under the preload
    print(json.dumps({
        "wall": time.time(),
        "boot": time.clock_gettime(time.CLOCK_BOOTTIME),
        "mono": time.clock_gettime(time.CLOCK_MONOTONIC),
        "offset": read_clock_offset().offset_s,
    }), flush=True)
"""


def test_offsets_are_written_in_the_timestamp_file_form() -> None:
    """Offsets render as libfaketime's relative form: sign always, no useless decimals."""
    assert format_offset(0.0) == "+0"
    assert format_offset(-0.0) == "+0"
    assert format_offset(3600) == "+3600"
    assert format_offset(-120.5) == "-120.5"
    assert format_offset(0.25) == "+0.25"


def test_step_moves_only_the_childs_wall_clock(tmp_path: Path) -> None:
    """After step(3600) the child's time.time() is an hour ahead, its boot-time and monotonic clocks are not, and read_clock_offset sees the step."""
    if find_libfaketime() is None:
        pytest.skip("libfaketime not installed")
    clock = FakeClock(tmp_path / "faketime").start()
    assert (tmp_path / "faketime").read_text() == "+0\n"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **clock.env()},
    )
    assert child.stdin is not None and child.stdout is not None

    def sample() -> dict[str, float]:
        child.stdin.write("x\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line, child.stderr.read() if child.stderr else ""
        out: dict[str, float] = json.loads(line)
        return out

    try:
        before = sample()
        assert abs(before["wall"] - time.time()) < 5
        assert clock.step(3600) == 3600
        after = sample()
        while after["wall"] - before["wall"] < 3000 and time.time() - before["wall"] < 5:
            after = sample()  # the child re-reads the offset within CACHE_S
        clock.step(-3600)
        back = sample()
        while back["wall"] - after["wall"] > 0 and time.time() - before["wall"] < 10:
            back = sample()
    finally:
        child.kill()
        child.wait(5)
    assert 3599 < after["wall"] - before["wall"] < 3605
    assert 0 <= after["boot"] - before["boot"] < 5
    assert 0 <= after["mono"] - before["mono"] < 5
    assert 3599 < after["offset"] - before["offset"] < 3601
    assert abs(back["offset"] - before["offset"]) < 1
    assert abs(time.time() - back["wall"]) < 5  # this process was never on the fake clock

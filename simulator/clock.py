"""A wall clock that can be stepped for one process tree: libfaketime, preloaded.

The host clock is never touched. `FakeClock(path)` owns a libfaketime
timestamp file; `env()` is what a child needs to see it (LD_PRELOAD of
libfaketime.so.1, FAKETIME_TIMESTAMP_FILE, FAKETIME_CACHE_DURATION=1 so the
file is re-read at most once a second, FAKETIME_DONT_FAKE_MONOTONIC=1 so
CLOCK_MONOTONIC and CLOCK_BOOTTIME stay real). `step(seconds)` moves the
child's time.time() by that much at once (within CACHE_S), as an NTP step
or an RTC reset does on a terminal, while its monotonic and boot-time
clocks run on.

Why not FAKETIME_NO_CACHE=1: libfaketime then re-reads the file on every
clock call, and its wrappers around timed waits call the clock in a loop;
the agent (about ten threads in timed waits) measured 3 s user + 8.5 s
system CPU per 6 s instead of 0.5 + 0.1 s, which starved its monitors into
monitor_timeout. With a 1 s cache it was 0.9 + 0.4 s.

Known limit of libfaketime 0.9.10 (Debian bookworm) with
FAKETIME_DONT_FAKE_MONOTONIC=1: its clock_nanosleep() wrapper mangles
absolute CLOCK_MONOTONIC deadlines, so Python >= 3.11's time.sleep()
raises OSError(EINVAL) in the preloaded process (upstream issue
wolfcw/libfaketime#426). Event/Condition/lock waits, select and
subprocess are not affected; the agent's screenshot path is (it then
records "skipped:OSError: [Errno 22] Invalid argument").
"""

from __future__ import annotations

import glob
from pathlib import Path

CACHE_S = 1  # how stale the child's view of the offset may be

LIB_GLOBS = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def find_libfaketime() -> Path | None:
    """Path of libfaketime.so.1 (Debian package `libfaketime`), or None when not installed."""
    for pattern in LIB_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[0])
    return None


def format_offset(offset_s: float) -> str:
    """The timestamp-file form of a relative offset: "+0", "+3600", "-120.5"."""
    text = f"{offset_s:+.3f}".rstrip("0").rstrip(".")
    return "+0" if text in ("+", "-", "-0") else text


class FakeClockError(RuntimeError):
    """libfaketime is missing."""


class FakeClock:
    """A libfaketime timestamp file holding the offset of the child's wall clock."""

    def __init__(self, path: Path, lib: Path | None = None) -> None:
        found = lib or find_libfaketime()
        if found is None:
            raise FakeClockError("libfaketime not installed (Debian package libfaketime)")
        self.lib = found
        self.path = Path(path)
        self.offset_s = 0.0

    def start(self) -> FakeClock:
        """Write offset +0 (the child starts on the true time)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        return self

    def env(self) -> dict[str, str]:
        """Environment variables that put a child (and its children) on this clock."""
        return {
            "LD_PRELOAD": str(self.lib),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": str(CACHE_S),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, seconds: float) -> float:
        """Move the wall clock by seconds (cumulative, seen within CACHE_S); returns the total."""
        self.offset_s += float(seconds)
        self._write()
        return self.offset_s

    def _write(self) -> None:
        tmp = self.path.with_name("." + self.path.name + ".tmp")
        tmp.write_text(format_offset(self.offset_s) + "\n")
        tmp.replace(self.path)

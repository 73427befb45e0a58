"""Android: `screencap -p` in the device's root shell or over `adb exec-out`, and focus lines.

The focus parser here is a small local one (mCurrentFocus / mFocusedApp lines
of `dumpsys window`); the full dumpsys-window parser lives in drivers/android.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.screen.errors import ScreenTimeout, ScreenUnavailable
from drivers.shell import Shell, ShellTimeout, ShellUnavailable

SCREENCAP = "screencap -p"
DUMPSYS_WINDOW = "dumpsys window"


def grab_android(shell: Shell, timeout_s: float) -> bytes:
    """PNG bytes from `screencap -p` (mode android: local root shell; mode adb: exec-out)."""
    label = "adb" if shell.mode == "adb" else "android"
    try:
        r = shell.run(SCREENCAP, timeout_s, binary=True)
    except ShellTimeout as e:
        raise ScreenTimeout(f"{label}: screencap: no image within {timeout_s:g} s") from e
    except ShellUnavailable as e:
        raise ScreenUnavailable(f"{label}: {e}") from e
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = err[-1][:160] if err else f"exit {r.returncode}"
        raise ScreenUnavailable(f"{label}: screencap: {reason}")
    return r.stdout


@dataclass(frozen=True)
class FocusEntry:
    """One non-null mCurrentFocus / mFocusedApp value."""

    field: str  # "mCurrentFocus" | "mFocusedApp"
    raw: str  # the value as printed
    component: str  # "pkg/.Activity", "pkg/pkg.Activity" or "pkg" ("" if none found)

    @property
    def expanded(self) -> str:
        """The component with a leading-dot activity expanded ("pkg/pkg.Activity")."""
        pkg, sep, act = self.component.partition("/")
        return f"{pkg}/{pkg}{act}" if sep and act.startswith(".") else self.component


_FOCUS = re.compile(r"^\s*(mCurrentFocus|mFocusedApp)=(.*?)\s*$", re.M)
_COMPONENT = re.compile(r"\bu\d+ ([A-Za-z0-9_.$]+(?:/[A-Za-z0-9_.$]+)?)")


def parse_focus_lines(text: str) -> list[FocusEntry]:
    """Every non-null mCurrentFocus / mFocusedApp of a `dumpsys window` output, in order."""
    out: list[FocusEntry] = []
    for m in _FOCUS.finditer(text):
        value = m.group(2)
        if not value or value == "null":
            continue
        comps = _COMPONENT.findall(value)
        out.append(FocusEntry(m.group(1), value, comps[-1] if comps else ""))
    return out


def read_focus(shell: Shell, timeout_s: float) -> str:
    """Raw `dumpsys window` text; ScreenUnavailable if it cannot be read."""
    label = "adb" if shell.mode == "adb" else "android"
    try:
        r = shell.run(DUMPSYS_WINDOW, timeout_s)
    except ShellTimeout as e:
        raise ScreenTimeout(f"{label}: dumpsys window: no reply within {timeout_s:g} s") from e
    except ShellUnavailable as e:
        raise ScreenUnavailable(f"{label}: {e}") from e
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = err[-1][:160] if err else f"exit {r.returncode}"
        raise ScreenUnavailable(f"{label}: dumpsys window: {reason}")
    return r.text

"""Android: `screencap -p` in the device's root shell or over `adb exec-out`.

read_focus() returns the raw `dumpsys window` text for the privacy check
(parsed by drivers.android.parse_window_focus), with screen-typed errors.
"""

from __future__ import annotations

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

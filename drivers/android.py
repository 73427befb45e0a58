"""Android: `getprop` and `dumpsys window` parsers, and readers that run commands through Shell.

The readers work the same in an Android root shell (Shell mode "android") and
over adb (mode "adb"); they raise the Shell's typed errors (ShellUnavailable
when the device dropped off, ShellTimeout on a hang) and never swallow them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from drivers.network import AndroidConnectivity, parse_dumpsys_connectivity
from drivers.power import AndroidBattery, PowerStatus, android_power_status, parse_dumpsys_battery
from drivers.shell import Shell, ShellError

# --------------------------------------------------------------------------- getprop

_PROP = re.compile(r"^\[([^\]]*)\]: \[(.*)$")


def parse_getprop(text: str) -> dict[str, str]:
    """`[key]: [value]` lines → dict; CRLF endings and values spanning lines are handled.

    A value whose closing bracket is on a later line keeps its inner newlines
    ("\\n"); a value that never closes ends at the next `[key]: [` line.
    """
    props: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        m = _PROP.match(lines[i])
        i += 1
        if m is None:
            continue
        key, rest = m.group(1), m.group(2)
        if rest.endswith("]"):
            props[key] = rest[:-1]
            continue
        parts = [rest]
        closed = False
        while i < len(lines) and _PROP.match(lines[i]) is None:
            parts.append(lines[i])
            i += 1
            if parts[-1].endswith("]"):
                closed = True
                break
        value = "\n".join(parts)
        props[key] = value[:-1] if closed else value
    return props


# --------------------------------------------------------------------------- window focus


@dataclass(frozen=True)
class FocusedWindow:
    """One focus line or window header: package and activity when the title names them."""

    title: str  # window title as printed, e.g. "com.pos/com.pos.Main" or "StatusBar"
    package: str | None
    activity: str | None  # fully qualified class name
    source: str  # "mCurrentFocus" | "mFocusedApp" | "window_list"
    index: int  # n-th line of that kind (one per display), or window number


@dataclass(frozen=True)
class WindowFocus:
    """Every focus line of a `dumpsys window` dump and the chosen focused window."""

    focused: FocusedWindow | None
    current_focus: tuple[FocusedWindow | None, ...] = ()  # None where the line says =null
    focused_apps: tuple[FocusedWindow | None, ...] = ()
    windows: tuple[FocusedWindow, ...] = ()  # Android 13+ per-window blocks

    @property
    def package(self) -> str | None:
        """Package of the focused window."""
        return self.focused.package if self.focused else None

    @property
    def activity(self) -> str | None:
        """Activity class of the focused window."""
        return self.focused.activity if self.focused else None

    @property
    def candidates(self) -> tuple[FocusedWindow, ...]:
        """Every non-null window seen (focus lines first), without repeats of a title."""
        seen: set[str] = set()
        out: list[FocusedWindow] = []
        for w in (*self.current_focus, *self.focused_apps, *self.windows):
            if w is not None and w.title not in seen:
                seen.add(w.title)
                out.append(w)
        return tuple(out)

    @property
    def mismatch(self) -> bool:
        """True when the input-focus window and the focused app name different packages."""
        cf = {w.package for w in self.current_focus if w and w.package}
        fa = {w.package for w in self.focused_apps if w and w.package}
        return bool(cf and fa and not (cf & fa))


_FOCUS = re.compile(r"(mCurrentFocus|mFocusedApp)=(.*)$")
_USER_TITLE = re.compile(r"\bu\d+ ([^{}]*?)(?: t\d+)?\}")
_COMPONENT = re.compile(r"^([A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+)(?:/([A-Za-z0-9_.$]+))?$")
_WINDOW_HEADER = re.compile(r"^\s*Window #(\d+) Window\{[0-9a-fA-F]+ u\d+ ([^{}]*)\}:\s*$")


def _window(title: str, source: str, index: int) -> FocusedWindow:
    title = title.strip()
    m = _COMPONENT.match(title)
    if m is None:
        return FocusedWindow(title, None, None, source, index)
    pkg, act = m.group(1), m.group(2)
    if act is not None and act.startswith("."):
        act = pkg + act
    return FocusedWindow(title, pkg, act, source, index)


def parse_focus_value(
    value: str, source: str = "mCurrentFocus", index: int = 0
) -> FocusedWindow | None:
    """The right-hand side of `mCurrentFocus=` / `mFocusedApp=`; None for null or unreadable.

    Works for `Window{h u0 pkg/act}`, `Window{h u0 pkg}`, `ActivityRecord{h u0 pkg/.Act t7}`
    and the nested `AppWindowToken{.. token=Token{.. ActivityRecord{..}}}` (innermost wins).
    """
    v = value.strip()
    if not v or v == "null":
        return None
    titles = _USER_TITLE.findall(v)
    if not titles:
        return None
    return _window(titles[-1], source, index)


def _choose(
    cf: list[FocusedWindow | None], fa: list[FocusedWindow | None], windows: list[FocusedWindow]
) -> FocusedWindow | None:
    # 1. a display whose input focus and focused app agree (the last such: the top display)
    for c, a in reversed(list(zip(cf, fa, strict=False))):
        if c is not None and a is not None and c.package and c.package == a.package:
            return c
    # 2. the input focus, 3. the focused app: last non-null with a package
    for group in (cf, fa):
        for w in reversed(group):
            if w is not None and w.package:
                return w
    # 4. Android 13+: the top-most window that belongs to an activity
    for w in windows:
        if w.activity:
            return w
    for group in (cf, fa):
        for w in reversed(group):
            if w is not None:
                return w
    return None


def parse_window_focus(text: str) -> WindowFocus:
    """Parse `dumpsys window` (any section) for focus lines and window headers."""
    cf: list[FocusedWindow | None] = []
    fa: list[FocusedWindow | None] = []
    windows: list[FocusedWindow] = []
    for line in text.splitlines():
        m = _FOCUS.search(line)
        if m is not None:
            kind = m.group(1)
            target = cf if kind == "mCurrentFocus" else fa
            target.append(parse_focus_value(m.group(2), kind, len(target)))
            continue
        h = _WINDOW_HEADER.match(line)
        if h is not None:
            try:
                num = int(h.group(1))
            except ValueError:
                continue
            windows.append(_window(h.group(2), "window_list", num))
    return WindowFocus(_choose(cf, fa, windows), tuple(cf), tuple(fa), tuple(windows))


# --------------------------------------------------------------------------- pidof


def parse_pidof(text: str) -> tuple[int, ...]:
    """Space-separated pids from `pidof` (empty when none)."""
    out: list[int] = []
    for tok in text.split():
        try:
            pid = int(tok)
        except ValueError:
            continue
        if pid > 0:
            out.append(pid)
    return tuple(out)


# --------------------------------------------------------------------------- readers


def _text(shell: Shell, command: str, timeout_s: float) -> str:
    return shell.check(command, timeout_s).decode("utf-8", "replace")


def read_getprop(shell: Shell, timeout_s: float = 5.0) -> dict[str, str]:
    """All system properties."""
    return parse_getprop(_text(shell, "getprop", timeout_s))


def read_battery(shell: Shell, timeout_s: float = 5.0) -> AndroidBattery:
    """`dumpsys battery`, parsed."""
    return parse_dumpsys_battery(_text(shell, "dumpsys battery", timeout_s))


def read_power_status(shell: Shell, timeout_s: float = 5.0) -> PowerStatus:
    """`dumpsys battery` in the same PowerStatus shape as Linux sysfs."""
    return android_power_status(read_battery(shell, timeout_s))


def read_connectivity(shell: Shell, timeout_s: float = 10.0) -> AndroidConnectivity:
    """`dumpsys connectivity`, parsed."""
    return parse_dumpsys_connectivity(_text(shell, "dumpsys connectivity", timeout_s))


def read_window_focus(shell: Shell, timeout_s: float = 10.0) -> WindowFocus:
    """Plain `dumpsys window` (Android 13+ dropped the focus lines from `windows`)."""
    return parse_window_focus(_text(shell, "dumpsys window", timeout_s))


def read_logcat_tail(shell: Shell, lines: int = 500, timeout_s: float = 10.0) -> str:
    """The last `lines` lines of the log buffers (`logcat -d -t N`), as text."""
    return _text(shell, f"logcat -d -t {max(1, int(lines))}", timeout_s)


def pidof(shell: Shell, name: str, timeout_s: float = 5.0) -> tuple[int, ...]:
    """Pids of processes called `name`; empty when none (pidof's exit 1 with no output)."""
    r = shell.run(f"pidof {shlex.quote(name)}", timeout_s)
    if r.returncode not in (0, 1):
        err = r.stderr.decode("utf-8", "replace").strip()[:200]
        raise ShellError(f"pidof: exit {r.returncode}: {err}")
    return parse_pidof(r.text)

"""Android: `getprop` and `dumpsys window` parsers, and readers that run commands through Shell.

The readers work the same in an Android root shell (Shell mode "android") and
over adb (mode "adb"); they raise the Shell's typed errors (ShellUnavailable
when the device dropped off, ShellTimeout on a hang) and never swallow them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from drivers.network import AndroidConnectivity, parse_dumpsys_connectivity
from drivers.power import AndroidBattery, PowerStatus, android_power_status, parse_dumpsys_battery
from drivers.shell import Shell, ShellError, ShellResult
from drivers.system import Heartbeat

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


# --------------------------------------------------------------------------- dropbox

# `dumpsys dropbox` lists one entry per line (DropBoxManagerService.dump):
#   "2024-05-01 12:00:01 data_app_crash (text, 1234 bytes)"
# then, before Android 10, a preview line "    first 70 chars/with/newlines ..." for text
# entries; with --print each entry is preceded by a line of 40 '=' and followed by its
# whole text and a blank line. Times are the device's local time, whole seconds.
_DROPBOX_ENTRY = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+) "
    r"\(((compressed )?(text|data), (\d+) bytes|(no file)|(contents lost))\)\s*$"
)
_DROPBOX_SEPARATOR = "=" * 40
_DROPBOX_TOTAL = re.compile(r"^Drop box contents: (\d+) entries")

CRASH_TAGS = frozenset(
    {
        "data_app_crash",
        "system_app_crash",
        "system_server_crash",
        "data_app_native_crash",
        "system_app_native_crash",
        "system_server_native_crash",
        "SYSTEM_TOMBSTONE",
        "SYSTEM_TOMBSTONE_PROTO",
        "SYSTEM_TOMBSTONE_PROTO_WITH_HEADERS",
    }
)
ANR_TAGS = frozenset(
    {"data_app_anr", "system_app_anr", "system_server_anr", "system_server_watchdog"}
)


@dataclass(frozen=True)
class DropboxEntry:
    """One dropbox entry as `dumpsys dropbox` lists it (text only with --print)."""

    time: str  # "YYYY-MM-DD HH:MM:SS", device local time
    tag: str
    kind: str  # "text" | "data" | "no file" | "contents lost"
    compressed: bool = False
    size: int | None = None
    preview: str = ""  # the pre-Android-10 one-line preview
    text: str | None = None  # the whole entry (--print, text entries)

    @property
    def category(self) -> str:
        """ "crash", "anr" or "" (other tags: wtf, strictmode, boot, ...)."""
        if self.tag in CRASH_TAGS or self.tag.startswith("SYSTEM_TOMBSTONE"):
            return "crash"
        if self.tag in ANR_TAGS:
            return "anr"
        return ""


@dataclass(frozen=True)
class DropboxListing:
    """Every entry of one `dumpsys dropbox` output, oldest first."""

    entries: tuple[DropboxEntry, ...]
    total: int | None = None  # the "Drop box contents: N entries" header, when present

    def keyed(self) -> list[tuple[str, DropboxEntry]]:
        """(key, entry) with a key unique within the listing: time, tag and a repeat count."""
        seen: dict[tuple[str, str], int] = {}
        out: list[tuple[str, DropboxEntry]] = []
        for e in self.entries:
            n = seen.get((e.time, e.tag), 0)
            seen[(e.time, e.tag)] = n + 1
            out.append((f"{e.time} {e.tag} #{n}", e))
        return out


def parse_dumpsys_dropbox(text: str) -> DropboxListing:
    """`dumpsys dropbox` with or without --print (any Android version) → entries.

    Lines before the first entry (header, "Searching for:") and the trailing
    "(No entries found.)" / "Usage:" lines are skipped; a printed entry's text
    runs to the next separator line (its trailing blank lines dropped).
    """
    total: int | None = None
    entries: list[DropboxEntry] = []
    printed = False
    body: list[str] | None = None
    current: dict[str, Any] | None = None

    def close() -> None:
        nonlocal current, body
        if current is not None:
            if body is not None and current["kind"] == "text":
                while body and body[-1] == "":
                    body.pop()
                current["text"] = "\n".join(body) + ("\n" if body else "")
            entries.append(DropboxEntry(**current))
        current, body = None, None

    for raw in text.replace("\r\n", "\n").split("\n"):
        if raw == _DROPBOX_SEPARATOR:
            printed = True
            close()
            continue
        if body is not None:  # inside a printed entry: everything is its text
            body.append(raw)
            continue
        m = _DROPBOX_ENTRY.match(raw)
        if m is not None:
            close()
            current = {
                "time": m.group(1),
                "tag": m.group(2),
                "kind": m.group(5) or m.group(7) or m.group(8),
                "compressed": m.group(4) is not None,
                "size": int(m.group(6)) if m.group(6) else None,
            }
            if printed:
                body = []
            continue
        if current is not None and raw.startswith("    ") and not current.get("preview"):
            current["preview"] = raw.strip()
            continue
        t = _DROPBOX_TOTAL.match(raw)
        if t is not None:
            total = int(t.group(1))
    close()
    return DropboxListing(tuple(entries), total)


@dataclass(frozen=True)
class CrashInfo:
    """What a crash, ANR or tombstone text says about the process and the cause."""

    process: str = ""
    pid: int | None = None
    package: str = ""
    cause: str = ""  # exception line, ANR subject, or signal (+ abort message)


_HEADER = re.compile(r"^(Process|PID|Package|Subject|Cmdline): (.*)$")
_TOMB_PID = re.compile(r"^pid: (\d+), tid: \d+, name: .*?>>> (.*?) <<<")
_TOMB_SIGNAL = re.compile(r"^signal \d+ \(\w+\).*$")
_TOMB_ABORT = re.compile(r"^Abort message: '(.*)'\s*$")


def parse_crash_text(text: str) -> CrashInfo:
    """A dropbox crash/ANR entry or a tombstone → process, pid, package and cause.

    Java crashes (data_app_crash): "Process:", "PID:", "Package: pkg vN (name)"
    headers, a blank line, then the exception line. ANRs: the same headers and
    "Subject: Input dispatching timed out ...". Tombstones: "pid: N, tid: N,
    name: T  >>> process <<<", the "signal ..." line and "Abort message: '...'".
    """
    process, package, cause = "", "", ""
    pid: int | None = None
    signal_line, abort = "", ""
    lines = text.replace("\r\n", "\n").split("\n")
    in_headers = True
    for line in lines[:400]:
        if in_headers:
            h = _HEADER.match(line)
            if h is not None:
                key, value = h.group(1), h.group(2).strip()
                if key == "Process" and not process:
                    process = value
                elif key == "PID" and pid is None and value.isdigit():
                    pid = int(value)
                elif key == "Package" and not package:
                    package = value.split(" ")[0]
                elif key == "Subject" and not cause:
                    cause = value
                elif key == "Cmdline" and not process:
                    process = value
                continue
            if line == "" and (process or package):
                in_headers = False
                continue
        elif not cause and line.strip() and not line.startswith(("\t", " ", "*** ")):
            cause = line.strip()
        t = _TOMB_PID.match(line)
        if t is not None:
            pid = pid if pid is not None else int(t.group(1))
            process = process or t.group(2)
            continue
        if not signal_line and _TOMB_SIGNAL.match(line):
            signal_line = line.strip()
            continue
        a = _TOMB_ABORT.match(line)
        if a is not None and not abort:
            abort = a.group(1)
    if signal_line:
        cause = signal_line + (f"; abort: {abort}" if abort else "")
    return CrashInfo(process, pid, package, cause[:300])


# --------------------------------------------------------------------------- logcat

# `logcat -v threadtime`: "MM-DD HH:MM:SS.mmm  PID  TID L TAG     : message" (`-v year`
# puts the year first); "--------- beginning of main" lines mark buffers.
_LOGCAT_LINE = re.compile(
    r"^((?:\d{4}-)?\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\s+(\d+)\s+(\d+)\s+([VDIWEFAS])\s(.*?)\s*: (.*)$"
)


@dataclass(frozen=True)
class LogcatLine:
    """One `logcat -v threadtime` line."""

    time: str  # as printed: "MM-DD HH:MM:SS.mmm"
    pid: int
    tid: int
    level: str
    tag: str
    message: str
    raw: str


def parse_logcat_threadtime(text: str) -> list[LogcatLine]:
    """`logcat -v threadtime` text → lines; buffer markers and other lines are skipped."""
    out: list[LogcatLine] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        m = _LOGCAT_LINE.match(raw)
        if m is None:
            continue
        out.append(
            LogcatLine(
                m.group(1),
                int(m.group(2)),
                int(m.group(3)),
                m.group(4),
                m.group(5).strip(),
                m.group(6),
                raw,
            )
        )
    return out


# --------------------------------------------------------------------------- directory listings

# toybox `ls -l` (Android 6+): "-rw-r----- 1 tombstoned system 412345 2024-05-01 12:00 tombstone_00";
# old toolbox: "-rw------- system   system     123456 2013-01-01 12:00 tombstone_00" (no link count).
_LS_LINE = re.compile(
    r"^([-dlcbps][-rwxsStT]{9}\S*)\s+(?:\d+\s+)?(\S+)\s+(\S+)\s+(\d+)\s+"
    r"(\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d(?:\.\d+)?)?)(?:\s+[+-]\d{4})?\s+(.+)$"
)


@dataclass(frozen=True)
class DirEntry:
    """One file of an `ls -l` listing."""

    name: str
    size: int
    mtime: str  # as printed: "YYYY-MM-DD HH:MM"
    mode: str


@dataclass(frozen=True)
class DirListing:
    """A directory on the device: "ok" with its files, or "absent", "denied", "error"."""

    path: str
    state: str
    entries: tuple[DirEntry, ...] = ()
    error: str = ""


def parse_ls_l(text: str) -> list[DirEntry]:
    """`ls -l DIR` → regular files (the "total" line, directories and links skipped)."""
    out: list[DirEntry] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        m = _LS_LINE.match(raw)
        if m is None or not m.group(1).startswith("-"):
            continue
        out.append(DirEntry(m.group(6), int(m.group(4)), m.group(5), m.group(1)))
    return out


def listing_state(returncode: int, stdout: str, stderr: str) -> tuple[str, str]:
    """(state, error) of an `ls -l` run: a missing or unreadable dir is a state, not a failure."""
    low = stderr.lower()
    if "no such file" in low:
        return "absent", ""
    if "permission denied" in low:
        return "denied", ""
    if returncode != 0:
        return "error", stderr.strip()[:200] or f"exit {returncode}"
    return "ok", ""


# --------------------------------------------------------------------------- heartbeat


def parse_heartbeat(path: str, returncode: int, stdout: str, stderr: str) -> Heartbeat:
    """Output of `date +%s; stat -c %Y FILE` → the file's age on the device's own clock."""
    nums: list[int] = []
    for tok in stdout.split():
        try:
            nums.append(int(tok))
        except ValueError:
            continue
    if len(nums) >= 2:
        return Heartbeat(path, exists=True, age_s=float(nums[0] - nums[1]))
    low = stderr.lower()
    if "no such file" in low:
        return Heartbeat(path, exists=False)
    err = stderr.strip()[:200] or (f"exit {returncode}" if returncode else "no mtime in output")
    return Heartbeat(path, exists=False, error=err)


# --------------------------------------------------------------------------- readers: crashes, logs


def _decoded(r: ShellResult) -> tuple[str, str]:
    return r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def read_dropbox(shell: Shell, max_lines: int = 2000, timeout_s: float = 10.0) -> DropboxListing:
    """The dropbox summary (`dumpsys dropbox`, one line per entry), its newest `max_lines` lines."""
    cmd = f"dumpsys dropbox | tail -n {max(1, int(max_lines))}"
    return parse_dumpsys_dropbox(_text(shell, cmd, timeout_s))


def read_dropbox_entries(
    shell: Shell, time_: str, tag: str, max_bytes: int = 64 * 1024, timeout_s: float = 10.0
) -> list[DropboxEntry]:
    """The printed entries of one second and tag (`dumpsys dropbox --print DATE TIME TAG`).

    The service keeps an entry when every argument is part of its date or equals
    its tag, so date, time and tag pick exactly the entries listed with them.
    """
    date, _, hms = time_.partition(" ")
    words = " ".join(shlex.quote(w) for w in (date, hms, tag) if w)
    cmd = f"dumpsys dropbox --print {words} | head -c {max(1, int(max_bytes))}"
    listing = parse_dumpsys_dropbox(_text(shell, cmd, timeout_s))
    return [e for e in listing.entries if e.time == time_ and e.tag == tag]


def read_logcat_since(
    shell: Shell, since: str | None, max_lines: int = 2000, timeout_s: float = 10.0
) -> list[LogcatLine]:
    """Log lines at or after `since` ("MM-DD HH:MM:SS.mmm"), the first `max_lines` of them.

    With since None only the newest line is read (`-t 1`): the starting point.
    """
    if since is None:
        return parse_logcat_threadtime(_text(shell, "logcat -d -v threadtime -t 1", timeout_s))
    cmd = f"logcat -d -v threadtime -T {shlex.quote(since)} | head -n {max(1, int(max_lines))}"
    return parse_logcat_threadtime(_text(shell, cmd, timeout_s))


def list_dir(shell: Shell, path: str, timeout_s: float = 5.0) -> DirListing:
    """`ls -l PATH` on the device; absent or permission denied is a state, not an error."""
    r = shell.run(f"ls -l {shlex.quote(path)}", timeout_s)
    out, err = _decoded(r)
    state, error = listing_state(r.returncode, out, err)
    entries = tuple(parse_ls_l(out)) if state == "ok" else ()
    return DirListing(path, state, entries, error)


def read_heartbeat(shell: Shell, path: str, timeout_s: float = 5.0) -> Heartbeat:
    """Age of a file on the device by the device's own clock (`date +%s; stat -c %Y FILE`)."""
    r = shell.run(f"date +%s; stat -c %Y {shlex.quote(path)}", timeout_s)
    out, err = _decoded(r)
    return parse_heartbeat(path, r.returncode, out, err)

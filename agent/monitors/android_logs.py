"""Crash reports, ANRs and log errors read from an Android terminal (targets adb and android).

On target adb the agent runs on a Linux box beside the terminal, so the
watched dirs and log files of agent/monitors/watch.py would read the box, not
the device. This monitor reads the device through the Shell each interval:

- the dropbox (`dumpsys dropbox`): a new crash entry (data_app_crash,
  SYSTEM_TOMBSTONE, *_native_crash, ...) is a `crash:<process>` reading, a new
  ANR entry (data_app_anr, ...) an `anr:<process>` reading; the entry itself is
  read with `dumpsys dropbox --print DATE TIME TAG` (bounded) for the process
  and the cause;
- the crash dirs on the device (`ls -l`): on adb the configured
  `app.crash_dirs`/`tombstone_dirs`/`anr_dirs`, which name device paths; and
  /data/tombstones and /data/anr, whose new files are reported only while the
  dropbox cannot be read (the dropbox already carries every tombstone and ANR).
  A dir that is absent or denied is a state in the status reading, not an error;
- logcat (`logcat -d -v threadtime -T <last time>`, bounded per poll), kept to
  the POS app's lines when `app.process` is set (its pids, and lines naming
  it), matched against `app.log_patterns`: a `log_error:logcat` reading.

The catalog's event rules app.crash_report / app.anr / app.log_error read those
sources (one event per reading) with the same key, subject and values the
watched dirs give on target local (`path`, `line`). One "android_logs" status
reading per poll says what could be read. Texts are redacted here, before they
reach the engine, the flight recorder or a bundle. What was seen is kept in
<state_dir>/android-logs.json, so a crash while the agent was down is reported
once it is back and nothing is reported twice. The heartbeat file on the device
is read by the app monitor (agent/monitors/app.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.core.config import Config
from agent.core.files import atomic_write
from agent.core.model import Reading
from agent.core.redact import Redactor, redactor_for
from agent.monitors import Monitor, MonitorContext, register
from drivers import android
from drivers.shell import Shell, ShellError, ShellUnavailable

log = structlog.get_logger(__name__)

SHELL_TIMEOUT_S = 10.0
DROPBOX_MAX_LINES = 2000  # the service keeps 1000 entries by default, two lines each at most
ENTRY_MAX_BYTES = 64 * 1024
LOGCAT_MAX_LINES = 2000  # per poll; the next poll goes on from the last line read
MAX_EVENTS_PER_POLL = 10  # per source; the rest are counted in the status reading
PID_MEMORY_S = 600.0
MIN_INTERVAL_S = 2.0
RECHECK_CLOSED_DIRS = 15  # a default dir found absent or denied is listed again every N polls
DEFAULT_DIRS = {"/data/tombstones": "crash", "/data/anr": "anr"}
STATE_FILE = "android-logs.json"


def _key_of(kind: str) -> str:
    return "crash_report" if kind == "crash" else "anr"


@dataclass
class AndroidLogsMonitor:
    """Reads the device's dropbox, crash dirs and logcat; readings for the event rules."""

    cfg: Config
    shell: Shell
    state_path: Path
    redactor: Redactor
    clock: Callable[[], float] = time.monotonic
    name: str = "android_logs"
    _dropbox_keys: set[str] | None = field(default=None, init=False)
    _dropbox_mark: tuple[str, list[str]] | None = field(default=None, init=False)
    _dirs: dict[str, set[str]] = field(default_factory=dict, init=False)
    _since: str | None = field(default=None, init=False)
    _at_since: set[str] = field(default_factory=set, init=False)
    _primed_logcat: bool = field(default=False, init=False)
    _pids: dict[int, float] = field(default_factory=dict, init=False)
    _closed: dict[str, tuple[str, int]] = field(default_factory=dict, init=False)
    _patterns: list[re.Pattern[str]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._patterns = [re.compile(p) for p in self.cfg.app.log_patterns]
        self._load()

    @property
    def interval_s(self) -> float:
        # the app's interval, but no more often than MIN_INTERVAL_S: each poll is a few
        # dumpsys/ls/logcat runs on the terminal, and a crash report is not a second late
        return max(MIN_INTERVAL_S, self.cfg.app.interval_s)

    @property
    def timeout_s(self) -> float:
        return 6 * SHELL_TIMEOUT_S

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("android_logs_state_unreadable", path=str(self.state_path), error=str(e))
            return
        if not isinstance(data, dict) or data.get("device") != self._device():
            return  # another terminal's marks say nothing about this one
        mark = data.get("dropbox")
        if isinstance(mark, list) and len(mark) == 2 and isinstance(mark[0], str):
            self._dropbox_mark = (mark[0], [str(k) for k in mark[1] or []])
        dirs = data.get("dirs")
        if isinstance(dirs, dict):
            self._dirs = {str(d): {str(k) for k in keys} for d, keys in dirs.items()}
        since = data.get("logcat_since")
        if isinstance(since, str) and since:
            self._since = since
            self._at_since = {str(x) for x in data.get("logcat_at_since") or []}
            self._primed_logcat = True

    def _device(self) -> str:
        return f"{self.shell.mode}:{self.shell.adb_serial}"

    def _save(self) -> None:
        mark: list[Any] | None = None
        if self._dropbox_keys is not None:
            newest = max((k[:19] for k in self._dropbox_keys), default="")
            mark = [newest, sorted(k for k in self._dropbox_keys if k.startswith(newest))]
        elif self._dropbox_mark is not None:
            mark = [self._dropbox_mark[0], self._dropbox_mark[1]]
        data = {
            "device": self._device(),
            "dropbox": mark,
            "dirs": {d: sorted(keys) for d, keys in self._dirs.items()},
            "logcat_since": self._since or "",
            "logcat_at_since": sorted(self._at_since),
        }
        body = json.dumps(data, sort_keys=True).encode()
        try:
            if self.state_path.read_bytes() == body:
                return
        except OSError:
            pass
        try:
            atomic_write(self.state_path, body, durable=False)
        except OSError as e:
            log.warning("android_logs_state_not_saved", path=str(self.state_path), error=str(e))

    # ------------------------------------------------------------------ the poll

    def poll(self) -> list[Reading]:
        status: dict[str, Any] = {"reachable": True}
        events: list[Reading] = []
        failures: list[str] = []
        try:
            dropbox_ok = self._poll_dropbox(status, events, failures)
            self._poll_dirs(dropbox_ok, status, events)
            self._poll_logcat(status, events, failures)
        except ShellUnavailable as e:  # the device dropped off: adb.offline says so
            status = {"reachable": False, "error": str(e)[:200]}
        self._save()  # what was read is reported now, never again
        attempted = status.pop("_attempted", 0)
        if failures and len(failures) == attempted and not events:
            raise ShellError("; ".join(failures))  # nothing could be read: agent.monitor_failed
        return [*events, Reading(self.name, status)]

    def _attempt(self, status: dict[str, Any]) -> None:
        status["_attempted"] = status.get("_attempted", 0) + 1

    # dropbox -------------------------------------------------------------

    def _poll_dropbox(
        self, status: dict[str, Any], events: list[Reading], failures: list[str]
    ) -> bool:
        self._attempt(status)
        try:
            listing = android.read_dropbox(self.shell, DROPBOX_MAX_LINES, SHELL_TIMEOUT_S)
        except ShellUnavailable:
            raise
        except ShellError as e:
            status["dropbox"] = "error"
            status["dropbox_error"] = str(e)[:200]
            failures.append(f"dropbox: {e}")
            return False
        keyed = listing.keyed()
        keys = {k for k, _ in keyed}
        if self._dropbox_keys is not None:
            new = [(k, e) for k, e in keyed if k not in self._dropbox_keys]
        elif self._dropbox_mark is not None:  # first poll after a restart: go on from the mark
            last, at_last = self._dropbox_mark
            new = [
                (k, e) for k, e in keyed if e.time > last or (e.time == last and k not in at_last)
            ]
        else:
            new = []  # first poll ever: what is there is history
        self._dropbox_keys = keys
        wanted = [(k, e) for k, e in new if e.category]
        status["dropbox"] = "ok"
        status["dropbox_entries"] = len(listing.entries)
        status["dropbox_new"] = len(new)
        for _key, entry in wanted[:MAX_EVENTS_PER_POLL]:
            events.append(self._dropbox_reading(entry, keyed))
        if len(wanted) > MAX_EVENTS_PER_POLL:
            status["dropbox_not_reported"] = len(wanted) - MAX_EVENTS_PER_POLL
            log.warning("android_dropbox_burst", new=len(wanted), reported=MAX_EVENTS_PER_POLL)
        return True

    def _dropbox_reading(
        self, entry: android.DropboxEntry, keyed: list[tuple[str, android.DropboxEntry]]
    ) -> Reading:
        info = android.CrashInfo()
        detail_error = ""
        if entry.kind == "text":
            try:
                printed = android.read_dropbox_entries(
                    self.shell, entry.time, entry.tag, ENTRY_MAX_BYTES, SHELL_TIMEOUT_S
                )
            except ShellUnavailable:
                raise
            except ShellError as e:
                printed, detail_error = [], str(e)[:200]
            # the n-th entry of that second and tag in the listing is the n-th printed one
            same = [e for _, e in keyed if e.time == entry.time and e.tag == entry.tag]
            index = next((i for i, e in enumerate(same) if e is entry), 0)
            if index < len(printed) and printed[index].text:
                info = android.parse_crash_text(printed[index].text or "")
        if not info.cause and entry.preview:
            info = android.parse_crash_text(entry.preview.replace("/", "\n"))
        subject = info.process or info.package or entry.tag
        path = f"dropbox:{entry.tag}@{entry.time}"
        summary = f"{entry.tag} {subject}" + (f": {info.cause}" if info.cause else "")
        values: dict[str, Any] = {
            "path": path,
            "tag": entry.tag,
            "time": entry.time,
            "process": info.process,
            "pid": info.pid,
            "package": info.package,
            "cause": info.cause,
            "pos_app": bool(self.cfg.app.process)
            and self.cfg.app.process in (info.process, info.package),
            "summary": summary[:300],
        }
        if detail_error:
            values["detail_error"] = detail_error
        return self._event(f"{entry.category}:{subject}", values)

    # dirs ----------------------------------------------------------------

    def _watched_dirs(self) -> dict[str, tuple[str, bool]]:
        """dir → (category, configured); configured dirs always raise, defaults as fallback."""
        a = self.cfg.app
        out: dict[str, tuple[str, bool]] = {d: (c, False) for d, c in DEFAULT_DIRS.items()}
        if self.shell.mode == "adb":  # on android the local watcher follows them (inotify)
            for d in (*a.crash_dirs, *a.tombstone_dirs):
                out[d] = ("crash", True)
            for d in a.anr_dirs:
                out[d] = ("anr", True)
        else:
            for d in (*a.crash_dirs, *a.tombstone_dirs, *a.anr_dirs):
                out.pop(d, None)
        return out

    def _poll_dirs(self, dropbox_ok: bool, status: dict[str, Any], events: list[Reading]) -> None:
        states: list[str] = []
        for path, (category, configured) in self._watched_dirs().items():
            closed = self._closed.get(path)
            if closed is not None and not configured and closed[1] > 0:
                self._closed[path] = (closed[0], closed[1] - 1)  # denied on a user build: stays so
                states.append(f"{path}={closed[0]}")
                continue
            try:
                listing = android.list_dir(self.shell, path, SHELL_TIMEOUT_S)
            except ShellUnavailable:
                raise
            except ShellError as e:  # a timeout: try again next poll
                states.append(f"{path}=error")
                log.warning("android_dir_unreadable", path=path, error=str(e))
                continue
            if listing.state != "ok":
                states.append(f"{path}={listing.state}")
                self._closed[path] = (listing.state, RECHECK_CLOSED_DIRS)
                continue
            self._closed.pop(path, None)
            states.append(f"{path}=ok:{len(listing.entries)}")
            files = {f"{f.name}|{f.size}|{f.mtime}": f for f in listing.entries}
            before = self._dirs.get(path)
            self._dirs[path] = set(files)
            if before is None or not (configured or not dropbox_ok):
                continue  # first listing: history; a default dir while the dropbox works: state only
            new = sorted((f for k, f in files.items() if k not in before), key=lambda f: f.name)
            for f in new[:MAX_EVENTS_PER_POLL]:
                full = f"{path.rstrip('/')}/{f.name}"
                values: dict[str, Any] = {"path": full, "size": f.size, "mtime": f.mtime}
                values["summary"] = f"{_key_of(category)} file {full}"
                events.append(self._event(f"{category}:{f.name}", values))
        status["dirs"] = " ".join(states)

    # logcat --------------------------------------------------------------

    def _app_pids(self, now: float) -> set[int]:
        process = self.cfg.app.process
        if not process:
            return set()
        try:
            for pid in android.pidof(self.shell, process, SHELL_TIMEOUT_S):
                self._pids[pid] = now
        except ShellUnavailable:
            raise
        except ShellError as e:
            log.warning("android_pidof_failed", process=process, error=str(e))
        for pid, seen in list(self._pids.items()):
            if now - seen > PID_MEMORY_S:
                del self._pids[pid]
        return set(self._pids)

    def _learn_pids(self, lines: list[android.LogcatLine], now: float) -> None:
        """Pids named next to the package: "Start proc 4242:pkg/u0a1", "Process: pkg, PID: 4242"."""
        pkg = re.escape(self.cfg.app.process)
        found = re.compile(rf"\b(\d+):{pkg}/|\b{pkg}, PID: (\d+)")
        for ln in lines:
            m = found.search(ln.message)
            if m is not None:
                self._pids[int(m.group(1) or m.group(2))] = now

    def _poll_logcat(
        self, status: dict[str, Any], events: list[Reading], failures: list[str]
    ) -> None:
        if not self._patterns:
            return
        self._attempt(status)
        now = self.clock()
        try:
            lines = android.read_logcat_since(
                self.shell,
                self._since if self._primed_logcat else None,
                LOGCAT_MAX_LINES,
                SHELL_TIMEOUT_S,
            )
        except ShellUnavailable:
            raise
        except ShellError as e:
            status["logcat"] = "error"
            status["logcat_error"] = str(e)[:200]
            failures.append(f"logcat: {e}")
            return
        status["logcat"] = "ok"
        if not self._primed_logcat:  # the starting point: only lines after it count
            self._primed_logcat = True
            self._advance(lines)
            status["logcat_lines"] = 0
            return
        fresh = [ln for ln in lines if not (ln.time == self._since and ln.raw in self._at_since)]
        self._advance(lines)
        process = self.cfg.app.process
        if process:
            pids = self._app_pids(now)
            self._learn_pids(fresh, now)
            pids |= set(self._pids)
            fresh = [ln for ln in fresh if ln.pid in pids or process in ln.message]
        status["logcat_lines"] = len(fresh)
        matched = [ln for ln in fresh if any(p.search(ln.raw) for p in self._patterns)]
        for ln in matched[:MAX_EVENTS_PER_POLL]:
            values = {"path": "logcat", "line": ln.raw, "pid": ln.pid, "tag": ln.tag}
            values["summary"] = f"log error in logcat: {ln.raw[:200]}"
            events.append(self._event("log_error:logcat", values))
        status["logcat_matches"] = len(matched)
        if len(matched) > MAX_EVENTS_PER_POLL:
            status["logcat_not_reported"] = len(matched) - MAX_EVENTS_PER_POLL

    def _advance(self, lines: list[android.LogcatLine]) -> None:
        if not lines:
            return
        last = lines[-1].time
        at = {ln.raw for ln in lines if ln.time == last}
        self._at_since = (self._at_since | at) if last == self._since else at
        self._since = last

    # ------------------------------------------------------------------ helpers

    def _event(self, source: str, values: dict[str, Any]) -> Reading:
        clean = self.redactor.obj(values)
        return Reading(source, clean if isinstance(clean, dict) else values)


@register("android_logs")
def android_logs_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """The monitor on targets adb and android; none on target local (watch.py reads the box)."""
    if cfg.agent.target not in ("adb", "android"):
        return []
    return [AndroidLogsMonitor(cfg, ctx.shell, ctx.state_dir / STATE_FILE, redactor_for(cfg))]

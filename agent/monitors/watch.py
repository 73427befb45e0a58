"""Watched directories and log tailing: crash/ANR/tombstone dirs, POS logs, the trigger dir.

- `CrashDirWatcher`: new (or rewritten) files in crash_dirs / tombstone_dirs
  (fault app.crash_report) and anr_dirs (app.anr). The watchdog Observer gives
  prompt events; a periodic rescan catches anything inotify missed and dirs
  created later. A small persisted state (name → mtime per dir) means a file
  is reported once: files that appeared while the agent was down are reported
  once at start, files already seen never again; a dir seen for the first
  time is taken as a baseline (its existing files are not reported).
- `LogTailer`: follows POS log files across rotation (rename + new file: the
  rest of the old file is read first) and truncation (size below the read
  position); lines matching any configured regex go to a callback (the caller
  redacts). Polls stat every interval: sturdier than inotify for logs.
  Starts at the end of files present at start; a file that appears later is
  read from its beginning.
- `TriggerDirWatcher`: a file dropped in capture.trigger_dir is a manual
  report (note text plus an optional "contact:" line); it is removed once the
  callback returned. Files left there while the agent was down are handled at
  start. Writers should write a dot-file and rename it into place (dot-files
  are ignored); events are also debounced by `settle_s`. A file that cannot be
  removed (read-only file system, EACCES) is reported once: its identity
  (dev, inode, mtime, size) is remembered (persisted beside the state) and the
  rescan passes it over until it changes.

Every file is read through `agent.core.files.open_regular` (O_NOFOLLOW |
O_NONBLOCK, fstat'ed to be a regular file, read from that descriptor): these
directories are writable by others, who may swap a file for a symlink to a
file only the agent can read (the check is on what was opened, so a
RENAME_EXCHANGE race cannot win) or for a FIFO that would block the watcher.

Every callback runs on the watcher's own thread; its exceptions are logged.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent.core.config import Config
from agent.core.files import atomic_write, open_regular, read_fd, read_regular, stat_regular
from agent.core.redact import SNIFF_BYTES, sniff_encoding

log = structlog.get_logger(__name__)

CRASH_KEY = "app.crash_report"
ANR_KEY = "app.anr"
MAX_STATE_ENTRIES = 5000  # per watched dir
TRIGGER_MAX_BYTES = 64 * 1024
MAX_STUCK_TRIGGERS = 200  # remembered trigger files that could not be removed


@dataclass(frozen=True)
class WatchedDir:
    """A directory whose new files raise `key`."""

    path: Path
    key: str


def dirs_from_config(cfg: Config) -> list[WatchedDir]:
    """crash_dirs and tombstone_dirs → app.crash_report, anr_dirs → app.anr."""
    app = cfg.app
    out = [WatchedDir(Path(d), CRASH_KEY) for d in [*app.crash_dirs, *app.tombstone_dirs]]
    out += [WatchedDir(Path(d), ANR_KEY) for d in app.anr_dirs]
    return out


# --------------------------------------------------------------------------- shared machinery


class _Handler(FileSystemEventHandler):
    """Forwards file events (not directory ones) to the watcher's debounce queue."""

    def __init__(self, touch: Callable[[Path], None]) -> None:
        self._touch = touch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        if raw:
            self._touch(Path(os.fsdecode(raw)))


def _is_candidate(path: Path) -> bool:
    return not path.name.startswith(".")


class _DirWatcher:
    """Observer + debounce + periodic rescan over a set of directories."""

    def __init__(
        self,
        dirs: Sequence[Path],
        *,
        settle_s: float,
        rescan_s: float,
        use_observer: bool,
        name: str,
    ) -> None:
        self._dirs = list(dict.fromkeys(Path(d) for d in dirs))
        self._settle_s = settle_s
        self._rescan_s = rescan_s
        self._use_observer = use_observer
        self._name = name
        self._cond = threading.Condition()
        self._pending: dict[Path, float] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._scheduled: set[Path] = set()
        self.last_progress = time.monotonic()

    # hooks --------------------------------------------------------------
    def _initial(self) -> None:
        """Runs once on the watcher thread before events are handled."""

    def _handle(self, path: Path) -> None:
        """A path in one of the dirs changed and settled."""

    def _scan(self, directory: Path) -> None:
        """Periodic full look at one directory."""

    # lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Start the observer (dirs that exist now) and the watcher thread."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        if self._use_observer:
            self._observer = Observer()
            self._observer.daemon = True
            self._schedule_missing()
            self._observer.start()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the observer and the thread (bounded wait)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _touch(self, path: Path) -> None:
        if path.parent not in self._dirs or not _is_candidate(path):
            return
        with self._cond:
            self._pending[path] = time.monotonic()
            self._cond.notify_all()

    def _schedule_missing(self) -> None:
        if self._observer is None:
            return
        for d in self._dirs:
            if d in self._scheduled or not d.is_dir():
                continue
            try:
                self._observer.schedule(_Handler(self._touch), str(d), recursive=False)
                self._scheduled.add(d)
            except OSError as e:
                log.warning("watch_dir_unavailable", dir=str(d), error=str(e))

    def _run(self) -> None:
        self._safe(self._initial)
        next_scan = time.monotonic() + self._rescan_s
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                self.last_progress = now
                ready = [p for p, t in self._pending.items() if now - t >= self._settle_s]
                for p in ready:
                    del self._pending[p]
                wait = next_scan - now
                if self._pending:
                    wait = min(wait, self._settle_s - (now - min(self._pending.values())))
                if not ready and wait > 0:
                    self._cond.wait(wait)
                    continue
            for p in ready:
                self._safe(functools.partial(self._handle, p))
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self._rescan_s
                self._schedule_missing()
                for d in self._dirs:
                    self._safe(functools.partial(self._scan, d))

    def rescan(self) -> None:
        """One full look at every directory now, on the caller's thread (tools and tests)."""
        for d in self._dirs:
            self._safe(functools.partial(self._scan, d))

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # one bad file or callback must not end the watcher
            log.error("watcher_callback_failed", watcher=self._name, error=repr(e))


# --------------------------------------------------------------------------- crash / ANR dirs


def _files(directory: Path) -> dict[str, int]:
    """Regular, non-hidden files of a dir with their mtime_ns; {} when the dir is missing."""
    out: dict[str, int] = {}
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        out[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
                except OSError:
                    continue
    except OSError:
        return {}
    return out


class CrashDirWatcher(_DirWatcher):
    """Reports each new or rewritten file of the watched dirs once: on_file(key, path)."""

    def __init__(
        self,
        dirs: Sequence[WatchedDir],
        on_file: Callable[[str, Path], None],
        state_file: Path | None,
        *,
        settle_s: float = 1.0,
        rescan_s: float = 60.0,
        use_observer: bool = True,
    ) -> None:
        super().__init__(
            [d.path for d in dirs],
            settle_s=settle_s,
            rescan_s=rescan_s,
            use_observer=use_observer,
            name="crash-dir-watcher",
        )
        self._keys = {d.path: d.key for d in dirs}
        self._on_file = on_file
        self._state_file = state_file
        self._state: dict[str, dict[str, int]] = self._load()

    def _load(self) -> dict[str, dict[str, int]]:
        if self._state_file is None:
            return {}
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("watch_state_unreadable", file=str(self._state_file), error=str(e))
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(d): {str(n): int(m) for n, m in files.items() if isinstance(m, int)}
            for d, files in data.items()
            if isinstance(files, dict)
        }

    def _save(self) -> None:
        if self._state_file is None:
            return
        tmp = self._state_file.with_name(f".{self._state_file.name}.tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._state, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self._state_file)
        except OSError as e:
            log.warning("watch_state_not_saved", file=str(self._state_file), error=str(e))

    def start(self) -> None:
        """Take a baseline of dirs never seen before (synchronously), then watch."""
        for d in self._dirs:
            if str(d) not in self._state:
                # first sight: a baseline, nothing reported (an absent dir starts empty)
                self._state[str(d)] = self._bounded(_files(d))
                log.info("watch_dir_baseline", dir=str(d), files=len(self._state[str(d)]))
        self._save()
        super().start()

    def _initial(self) -> None:
        for d in self._dirs:
            self._scan(d)  # reports what appeared while the agent was down

    @staticmethod
    def _bounded(files: dict[str, int]) -> dict[str, int]:
        if len(files) <= MAX_STATE_ENTRIES:
            return files
        newest = sorted(files.items(), key=lambda kv: kv[1])[-MAX_STATE_ENTRIES:]
        return dict(newest)

    def _scan(self, directory: Path) -> None:
        present = _files(directory)
        seen = self._state.setdefault(str(directory), {})
        # a file written to right now is left for its settled event or the next scan
        fresh_ns = time.time_ns() - int(self._settle_s * 1e9)
        for name, mtime in list(present.items()):
            if mtime > fresh_ns and seen.get(name) != mtime:
                self._touch(directory / name)  # handled once it has settled
                if name in seen:
                    present[name] = seen[name]
                else:
                    del present[name]
        new = sorted((mtime, name) for name, mtime in present.items() if seen.get(name) != mtime)
        changed = bool(new) or set(seen) - set(present)
        self._state[str(directory)] = self._bounded(present)
        if changed:
            self._save()
        for _, name in new:
            self._report(directory / name)

    def _handle(self, path: Path) -> None:
        try:
            st = stat_regular(path)
        except OSError:
            return  # gone, or a link / FIFO / device: never reported, never opened
        seen = self._state.setdefault(str(path.parent), {})
        if seen.get(path.name) == st.st_mtime_ns:
            return
        seen[path.name] = st.st_mtime_ns
        self._state[str(path.parent)] = self._bounded(seen)
        self._save()
        self._report(path)

    def _report(self, path: Path) -> None:
        key = self._keys[path.parent]
        log.info("watch_new_file", key=key, path=str(path))
        self._on_file(key, path)


def crash_watcher(
    cfg: Config,
    on_file: Callable[[str, Path], None],
    *,
    settle_s: float = 1.0,
    rescan_s: float = 60.0,
) -> CrashDirWatcher | None:
    """The crash/ANR/tombstone watcher of a config, with its state under the state dir.

    None on target adb: the dirs are on the device, read by agent/monitors/android_logs.py.
    """
    if cfg.agent.target == "adb":
        return None
    state = Path(cfg.agent.state_dir) / "watch-state.json"
    return CrashDirWatcher(
        dirs_from_config(cfg), on_file, state, settle_s=settle_s, rescan_s=rescan_s
    )


# --------------------------------------------------------------------------- trigger dir


@dataclass(frozen=True)
class ManualReport:
    """A report dropped in the trigger dir."""

    note: str
    contact: str
    file_name: str
    mtime: float


_CONTACT = re.compile(r"^\s*contact\s*:\s*(.*?)\s*$", re.IGNORECASE)


def parse_trigger(text: str) -> tuple[str, str]:
    """(note, contact) from a trigger file: the first "contact:" line is the contact."""
    note_lines: list[str] = []
    contact = ""
    found = False
    for line in text.splitlines():
        m = _CONTACT.match(line)
        if m and not found:
            contact, found = m.group(1), True
            continue
        note_lines.append(line)
    return "\n".join(note_lines).strip(), contact


class TriggerDirWatcher(_DirWatcher):
    """A file dropped in the dir → on_report(ManualReport); the file is removed after."""

    def __init__(
        self,
        directory: Path,
        on_report: Callable[[ManualReport], None],
        *,
        settle_s: float = 0.5,
        rescan_s: float = 5.0,
        use_observer: bool = True,
        state_file: Path | None = None,
    ) -> None:
        super().__init__(
            [directory],
            settle_s=settle_s,
            rescan_s=rescan_s,
            use_observer=use_observer,
            name="trigger-dir-watcher",
        )
        self._directory = Path(directory)
        self._on_report = on_report
        self._state_file = state_file
        # (dev, inode, mtime_ns, size) of files reported but not removable: reported once
        self._stuck: dict[tuple[int, int, int, int], str] = self._load_stuck()

    def _load_stuck(self) -> dict[tuple[int, int, int, int], str]:
        if self._state_file is None:
            return {}
        try:
            data = json.loads(read_regular(self._state_file, 1 << 20))
            return {
                (int(e[0]), int(e[1]), int(e[2]), int(e[3])): str(e[4])
                for e in data.get("stuck", [])
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError, IndexError) as e:
            log.warning("trigger_state_unreadable", file=str(self._state_file), error=str(e))
            return {}

    def _remember_stuck(self, ident: tuple[int, int, int, int], name: str) -> None:
        self._stuck[ident] = name
        while len(self._stuck) > MAX_STUCK_TRIGGERS:
            del self._stuck[next(iter(self._stuck))]
        if self._state_file is None:
            return
        data = {"stuck": [[*k, v] for k, v in self._stuck.items()]}
        try:
            atomic_write(self._state_file, json.dumps(data).encode(), durable=False)
        except OSError as e:
            log.warning("trigger_state_not_saved", file=str(self._state_file), error=str(e))

    def start(self) -> None:
        """Create the dir if needed, then watch it."""
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("trigger_dir_unavailable", dir=str(self._directory), error=str(e))
        super().start()

    def _initial(self) -> None:
        self._scan(self._directory)

    def _scan(self, directory: Path) -> None:
        # a file written to right now is left for its settled event or the next scan
        fresh_ns = time.time_ns() - int(self._settle_s * 1e9)
        for name, mtime in sorted(_files(directory).items()):
            if name.endswith(".failed"):
                continue
            if mtime > fresh_ns:
                self._touch(directory / name)  # handled once it has settled
            else:
                self._handle(directory / name)

    def _handle(self, path: Path) -> None:
        if path.name.endswith(".failed"):
            return
        try:
            fd, st = open_regular(path)  # no link followed, no FIFO waited on
        except OSError:
            return  # already handled and removed, vanished, or not a regular file
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            if ident in self._stuck:
                return  # reported already; it could not be removed
            if st.st_nlink != 1:
                # a hard link may name a file its creator cannot read: never read it
                log.warning("trigger_file_refused", file=path.name, reason="hard-linked")
                self._remove(path, ident, reported=False)
                return
            raw = read_fd(fd, TRIGGER_MAX_BYTES)
        except OSError:
            return
        finally:
            os.close(fd)
        note, contact = parse_trigger(raw.decode("utf-8", "replace"))
        report = ManualReport(note, contact, path.name, st.st_mtime)
        try:
            self._on_report(report)
        except Exception as e:
            log.error("trigger_report_failed", file=path.name, error=repr(e))
            try:
                path.rename(path.with_name(path.name + ".failed"))
            except OSError:
                self._remember_stuck(ident, path.name)
            return
        self._remove(path, ident, reported=True)

    def _remove(self, path: Path, ident: tuple[int, int, int, int], *, reported: bool) -> None:
        """Unlink the file read as `ident`; if it cannot go, remember it so it is handled once."""
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != ident[:2]:
                return  # swapped since it was read: the newcomer is handled on its own
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            self._remember_stuck(ident, path.name)
            log.error(
                "trigger_file_not_removed",
                file=path.name,
                error=str(e),
                reported=reported,
                note="handled once; passed over until it changes",
            )


def trigger_watcher(
    cfg: Config,
    on_report: Callable[[ManualReport], None],
    *,
    settle_s: float = 0.5,
    rescan_s: float = 5.0,
) -> TriggerDirWatcher | None:
    """The trigger-dir watcher of a config, or None when capture.trigger_dir is empty."""
    if not cfg.capture.trigger_dir:
        return None
    return TriggerDirWatcher(
        Path(cfg.capture.trigger_dir),
        on_report,
        settle_s=settle_s,
        rescan_s=rescan_s,
        state_file=Path(cfg.agent.state_dir) / "trigger-state.json",
    )


# --------------------------------------------------------------------------- log tailing


class _Tail:
    """Read state of one followed file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[bytes] | None = None
        self.ident: tuple[int, int] = (0, 0)
        self.pos = 0
        self.buf = b""
        self.refused = ""  # why the last open failed (logged once per reason)
        self.encoding: str | None = None  # sniffed from the file's start at the first read
        self.decoder: codecs.IncrementalDecoder | None = None  # for a UTF-16 file

    def open(self, at_end: bool) -> bool:
        try:
            fd, st = open_regular(self.path)  # a link or FIFO in the log dir is not followed
        except OSError as e:
            if self.refused != str(e) and not isinstance(e, FileNotFoundError):
                log.warning("log_file_unreadable", path=str(self.path), error=str(e))
            self.refused = str(e)
            return False
        self.refused = ""
        fh = os.fdopen(fd, "rb")
        self.close()
        self.fh, self.ident = fh, (st.st_dev, st.st_ino)
        self.pos = fh.seek(0, os.SEEK_END) if at_end else 0
        self.buf = b""
        self.encoding = self.decoder = None
        return True

    def utf8(self, data: bytes, at: int) -> bytes:
        """data, read at offset at, as UTF-8: a UTF-16 log (byte-order mark or NULs at
        its start) is decoded, so that lines split and redaction sees its digits."""
        if self.encoding is None and data and self.fh is not None:
            head = data if at == 0 else os.pread(self.fh.fileno(), SNIFF_BYTES, 0)
            self.encoding = sniff_encoding(head[:SNIFF_BYTES])
            if self.encoding != "utf-8":
                self.decoder = codecs.getincrementaldecoder(self.encoding)("replace")
        if self.decoder is None:
            return data
        text = self.decoder.decode(data)
        if at == 0 and text.startswith("\ufeff"):
            text = text[1:]
        return text.encode("utf-8")

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class LogTailer:
    """Follows log files and calls on_match(path, line) for lines matching any pattern."""

    def __init__(
        self,
        paths: Iterable[str | Path],
        patterns: Iterable[str],
        on_match: Callable[[Path, str], None],
        *,
        interval_s: float = 1.0,
        max_line_bytes: int = 8192,
        max_matches_per_poll: int = 100,
        max_read_bytes_per_poll: int = 4 << 20,
    ) -> None:
        self._tails = [_Tail(Path(p)) for p in dict.fromkeys(str(p) for p in paths)]
        self._patterns = [re.compile(p) for p in patterns]
        self._on_match = on_match
        self._interval_s = interval_s
        self._max_line = max_line_bytes
        self._max_matches = max_matches_per_poll
        self._max_read = max_read_bytes_per_poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self.dropped_matches = 0
        self.last_progress = time.monotonic()

    def start(self) -> None:
        """Open the files at their end and follow them on a thread."""
        self.prime()
        self._thread = threading.Thread(target=self._run, name="log-tailer", daemon=True)
        self._thread.start()

    def prime(self) -> None:
        """Position on the end of files present now (done by start(); for manual polling)."""
        if not self._started:
            for t in self._tails:
                t.open(at_end=True)
            self._started = True

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop following and close the files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for t in self._tails:
            t.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_progress = time.monotonic()
            try:
                self.poll()
            except Exception as e:
                log.error("log_tail_failed", error=repr(e))
            self._stop.wait(self._interval_s)

    def poll(self) -> int:
        """One pass over every file; returns how many matching lines were reported."""
        self.prime()
        budget = [self._max_matches]
        total = 0
        for t in self._tails:
            total += self._poll_one(t, budget)
        return total

    def _poll_one(self, t: _Tail, budget: list[int]) -> int:
        try:
            st = os.lstat(t.path)  # a link now in the file's place is a new file, not followed
        except OSError:
            st = None
        n = 0
        if t.fh is None:
            if st is None or not t.open(at_end=False):
                return 0
        elif st is not None and (st.st_dev, st.st_ino) != t.ident:
            n += self._read(t, budget, final=True)  # rotated: finish the old file first
            log.info("log_rotated", path=str(t.path))
            if not t.open(at_end=False):
                return n
        elif st is not None and st.st_size < t.pos:
            n += self._lines(t, [t.buf], budget) if t.buf else 0
            log.info("log_truncated", path=str(t.path), size_bytes=st.st_size, pos=t.pos)
            assert t.fh is not None
            t.fh.seek(0)
            t.pos, t.buf = 0, b""
            t.encoding = t.decoder = None
        return n + self._read(t, budget, final=False)

    def _read(self, t: _Tail, budget: list[int], *, final: bool) -> int:
        if t.fh is None:
            return 0
        t.fh.seek(t.pos)
        data = t.fh.read(self._max_read)
        at, t.pos = t.pos, t.pos + len(data)
        data = t.utf8(data, at)
        chunk = t.buf + data
        parts = chunk.split(b"\n")
        t.buf = parts.pop()
        if final and t.buf:
            parts.append(t.buf)
            t.buf = b""
        while len(t.buf) > self._max_line:  # an endless line: report it in pieces
            parts.append(t.buf[: self._max_line])
            t.buf = t.buf[self._max_line :]
        return self._lines(t, parts, budget)

    def _lines(self, t: _Tail, parts: list[bytes], budget: list[int]) -> int:
        n = 0
        for raw in parts:
            line = raw[: self._max_line].decode("utf-8", "replace").rstrip("\r")
            if not line or not any(p.search(line) for p in self._patterns):
                continue
            if budget[0] <= 0:
                self.dropped_matches += 1
                continue
            budget[0] -= 1
            n += 1
            try:
                self._on_match(t.path, line)
            except Exception as e:  # keep following the file
                log.error("log_match_callback_failed", path=str(t.path), error=repr(e))
        return n


def log_tailer(
    cfg: Config, on_match: Callable[[Path, str], None], *, interval_s: float = 1.0
) -> LogTailer | None:
    """The tailer of app.log_files / app.log_patterns, or None when there is nothing to follow.

    None on target adb too: log_patterns are matched against the device's logcat there
    (agent/monitors/android_logs.py); files on the device are not followed.
    """
    if not cfg.app.log_files or not cfg.app.log_patterns or cfg.agent.target == "adb":
        return None
    return LogTailer(cfg.app.log_files, cfg.app.log_patterns, on_match, interval_s=interval_s)

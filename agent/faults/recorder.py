"""Flight recorder: the readings of the last minutes, persisted so they survive a power cut.

Two files in the state dir (docs/ARCHITECTURE.md §7):

- `recorder.journal`: the readings added since the last compaction, one JSON line
  each (`{"s": seq, "r": reading}`), appended and fdatasynced every
  `journal_interval_s` (≤ 5 s). A cut loses at most that much; an append is one
  small write of only the new readings, not the whole window again;
- `recorder.json`: the compacted window (`{"version": 2, "seq": last seq,
  "readings": [...]}`), replaced atomically every `compact_every_s` (the window
  length by default); the journal is then truncated in place. A cut between
  the two leaves rows in both: `load()` keeps journal rows only past the
  snapshot's `seq`. A torn last line is skipped.

In memory each reading is kept as its compact JSON line (with its time apart), some 300
bytes where the dict it came from takes about 1,600: a full 10-minute window of the default
monitors (some 1,200 readings) costs the daemon 0.4 MiB instead of 1.9. It is decoded only
when asked for (`snapshot()`, `previous()`: a capture's timeline), and the journal and the
snapshot are joined from the same lines without encoding them again.

`load()` also keeps the previous run's window, cut relative to its *last
persisted reading* rather than to now, so the unclean-shutdown bundle carries
the minutes before the cut however long the outage (`previous()`). The daemon
drives the writes with `tick()`; `bench/bench_recorder.py` measures what they
cost against the old scheme (the whole window rewritten every 30 s).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import structlog

from agent.core.files import atomic_write, fsync_dir
from agent.core.model import Reading

log = structlog.get_logger(__name__)

MAX_READINGS = 20_000
MAX_LOAD_BYTES = 64 * 2**20  # a journal or snapshot larger than this is read from its tail
JOURNAL_SUFFIX = ".journal"


def journal_path(path: Path) -> Path:
    """The journal beside a snapshot path (recorder.json → recorder.journal)."""
    return path.with_suffix(JOURNAL_SUFFIX)


# one reading in memory: its time and its compact JSON (the journal's and snapshot's bytes)
_Row = tuple[float, bytes]


def _encode(row: dict[str, Any]) -> _Row:
    return (row["ts"], json.dumps(row, separators=(",", ":")).encode())


def _decode(rows: list[_Row]) -> list[dict[str, Any]]:
    return [json.loads(b) for _, b in rows]


def _rows(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return []
    return [r for r in items if isinstance(r, dict) and _is_ts(r.get("ts"))]


def _is_ts(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def _read_tail(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_LOAD_BYTES:
            os.lseek(fd, size - MAX_LOAD_BYTES, os.SEEK_SET)
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


class FlightRecorder:
    """A ring buffer of readings bounded by age and count, persisted as journal + snapshot."""

    def __init__(
        self,
        path: Path,
        window_s: float = 600.0,
        max_readings: int = MAX_READINGS,
        *,
        journal_interval_s: float = 4.0,
        compact_every_s: float | None = None,
    ):
        self.path = path
        self.journal = journal_path(path)
        self.window_s = window_s
        self.journal_interval_s = journal_interval_s
        self.compact_every_s = window_s if compact_every_s is None else compact_every_s
        self._buf: deque[_Row] = deque(maxlen=max_readings)
        self._pending: list[tuple[int, _Row]] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # one writer of the files at a time
        self._dirty = False  # the buffer changed since the last compaction
        self._journal_bytes = 0
        self._jfd: int | None = None
        self._previous: list[_Row] = []
        self._next_flush: float | None = None
        self._next_compact: float | None = None
        self.loaded_journal_rows = 0

    # ------------------------------------------------------------------ memory

    def add(self, reading: Reading) -> None:
        """Record one reading and drop the ones older than the window."""
        row = _encode(reading.to_json())
        with self._lock:
            self._seq += 1
            self._buf.append(row)
            self._pending.append((self._seq, row))
            self._dirty = True
            cutoff = reading.ts - self.window_s
            while self._buf and self._buf[0][0] < cutoff:
                self._buf.popleft()
            if len(self._pending) > 2 * (self._buf.maxlen or MAX_READINGS):
                del self._pending[: len(self._pending) // 2]  # the disk is gone: bound memory

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        """The readings inside the window ending now, oldest first."""
        cutoff = (time.time() if now is None else now) - self.window_s
        with self._lock:
            rows = [r for r in self._buf if r[0] >= cutoff]
        return _decode(rows)

    def previous(self) -> list[dict[str, Any]]:
        """The window `load()` found on disk, cut relative to its last reading (not to now),
        followed by the readings recorded since: the timeline of an unclean-shutdown bundle
        or of a report made while no daemon runs."""
        with self._lock:
            prev = list(self._previous)
            last = prev[-1][0] if prev else float("-inf")
            ids = {id(r) for r in prev}
            since = [r for r in self._buf if id(r) not in ids and r[0] >= last]
        return _decode(prev + since)

    def forget_previous(self) -> None:
        """Drop the loaded window once its bundle is made (it may hold 20,000 rows)."""
        with self._lock:
            self._previous = []

    # ------------------------------------------------------------------ disk

    def tick(self, now: float | None = None) -> bool:
        """Flush the journal and compact when due (monotonic `now`); returns whether it wrote."""
        now = time.monotonic() if now is None else now
        if self._next_flush is None or self._next_compact is None:
            self._next_flush = now + self.journal_interval_s
            self._next_compact = now + self.compact_every_s
        wrote = False
        if now >= self._next_compact:
            wrote = self.compact()
            self._next_compact = now + self.compact_every_s
            self._next_flush = now + self.journal_interval_s
        elif now >= self._next_flush:
            wrote = self.flush()
            self._next_flush = now + self.journal_interval_s
        return wrote

    def due_in(self, now: float | None = None) -> float:
        """Seconds until the next journal flush (the engine loop waits no longer)."""
        if self._next_flush is None:
            return self.journal_interval_s
        return max(0.0, self._next_flush - (time.monotonic() if now is None else now))

    def flush(self) -> bool:
        """Append the readings added since the last flush to the journal and fdatasync it."""
        with self._io_lock:
            with self._lock:
                if not self._pending:
                    return False
                pending, self._pending = self._pending, []
            # the bytes json.dumps({"s": s, "r": row}, separators=(",", ":")) gives
            data = b"".join(b'{"s":%d,"r":%b}\n' % (s, r[1]) for s, r in pending)
            try:
                fd = self._journal_fd()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            except OSError as e:
                log.error("recorder_journal_failed", path=str(self.journal), error=str(e))
                with self._lock:
                    self._pending[:0] = pending
                return False
            finally:
                # not held open between flushes: an open file for writing would refuse a
                # read-only remount of the state dir (EBUSY)
                self._close_journal()
            self._journal_bytes += len(data)
            return True

    def compact(self) -> bool:
        """Replace the snapshot with the window (atomic, fsynced) and empty the journal."""
        with self._io_lock:
            with self._lock:
                if not self._dirty and not self._journal_bytes:
                    return False
                rows = list(self._buf)
                seq = self._seq
                self._dirty = False
            readings = b",".join(r[1] for r in rows)
            data = b'{"version":2,"seq":%d,"readings":[%b]}' % (seq, readings)
            try:
                atomic_write(self.path, data)
            except OSError as e:
                log.error("recorder_persist_failed", path=str(self.path), error=str(e))
                with self._lock:
                    self._dirty = True  # the pending rows stay for the next journal flush
                return False
            with self._lock:  # every row up to seq is in the snapshot (or out of the window)
                self._pending = [(s, r) for s, r in self._pending if s > seq]
            try:
                fd = self._journal_fd()
                os.ftruncate(fd, 0)
                os.fsync(fd)
                self._journal_bytes = 0
            except OSError as e:  # the snapshot's seq makes the stale journal rows harmless
                log.warning("recorder_journal_truncate_failed", error=str(e))
            finally:
                self._close_journal()
            return True

    def persist(self) -> bool:
        """Flush and compact now (at stop); returns whether anything was written."""
        flushed = self.flush()
        return self.compact() or flushed

    def close(self) -> None:
        """Close the journal file."""
        with self._io_lock:
            self._close_journal()

    def _journal_fd(self) -> int:
        if self._jfd is None:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.journal, flags, 0o640)
            size = os.fstat(fd).st_size
            if size == 0:
                fsync_dir(self.journal.parent)  # a new journal's name is durable too
            elif os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")  # end a line torn by a cut: the next row starts clean
            self._jfd = fd
        return self._jfd

    def _close_journal(self) -> None:
        if self._jfd is not None:
            try:
                os.close(self._jfd)
            except OSError:
                pass
            self._jfd = None

    # ------------------------------------------------------------------ loading

    def load(self) -> int:
        """Read snapshot + journal back (after a restart; read-only: `posagent report`
        uses it too). Keeps the window ending at the last persisted reading for
        `previous()`; a bad file or line is skipped and reported. Returns the count."""
        rows, seq = self._load_snapshot()
        journal_rows = 0
        for s, row in self._load_journal():
            if s > seq:
                rows.append(row)
                seq = s
                journal_rows += 1
        if not rows:
            return 0
        rows.sort(key=lambda r: r["ts"])
        last = rows[-1]["ts"]
        keep = [r for r in rows if r["ts"] >= last - self.window_s]
        maxlen = self._buf.maxlen or MAX_READINGS
        kept = [_encode(r) for r in keep[-maxlen:]]
        with self._lock:
            self._buf.extend(kept)
            self._seq = max(self._seq, seq)
            self._previous = kept
            if journal_rows:
                self._dirty = True
        self.loaded_journal_rows = journal_rows  # the daemon compacts them at start
        return len(kept)

    def _load_snapshot(self) -> tuple[list[dict[str, Any]], int]:
        try:
            raw = _read_tail(self.path)
        except FileNotFoundError:
            return [], 0
        except OSError as e:
            log.warning("recorder_load_failed", path=str(self.path), error=str(e))
            return [], 0
        try:
            data = json.loads(raw)
            rows = _rows(data["readings"])
            seq = data.get("seq", 0)
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
        except (ValueError, KeyError, TypeError) as e:
            log.warning("recorder_file_corrupt", path=str(self.path), error=str(e))
            return [], 0
        return rows, seq

    def _load_journal(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            raw = _read_tail(self.journal)
        except FileNotFoundError:
            return []
        except OSError as e:
            log.warning("recorder_load_failed", path=str(self.journal), error=str(e))
            return []
        out: list[tuple[int, dict[str, Any]]] = []
        bad = 0
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                s, row = item["s"], item["r"]
            except (ValueError, KeyError, TypeError):
                bad += 1  # a torn tail after a cut, or noise: skip the line
                continue
            if isinstance(s, int) and not isinstance(s, bool) and _rows([row]):
                out.append((s, row))
            else:
                bad += 1
        if bad:
            log.warning("recorder_journal_lines_skipped", path=str(self.journal), count=bad)
        return out

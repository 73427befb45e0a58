"""Crash-safe maildir-style queue of sealed bundles (docs/ARCHITECTURE.md §5).

Layout under `<state_dir>/spool/`: `tmp/` (being written), `new/` (captured,
waiting), `cur/` (claimed by the uploader), `failed/` (rejected or
quarantined), `sent/` (uploaded, kept for disputes), `retry/` (one JSON
sidecar per bundle with attempts and next_at), `evicted.json` (eviction counts
not yet reported in a manifest).

A file name is `<bundle_id>.p<rank>[k].zip`: rank 0 warning, 1 error,
2 critical; `k` marks the first bundle of a storm, kept over its repeats when
evicting. A bundle is "captured" only after its file is fsynced, renamed into
`new/` and `new/` is fsynced.

Nothing in the spool may block or redirect the agent: every directory is
checked with lstat at `open()` (and again before a bundle is moved into
`sent/` or `failed/`); one that is not a real directory (a symlink to
elsewhere, a file, a FIFO) is renamed aside to `<name>.quarantined-<ts>` and
recreated, with a log line. Sidecars and the small state files are read with
`agent.core.files.read_regular` (O_NOFOLLOW | O_NONBLOCK, regular files only),
and a bundle is checked from a descriptor opened the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.bundle.format import BundleError, BundleReader, bundle_id_time, is_bundle_id
from agent.core.config import SpoolConfig
from agent.core.files import atomic_write, fsync_dir, open_regular, read_regular
from drivers.roots import Roots
from drivers.system import read_boot_id

log = structlog.get_logger(__name__)

STATES = ("tmp", "new", "cur", "failed", "sent")
_NAME = re.compile(
    r"^(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.p(?P<rank>[0-2])(?P<keep>k?)\.zip$"
)
MIB = 1024 * 1024
PLAUSIBLE_SINCE = 1_704_067_200.0  # 2024-01-01: ids from before were made by a wrong clock
MAX_RETRY_AHEAD_S = 86400.0 + 3600.0  # longest backoff cap plus the longest Retry-After
SMALL_FILE_LIMIT = 64 * 1024  # sidecars, reasons, evicted.json, clock.json


class SpoolError(Exception):
    """The spool could not do what was asked."""


class SpoolFull(SpoolError):
    """Quota or free-space reserve leaves no room, even after eviction: not captured."""


class SpoolWriteError(SpoolError):
    """A write, fsync or rename failed: the bundle was not captured."""


class NotFound(SpoolError):
    """No bundle with that id in the requested state."""


@dataclass(frozen=True)
class Limits:
    """Quota of the spool (from [spool] config)."""

    max_bytes: int = 256 * MIB
    max_items: int = 10000
    max_age_s: float = 30 * 86400
    reserve_bytes: int = 64 * MIB
    keep_sent: bool = True
    sent_retention_s: float = 7 * 86400


@dataclass(frozen=True)
class Item:
    """One bundle file in one state."""

    bundle_id: str
    state: str
    rank: int
    keep: bool
    file: str
    size: int

    @property
    def path(self) -> Path:
        """The bundle file (built on demand: listing 10,000 items stays cheap)."""
        return Path(self.file)

    @property
    def created(self) -> float:
        """Creation time from the UUIDv7 id."""
        return bundle_id_time(self.bundle_id)

    @property
    def severity(self) -> str:
        return ("warning", "error", "critical")[self.rank]


@dataclass(frozen=True)
class RetryState:
    """Upload attempts of one bundle: kept in retry/<id>.json, replaced atomically."""

    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""


def file_name(bundle_id: str, rank: int, keep: bool = False) -> str:
    """The spool file name for a bundle."""
    return f"{bundle_id}.p{rank}{'k' if keep else ''}.zip"


def parse_name(name: str) -> tuple[str, int, bool] | None:
    """(bundle_id, rank, keep) from a spool file name, or None for a foreign file."""
    m = _NAME.match(name)
    if not m:
        return None
    return m.group("id"), int(m.group("rank")), bool(m.group("keep"))


class Spool:
    """The on-disk queue. Thread-safe; several processes may share it (renames are atomic)."""

    def __init__(
        self, state_dir: str | Path, limits: Limits | None = None, roots: Roots | None = None
    ):
        self.root = Path(state_dir) / "spool"
        self.limits = limits or Limits()
        self.roots = roots or Roots()  # the boot id for aging comes from <proc>
        self._lock = threading.RLock()
        self.recovered: dict[str, int] = {}
        self.evicted_total: Counter[str] = Counter()  # since start, by state (for metrics)
        self._stats_cache: tuple[tuple[int, ...], dict[str, Any]] | None = None
        self._tally: tuple[tuple[int, ...], int, int] | None = None

    # ------------------------------------------------------------------ start-up

    def open(self) -> Spool:
        """Create the layout and recover: cur/ back to new/, stale tmp/ removed.

        Touches only tmp/ and cur/ (small): never scans new/, so start-up stays
        fast with 10,000 bundles queued. Bad files in new/ are quarantined when
        they are claimed.
        """
        self._check_dirs()
        moved = removed = 0
        with self._lock:
            for entry in os.scandir(self.root / "tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
            for entry in os.scandir(self.root / "cur"):
                if parse_name(entry.name) is None:
                    self._quarantine(Path(entry.path), "foreign file in cur/")
                    continue
                with contextlib.suppress(OSError):
                    os.replace(entry.path, self.root / "new" / entry.name)
                    moved += 1
            if moved:
                fsync_dir(self.root / "new")
        self.recovered = {"cur_to_new": moved, "tmp_removed": removed}
        if moved or removed:
            log.info("spool_recovered", **self.recovered)
        return self

    def _check_dirs(self) -> None:
        """The spool root and each of its directories is a real directory (see `_real_dir`)."""
        self._real_dir(self.root)
        for d in (*STATES, "retry"):
            self._real_dir(self.root / d)

    def _real_dir(self, path: Path) -> Path:
        """Make sure `path` is a real directory (not a link, file or FIFO), creating it if needed.

        An impostor is renamed aside to `<name>.quarantined-<ts>` (never
        followed, never deleted: it may be evidence) and a fresh directory made.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.mkdir(parents=True, exist_ok=True)
            return path
        if stat.S_ISDIR(st.st_mode):
            return path
        aside = path.with_name(f"{path.name}.quarantined-{time.time_ns()}")
        kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        try:
            os.rename(path, aside)
            path.mkdir(exist_ok=False)
        except OSError as e:
            log.error("spool_dir_impostor", dir=str(path), kind=kind, error=str(e))
            raise
        log.warning("spool_dir_impostor", dir=str(path), kind=kind, moved_to=str(aside))
        return path

    # ------------------------------------------------------------------ listing

    def items(self, state: str) -> Iterator[Item]:
        """Bundles in one state, unordered; foreign files are skipped."""
        try:
            it = os.scandir(self.root / state)
        except FileNotFoundError:
            return
        with it:
            for entry in it:
                parsed = parse_name(entry.name)
                if parsed is None:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue  # a FIFO or link named like a bundle is never opened
                    size = entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                bid, rank, keep = parsed
                yield Item(bid, state, rank, keep, entry.path, size)

    def queued(self) -> list[Item]:
        """new/ in upload order: critical first, then oldest first."""
        return sorted(self.items("new"), key=lambda i: (-i.rank, i.bundle_id))

    def find(
        self, bundle_id: str, states: tuple[str, ...] = ("new", "cur", "failed", "sent")
    ) -> Item:
        """Locate a bundle by id (a unique prefix of at least 8 characters works too)."""
        hits = [
            i for s in states for i in self.items(s) if i.bundle_id.startswith(bundle_id.lower())
        ]
        if len(bundle_id) < 8 or not hits:
            raise NotFound(f"no bundle {bundle_id!r} in {', '.join(states)}")
        if len({i.bundle_id for i in hits}) > 1:
            raise NotFound(f"{bundle_id!r} is ambiguous")
        return hits[0]

    def _dir_stamp(self) -> tuple[int, ...] | None:
        try:
            return tuple(
                os.stat(self.root / s).st_mtime_ns for s in ("new", "cur", "failed", "sent")
            )
        except OSError:
            return None

    def _usage_tallied(self) -> tuple[int, int]:
        """usage(), from a running tally while no other process touched the spool.

        The tally is trusted while the state directories' mtimes are the ones
        this object saw after its own last change; anything else (another
        process, a claim or an ack) means one full listing.
        """
        stamp = self._dir_stamp()
        if stamp is not None and self._tally is not None and self._tally[0] == stamp:
            return self._tally[1], self._tally[2]
        total, count = self.usage()
        self._tally = None if stamp is None else (stamp, total, count)
        return total, count

    def usage(self) -> tuple[int, int]:
        """(bytes, items) over new/, cur/, failed/ and sent/."""
        total = count = 0
        for s in ("new", "cur", "failed", "sent"):
            for i in self.items(s):
                total += i.size
                count += 1
        return total, count

    # ------------------------------------------------------------------ writing

    def enqueue(self, bundle_id: str, data: bytes, rank: int, *, keep: bool = False) -> Path:
        """Make room, then write tmp/ → fsync → rename into new/ → fsync new/.

        Returns the path in new/. Raises SpoolFull or SpoolWriteError when the
        bundle was not captured; nothing partial is ever left in new/.
        """
        if not is_bundle_id(bundle_id) or rank not in (0, 1, 2):
            raise SpoolError(f"bad bundle id or rank: {bundle_id!r} {rank}")
        name = file_name(bundle_id, rank, keep)
        with self._lock:
            total, count = self._make_room(len(data), rank)
            tmp = self.root / "tmp" / name
            dest = self.root / "new" / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    view = memoryview(data)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, dest)
                fsync_dir(dest.parent)
            except OSError as e:
                self._tally = None
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise SpoolWriteError(f"bundle not captured: {e.strerror or e}") from e
            stamp = self._dir_stamp()
            self._tally = None if stamp is None else (stamp, total + len(data), count + 1)
        log.info("bundle_captured", bundle_id=bundle_id, size_bytes=len(data), rank=rank)
        return dest

    def _free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _make_room(self, size: int, rank: int) -> tuple[int, int]:
        """Evict until the bundle fits; returns (bytes, items) in the spool after evicting."""
        lim = self.limits
        total, count = self._usage_tallied()
        victims = self._eviction_order(rank)
        while True:
            free = self._free_bytes()
            fits_quota = total + size <= lim.max_bytes and count + 1 <= lim.max_items
            fits_disk = free - size >= lim.reserve_bytes
            if fits_quota and fits_disk:
                return total, count
            victim = next(victims, None)
            if victim is None:
                why = "quota" if not fits_quota else "free-space reserve"
                raise SpoolFull(
                    f"bundle not captured: {why} reached "
                    f"({total} bytes in {count} bundles, {free} bytes free)"
                )
            try:
                victim.path.unlink()
            except OSError:
                continue
            self._drop_retry(victim.bundle_id)
            total -= victim.size
            count -= 1
            self._count_eviction(victim.state)
            log.warning(
                "bundle_evicted", bundle_id=victim.bundle_id, state=victim.state, rank=victim.rank
            )

    def _eviction_order(self, incoming_rank: int) -> Iterator[Item]:
        """sent/, then failed/, then new/ lowest rank and oldest first, storm firsts last.

        A bundle in new/ of a higher rank than the incoming one is never evicted for it.
        """
        yield from sorted(self.items("sent"), key=lambda i: i.bundle_id)
        yield from sorted(self.items("failed"), key=lambda i: i.bundle_id)
        queued = [i for i in self.items("new") if i.rank <= incoming_rank]
        yield from sorted(queued, key=lambda i: (i.rank, i.keep, i.bundle_id))

    # ------------------------------------------------------------------ evictions

    @property
    def _evicted_path(self) -> Path:
        return self.root / "evicted.json"

    def pending_evictions(self) -> dict[str, int]:
        """Eviction counts not yet carried by a manifest."""
        try:
            data = json.loads(read_regular(self._evicted_path, SMALL_FILE_LIMIT))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v > 0}

    def _count_eviction(self, state: str) -> None:
        self.evicted_total[state] += 1
        counts = Counter(self.pending_evictions())
        counts[state] += 1
        with contextlib.suppress(OSError):
            atomic_write(self._evicted_path, json.dumps(dict(counts)).encode(), durable=False)

    def ack_evictions(self, reported: dict[str, int]) -> None:
        """Subtract counts that a durable bundle's manifest now carries."""
        with self._lock:
            counts = Counter(self.pending_evictions())
            counts.subtract(reported)
            left = {k: v for k, v in counts.items() if v > 0}
            with contextlib.suppress(OSError):
                atomic_write(self._evicted_path, json.dumps(left).encode(), durable=False)

    # ------------------------------------------------------------------ upload side

    def retry_ids(self) -> set[str]:
        """Ids that have a retry sidecar (one directory listing)."""
        try:
            return {n[:-5] for n in os.listdir(self.root / "retry") if n.endswith(".json")}
        except OSError:
            return set()

    def retry_state(
        self, bundle_id: str, now: float | None = None, max_ahead_s: float = MAX_RETRY_AHEAD_S
    ) -> RetryState:
        """Attempts and next_at of a bundle (defaults when none recorded or unreadable).

        A next_at further ahead than any legitimate wait (the clock jumped
        back since it was set) counts as due now.
        """
        try:
            # a FIFO or link in a sidecar's place must not block or redirect the uploader
            d = json.loads(
                read_regular(self.root / "retry" / f"{bundle_id}.json", SMALL_FILE_LIMIT)
            )
            rs = RetryState(int(d["attempts"]), float(d["next_at"]), str(d.get("last_error", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return RetryState()
        if rs.next_at > (time.time() if now is None else now) + max_ahead_s:
            return RetryState(rs.attempts, 0.0, rs.last_error)
        return rs

    def _drop_retry(self, bundle_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.root / "retry" / f"{bundle_id}.json").unlink()

    def next_due(self, now: float | None = None) -> tuple[Item | None, float | None]:
        """The first queued bundle whose retry time has come, and the earliest future next_at."""
        now = time.time() if now is None else now
        earliest: float | None = None
        waiting = self.retry_ids()
        for item in self.queued():
            if item.bundle_id not in waiting:
                return item, None
            rs = self.retry_state(item.bundle_id, now)
            if rs.next_at <= now:
                return item, None
            earliest = rs.next_at if earliest is None else min(earliest, rs.next_at)
        return None, earliest

    def claim(self, item: Item) -> Item | None:
        """Move new/X → cur/X and check it; None if another claimer won or it was quarantined."""
        dest = self.root / "cur" / item.path.name
        with self._lock:
            try:
                os.rename(item.path, dest)
            except FileNotFoundError:
                return None
        claimed = Item(item.bundle_id, "cur", item.rank, item.keep, str(dest), item.size)
        problem = self.check(claimed)
        if problem:
            self._quarantine(dest, problem)
            return None
        return claimed

    def check(self, item: Item) -> str:
        """'' if the file is a structurally sound bundle with the id it is named by, else why not."""
        try:
            fd, _ = open_regular(item.path)  # a FIFO or link swapped in is refused, not waited on
        except OSError as e:
            return f"cannot open bundle: {e.strerror or e}"
        try:
            with os.fdopen(fd, "rb") as fh, BundleReader(fh) as r:
                m = r.verify(None).manifest
        except BundleError as e:
            return str(e)
        if m.get("bundle_id") != item.bundle_id:
            return "bundle_id in manifest does not match the file name"
        return ""

    def ack(self, item: Item) -> None:
        """Uploaded: cur/ → sent/ (keep_sent) or deleted."""
        with self._lock:
            if self.limits.keep_sent:
                os.replace(item.path, self._real_dir(self.root / "sent") / item.path.name)
            else:
                item.path.unlink(missing_ok=True)
            self._drop_retry(item.bundle_id)

    def fail(self, item: Item, reason: str) -> None:
        """Permanently rejected: cur/ → failed/, with the reason kept beside it."""
        self._quarantine(item.path, reason)
        self._drop_retry(item.bundle_id)

    def release(self, item: Item, next_at: float, error: str) -> RetryState:
        """Retry later: record attempts and next_at, then cur/ → new/."""
        prev = self.retry_state(item.bundle_id)
        rs = RetryState(prev.attempts + 1, next_at, error[:300])
        with self._lock:
            atomic_write(
                self.root / "retry" / f"{item.bundle_id}.json",
                json.dumps(rs.__dict__).encode(),
                durable=False,
            )
            os.replace(item.path, self.root / "new" / item.path.name)
        return rs

    def unclaim(self, item: Item) -> None:
        """Give a claimed bundle back untouched (cur/ → new/): no attempt is counted."""
        with self._lock:
            os.replace(item.path, self.root / "new" / item.path.name)

    def reset_backoff(self) -> int:
        """Connectivity is back: make every queued bundle due now. Returns how many."""
        n = 0
        for entry in os.scandir(self.root / "retry"):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                n += 1
        return n

    def _quarantine(self, path: Path, reason: str) -> None:
        dest = self.root / "failed" / path.name
        if parse_name(path.name) is None:
            dest = self.root / "failed" / f"{path.name}.foreign"
        with self._lock:
            try:
                self._real_dir(dest.parent)
                os.replace(path, dest)
            except OSError as e:
                log.error("spool_quarantine_failed", path=str(path), error=str(e))
                return
            with contextlib.suppress(OSError):
                atomic_write(
                    dest.with_name(dest.name + ".reason"), reason.encode()[:1000], durable=False
                )
        log.warning("bundle_quarantined", file=path.name, reason=reason)

    def failure_reason(self, item: Item) -> str:
        """Why a bundle is in failed/ ('' when unknown)."""
        try:
            raw = read_regular(item.path.with_name(item.path.name + ".reason"), SMALL_FILE_LIMIT)
        except OSError:
            return ""
        return raw.decode("utf-8", "replace")

    # ------------------------------------------------------------------ operator actions

    def retry(self, bundle_id: str) -> Item:
        """Put a failed (or waiting) bundle back at the head of the queue, due now."""
        item = self.find(bundle_id, ("failed", "new"))
        with self._lock:
            if item.state == "failed":
                dest = self.root / "new" / item.path.name
                os.replace(item.path, dest)
                with contextlib.suppress(OSError):
                    item.path.with_name(item.path.name + ".reason").unlink()
                item = Item(item.bundle_id, "new", item.rank, item.keep, str(dest), item.size)
            self._drop_retry(item.bundle_id)
        return item

    def purge(self, states: tuple[str, ...]) -> int:
        """Delete every bundle in the given states; returns how many."""
        n = 0
        with self._lock:
            for s in states:
                for entry in os.scandir(self.root / s):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        if parse_name(entry.name):
                            n += 1
                            self._drop_retry(entry.name[:36])
        return n

    def housekeep(
        self, now: float | None = None, *, mono: float | None = None, boot_id: str | None = None
    ) -> dict[str, int]:
        """Apply max age to new/ and failed/ and retention to sent/; quarantine non-files.

        Ages are measured against the spool's own clock (`_aging_now`), which
        trusts the wall clock only as far as the monotonic clock agrees, so a
        clock jump never makes a fresh bundle look old. Bundle ids with an
        implausible time (before 2024, or ahead of that clock) are never aged.
        """
        wall = time.time() if now is None else now
        eff = self._aging_now(wall, time.monotonic() if mono is None else mono, boot_id)
        lim = self.limits
        dropped: Counter[str] = Counter()
        with self._lock:
            try:
                self._check_dirs()
            except OSError as e:
                log.error("spool_dirs_unchecked", error=str(e))
            self._quarantine_non_files()
            if eff is None:
                return {}
            for state, max_age in (
                ("new", lim.max_age_s),
                ("failed", lim.max_age_s),
                ("sent", lim.sent_retention_s),
            ):
                for item in self.items(state):
                    created = item.created
                    if created < PLAUSIBLE_SINCE or created > eff + 86400:
                        continue  # captured while the clock was wrong: its age is unknown
                    if eff - created > max_age:
                        with contextlib.suppress(OSError):
                            item.path.unlink()
                            self._drop_retry(item.bundle_id)
                            dropped[state] += 1
                            if state != "sent":
                                self._count_eviction(state)
        return dict(dropped)

    def _aging_now(self, wall: float, mono: float, boot_id: str | None) -> float | None:
        """The spool's clock for aging, persisted in clock.json.

        Within one boot it advances only by monotonic time since the last call
        (wall-clock jumps are ignored); across a reboot it takes the wall clock
        but never goes back. The first call only sets the clock: None, no aging.
        """
        boot = (read_boot_id(self.roots) or "") if boot_id is None else boot_id
        path = self.root / "clock.json"
        try:
            st = json.loads(read_regular(path, SMALL_FILE_LIMIT))
            prev_eff, prev_mono, prev_boot = float(st["eff"]), float(st["mono"]), str(st["boot_id"])
        except (OSError, ValueError, KeyError, TypeError):
            prev_eff = None
        if prev_eff is None:
            eff: float | None = None
            new_eff = wall
        elif prev_boot == boot and boot and mono >= prev_mono:
            eff = new_eff = prev_eff + (mono - prev_mono)
        else:
            eff = new_eff = max(wall, prev_eff)
        with contextlib.suppress(OSError):
            atomic_write(
                path,
                json.dumps({"eff": new_eff, "mono": mono, "boot_id": boot}).encode(),
                durable=False,
            )
        return eff

    def _quarantine_non_files(self) -> None:
        """FIFOs, devices, sockets and symlinks named like bundles in new/ go to failed/, unopened."""
        try:
            it = os.scandir(self.root / "new")
        except OSError:
            return
        with it:
            for entry in it:
                if parse_name(entry.name) is None:
                    continue
                try:
                    regular = entry.is_file(follow_symlinks=False)
                except OSError:
                    regular = False
                if not regular:
                    self._quarantine(Path(entry.path), "not a regular file")

    def stats(self) -> dict[str, Any]:
        """Counts and bytes by state, and the oldest queued bundle's age.

        Cached on the state directories' mtimes (a rename in or out changes
        them), so a status refresh every few seconds costs four stat calls.
        """
        try:
            stamp = tuple(
                os.stat(self.root / s).st_mtime_ns for s in ("new", "cur", "failed", "sent")
            )
        except OSError:
            stamp = None
        cached = self._stats_cache
        if stamp is not None and cached is not None and cached[0] == stamp:
            hit = dict(cached[1])
            first = hit.pop("_oldest")
            hit["oldest_queued_age_s"] = round(time.time() - first, 1) if first else None
            return hit
        out: dict[str, Any] = {}
        oldest: float | None = None
        for s in ("new", "cur", "failed", "sent"):
            n = size = 0
            for i in self.items(s):
                n += 1
                size += i.size
                if s == "new" and i.created and (oldest is None or i.created < oldest):
                    oldest = i.created
            out[s] = {"count": n, "bytes": size}
        # A change within the last second may share an mtime tick: do not cache then.
        if stamp is not None and time.time_ns() - max(stamp) > 1_000_000_000:
            self._stats_cache = (stamp, {**out, "_oldest": oldest})
        out["oldest_queued_age_s"] = round(time.time() - oldest, 1) if oldest else None
        return out


def limits_from_config(cfg: SpoolConfig) -> Limits:
    """Spool limits from the [spool] config section."""
    return Limits(
        max_bytes=cfg.max_mib * MIB,
        max_items=cfg.max_items,
        max_age_s=cfg.max_age_days * 86400.0,
        reserve_bytes=cfg.reserve_mib * MIB,
        keep_sent=cfg.keep_sent,
        sent_retention_s=cfg.sent_retention_days * 86400.0,
    )

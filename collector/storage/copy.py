"""Moving a store (issue 14 item 7), `posagent collector migrate-store`: the bundles of
one store (embedded files + SQLite, or PostgreSQL + S3) copied into another, either way.

For every row of the source index, by bundle id:
- already in the target with the same digest and its blob there: skipped (a re-run
  resumes where a killed one stopped); with another digest: failed (``conflict``);
- else the source blob is read and its sha256 compared with the row's (``source_digest``
  fails it), written to the target blob store, read back from the target and compared
  again (``target_digest``), and only then is the row inserted: the target never lists a
  bundle whose verified bytes it does not hold.
The operators' tables (users, audit log, incidents, holds, the outbox, the channel's
devices...) move with `collector.storage.tables`. The source is only read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from collector.storage.base import BundleRecord, BundleStore, StorageError


@dataclass
class CopyReport:
    copied: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # bundle id -> reason
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return self.copied + self.skipped + len(self.failed)

    def add(self, bid: str, outcome: str) -> None:
        with self._lock:
            if outcome == "copied":
                self.copied += 1
            elif outcome == "skipped":
                self.skipped += 1
            else:
                self.failed[bid] = outcome


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_one(src: BundleStore, dst: BundleStore, rec: BundleRecord, staging: Path) -> str:
    """'copied', 'skipped' or the reason it failed."""
    try:
        known = dst.index.get(rec.bundle_id)
        if known is not None:
            if known.sha256 != rec.sha256:
                return f"conflict: the target holds another digest ({known.sha256[:12]})"
            if dst.blobs.exists(rec.bundle_id, rec.sha256):
                return "skipped"
        try:
            data = src.blobs.get(rec.bundle_id, rec.sha256)
        except KeyError:
            return "source_missing: the source index lists it but its blob is gone"
        if _sha(data) != rec.sha256:
            return "source_digest: the source blob does not match its index row"
        fd, name = tempfile.mkstemp(dir=staging, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            dst.blobs.put(rec.bundle_id, Path(name), rec.sha256)
        finally:
            Path(name).unlink(missing_ok=True)
        try:
            back = dst.blobs.get(rec.bundle_id, rec.sha256)
        except (KeyError, StorageError) as e:
            return f"target_digest: cannot read back what was written: {e}"
        if _sha(back) != rec.sha256:
            return "target_digest: the blob read back from the target differs"
        if known is None and not dst.index.add(rec):
            again = dst.index.get(rec.bundle_id)
            if again is None or again.sha256 != rec.sha256:
                return "conflict: another row was written meanwhile"
        return "copied"
    except (StorageError, OSError, ValueError) as e:
        return f"error: {e}"


def copy_store(
    src: BundleStore,
    dst: BundleStore,
    *,
    workers: int = 8,
    batch: int = 500,
    progress: Callable[[CopyReport], None] | None = None,
) -> CopyReport:
    """Copy every indexed bundle of src into dst; see the module doc."""
    report = CopyReport()
    scan = getattr(src.index, "scan", None)
    if not callable(scan):
        raise StorageError(f"the {type(src.index).__name__} index cannot be scanned")
    staging = dst.staging_dir
    staging.mkdir(parents=True, exist_ok=True)
    after = ""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while True:
            records: list[BundleRecord] = scan(after, batch)
            if not records:
                break
            after = records[-1].bundle_id
            outcomes = pool.map(lambda r: (r.bundle_id, copy_one(src, dst, r, staging)), records)
            for bid, outcome in outcomes:
                report.add(bid, outcome)
                if progress is not None:
                    progress(report)
    return report


def verify_store(src: BundleStore, dst: BundleStore, *, batch: int = 500) -> list[str]:
    """Ids of source rows missing from dst or with another digest (index rows only)."""
    missing: list[str] = []
    after = ""
    while True:
        records: list[BundleRecord] = src.index.scan(after, batch)  # type: ignore[attr-defined]
        if not records:
            return missing
        after = records[-1].bundle_id
        for rec in records:
            known = dst.index.get(rec.bundle_id)
            if known is None or known.sha256 != rec.sha256:
                missing.append(rec.bundle_id)

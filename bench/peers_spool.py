"""Spool enqueue against its peers: persist-queue's SQLite ack queue and a plain write-then-rename loop.

Same bundles (sealed ~3 KB zips from bench_spool), same filesystem, rounds
alternating between implementations so machine load hits all alike:
- ours: Spool.enqueue (tmp/ → fsync → rename into new/ → fsync new/);
- persist-queue SQLiteAckQueue (WAL, auto_commit: one transaction per put);
- plain loop with the same fsyncs (write tmp, fsync, rename, fsync dir);
- plain loop with no fsync at all (what durability costs; informative).

Durability, two ways (a power cut cannot be staged here: no LazyFS, no dm-flakey):
- the syscall discipline under strace: fsync/fdatasync per enqueued item, and
  for the file-based queues whether the file's fsync precedes its rename and
  the directory's fsync follows it;
- kill -9 at a random moment while a child enqueues: items the child had seen
  acknowledged that are missing or unreadable after reopening.
Run: python -m bench.peers_spool
"""

from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.files import fsync_dir

ROUNDS = 5
PER_ROUND = 100
KILL_TRIALS = 5
STRACE_ITEMS = 20
IMPLS = (
    "posagent_spool",
    "persist_queue_sqlite_ack",
    "plain_rename_fsync",
    "plain_rename_no_fsync",
)


# --------------------------------------------------------------------------- the implementations


def sound(source: Path | bytes) -> bool:
    """True when source is a complete, structurally valid bundle (zip, manifest, files)."""
    from agent.bundle.format import BundleError, BundleReader

    try:
        with BundleReader(source) as r:
            r.verify(None)
    except BundleError:
        return False
    return True


class Plain:
    """write tmp → (fsync) → rename into new/ → (fsync new/)."""

    def __init__(self, root: Path, durable: bool) -> None:
        self.root = root
        self.durable = durable
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        (root / "new").mkdir(parents=True, exist_ok=True)

    def put(self, bid: str, data: bytes) -> None:
        tmp = self.root / "tmp" / bid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, data)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.root / "new" / bid)
        if self.durable:
            fsync_dir(self.root / "new")

    def ids(self) -> dict[str, bool]:
        """Stored id → readable and complete."""
        return {p.name: sound(p) for p in (self.root / "new").iterdir()}


class Ours:
    """agent.spool.maildir.Spool.enqueue."""

    def __init__(self, root: Path) -> None:
        from agent.spool.maildir import Limits, Spool

        self.spool = Spool(root, Limits(max_items=10**6, max_bytes=1 << 40, reserve_bytes=0)).open()

    def put(self, bid: str, data: bytes) -> None:
        self.spool.enqueue(bid, data, 1)

    def ids(self) -> dict[str, bool]:
        """Stored id → sound (open() has moved what it found broken to failed/)."""
        out: dict[str, bool] = {}
        for item in self.spool.items("new"):
            out[item.bundle_id] = sound(item.path)
        for item in self.spool.items("failed"):
            out.setdefault(item.bundle_id, False)
        return out


class PersistQueue:
    """persistqueue.SQLiteAckQueue, one committed put per item."""

    def __init__(self, root: Path) -> None:
        import persistqueue

        self.q = persistqueue.SQLiteAckQueue(str(root), auto_commit=True)

    def put(self, bid: str, data: bytes) -> None:
        self.q.put((bid, data))

    def ids(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        while self.q.qsize():
            bid, data = self.q.get(block=False)
            out[bid] = sound(data)
        return out


def make(impl: str, root: Path) -> Ours | PersistQueue | Plain:
    """A fresh queue of the named implementation under root."""
    if impl == "posagent_spool":
        return Ours(root)
    if impl == "persist_queue_sqlite_ack":
        return PersistQueue(root)
    if impl == "plain_rename_fsync":
        return Plain(root, durable=True)
    if impl == "plain_rename_no_fsync":
        return Plain(root, durable=False)
    raise ValueError(impl)


def _bundles(n: int) -> list[tuple[str, bytes]]:
    from bench.bench_spool import _bundle

    return [_bundle(i) for i in range(n)]


# --------------------------------------------------------------------------- child (strace, kill -9)


def child(impl: str, root: str, n: int) -> None:
    """Enqueue n bundles (n < 0: forever), printing 'ACK <id>' after each put returns."""
    bundles = _bundles(20)
    q = make(impl, Path(root))
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    i = 0
    while n < 0 or i < n:
        from agent.bundle.format import new_bundle_id

        _, data = bundles[i % len(bundles)]
        bid = new_bundle_id()
        q.put(bid, data)
        out.write(f"ACK {bid}\n")
        out.flush()
        i += 1


def _child_argv(impl: str, root: Path, n: int) -> list[str]:
    return [sys.executable, "-m", "bench.peers_spool", "--child", impl, str(root), str(n)]


_SYSCALL = re.compile(r"^\d+\s+(\w+)\((.*)$")


def _strace(impl: str, tmp: Path, n: int) -> list[tuple[str, str]]:
    root = tmp / f"strace-{impl}-{n}"
    log = tmp / f"strace-{impl}-{n}.log"
    r = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
            str(log),
            *_child_argv(impl, root, n),
        ],
        capture_output=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise RuntimeError(f"strace child failed: {r.stderr.decode()[-500:]}")
    calls = []
    for line in log.read_text().splitlines():
        m = _SYSCALL.match(line)
        if m:
            calls.append((m.group(1), m.group(2)))
    return calls


def discipline(impl: str, tmp: Path) -> dict[str, object]:
    """fsync+fdatasync per item (difference between n and 0 items) and the file/rename/dir order."""
    base = _strace(impl, tmp, 0)
    calls = _strace(impl, tmp, STRACE_ITEMS)

    def syncs(cs: list[tuple[str, str]]) -> int:
        return sum(1 for name, _ in cs if name in ("fsync", "fdatasync"))

    per_item = (syncs(calls) - syncs(base)) / STRACE_ITEMS
    out: dict[str, object] = {"syncs_per_item": round(per_item, 2)}
    if impl.startswith("plain") or impl == "posagent_spool":
        # for every rename into new/: fsync of that tmp file before, fsync of new/ after
        ordered = 0
        renames = 0
        for i, (name, args) in enumerate(calls):
            if not name.startswith("rename") or "/new/" not in args:
                continue
            renames += 1
            tmp_name = args.split('"')[1] if '"' in args else ""
            before = any(
                n in ("fsync", "fdatasync") and tmp_name and tmp_name in a for n, a in calls[:i]
            )
            after = any(
                n in ("fsync", "fdatasync") and a.rstrip().split(">")[0].endswith("/new")
                for n, a in calls[i + 1 : i + 3]
            )
            ordered += before and after
        out["renames_fsynced_both_sides"] = f"{ordered}/{renames}"
    else:
        wal = sum(1 for name, a in calls if name in ("fsync", "fdatasync") and "-wal" in a)
        out["wal_syncs"] = wal
    return out


def kill9(impl: str, tmp: Path, trials: int, rng: random.Random) -> dict[str, int]:
    """kill -9 the enqueuing child at random moments; count acknowledged items lost or corrupt."""
    acked = lost = corrupt = 0
    for t in range(trials):
        root = tmp / f"kill-{impl}-{t}"
        proc = subprocess.Popen(_child_argv(impl, root, -1), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"READY":
            proc.kill()
            raise RuntimeError(f"{impl} child did not start")
        time.sleep(rng.uniform(0.05, 0.5))
        proc.kill()
        rest = proc.stdout.read()
        proc.wait()
        ids = [ln.split()[1].decode() for ln in rest.splitlines() if ln.startswith(b"ACK ")]
        acked += len(ids)
        stored = make(impl, root).ids()
        lost += sum(1 for i in ids if i not in stored)
        corrupt += sum(1 for i in ids if i in stored and not stored[i])
    return {"trials": trials, "acked": acked, "lost": lost, "corrupt": corrupt}


# --------------------------------------------------------------------------- rates


def _round(impl: str, root: Path, bundles: list[tuple[str, bytes]]) -> float:
    from agent.bundle.format import new_bundle_id

    q = make(impl, root)
    ids = [new_bundle_id() for _ in bundles]
    put: Callable[[str, bytes], None] = q.put
    t0 = time.perf_counter()
    for bid, (_, data) in zip(ids, bundles, strict=True):
        put(bid, data)
    return len(bundles) / (time.perf_counter() - t0)


def _enqueue_with_queue(tmp: Path, queued: int) -> float:
    """Median ms of one Spool.enqueue (20 runs) with `queued` bundles already in new/."""
    from agent.bundle.format import new_bundle_id
    from bench.bench_spool import fill

    state = tmp / "queued"
    fill(state, queued)
    q = Ours(state)
    _, data = _bundles(1)[0]
    times = []
    for _ in range(20):
        bid = new_bundle_id()
        t0 = time.perf_counter()
        q.put(bid, data)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def main() -> dict[str, object]:
    """Rates (median of ROUNDS), fsync discipline and kill -9 losses for every implementation."""
    import logging

    import structlog

    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        return _measure()
    finally:
        structlog.configure(**saved)


def _measure() -> dict[str, object]:
    bundles = _bundles(PER_ROUND)
    rates: dict[str, list[float]] = {i: [] for i in IMPLS}
    rng = random.Random(8)
    with tempfile.TemporaryDirectory(prefix="bench-peers-spool") as d:
        tmp = Path(d)
        for r in range(ROUNDS):
            for impl in IMPLS:
                rates[impl].append(_round(impl, tmp / f"rate-{impl}-{r}", bundles))
        figures: dict[str, object] = {
            "rounds": ROUNDS,
            "items_per_round": PER_ROUND,
            "bundle_bytes": len(bundles[0][1]),
        }
        for impl in IMPLS:
            figures[f"{impl}_per_s"] = round(statistics.median(rates[impl]), 1)
        figures["posagent_enqueue_ms_with_10k_queued"] = _enqueue_with_queue(tmp, 10_000)
        have_strace = shutil.which("strace") is not None
        for impl in IMPLS:
            entry: dict[str, object] = {}
            if have_strace:
                entry.update(discipline(impl, tmp))
            else:
                entry["strace"] = "not installed"
            entry.update(kill9(impl, tmp, KILL_TRIALS, rng))
            figures[f"{impl}_durability"] = entry
    for k, v in figures.items():
        print(f"   {k:40} {v}")
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()

"""Spool: maildir states, recovery at start-up, quota and eviction, a stateful model test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.bundle.format import verify_file
from agent.spool.maildir import Limits, Spool, SpoolError, SpoolFull, file_name
from tests.bundle.kit import KEY, small_bundle


def test_enqueue_claim_ack_moves_through_states(tmp_path: Path) -> None:
    """new → cur → sent, with the file intact at each step."""
    sp = Spool(tmp_path).open()
    b = small_bundle("hello")
    p = sp.enqueue(b.bundle_id, b.data, 1)
    assert p.parent.name == "new" and p.read_bytes() == b.data
    item, _ = sp.next_due()
    assert item is not None and item.bundle_id == b.bundle_id
    claimed = sp.claim(item)
    assert claimed is not None and claimed.path.parent.name == "cur"
    sp.ack(claimed)
    sent = list(sp.items("sent"))
    assert [i.bundle_id for i in sent] == [b.bundle_id]
    verify_file(sent[0].path, KEY)


def test_critical_first_then_oldest(tmp_path: Path) -> None:
    """Upload order is critical first, then oldest first."""
    sp = Spool(tmp_path).open()
    ids = []
    for rank in (0, 2, 1, 2, 0):
        b = small_bundle()
        sp.enqueue(b.bundle_id, b.data, rank)
        ids.append((rank, b.bundle_id))
    order = [i.bundle_id for i in sp.queued()]
    expected = [bid for _, bid in sorted(ids, key=lambda t: (-t[0], t[1]))]
    assert order == expected


def test_release_sets_backoff_and_reset(tmp_path: Path) -> None:
    """A released bundle waits until next_at; reset_backoff makes it due at once."""
    sp = Spool(tmp_path).open()
    b = small_bundle()
    sp.enqueue(b.bundle_id, b.data, 1)
    item, _ = sp.next_due()
    assert item is not None
    claimed = sp.claim(item)
    assert claimed is not None
    rs = sp.release(claimed, time.time() + 100, "connection refused")
    assert rs.attempts == 1
    due, earliest = sp.next_due()
    assert due is None and earliest is not None and earliest > time.time()
    assert sp.reset_backoff() == 1
    due, _ = sp.next_due()
    assert due is not None and due.bundle_id == b.bundle_id


def test_fail_keeps_bundle_with_reason(tmp_path: Path) -> None:
    """A permanent rejection keeps the bundle in failed/ with its reason; retry re-queues it."""
    sp = Spool(tmp_path).open()
    b = small_bundle()
    sp.enqueue(b.bundle_id, b.data, 1)
    claimed = sp.claim(sp.queued()[0])
    assert claimed is not None
    sp.fail(claimed, "413 too large")
    failed = list(sp.items("failed"))
    assert len(failed) == 1 and sp.failure_reason(failed[0]) == "413 too large"
    sp.retry(b.bundle_id[:13])
    assert [i.bundle_id for i in sp.queued()] == [b.bundle_id]


def test_startup_recovers_and_quarantines(tmp_path: Path) -> None:
    """Bad files in every state dir: the spool starts, quarantines the bad, keeps the rest."""
    sp = Spool(tmp_path).open()
    good = [small_bundle(f"good{i}") for i in range(3)]
    for g in good:
        sp.enqueue(g.bundle_id, g.data, 1)
    root = sp.root
    # leftover cur (a claim interrupted by a crash)
    lc = small_bundle("leftover")
    (root / "cur" / file_name(lc.bundle_id, 2)).write_bytes(lc.data)
    # stale tmp
    (root / "tmp" / "junk.zip").write_bytes(b"partial")
    # zero-length, truncated, garbage and edited bundles in new/
    bad = {
        "zero": b"",
        "trunc": small_bundle("t").data[:50],
        "garbage": os.urandom(300),
    }
    bad_ids = []
    for _name, payload in bad.items():
        bid = small_bundle().bundle_id
        (root / "new" / file_name(bid, 1)).write_bytes(payload)
        bad_ids.append(bid)
    edited = small_bundle("edit me")
    import io
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(edited.data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            z.writestr(
                info.filename,
                data.replace(b"edit me", b"EDITED!") if info.filename == "report.txt" else data,
            )
    (root / "new" / file_name(edited.bundle_id, 1)).write_bytes(buf.getvalue())
    bad_ids.append(edited.bundle_id)
    (root / "new" / "README").write_text("foreign")

    t0 = time.perf_counter()
    sp2 = Spool(tmp_path).open()
    assert time.perf_counter() - t0 < 5
    assert sp2.recovered == {"cur_to_new": 1, "tmp_removed": 1}
    uploaded = []
    while True:
        item, _ = sp2.next_due()
        if item is None:
            break
        claimed = sp2.claim(item)
        if claimed is not None:
            uploaded.append(claimed.bundle_id)
            sp2.ack(claimed)
    assert sorted(uploaded) == sorted([g.bundle_id for g in good] + [lc.bundle_id])
    failed = {i.bundle_id for i in sp2.items("failed")}
    assert failed == set(bad_ids)
    for g in good:
        verify_file(next(i for i in sp2.items("sent") if i.bundle_id == g.bundle_id).path, KEY)


def test_quota_evicts_in_order_and_counts(tmp_path: Path) -> None:
    """Eviction order: sent, failed, then lowest-priority oldest of new; counts are kept."""
    b0 = small_bundle(pad=2000)
    size = len(b0.data)
    sp = Spool(tmp_path, Limits(max_items=4, max_bytes=10 * size, reserve_bytes=0)).open()
    warn_old = small_bundle(pad=2000)
    crit = small_bundle(pad=2000)
    sent = small_bundle(pad=2000)
    failed = small_bundle(pad=2000)
    for b, r in ((warn_old, 0), (crit, 2), (sent, 1), (failed, 1)):
        sp.enqueue(b.bundle_id, b.data, r)
    for b, action in ((sent, "ack"), (failed, "fail")):
        claimed = sp.claim(next(i for i in sp.queued() if i.bundle_id == b.bundle_id))
        assert claimed is not None
        sp.ack(claimed) if action == "ack" else sp.fail(claimed, "x")
    new1 = small_bundle(pad=2000)
    sp.enqueue(new1.bundle_id, new1.data, 1)  # evicts sent
    assert not list(sp.items("sent"))
    new2 = small_bundle(pad=2000)
    sp.enqueue(new2.bundle_id, new2.data, 1)  # evicts failed
    assert not list(sp.items("failed"))
    new3 = small_bundle(pad=2000)
    sp.enqueue(new3.bundle_id, new3.data, 1)  # evicts the warning
    ids = {i.bundle_id for i in sp.items("new")}
    assert warn_old.bundle_id not in ids and crit.bundle_id in ids
    assert sp.pending_evictions() == {"sent": 1, "failed": 1, "new": 1}
    sp.ack_evictions({"sent": 1, "failed": 1, "new": 1})
    assert sp.pending_evictions() == {}


def test_never_evicts_higher_priority_for_lower(tmp_path: Path) -> None:
    """A full queue of critical bundles refuses a warning instead of evicting a critical one."""
    sp = Spool(tmp_path, Limits(max_items=2, reserve_bytes=0)).open()
    for _ in range(2):
        b = small_bundle()
        sp.enqueue(b.bundle_id, b.data, 2)
    w = small_bundle()
    with pytest.raises(SpoolFull):
        sp.enqueue(w.bundle_id, w.data, 0)
    assert len(sp.queued()) == 2


def test_storm_first_bundle_is_kept(tmp_path: Path) -> None:
    """Among equal priority, the first bundle of a storm (keep flag) is evicted last."""
    sp = Spool(tmp_path, Limits(max_items=3, reserve_bytes=0)).open()
    first = small_bundle()
    sp.enqueue(first.bundle_id, first.data, 1, keep=True)
    for _ in range(5):
        b = small_bundle()
        sp.enqueue(b.bundle_id, b.data, 1)
    assert first.bundle_id in {i.bundle_id for i in sp.queued()}
    assert len(sp.queued()) == 3


def test_bad_id_refused(tmp_path: Path) -> None:
    """Only canonical bundle ids and ranks 0-2 are accepted."""
    sp = Spool(tmp_path).open()
    with pytest.raises(SpoolError):
        sp.enqueue("../../etc/passwd", b"x", 1)


class SpoolModel(RuleBasedStateMachine):
    """The spool against a dict model over enqueue, claim, ack, fail, release, restart, evict."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="spoolmodel"))
        self.limits = Limits(max_items=6, max_bytes=1 << 30, reserve_bytes=0)
        self.sp = Spool(self.dir, self.limits).open()
        self.model: dict[str, tuple[str, int]] = {}  # id -> (state, rank)
        self.claimed: dict[str, object] = {}

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def _count(self) -> int:
        return sum(1 for s, _ in self.model.values() if s in ("new", "cur", "failed", "sent"))

    @rule(rank=st.integers(0, 2))
    def enqueue(self, rank: int) -> None:
        b = small_bundle()
        # model eviction: sent, failed, then new with rank <= incoming (lowest, oldest)
        if self._count() + 1 > self.limits.max_items:
            order = sorted(i for i, (s, _) in self.model.items() if s == "sent")
            order += sorted(i for i, (s, _) in self.model.items() if s == "failed")
            order += [
                i
                for i, _ in sorted(
                    ((i, r) for i, (s, r) in self.model.items() if s == "new" and r <= rank),
                    key=lambda t: (t[1], t[0]),
                )
            ]
            if not order:
                with pytest.raises(SpoolFull):
                    self.sp.enqueue(b.bundle_id, b.data, rank)
                return
            del self.model[order[0]]
        self.sp.enqueue(b.bundle_id, b.data, rank)
        self.model[b.bundle_id] = ("new", rank)

    @precondition(lambda self: any(s == "new" for s, _ in self.model.values()))
    @rule()
    def claim(self) -> None:
        item, _ = self.sp.next_due(now=float("inf"))
        assert item is not None
        expect = sorted(
            (i for i, (s, _) in self.model.items() if s == "new"),
            key=lambda i: (-self.model[i][1], i),
        )[0]
        assert item.bundle_id == expect
        c = self.sp.claim(item)
        assert c is not None
        self.claimed[c.bundle_id] = c
        self.model[c.bundle_id] = ("cur", self.model[c.bundle_id][1])

    @precondition(lambda self: bool(self.claimed))
    @rule(action=st.sampled_from(["ack", "fail", "release"]))
    def finish(self, action: str) -> None:
        bid = sorted(self.claimed)[0]
        c = self.claimed.pop(bid)
        rank = self.model[bid][1]
        if action == "ack":
            self.sp.ack(c)  # type: ignore[arg-type]
            self.model[bid] = ("sent", rank)
        elif action == "fail":
            self.sp.fail(c, "rejected")  # type: ignore[arg-type]
            self.model[bid] = ("failed", rank)
        else:
            self.sp.release(c, 0.0, "retry")  # type: ignore[arg-type]
            self.model[bid] = ("new", rank)

    @rule()
    def restart(self) -> None:
        self.sp = Spool(self.dir, self.limits).open()
        for bid in list(self.claimed):
            self.model[bid] = ("new", self.model[bid][1])
        self.claimed.clear()

    @invariant()
    def states_match(self) -> None:
        actual = {
            i.bundle_id: (s, i.rank)
            for s in ("new", "cur", "failed", "sent")
            for i in self.sp.items(s)
        }
        assert actual == self.model
        assert not list((self.dir / "spool" / "tmp").iterdir())


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_housekeep_ages_by_its_own_clock_not_wall_jumps(tmp_path: Path) -> None:
    """A wall-clock jump never makes a fresh bundle look old; real elapsed time does age it."""
    sp = Spool(tmp_path, Limits(max_age_s=100, reserve_bytes=0)).open()
    b = small_bundle()
    sp.enqueue(b.bundle_id, b.data, 1)
    now = time.time()
    assert sp.housekeep(now, mono=1000.0, boot_id="boot-a") == {}  # first call only sets the clock
    assert sp.housekeep(now + 10 * 365 * 86400, mono=1001.0, boot_id="boot-a") == {}  # jump
    assert [i.bundle_id for i in sp.items("new")] == [b.bundle_id]
    assert sp.housekeep(now + 10 * 365 * 86400, mono=1200.0, boot_id="boot-a") == {"new": 1}
    assert sp.pending_evictions() == {"new": 1}


def test_housekeep_never_ages_implausible_ids(tmp_path: Path) -> None:
    """A bundle made while the clock read 1970 (no RTC) is kept: its age is unknown."""
    from agent.bundle.format import DeviceInfo, seal, text_entry
    from agent.core.redact import Redactor

    old = seal(
        device=DeviceInfo(id="T"),
        trigger={"kind": "manual"},
        entries=[text_entry("report.txt", "x")],
        key=KEY,
        redactor=Redactor(),
        bundle_id="00000000-03e8-7000-8000-000000000001",
    )
    sp = Spool(tmp_path, Limits(max_age_s=100, reserve_bytes=0)).open()
    sp.enqueue(old.bundle_id, old.data, 1)
    sp.housekeep(mono=1.0, boot_id="b")
    sp.housekeep(mono=10_000.0, boot_id="b")
    assert [i.bundle_id for i in sp.items("new")] == [old.bundle_id]


def test_fifo_named_like_a_bundle_is_never_opened(tmp_path: Path) -> None:
    """A FIFO in new/ is skipped by the queue (no hang) and quarantined by housekeeping."""
    sp = Spool(tmp_path).open()
    fifo_id = small_bundle().bundle_id
    os.mkfifo(sp.root / "new" / file_name(fifo_id, 2))
    b = small_bundle()
    sp.enqueue(b.bundle_id, b.data, 1)
    item, _ = sp.next_due()
    assert item is not None and item.bundle_id == b.bundle_id
    sp.housekeep(mono=1.0, boot_id="b")
    assert not (sp.root / "new" / file_name(fifo_id, 2)).exists()
    assert (sp.root / "failed" / file_name(fifo_id, 2)).exists()


def test_retry_time_far_ahead_counts_as_due(tmp_path: Path) -> None:
    """A retry time set before the clock jumped back years does not hold the bundle."""
    sp = Spool(tmp_path).open()
    b = small_bundle()
    sp.enqueue(b.bundle_id, b.data, 1)
    claimed = sp.claim(sp.queued()[0])
    assert claimed is not None
    sp.release(claimed, time.time() + 10 * 365 * 86400, "503")
    due, _ = sp.next_due()
    assert due is not None and due.bundle_id == b.bundle_id


# --------------------------------------------------------------------------- hostile local user


def _returns_within(fn: Callable[[], object], timeout_s: float = 10.0) -> list[object]:
    """fn's result in a list when it returned within timeout_s on a thread, else []."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout_s)
    return out


def test_fifo_sidecar_neither_blocks_nor_breaks_the_queue(tmp_path: Path) -> None:
    """A FIFO (or a symlink) in place of a retry sidecar reads as no retry state, at once;
    a release writes a real sidecar in its place without opening the FIFO."""
    sp = Spool(tmp_path).open()
    a, b = small_bundle("a"), small_bundle("b")
    sp.enqueue(a.bundle_id, a.data, 1)
    sp.enqueue(b.bundle_id, b.data, 1)
    os.mkfifo(sp.root / "retry" / f"{a.bundle_id}.json")
    secret = tmp_path / "elsewhere.json"
    secret.write_text('{"attempts": 99, "next_at": 1e12}')
    (sp.root / "retry" / f"{b.bundle_id}.json").symlink_to(secret)
    got = _returns_within(lambda: sp.next_due())
    assert got, "next_due blocked on a FIFO sidecar"
    item, _ = got[0]  # type: ignore[misc]
    assert item is not None and item.bundle_id == a.bundle_id
    assert sp.retry_state(b.bundle_id).attempts == 0  # the link was not followed
    claimed = sp.claim(item)
    assert claimed is not None
    done = _returns_within(lambda: sp.release(claimed, time.time() + 60, "HTTP 503"))
    assert done, "release blocked on the FIFO sidecar"
    side = sp.root / "retry" / f"{a.bundle_id}.json"
    assert side.is_file() and not side.is_symlink() and sp.retry_state(a.bundle_id).attempts == 1


@pytest.mark.parametrize("state", ["failed", "sent", "retry", "new"])
def test_symlinked_spool_dir_is_moved_aside_and_never_written_through(
    tmp_path: Path, state: str
) -> None:
    """A spool dir replaced by a symlink to a dir outside the state dir is renamed aside
    (`<name>.quarantined-<ts>`) and recreated at open(); nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    sp = Spool(tmp_path / "state").open()
    d = sp.root / state
    d.rmdir()
    d.symlink_to(outside)
    sp = Spool(tmp_path / "state").open()
    assert d.is_dir() and not d.is_symlink()
    aside = [p for p in sp.root.iterdir() if p.name.startswith(f"{state}.quarantined-")]
    assert len(aside) == 1 and aside[0].is_symlink()
    for i, rank in enumerate((1, 1, 1)):
        b = small_bundle(f"b{i}")
        sp.enqueue(b.bundle_id, b.data, rank)
    first, second, _ = sp.queued()
    c1 = sp.claim(first)
    assert c1 is not None
    sp.ack(c1)
    c2 = sp.claim(second)
    assert c2 is not None
    sp.fail(c2, "HTTP 422: device_mismatch")
    assert list(outside.iterdir()) == []


def test_spool_dir_swapped_for_a_symlink_after_open_is_caught_before_a_move(
    tmp_path: Path,
) -> None:
    """sent/ and failed/ replaced by symlinks while the spool is open: ack and fail check
    the directory (lstat) before moving a bundle into it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    sp = Spool(tmp_path / "state").open()
    for s in ("sent", "failed"):
        (sp.root / s).rmdir()
        (sp.root / s).symlink_to(outside)
    for i in range(2):
        b = small_bundle(f"x{i}")
        sp.enqueue(b.bundle_id, b.data, 1)
    first, second = sp.queued()
    c1, c2 = sp.claim(first), sp.claim(second)
    assert c1 is not None and c2 is not None
    sp.ack(c1)
    sp.fail(c2, "rejected")
    assert list(outside.iterdir()) == []
    assert [i.bundle_id for i in sp.items("sent")] == [c1.bundle_id]
    assert [i.bundle_id for i in sp.items("failed")] == [c2.bundle_id]


def test_fifo_or_file_in_place_of_a_spool_dir_is_moved_aside(tmp_path: Path) -> None:
    """A FIFO as cur/ and a regular file as tmp/ are renamed aside at open(), not opened."""
    sp = Spool(tmp_path).open()
    (sp.root / "cur").rmdir()
    os.mkfifo(sp.root / "cur")
    (sp.root / "tmp").rmdir()
    (sp.root / "tmp").write_text("x")
    assert _returns_within(lambda: Spool(tmp_path).open())
    assert (sp.root / "cur").is_dir() and (sp.root / "tmp").is_dir()
    assert len([p for p in sp.root.iterdir() if ".quarantined-" in p.name]) == 2

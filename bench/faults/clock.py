"""Wall-clock jumps: the uploader's retries and order, the fault engine, spool housekeeping."""

from __future__ import annotations

import random
import time
from pathlib import Path

from agent.bundle.format import DeviceInfo, SealedBundle, new_bundle_id, seal, text_entry
from agent.spool.maildir import Limits, Spool
from bench.faults import Result

DAY = 86400.0
YEAR = 365 * DAY
JUMPS = (-10 * YEAR, -DAY, -3600.0, -60.0, 60.0, 3600.0, DAY, 10 * YEAR)


class Wall:
    """A wall clock that follows real time plus an offset the trial moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _id_made_at(created_s: float) -> str:
    """A bundle id as a process whose clock reads created_s makes it.

    new_bundle_id is monotonic within a process (it never goes back below the
    last id it made), so the skewed id is made as by a freshly started process.
    """
    import agent.bundle.format as ab

    saved = ab._uuid_last
    ab._uuid_last = (0, 0)
    try:
        return new_bundle_id(max(0, int(created_s * 1000)))
    finally:
        ab._uuid_last = saved


def _bundle(note: str, created_s: float) -> SealedBundle:
    from agent.core.redact import Redactor
    from tests.bundle.kit import KEY

    return seal(
        device=DeviceInfo(id="T-CLOCK"),
        trigger={"kind": "manual", "note": note},
        entries=[text_entry("report.txt", note)],
        key=KEY,
        redactor=Redactor(),
        bundle_id=_id_made_at(created_s),
        created_at=max(0.0, created_s),
    )


def clock_jumps(quick: bool, work: Path) -> Result:
    """The wall clock jumps back and forward (±60 s to ±10 years) between uploads that fail with 5xx, Retry-After and resets, over bundles whose ids were made with skewed clocks; then connectivity comes back. Also the fault engine fed readings while the wall clock jumps."""
    from agent.upload.uploader import MAX_RETRY_AFTER_S, Uploader
    from bench.faults.storage import _uploader_config
    from tests.upload.faultserver import FaultServer, Reply, ResetMidBody

    res = Result("clock_jumps", "clock jumps back and forward")
    rng = random.Random(41)
    trials = 8 if quick else 60
    held = held_max = out_of_order = 0
    with FaultServer() as srv:
        for t in range(trials):
            state = work / f"t{t}"
            spool = Spool(state, Limits(reserve_bytes=0)).open()
            ids = {}
            for i in range(6):
                skew = rng.choice((0.0, 0.0, -50 * YEAR, -DAY, DAY, 80 * YEAR))
                b = _bundle(f"clock {t}/{i}", time.time() + skew)
                spool.enqueue(b.bundle_id, b.data, rng.randrange(3))
                ids[b.bundle_id] = b
            wall = Wall()
            up = Uploader(_uploader_config(state, srv.url), spool, clock=wall, rng=rng)
            for _ in range(12):
                res.trials += 1
                wall.offset += rng.choice(JUMPS)
                if rng.random() < 0.5:
                    srv.script(
                        rng.choice(
                            (
                                Reply(500),
                                Reply(503, {"Retry-After": "1"}),
                                Reply(429, {"Retry-After": "2"}),
                                ResetMidBody(0.5),
                            )
                        )
                    )
                s = up.drain_once(deadline_s=20)
                if s.stopped == "not_due":
                    waits = [
                        spool.retry_state(i.bundle_id, wall(), up._max_wait_s).next_at - wall()
                        for i in spool.queued()
                    ]
                    longest = max(waits, default=0.0)
                    # a legitimate wait is at most the backoff cap or a capped Retry-After
                    if longest > MAX_RETRY_AFTER_S + 60:
                        held += 1
                        held_max = max(held_max, int(longest))
                wall.offset += 2.0  # time passes between drains
                if not any(spool.items("new")):
                    break
            start = len(srv.requests)
            for _ in range(30):  # connectivity back: backoff reset, drain (scripted faults left)
                up.notify_online()
                if up.drain_once(deadline_s=60).stopped == "empty":
                    break
            order = [
                r.bundle_id
                for r in srv.requests[start:]
                if r.method == "PUT" and r.status in (200, 201) and r.bundle_id in ids
            ]
            ranks = {i.bundle_id: i.rank for s_ in ("sent", "new") for i in spool.items(s_)}
            expect = sorted(order, key=lambda b: (-ranks.get(b, 0), b))
            if order != expect:
                out_of_order += 1
                res.details.append(f"final drain not in order critical-first then oldest: {order}")
            for bid, b in ids.items():
                rec = srv.store.get(bid)
                if rec is None:
                    where = [st for st in ("new", "cur", "failed") if any(spool.items(st))]
                    res.loss(f"{bid} not stored after connectivity came back ({where})")
                elif rec.digest_hex != _sha(b.data):
                    res.loss(f"{bid} stored with another digest")
    res.duplicates = sum(max(0, s.creations - 1) for s in srv.store.values())
    if held:
        res.stall(
            f"after a failure, a backward jump left retries waiting up to {held_max} s "
            f"(in {held} of {res.trials} drains) until connectivity came back",
            known="retry-wall-clock",
        )
    res.notes.append(
        f"{trials} trials × up to 12 drains with a random jump before each and a fault "
        f"scripted half the time; bundle ids made with clocks 50 years back to 80 years ahead; "
        f"{held} drains found retries held for more than an hour by a backward jump; final "
        f"drains in order (critical first, then by id): {trials - out_of_order}/{trials}"
    )
    _engine_trials(res, rng, 40 if quick else 300)
    return res


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _engine_trials(res: Result, rng: random.Random, n: int) -> None:
    """The fault engine keeps hysteresis on the monotonic clock: wall jumps change nothing."""
    from agent.core.config import Config
    from agent.core.model import Reading
    from agent.faults.engine import FaultEngine

    def run(jumps: list[float]) -> list[tuple[str, str]]:
        mono = [1000.0]
        wall_off = [0.0]
        eng = FaultEngine(Config(), lambda: mono[0], wall=lambda: 1.7e9 + mono[0] + wall_off[0])
        out: list[tuple[str, str]] = []
        pattern = [False] * 4 + [True] * 4 + [False] * 3 + [True] * 3
        for i, online in enumerate(pattern):
            mono[0] += 5.0
            wall_off[0] += jumps[i]
            r = Reading(
                "power",
                {"ac_online": online, "capacity_pct": 80, "status": "Charging"},
                ts=1.7e9 + mono[0] + wall_off[0],
                mono=mono[0],
            )
            out += [(e.key, e.state.value) for e in eng.feed(r) + eng.tick()]
        return out

    base = run([0.0] * 14)
    if not base:
        res.loss("the engine raised nothing on the baseline power scenario")
        return
    differ = 0
    for _ in range(n):
        jumps = [rng.choice((0.0, *JUMPS)) for _ in range(14)]
        res.trials += 1
        if run(jumps) != base:
            differ += 1
    if differ:
        res.loss(f"fault events changed under wall-clock jumps in {differ} of {n} runs", differ)
    res.notes.append(
        f"fault engine: {n} power.ac_lost raise/clear sequences under random wall jumps gave "
        f"the same events as without jumps ({len(base)} events)"
    )


def clock_housekeeping(quick: bool, work: Path) -> Result:
    """Spool housekeeping (max age) after wall-clock trouble: bundles captured while the clock was in 1970 (no RTC) then synced, a forward jump beyond max_age_days, and a backward jump. A fresh, undelivered bundle deleted for its age is a loss even though the eviction is counted."""
    res = Result("clock_housekeeping", "clock jumps + spool housekeeping (max age)")
    n = 5 if quick else 30
    lost_by: dict[str, int] = {}
    for case, created_skew, housekeep_skew in (
        ("captured at 1970 (no RTC), housekept after NTP sync", None, 0.0),
        ("forward jump of 31 days at housekeeping", 0.0, 31 * DAY),
        ("forward jump of 10 years at housekeeping", 0.0, 10 * YEAR),
        ("backward jump of 10 years at housekeeping", 0.0, -10 * YEAR),
        ("captured 80 years ahead, housekept after sync", 80 * YEAR, 0.0),
    ):
        for i in range(n):
            state = work / f"{len(lost_by)}-{i}"
            spool = Spool(state, Limits(reserve_bytes=0)).open()  # max age: 30 days
            created = 1000.0 + i if created_skew is None else time.time() + created_skew
            b = _bundle(f"{case} {i}", created)
            spool.enqueue(b.bundle_id, b.data, 1)
            spool.housekeep(time.time() + housekeep_skew)
            res.trials += 1
            if not any(True for _ in spool.items("new")):
                lost_by[case] = lost_by.get(case, 0) + 1
                res.loss(
                    f"{case}: a bundle captured seconds ago was deleted as too old",
                    known="housekeep-clock",
                )
            else:
                lost_by.setdefault(case, 0)
    res.notes.append("; ".join(f"{case}: {lost}/{n} deleted" for case, lost in lost_by.items()))
    return res

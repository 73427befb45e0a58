"""Outages of the fleet engines while agents upload (issue 14, "Failures it must survive").

One collector on PostgreSQL and SeaweedFS (the servers of tests/collector/servers.py; S3
through a TCP proxy that can stall it), its data_dir (incoming/) and SeaweedFS's data dir
on small tmpfs mounts when running as root. Agents with the real spool and uploader keep
uploading while, in each round, each outage is injected, held until the collector has
answered 503 to some upload, and lifted; the agents then drain. At the end every bundle an
agent enqueued must be acknowledged (moved to sent/) and stored exactly once: one index row,
one S3 object holding the agent's bytes (downloaded through the collector), one 201.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.faults import Result, fill, is_root, tmpfs

RETRY_S = 1  # the collector's unavailable_retry_after_s: the agents come back at once
HOLD_S = 2.0  # an outage lasts at least this long once the first 503 was answered
FIRST_503_TIMEOUT_S = 90.0  # a stalled S3 is given up after ~35 s (collector.storage.s3)
DRAIN_TIMEOUT_S = 180.0


@dataclass
class Outage:
    name: str
    start: Callable[[], None]
    stop: Callable[[], None]
    rounds: int = 0
    answered_503: int = 0
    held_s: float = 0.0
    recovery_s: float = 0.0  # from lifting the outage to every agent drained (max)
    no_503: int = 0


def _wait(cond: Callable[[], Any], timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return bool(cond())


class KeptFull:
    """A disk kept full while the outage lasts: filled, then filled again every 20 ms, as
    other writers would take any space freed. Filled once, the uploads in flight when it
    filled finish, remove their staged files and leave room for the next ones: the
    collector's disk then ran a whole quick round without refusing anything."""

    def __init__(self, filler: Path) -> None:
        self.filler = filler
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        fill(self.filler)
        self._done.clear()
        self._thread = threading.Thread(target=self._refill, name="kept-full", daemon=True)
        self._thread.start()

    def _refill(self) -> None:
        while not self._done.wait(0.02):
            fill(self.filler)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def _mount(path: Path, size: str, notes: list[str]) -> Iterator[Path | None]:
    """A tmpfs at path when root can mount one, else None (the disk-full outages skipped)."""
    if not is_root():
        notes.append("not root: no tmpfs, the disk-full outages skipped")
        yield None
        return
    try:
        with tmpfs(path, size) as p:
            yield p
    except OSError as e:
        notes.append(f"no tmpfs ({e}): the disk-full outages skipped")
        yield None


def fleet_outages(quick: bool, work: Path) -> Result:
    """PostgreSQL stopped (a fast shutdown, then a crash) and started, SeaweedFS stopped and started, S3 slow then stalled (or its replies held: stored, never acknowledged), the S3 server's disk and the collector's own disk (incoming/) full, in rounds while three agents upload with their real spool and uploader: uploads during an outage are answered 503 with Retry-After, and every bundle ends acknowledged and stored exactly once (one index row, one S3 object with the agent's bytes, one 201)."""
    import psycopg  # lazy: the fleet extra, only for this family

    from collector.auth import add_device  # lazy: the family's own imports
    from collector.storage.postgres import migrate  # lazy: the fleet extra
    from tests.collector.agents import Agent  # lazy: the family's own imports
    from tests.collector.proxy import TcpProxy  # lazy: the family's own imports
    from tests.collector.servers import (  # lazy: the family's own imports
        S3_PORT,
        Unavailable,
        run_postgres,
        run_seaweed,
    )
    from tests.collector.test_app import Env  # lazy: the family's own imports

    res = Result("fleet_outages", "fleet outages (PostgreSQL, S3, disks)")
    rounds = 1 if quick else 3
    per_agent = 3 if quick else 6
    notes: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            pg = stack.enter_context(run_postgres())
            t0 = time.monotonic()
            sw = stack.enter_context(run_seaweed(lock_wait_s=1 if quick else 1800))
            if time.monotonic() - t0 > 10:
                notes.append(
                    f"{time.monotonic() - t0:.0f} s of the family's time waiting for SeaweedFS "
                    "(its ports are fixed: one test session at a time)"
                )
            s3_disk = stack.enter_context(_mount(work / "s3disk", "256M", notes))
            if s3_disk is not None:
                sw.stop()
                stack.callback(sw.stop)  # before the tmpfs is unmounted
                sw.start(data_dir=s3_disk / "data")
            c_disk = stack.enter_context(_mount(work / "cdisk", "16M", []))
            db = "reliability_" + secrets.token_hex(4)
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            migrate(pg.url(db))
            proxy = stack.enter_context(TcpProxy(S3_PORT))
            env = Env(
                work,
                data_dir=str((c_disk or work) / "store"),
                index_url=pg.url(db),
                blob_url=f"s3://{sw.bucket}/reliability-{secrets.token_hex(4)}",
                s3_endpoint_url=proxy.url,
                unavailable_retry_after_s=RETRY_S,
                rate_per_minute=1_000_000,
            )
            stack.callback(env.close)
            agents = [
                Agent(work, dev, add_device(env.cfg.tokens_file, dev), env.url)
                for dev in ("T-FLEET-1", "T-FLEET-2", "T-FLEET-3")
            ]
            for a in agents:
                stack.callback(a.uploader.stop)
                a.uploader.start()
            _run(
                res, env, agents, _outages(pg, sw, proxy, s3_disk, c_disk, quick), rounds, per_agent
            )
            _account(res, env, agents, pg.url(db), sw, notes)
    except Unavailable as e:
        res.skipped = str(e)
    res.notes.extend(notes)
    return res


def _outages(
    pg: Any, sw: Any, proxy: Any, s3_disk: Path | None, c_disk: Path | None, quick: bool
) -> list[Outage]:
    turn = {"pg": 0, "s3": 0}

    def pg_stop() -> None:  # alternately a fast shutdown and a crash
        turn["pg"] += 1
        pg.stop("fast" if turn["pg"] % 2 else "immediate")

    def stall() -> None:  # slow first (still stored, later), then stalled
        turn["s3"] += 1
        proxy.set("delay", 0.2)
        time.sleep(HOLD_S)
        # alternately nothing through, and requests through but replies held (the object
        # stored, its acknowledgement never back)
        proxy.set("stall" if turn["s3"] % 2 else "stall_replies")

    out = [
        Outage("PostgreSQL stopped", pg_stop, pg.start),
        Outage("SeaweedFS stopped", sw.stop, sw.start),
    ]
    if not quick:
        out.append(Outage("S3 slow then stalled", stall, lambda: proxy.set("pass")))
    for disk, what in ((s3_disk, "S3 server's disk full"), (c_disk, "collector's disk full")):
        if disk is not None:
            full = KeptFull(disk / "filler")
            out.append(Outage(what, full.start, full.stop))
    return out


def _metric(env: Any, name: str, **labels: str) -> int:
    """A counter of the collector's /metrics (read in process)."""
    app = env.server.server.config.app
    value = app.state.collector.metrics.registry.get_sample_value(name, labels)
    return int(value or 0)


def _count(env: Any, result: str) -> int:
    """Uploads answered by result: created, already_stored, conflict, rejected."""
    return _metric(env, "posagent_collector_ingest_total", result=result)


def _unavailable(env: Any) -> int:
    """Uploads answered 503."""
    return _metric(env, "posagent_collector_ingest_rejects_total", reason="unavailable")


def _run(
    res: Result, env: Any, agents: list[Any], outages: list[Outage], rounds: int, n: int
) -> None:
    """Each round: every outage once, bundles enqueued before and during it."""
    for _ in range(rounds):
        for o in outages:
            res.trials += 1
            o.rounds += 1
            for a in agents:
                a.add(n)  # in flight when the outage begins
            before = _unavailable(env)
            o.start()
            t0 = time.monotonic()
            for a in agents:
                a.add(n)  # queued during the outage
            if not _wait(lambda b=before: _unavailable(env) > b, FIRST_503_TIMEOUT_S):
                o.no_503 += 1  # everything went through before it bit
            time.sleep(HOLD_S)
            o.answered_503 += _unavailable(env) - before
            o.stop()
            t1 = time.monotonic()
            o.held_s += t1 - t0
            if not _wait(lambda: all(a.done() for a in agents), DRAIN_TIMEOUT_S, 0.2):
                left = {a.device: a.left() for a in agents}
                res.stall(f"{o.name}: agents not drained {DRAIN_TIMEOUT_S:.0f} s after: {left}")
            o.recovery_s = max(o.recovery_s, time.monotonic() - t1)
    for o in outages:
        res.notes.append(
            f"{o.name}: {o.rounds}× held {o.held_s / max(1, o.rounds):.1f} s on average, "
            f"{o.answered_503} uploads answered 503 + Retry-After"
            + (f" ({o.no_503} rounds without one)" if o.no_503 else "")
            + f", all drained at most {o.recovery_s:.1f} s after"
        )


def _account(
    res: Result, env: Any, agents: list[Any], db_url: str, sw: Any, notes: list[str]
) -> None:
    """Enqueued vs acknowledged vs stored: rows, objects, bytes, 201s."""
    import hashlib  # lazy: the family's own imports
    from collections import Counter  # lazy: the family's own imports

    import psycopg  # lazy: the fleet extra

    enqueued: dict[str, bytes] = {}
    acked: set[str] = set()
    failed = 0
    for a in agents:
        enqueued.update(a.sent)
        acked |= a.acked()
        failed += a.left()["failed"]
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute("SELECT bundle_id, sha256 FROM bundles").fetchall())
    prefix = env.cfg.blob_url.removeprefix(f"s3://{sw.bucket}/") + "/"
    keys: list[str] = []
    for page in (
        sw.client().get_paginator("list_objects_v2").paginate(Bucket=sw.bucket, Prefix=prefix)
    ):
        keys += [str(o["Key"]) for o in page.get("Contents", [])]
    objects = Counter(k[len(prefix) :].split("/")[0] for k in keys)
    for bid in sorted(set(enqueued) - acked)[:8]:
        res.loss(f"{bid} enqueued, never acknowledged")
    if len(set(enqueued) - acked) > 8:
        res.loss("more never acknowledged", len(set(enqueued) - acked) - 8)
    lost = 0
    for bid in sorted(acked):
        data = enqueued[bid]
        sha = hashlib.sha256(data).hexdigest()
        if rows.get(bid) != sha:
            lost += 1
            res.loss(f"{bid} acknowledged, index row {'missing' if bid not in rows else 'wrong'}")
            continue
        r = env.http.get(f"{env.url}/v1/bundles/{bid}/download", timeout=60)
        if r.status_code != 200 or r.content != data:
            lost += 1
            res.loss(f"{bid} indexed, its blob {'differs' if r.ok else r.status_code}")
    foreign = set(rows) - set(enqueued)
    if foreign:
        res.loss(f"{len(foreign)} index rows of bundles no agent sent", len(foreign))
    extra_objects = sum(n - 1 for n in objects.values() if n > 1) + len(set(objects) - set(rows))
    created = _count(env, "created")
    res.duplicates += extra_objects + max(0, created - len(rows))
    notes.insert(
        0,
        f"{len(enqueued)} bundles of 40 kB from 3 agents: {len(acked)} acknowledged, "
        f"{len(rows)} indexed, {len(objects)} with an S3 object, {lost} acknowledged but not "
        f"stored, {res.duplicates} duplicated ({created} answered 201, "
        f"{_count(env, 'already_stored')} answered 200: sent again after an answer was lost), "
        f"{failed} refused; {_count(env, 'rejected') - _unavailable(env)} uploads answered "
        "another refusal than 503",
    )

"""kill -9 loops: a child enqueueing, capturing or uploading is SIGKILLed at random points.

The enqueue and upload children are the ones the spool and uploader tests use
(tests/spool/test_crash.py, tests/upload/test_uploader_kill.py); the capture child runs
`Capturer.capture` with real diagnostics collectors. After every kill the
spool is reopened as a restarted daemon would, and every bundle the child
acknowledged (its id written to a pipe after the call returned) must be there
and verify; nothing partial may sit in new/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bundle.format import BundleError, verify_file
from agent.spool.maildir import Limits, Spool
from bench.faults import Result
from drivers.roots import Roots

ROOT = Path(__file__).resolve().parents[2]


def _read_all(fd: int) -> str:
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace")


def _kill_loop(
    res: Result,
    state: Path,
    child: Callable[[Path, int], None],
    kills: int,
    delay_s: tuple[float, float],
    seed: int,
    key: bytes,
) -> None:
    """Fork child(state, pipe) `kills` times, SIGKILL it after a random delay, check the spool."""
    rng = random.Random(seed)
    acked: set[str] = set()
    checked: set[str] = set()
    lost: set[str] = set()
    for _ in range(kills):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            child(state, w)
            os._exit(0)
        os.close(w)
        time.sleep(rng.uniform(*delay_s))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        res.trials += 1
        acked.update(line for line in _read_all(r).splitlines() if len(line) == 36)
        sp = Spool(state).open()  # what a restarted daemon does
        leftovers = list((sp.root / "tmp").iterdir()) + list((sp.root / "cur").iterdir())
        if leftovers:
            res.loss(f"recovery left {len(leftovers)} file(s) in tmp/ or cur/")
        present = {i.bundle_id: i for i in sp.items("new")}
        for bid in sorted(acked - set(present) - lost):
            lost.add(bid)
            res.loss(f"acknowledged bundle {bid} missing after kill {res.trials}")
        for bid, item in present.items():
            if bid in checked:
                continue
            try:
                verify_file(item.path, key)
            except BundleError as e:
                res.loss(f"partial or corrupt bundle in new/: {bid}: {e}")
            checked.add(bid)
    res.notes.append(
        f"{len(acked)} bundles acknowledged; {len(checked)} durable in new/ and verified "
        f"({len(checked) - len(acked)} durable but killed before the acknowledgement)"
    )


# --------------------------------------------------------------------------- enqueue


def enqueue(quick: bool, work: Path) -> Result:
    """kill -9 of a process enqueueing bundles (tmp → fsync → rename → fsync new/)."""
    from tests.bundle.kit import KEY
    from tests.spool.test_crash import _child_enqueue_forever

    res = Result("kill9_enqueue", "kill -9 during enqueue")
    _kill_loop(res, work, _child_enqueue_forever, 50 if quick else 500, (0.0, 0.06), 11, KEY)
    return res


# --------------------------------------------------------------------------- capture


CAPTURE_KEY = b"reliability-capture-key-0123456789"


def _child_capture_forever(state: Path, wfd: int) -> None:
    """In a forked child: Capturer.capture in a loop, acknowledging each bundle id."""
    try:
        from agent.bundle.trigger import Trigger, TriggerKind
        from agent.capture.capturer import Capturer
        from agent.capture.probes import Probe, system_snapshot
        from agent.core.config import AgentConfig, Config
        from agent.core.model import Severity
        from agent.core.redact import Redactor

        cfg = Config(agent=AgentConfig(device_id="T-KILL", site="Bench", state_dir=str(state)))
        spool = Spool(state, Limits(reserve_bytes=0, max_items=100_000, max_bytes=1 << 34)).open()
        rng = random.Random(os.getpid())
        cap = Capturer(
            cfg,
            spool,
            CAPTURE_KEY,
            Redactor(),
            probes=[
                Probe("system", lambda: system_snapshot(Roots())),
                Probe("log_tail", lambda: "printer: paper end\n" * rng.randint(1, 2000)),
            ],
            timeline=lambda: [
                {"source": "printer:receipt", "ts": time.time(), "values": {"paper_end": True}}
            ],
        )
        n = 0
        while True:
            trigger = Trigger(
                kind=TriggerKind.FAULT,
                key="printer.paper_end",
                severity=(Severity.WARNING, Severity.ERROR, Severity.CRITICAL)[n % 3],
                summary=f"kill loop {n}",
            )
            r = cap.capture(trigger, with_screen=False)
            os.write(wfd, (r.bundle_id + "\n").encode())
            n += 1
    finally:
        os._exit(0)


def capture(quick: bool, work: Path) -> Result:
    """kill -9 of a process running Capturer.capture (collectors, redaction, seal, enqueue)."""
    res = Result("kill9_capture", "kill -9 during capture")
    _kill_loop(
        res, work, _child_capture_forever, 20 if quick else 250, (0.05, 0.3), 12, CAPTURE_KEY
    )
    return res


# --------------------------------------------------------------------------- upload


def upload(quick: bool, work: Path) -> Result:
    """kill -9 of an uploading process mid-body, against a store server in its own process."""
    from agent.core.config import load_config
    from agent.upload.uploader import Uploader
    from tests.bundle.kit import small_bundle
    from tests.conftest import write_config
    from tests.upload.faultserver import store_process, store_state
    from tests.upload.test_uploader_kill import _child_upload_forever, kill_uploading_child

    res = Result("kill9_upload", "kill -9 during upload")
    n_bundles, kills = (30, 20) if quick else (200, 160)
    cfg_path = write_config(work)
    (work / "token").write_text("tok-reliability\n")
    cfg = load_config(cfg_path)
    spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
    rng = random.Random(13)
    ids: set[str] = set()
    for i in range(n_bundles):
        b = small_bundle(f"kill {i}", size_bytes=rng.choice((40_000, 80_000, 120_000)))
        spool.enqueue(b.bundle_id, b.data, rng.choice((0, 1, 2)))
        ids.add(b.bundle_id)
    worker_kills = 0
    with store_process(work) as endpoint:
        for _ in range(kills):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                _child_upload_forever(cfg_path, endpoint)
            worker_kills += kill_uploading_child(pid, rng, spool)
            res.trials += 1
        mid = store_state(endpoint)
        spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
        up_cfg = dataclasses.replace(cfg, upload=dataclasses.replace(cfg.upload, endpoint=endpoint))
        summary = Uploader(up_cfg, spool).drain_once(deadline_s=120)
        state = store_state(endpoint)
    store: dict[str, Any] = state["store"]
    sent = {i.bundle_id: i for i in spool.items("sent")}
    for bid in sorted(ids):
        rec = store.get(bid)
        if rec is None:
            where = [s for s in ("new", "cur", "failed") if any(spool.items(s))]
            res.loss(f"{bid} never stored (spool states non-empty: {where})")
            continue
        if bid not in sent:
            res.loss(f"{bid} stored but not moved to sent/")
        elif rec["digest"] != hashlib.sha256(sent[bid].path.read_bytes()).hexdigest():
            res.loss(f"{bid} stored with another digest")
        res.duplicates += max(0, int(rec["creations"]) - 1)
    foreign = set(store) - ids
    if foreign:
        res.loss(f"{len(foreign)} unknown ids stored", len(foreign))
    puts = int(state["requests"]) - 2  # minus the two GET /_state
    again = puts - int(state["truncated_bodies"]) - len(store)
    res.notes.append(
        f"{n_bundles} bundles of 40-120 kB paced at 2 MB/s; kills of the uploading process "
        f"({worker_kills} of its upload worker first); {mid['truncated_bodies']} bodies cut "
        f"mid-way by a kill; {len(mid['store'])} stored during the kill loop, the rest by a "
        f"final drain ({summary.uploaded}); {again} whole bodies sent again after a kill "
        f"took the reply (answered 'already stored'); {puts} PUTs in all"
    )
    return res

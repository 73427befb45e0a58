"""Storage faults: a full disk, a state dir remounted read-only, a corrupt spool, special files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from agent.bundle.format import BundleError, new_bundle_id, verify_file
from agent.bundle.trigger import Trigger
from agent.core.config import AgentConfig, Config, UploadConfig
from agent.spool.maildir import Limits, Spool, SpoolError, file_name
from bench.faults import Result, is_root, remount, tmpfs


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _uploader_config(state: Path, endpoint: str) -> Config:
    return Config(
        agent=AgentConfig(device_id="T-REL", state_dir=str(state)),
        upload=UploadConfig(
            endpoint=endpoint,
            token="tok-reliability",
            connect_timeout_s=2.0,
            read_timeout_s=2.0,
            backoff_base_s=0.01,
            backoff_cap_s=0.05,
        ),
    )


# --------------------------------------------------------------------------- full disk


def full_disk(quick: bool, work: Path) -> Result:
    """A 1 MiB tmpfs filled again and again: enqueues and captures are refused cleanly, nothing partial, nothing acknowledged lost, every eviction counted."""
    from agent.capture.capturer import Capturer
    from agent.core.redact import Redactor
    from tests.bundle.kit import KEY, small_bundle

    res = Result("full_disk", "full disk (1 MiB tmpfs)")
    if not is_root():
        res.skipped = "mounting a tmpfs needs root"
        return res
    rng = random.Random(21)
    attempts = 150 if quick else 1200
    with tmpfs(work / "tiny", "1m") as mnt:
        # A: ENOSPC in the middle of a write (free-space reserve disabled to force it);
        # an "uploader" deletes a few acknowledged bundles now and then to make room.
        sp = Spool(
            mnt / "a",
            Limits(reserve_bytes=-(1 << 40), max_bytes=1 << 30, max_items=10**6, keep_sent=False),
        ).open()
        acked: dict[str, str] = {}
        delivered: set[str] = set()
        refused = 0
        for i in range(attempts):
            b = small_bundle(f"fill {i}", pad=rng.choice((2_000, 20_000, 60_000, 150_000)))
            res.trials += 1
            try:
                sp.enqueue(b.bundle_id, b.data, rng.randrange(3))
                acked[b.bundle_id] = _sha(b.data)
            except SpoolError as e:
                refused += 1
                if "not captured" not in str(e):
                    res.loss(f"refusal without a clear message: {e}")
            except Exception as e:
                res.loss(f"enqueue crashed on a full disk: {type(e).__name__}: {e}")
            if any((sp.root / "tmp").iterdir()):
                res.loss("a partial file was left in tmp/ after a refused enqueue")
            if refused and rng.random() < 0.25:
                for queued in rng.sample(sp.queued(), k=min(3, len(sp.queued()))):
                    claimed = sp.claim(queued)
                    if claimed is not None:
                        sp.ack(claimed)
                        delivered.add(queued.bundle_id)
        present = {i.bundle_id: i for i in sp.items("new")}
        for bid, sha in acked.items():
            if bid in delivered:
                continue
            item = present.get(bid)
            if item is None:
                res.loss(f"acknowledged bundle {bid} missing")
                continue
            try:
                verify_file(item.path, KEY)
            except BundleError as e:
                res.loss(f"bundle {bid} corrupt on the full disk: {e}")
            if _sha(item.path.read_bytes()) != sha:
                res.loss(f"bundle {bid} changed on disk")
        res.notes.append(
            f"ENOSPC mid-write: {len(acked)} captured, {refused} refused with 'not captured', "
            f"{len(delivered)} drained to make room"
        )
        _rmtree(mnt / "a")

        # B: free-space reserve on: older bundles are evicted, and every eviction is counted.
        sp = Spool(mnt / "b", Limits(reserve_bytes=0, max_bytes=1 << 30, max_items=10**6)).open()
        acked_b: set[str] = set()
        refused_b = 0
        for i in range(attempts // 3):
            b = small_bundle(f"evict {i}", pad=rng.choice((2_000, 20_000, 60_000)))
            res.trials += 1
            try:
                sp.enqueue(b.bundle_id, b.data, 1)
                acked_b.add(b.bundle_id)
            except SpoolError:
                refused_b += 1
            except Exception as e:
                res.loss(f"enqueue crashed with the reserve on: {type(e).__name__}: {e}")
        gone = acked_b - {i.bundle_id for i in sp.items("new")}
        counted = sp.pending_evictions().get("new", 0)
        if counted != len(gone):
            res.loss(
                f"{len(gone)} bundles gone but {counted} evictions counted",
                abs(len(gone) - counted),
            )
        res.notes.append(
            f"reserve on: {len(acked_b)} captured, {refused_b} refused, {len(gone)} oldest evicted "
            "and counted for the next manifest"
        )
        _rmtree(mnt / "b")

        # C: Capturer.capture on a full disk raises the spool's typed error.
        filler = mnt / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        cfg = Config(agent=AgentConfig(device_id="T-FULL", state_dir=str(mnt / "c")))
        cap = Capturer(cfg, Spool(mnt / "c").open(), KEY, Redactor())
        refused_c = 0
        for i in range(10 if quick else 40):
            res.trials += 1
            try:
                cap.capture(Trigger.manual(f"disk full {i}"), with_screen=False)
                res.loss("a capture claimed success on a full disk")
            except SpoolError:
                refused_c += 1
            except Exception as e:
                res.loss(f"capture crashed on a full disk: {type(e).__name__}: {e}")
        cap.close()
        if any((mnt / "c" / "spool" / "new").iterdir()):
            res.loss("a file appeared in new/ on a full disk")
        res.notes.append(f"Capturer.capture on a full disk: {refused_c} SpoolError refusals")
    return res


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- read-only state dir


def _agent_config(tmp: Path, state: Path, endpoint: str) -> Path:
    from tests.conftest import quick_config

    # manual reports stand in for faults here, as many as a cycle needs: lift their own cap
    cfg = quick_config(tmp, [], "manual_burst = 1000\nmanual_per_hour = 3600.0")
    text = cfg.read_text().replace(f'state_dir = "{tmp / "state"}"', f'state_dir = "{state}"')
    text = text.replace(
        "[upload]\n",
        f'[upload]\nendpoint = "{endpoint}"\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.2\n'
        "read_timeout_s = 5.0\n",
    )
    cfg.write_text(text)
    (tmp / "token").write_text("tok-reliability\n")
    return cfg


def _wait(cond: Any, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def readonly_state(quick: bool, work: Path) -> Result:
    """The running daemon's state dir is remounted read-only and back, in cycles: captures are refused and counted, the daemon's loops keep running, queued bundles are kept and uploaded afterwards."""
    from agent.core.config import load_config
    from agent.core.model import FaultEvent, FaultState, Severity
    from agent.daemon.runner import Agent
    from tests.upload.faultserver import FaultServer

    res = Result("readonly_state", "read-only state dir (remount ro)")
    if not is_root():
        res.skipped = "remounting a tmpfs read-only needs root"
        return res
    cycles, per_cycle = (2, 5) if quick else (5, 12)
    mnt = work / "state-mnt"
    with tmpfs(mnt, "64m"), FaultServer() as srv:
        cfg = load_config(_agent_config(work, mnt / "state", srv.url))
        agent = Agent(cfg)
        agent.start()
        typed: dict[str, int] = {}
        stale_cur = 0
        try:

            def manual(note: str) -> None:
                ev = FaultEvent("manual.report", FaultState.RAISED, Severity.ERROR, note)
                agent._emit([ev])

            ok_captures = 0
            for c in range(cycles):
                # read-write: a few captures succeed
                for i in range(3):
                    manual(f"rw cycle {c} #{i}")
                ok_captures += 3
                if not _wait(lambda n=ok_captures: agent.captures >= n, 30):
                    res.loss(f"captures stopped working in cycle {c} (read-write)")
                remount(mnt, "ro")
                try:
                    before = agent.capture_failures
                    for i in range(per_cycle):
                        manual(f"ro cycle {c} #{i}")
                        res.trials += 1
                    if not _wait(lambda b=before: agent.capture_failures >= b + per_cycle, 60):
                        res.stall(f"capture worker did not report {per_cycle} failures in time")
                    # the capture call itself raises the spool's typed error
                    res.trials += 1
                    try:
                        agent.capturer.capture(Trigger.manual("direct"))
                        res.loss("a capture claimed success on a read-only state dir")
                    except SpoolError as e:
                        typed[type(e).__name__] = typed.get(type(e).__name__, 0) + 1
                    except Exception as e:
                        res.loss(f"capture raised an untyped error: {type(e).__name__}: {e}")
                    seen = {s: r.ts for s, r in agent.last.items()}
                    time.sleep(1.2)
                    moved = sum(1 for s, r in agent.last.items() if r.ts > seen.get(s, 0))
                    if moved == 0:
                        res.stall("monitors stopped producing readings while read-only")
                    dead = [p.name for p in agent.parts if not (p.thread and p.thread.is_alive())]
                    if dead:
                        res.loss(f"daemon parts died while read-only: {dead}")
                    agent.status()  # must not raise
                finally:
                    remount(mnt, "rw")
            if not _wait(
                lambda: len(srv.store) >= agent.captures and not any(agent.spool.items("new")),
                60,
            ):
                res.stall(
                    "the uploader did not drain the queue within 60 s of the remount: "
                    f"new/ {sum(1 for _ in agent.spool.items('new'))}, stored {len(srv.store)}, "
                    f"captures {agent.captures}, uploader {agent.uploader.status()}"
                )
            stale_cur = sum(1 for _ in agent.spool.items("cur"))
        finally:
            agent.stop()
        from agent.upload.uploader import Uploader

        spool = Spool(mnt / "state").open()  # the next start: cur/ back to new/, sent again
        again = Uploader(cfg, spool).drain_once(deadline_s=30).uploaded
        sent = {i.bundle_id for i in spool.items("sent")}
        kept = {i.bundle_id for s in ("new", "cur") for i in spool.items(s)}
        failed = list(spool.items("failed"))
        stored = set(srv.store)
        captured = agent.captures
        if len(stored | kept) < captured:
            res.loss(
                f"{captured} captures acknowledged, {len(stored)} stored, {len(kept)} queued",
                captured - len(stored | kept),
            )
        if failed:
            res.loss(f"{len(failed)} bundles quarantined", len(failed))
        if sent - stored:
            res.loss(f"{len(sent - stored)} in sent/ but not on the server", len(sent - stored))
        res.duplicates = sum(max(0, s.creations - 1) for s in srv.store.values())
        res.notes.append(
            f"{cycles} ro/rw cycles with the daemon running; {agent.capture_failures} captures "
            f"refused and counted by the capture worker ({cycles * per_cycle} manual reports "
            f"plus faults the engine raised meanwhile), direct calls raised {typed}; "
            f"{captured} captured in the rw phases, all uploaded after the remount; "
            f"{stale_cur} uploaded just before a remount could not move to sent/ and stayed in "
            f"cur/ until the next start re-sent them ({again} answered 'already stored'); "
            f"daemon parts restarted {sum(p.failures for p in agent.parts)} times"
        )
    return res


# --------------------------------------------------------------------------- corrupt spool


def _rezip(data: bytes, edit: Any) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            payload = edit(info.filename, src.read(info))
            if payload is not None:
                z.writestr(info, payload)
    return out.getvalue()


def _verifies(data: bytes) -> bool:
    from agent.bundle.format import BundleReader

    try:
        with BundleReader(data) as r:
            r.verify(None)
    except BundleError:
        return False
    return True


def _corruptions(good: bytes, rng: random.Random) -> dict[str, bytes]:
    """Broken variants of a valid bundle, by kind."""
    flipped = bytearray(good)
    for _ in range(rng.randint(8, 64)):
        pos = rng.randrange(len(flipped))
        flipped[pos] ^= 1 << rng.randrange(8)
    only_report = io.BytesIO()
    with zipfile.ZipFile(only_report, "w") as z:
        z.writestr("report.txt", "no manifest")
    return {
        "zero-length": b"",
        "truncated": good[: rng.randrange(1, len(good) - 1)],
        "garbage": os.urandom(rng.randint(1, 8000)),
        "bit-flipped": bytes(flipped),
        "edited entry": _rezip(
            good, lambda n, d: d.replace(b"report", b"REPORT") if n == "report.txt" else d
        ),
        "manifest not JSON": _rezip(good, lambda n, d: b"{not json" if n == "manifest.json" else d),
        "no manifest": only_report.getvalue(),
        "entry removed": _rezip(good, lambda n, d: None if n == "report.txt" else d),
        "unsupported zip version": unsupported_version(good),
    }


def unsupported_version(data: bytes) -> bytes:
    """The bundle with its first central-directory entry claiming zip version 25.5 (one byte)."""
    b = bytearray(data)
    b[b.find(b"PK\x01\x02") + 6] = 0xFF
    return bytes(b)


FOREIGN = ("README", ".hidden", "x.zip", "core", "{id}.zip", "{id}.p9.zip", "{id}.p1.zip.part")


def corrupt_spool(quick: bool, work: Path) -> Result:
    """Zero-length, truncated, garbage, bit-flipped and edited bundles, a bundle under another id, foreign files in every state dir, unreadable retry sidecars and eviction counts: the restarted agent quarantines the bad ones with a reason and uploads every good one."""
    from agent.upload.uploader import Uploader
    from tests.bundle.kit import small_bundle
    from tests.upload.faultserver import FaultServer

    res = Result("corrupt_spool", "corrupt spool")
    rng = random.Random(31)
    rounds = 6 if quick else 40
    planted_bad = quarantined = planted_foreign = sidecars = good_total = 0
    stuck_total = unreasoned = uploaded_bad_total = stored_good = 0
    kinds_seen: set[str] = set()
    with FaultServer() as srv:
        for rnd in range(rounds):
            state = work / f"r{rnd}"
            sp = Spool(state).open()
            good: dict[str, str] = {}
            for i in range(rng.randint(3, 8)):
                b = small_bundle(f"good {rnd}/{i}", pad=rng.choice((0, 4000, 30000)))
                sp.enqueue(b.bundle_id, b.data, rng.randrange(3))
                good[b.bundle_id] = _sha(b.data)
            good_total += len(good)
            base = small_bundle(f"victim {rnd}", pad=8000)
            bad: set[str] = set()
            for kind, data in _corruptions(base.data, rng).items():
                if kind == "bit-flipped" and _verifies(data):
                    continue  # the flips missed everything that matters: not a corruption
                bid = new_bundle_id()
                where = rng.choice(("new", "new", "cur"))
                (sp.root / where / file_name(bid, rng.randrange(3))).write_bytes(data)
                bad.add(bid)
                kinds_seen.add(kind)
            # a valid bundle saved under another bundle's id
            other = new_bundle_id()
            (sp.root / "new" / file_name(other, 1)).write_bytes(base.data)
            bad.add(other)
            planted_bad += len(bad)
            # foreign files in every state dir and the spool root
            for d in ("tmp", "new", "cur", "failed", "sent", "retry", "."):
                for name in rng.sample(FOREIGN, 3):
                    (sp.root / d / name.format(id=new_bundle_id())).write_bytes(os.urandom(64))
                    planted_foreign += 1
            # unreadable retry sidecars for good bundles, and a broken eviction count file
            for bid, text in zip(
                list(good)[:4],
                (
                    "{",
                    "[]",
                    '{"attempts": "x", "next_at": null}',
                    '{"attempts": 1, "next_at": NaN}',
                ),
                strict=False,
            ):
                (sp.root / "retry" / f"{bid}.json").write_text(text)
                sidecars += 1
            (sp.root / "evicted.json").write_text('{"new": "many"')

            # the restarted agent: open (recovery), then drain as the uploader thread does
            # (its loop survives an exception and goes on with the next bundle)
            try:
                sp = Spool(state).open()
                sp.pending_evictions()
            except Exception as e:
                res.loss(f"recovery crashed: {type(e).__name__}: {e}")
                continue
            up = Uploader(_uploader_config(state, srv.url), sp)
            for _ in range(len(bad) + 5):
                try:
                    if up.drain_once(deadline_s=30).stopped == "empty":
                        break
                except Exception as e:
                    known = "reader-zip-version" if isinstance(e, NotImplementedError) else ""
                    res.loss(f"drain crashed: {type(e).__name__}: {e}", known=known)
            stuck_total += sum(1 for _ in sp.items("cur"))
            failed = {i.bundle_id for i in sp.items("failed")}
            for bid, sha in good.items():
                rec = srv.store.get(bid)
                if rec is None or rec.digest_hex != sha:
                    res.loss(f"good bundle {bid} not stored (round {rnd})")
            uploaded_bad = bad & set(srv.store)
            if uploaded_bad:
                res.loss(f"{len(uploaded_bad)} corrupt bundles uploaded", len(uploaded_bad))
            quarantined += len(bad & failed)
            unreasoned += sum(1 for i in sp.items("failed") if not sp.failure_reason(i))
            uploaded_bad_total += len(uploaded_bad)
            stored_good += sum(
                1 for b, sha in good.items() if b in srv.store and srv.store[b].digest_hex == sha
            )
    res.duplicates = sum(max(0, s.creations - 1) for s in srv.store.values())
    res.trials = planted_bad + planted_foreign + sidecars + good_total
    res.notes.append(
        f"{rounds} restarts; {planted_bad} corrupt bundles ({', '.join(sorted(kinds_seen))}, "
        f"valid bundle under another id) → {quarantined} quarantined in failed/ "
        f"({unreasoned} without a reason), {stuck_total} left in cur/, {uploaded_bad_total} "
        f"uploaded; {planted_foreign} foreign files and {sidecars} unreadable retry sidecars "
        f"ignored; {stored_good} of {good_total} good bundles stored once"
    )
    return res


# --------------------------------------------------------------------------- special files


def special_files(quick: bool, work: Path) -> Result:
    """Special files named like bundles in new/ (a directory, a dangling symlink, a symlink to /etc/passwd, a FIFO): the uploader must quarantine them and go on, not hang."""
    from agent.upload.uploader import Uploader
    from tests.bundle.kit import small_bundle
    from tests.upload.faultserver import FaultServer

    res = Result("special_files", "special files in the spool")
    state = work / "state"
    sp = Spool(state).open()
    good = {}
    for i in range(5):
        b = small_bundle(f"behind {i}", pad=2000)
        sp.enqueue(b.bundle_id, b.data, 1)
        good[b.bundle_id] = _sha(b.data)
    specials: dict[str, Path] = {}
    for kind in ("directory", "dangling symlink", "symlink to /etc/passwd", "FIFO"):
        p = sp.root / "new" / file_name(new_bundle_id(), 2)  # critical: tried first
        if kind == "directory":
            p.mkdir()
        elif kind == "dangling symlink":
            p.symlink_to(work / "nowhere.zip")
        elif kind == "symlink to /etc/passwd":
            p.symlink_to("/etc/passwd")
        else:
            os.mkfifo(p)
        specials[kind] = p
        res.trials += 1
    with FaultServer() as srv:
        sp = Spool(state).open()
        up = Uploader(_uploader_config(state, srv.url), sp)
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def drain() -> None:
            try:
                for _ in range(12):
                    if up.drain_once(deadline_s=20).stopped == "empty":
                        break
            except Exception as e:
                outcome["error"] = f"{type(e).__name__}: {e}"
            done.set()

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        if not done.wait(4):
            res.stall(
                "the uploader blocked (4 s and counting) opening a FIFO named like a bundle; "
                f"{len(good) - len(set(good) & set(srv.store))} good bundles waited behind it",
                known="fifo-claim",
            )
            fifo = next(sp.root.glob("cur/*.zip"), None)
            if fifo is not None and fifo.is_fifo():
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the reader
            done.wait(30)
        if "error" in outcome:
            res.loss(f"drain crashed on a special file: {outcome['error']}")
        for bid, sha in good.items():
            rec = srv.store.get(bid)
            if rec is None or rec.digest_hex != sha:
                res.loss(f"good bundle {bid} not stored")
        in_failed = {p.name for p in (sp.root / "failed").iterdir()}
        quarantined = [k for k, p in specials.items() if p.name in in_failed]
        res.notes.append(
            f"quarantined: {', '.join(quarantined) or 'none'}; {len(good)} good bundles "
            f"behind them: {len(set(good) & set(srv.store))} stored"
        )
    return res

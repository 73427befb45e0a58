"""Hostile bundles for the reader, hostile uploads for the collector: all refused, nothing written outside."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.bundle.format import BundleError, BundleReader
from bench.faults import Result
from bench.faults.storage import unsupported_version

if TYPE_CHECKING:
    import requests

EVIL_NAMES = (
    "../../../evil.txt",
    "/tmp/evil.txt",
    "diagnostics/../../evil.txt",
    "a\\..\\evil.txt",
    "C:evil.txt",
    "diagnostics//evil.txt",
    "./evil.txt",
    "evil\x00.txt",
)


def _zip_with(base: bytes, extra: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    from tests.collector.test_app import zip_with

    return zip_with(base, extra)


def _rezip(base: bytes, edit: Callable[[str, bytes], bytes | None], first: str = "") -> bytes:
    src = zipfile.ZipFile(io.BytesIO(base))
    infos = src.infolist()
    if first:
        infos.sort(key=lambda i: i.filename != first)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in infos:
            data = edit(info.filename, src.read(info))
            if data is not None:
                z.writestr(info, data)
    return out.getvalue()


def _manifest_edit(change: Callable[[dict[str, object]], object]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        m = json.loads(data)
        change(m)
        return json.dumps(m).encode()

    return edit


def hostile_zips(base: bytes) -> list[tuple[str, bytes]]:
    """Crafted hostile or broken variants of a valid bundle, each labelled."""
    cases: list[tuple[str, bytes]] = []
    for name in EVIL_NAMES:
        cases.append((f"entry name {name!r}", _zip_with(base, [(name, b"pwned")])))
    link = zipfile.ZipInfo("diagnostics/passwd")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    cases.append(("symlink entry", _zip_with(base, [(link, b"/etc/passwd")])))
    cases.append(("directory entry", _zip_with(base, [(zipfile.ZipInfo("diagnostics/"), b"")])))
    enc = zipfile.ZipInfo("diagnostics/secret.txt")
    enc.flag_bits |= 0x1
    cases.append(("encrypted entry", _zip_with(base, [(enc, b"xx")])))
    cases.append(("duplicate entry", _zip_with(base, [("report.txt", b"second copy")])))
    cases.append(
        ("600 entries", _zip_with(base, [(f"diagnostics/{i}.txt", b"x") for i in range(600)]))
    )
    cases.append(
        ("zip bomb (8 MiB of zeros)", _zip_with(base, [("diagnostics/b.txt", b"\0" * (8 << 20))]))
    )
    cases.append(
        ("entry over 32 MiB", _zip_with(base, [("diagnostics/h.txt", b"\0" * (33 << 20))]))
    )
    cases.append(
        (
            "over 64 MiB in all",
            _zip_with(base, [(f"diagnostics/t{i}.txt", b"\0" * (30 << 20)) for i in range(3)]),
        )
    )
    cases.append(("manifest not first", _rezip(base, lambda n, d: d, first="report.txt")))
    cases.append(
        ("manifest missing", _rezip(base, lambda n, d: None if n == "manifest.json" else d))
    )
    cases.append(
        ("manifest not JSON", _rezip(base, lambda n, d: b"{x" if n == "manifest.json" else d))
    )
    cases.append(
        ("manifest a list", _rezip(base, lambda n, d: b"[]" if n == "manifest.json" else d))
    )
    cases.append(("unknown schema", _rezip(base, _manifest_edit(lambda m: m.update(schema="x/9")))))
    cases.append(
        ("bundle_id not a UUID", _rezip(base, _manifest_edit(lambda m: m.update(bundle_id="../x"))))
    )
    cases.append(("files not a list", _rezip(base, _manifest_edit(lambda m: m.update(files="*")))))
    cases.append(
        ("files entry malformed", _rezip(base, _manifest_edit(lambda m: m.update(files=[7]))))
    )
    cases.append(
        ("signature missing", _rezip(base, lambda n, d: None if n == "manifest.sig" else d))
    )
    cases.append(
        ("signature wrong", _rezip(base, lambda n, d: b"0" * 64 if n == "manifest.sig" else d))
    )
    cases.append(
        (
            "manifest edited (HMAC no longer matches)",
            _rezip(base, _manifest_edit(lambda m: m.update(created_at="2000-01-01T00:00:00Z"))),
        )
    )
    cases.append(("entry edited", _rezip(base, lambda n, d: d + b"!" if n == "report.txt" else d)))
    cases.append(("entry removed", _rezip(base, lambda n, d: None if n == "report.txt" else d)))
    cases.append(("entry not in manifest", _zip_with(base, [("diagnostics/extra.txt", b"hi")])))
    cases.append(("truncated", base[: len(base) // 2]))
    cases.append(("empty", b""))
    cases.append(("garbage", os.urandom(5000)))
    cases.append(("a gzip, not a zip", __import__("gzip").compress(base)))
    cases.append(("central directory claims zip version 25.5", unsupported_version(base)))
    return cases


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Random structural damage: flips, cuts, inserts, overwrites, swaps."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) or 1)
        j = min(len(b), i + rng.randint(1, 64))
        if op == 0:
            for _ in range(rng.randint(1, 8)):
                k = rng.randrange(len(b))
                b[k] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 32))
        elif op == 3:
            b[i:j] = bytes(j - i) if rng.random() < 0.5 else b"\xff" * (j - i)
        else:
            k = rng.randrange(len(b) or 1)
            b[i:j], b[k : k + (j - i)] = b[k : k + (j - i)], b[i:j]
        if not b:
            break
    return bytes(b)


def _known(e: BaseException) -> str:
    return "reader-zip-version" if isinstance(e, NotImplementedError) else ""


def _reader_raises_untyped(data: bytes) -> bool:
    try:
        with BundleReader(data) as r:
            r.verify(None)
    except BundleError:
        return False
    except NotImplementedError:
        return True
    return False


def _files_outside(root: Path, allowed: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and allowed not in p.parents]


def bundles(quick: bool, work: Path) -> Result:
    """The bundle reader (verify with the device key, then extract) fed crafted hostile zips (path traversal, absolute and drive names, symlink, directory and encrypted entries, duplicates, 600 entries, bombs, oversized entries, manifest and signature tampering, truncated, empty, garbage) and randomly damaged bundles: every one refused with a BundleError or, if intact, read back identical; nothing written outside the extraction directory."""
    from tests.bundle.kit import KEY, small_bundle

    res = Result("hostile_bundles", "hostile bundles (reader)")
    rng = random.Random(81)
    good = small_bundle("hostile base", pad=6000)
    with BundleReader(good.data) as r:
        original = {n: r.read(n) for n in r.names}
    sandbox = work / "sandbox"
    out = sandbox / "out"
    evil_before = Path("/tmp/evil.txt").exists()
    accepted = 0

    def attempt(label: str, data: bytes, crafted: bool) -> None:
        nonlocal accepted
        res.trials += 1
        target = out / str(res.trials)
        try:
            with BundleReader(data) as r:
                r.verify(KEY)
                same = {n: r.read(n) for n in r.names} == original
                r.extract(target)
            if crafted:
                res.loss(f"{label}: accepted by verify and extracted")
            elif not same:
                res.loss(f"{label}: verified with content that differs from the sealed bundle")
            accepted += 1
        except BundleError:
            pass
        except Exception as e:
            res.loss(f"{label}: {type(e).__name__}: {e}", known=_known(e))
        # extract without verify (an operator's `bundle extract` of an unverified file)
        try:
            with BundleReader(data) as r:
                r.extract(target / "unverified")
        except BundleError:
            pass
        except Exception as e:
            res.loss(f"{label}: extract crashed: {type(e).__name__}: {e}", known=_known(e))

    for label, data in hostile_zips(good.data):
        attempt(label, data, True)
    n_crafted = res.trials
    n_mut = 300 if quick else 3000
    for i in range(n_mut):
        attempt(f"mutation {i}", mutate_bytes(good.data, rng), False)
    outside = _files_outside(work, out)
    if outside:
        res.loss(f"files written outside the extraction directory: {outside[:3]}", len(outside))
    if any(out not in p.parents for p in work.parent.rglob("evil*")):
        res.loss("an evil.txt was written beside the sandbox")
    if not evil_before and Path("/tmp/evil.txt").exists():
        res.loss("/tmp/evil.txt was written")
    res.notes.append(
        f"{n_crafted} crafted hostile zips; {n_mut} random mutations of a sealed "
        f"bundle: {n_mut - accepted} refused, {accepted} still intact and read back identical; "
        "verify-then-extract and extract-alone both tried"
    )
    return res


def uploads(quick: bool, work: Path) -> Result:
    """The collector (Starlette on uvicorn) sent the same hostile zips with valid headers, header attacks (no, wrong or another device's token, another device's manifest, wrong or missing digest, id and Idempotency-Key mismatches, content type, traversal ids in the path, oversized declared body), and randomly damaged bundles: each refused with a 4xx and not stored, no 5xx, nothing written outside the data dir, and a good upload still stored afterwards."""
    from agent.upload.protocol import content_digest
    from collector.auth import add_device
    from tests.bundle.kit import KEY, make_bundle
    from tests.collector.kit import upload_headers
    from tests.collector.test_app import DEV, Env

    res = Result("hostile_uploads", "hostile uploads (collector)")
    rng = random.Random(91)
    env = Env(work, rate_per_minute=1_000_000)
    try:
        (work / "keys" / f"{DEV}.key").write_bytes(KEY + b"\n")  # HMAC checked
        other_token = add_device(env.cfg.tokens_file, "T-0009")
        first = make_bundle(device=DEV, seed=1)
        if env.upload(first).status_code != 201:
            res.loss("the collector refused a good bundle before the attack")
        before = {k: v for k, v in env.tree().items() if not k.startswith("store/")}
        statuses: dict[int, int] = {}

        def expect_refused(label: str, resp: requests.Response | int, data: bytes = b"") -> None:
            code = resp if isinstance(resp, int) else resp.status_code
            res.trials += 1
            statuses[code] = statuses.get(code, 0) + 1
            if code >= 500:
                known = "reader-zip-version" if _reader_raises_untyped(data) else ""
                res.loss(f"{label}: HTTP {code} (server error on hostile input)", known=known)
            elif code < 400:
                res.loss(f"{label}: HTTP {code}, hostile upload accepted")

        base = make_bundle(device=DEV, seed=2)
        for label, data in hostile_zips(base.data):
            expect_refused(label, env.put(data, base.bundle_id), data)
        b = make_bundle(device=DEV, seed=3)
        h = upload_headers(b.bundle_id, b.data, env.token, DEV)
        del h["Authorization"]
        url = f"{env.url}/v1/bundles/{b.bundle_id}"
        expect_refused("no token", env.http.put(url, data=b.data, headers=h, timeout=10))
        expect_refused("wrong token", env.upload(b, token="not-a-token"))
        expect_refused("another device's token", env.upload(b, token=other_token))
        mismatch = env.upload(make_bundle(device="T-0009"))
        expect_refused("another device's manifest", mismatch)
        if mismatch.status_code != 422 or mismatch.json().get("status") != "device_mismatch":
            res.loss(f"another device's manifest: HTTP {mismatch.status_code} {mismatch.text[:80]}")
        expect_refused(
            "wrong digest", env.put(b.data, b.bundle_id, Content_Digest=content_digest(b"x"))
        )
        expect_refused("md5 digest", env.put(b.data, b.bundle_id, Content_Digest="md5=:AAAA:"))
        expect_refused("id mismatch", env.put(b.data, first.bundle_id))
        expect_refused(
            "idempotency key mismatch",
            env.put(b.data, b.bundle_id, Idempotency_Key=first.bundle_id),
        )
        expect_refused("content type", env.put(b.data, b.bundle_id, Content_Type="text/html"))
        expect_refused(
            "other bundle under a stored id",
            env.put(b.data, first.bundle_id, Idempotency_Key=first.bundle_id),
        )
        for path in (
            "/v1/bundles/../../../etc/passwd",
            "/v1/bundles/..%2F..%2Fetc%2Fpasswd",
            "/v1/bundles/%2e%2e",
            "/v1/bundles/" + b.bundle_id.upper(),
            "/v1/bundles/" + b.bundle_id + "%00",
            "/v1/bundles/not-a-uuid",
        ):
            status, _ = env.raw(
                "PUT", path, upload_headers(b.bundle_id, b.data, env.token, DEV), b.data
            )
            expect_refused(f"PUT {path}", status)
        n_crafted = res.trials
        n_mut = 40 if quick else 400
        accepted = 0
        for i in range(n_mut):
            src = make_bundle(device=DEV, seed=100 + i, screenshot=False)
            data = mutate_bytes(src.data, rng)
            r = env.put(data, src.bundle_id)
            res.trials += 1
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                known = "reader-zip-version" if _reader_raises_untyped(data) else ""
                res.loss(f"mutation {i}: HTTP {r.status_code}", known=known)
            elif r.status_code < 300:
                accepted += 1
                stored = env.http.get(f"{env.url}/v1/bundles/{src.bundle_id}/download", timeout=10)
                try:
                    with BundleReader(stored.content) as rd:
                        rd.verify(KEY)
                except BundleError as e:
                    res.loss(f"mutation {i}: stored although it does not verify: {e}")
        last = make_bundle(device=DEV, seed=9999)
        if env.upload(last).status_code != 201:
            res.loss("the collector no longer stores a good bundle after the attack")
        after = {k: v for k, v in env.tree().items() if not k.startswith("store/")}
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))[:3]
            res.loss(f"files outside the data dir changed: {changed}", len(changed))
        incoming = list((work / "store" / "incoming").iterdir())
        if incoming:
            res.loss(f"{len(incoming)} partial uploads left in incoming/", len(incoming))
        if env.count() != 2 + accepted:
            res.loss(f"index holds {env.count()} bundles, expected {2 + accepted}")
        if any(work.rglob("evil.txt")):
            res.loss("an evil.txt was written")
        res.notes.append(
            f"{n_crafted} crafted hostile requests; {n_mut} randomly damaged bundles "
            f"with valid headers: {n_mut - accepted} refused, {accepted} intact and stored; "
            f"statuses {dict(sorted(statuses.items()))}"
        )
    finally:
        env.close()
    return res


# --------------------------------------------------------------------------- hostile local user

SECRET = b"SECRET-ONLY-THE-AGENT-MAY-READ-7f3a"


def _bundle_texts(spool_root: Path) -> list[tuple[str, bytes]]:
    """(bundle file name, every entry's bytes joined) of every bundle under a spool root."""
    out = []
    for p in sorted(spool_root.glob("*/*.zip")):
        with BundleReader(p) as r:
            out.append((p.name, b"\n".join(r.read(n) for n in r.names)))
    return out


def local_files(quick: bool, work: Path) -> Result:
    """A hostile local user swaps the trigger file with a symlink to a file only the agent may read (renameat2 RENAME_EXCHANGE in a thread, thousands of times) while the watcher reads it: first the watcher alone (every report checked), then the running daemon (every bundle it seals checked, entry by entry); a FIFO, a hard link and a symlink dropped in the trigger dir are never read and block nothing. A loss is any report or bundle holding the private file's content, or a watcher that blocks."""
    import threading

    from agent.core.config import load_config
    from agent.daemon.runner import Agent
    from agent.monitors.watch import ManualReport, TriggerDirWatcher
    from tests.conftest import quick_config
    from tests.monitors.kit import SymlinkSwapper

    res = Result("hostile_local", "hostile local files (trigger dir)")
    secret = work / "private" / "device.key"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    note = b"till 3 frozen after PAY"

    # 1. the watcher alone, reading as fast as it can
    trig = work / "trigger-unit"
    trig.mkdir()
    reports: list[ManualReport] = []
    w = TriggerDirWatcher(trig, reports.append, settle_s=0.0, rescan_s=0.001)
    w.start()
    n_swaps = 5000 if quick else 40000
    try:
        sw = SymlinkSwapper(trig / "report", secret, note, n_swaps).start()
        while not sw.done.is_set():
            w.rescan()
        sw.join()
    finally:
        w.stop()
    res.trials += len(reports)
    leaked = [r for r in reports if r.note != note.decode()]
    if leaked:
        res.loss(
            f"{len(leaked)} of {len(reports)} watcher reports held foreign content", len(leaked)
        )
    if not reports:
        res.loss("the watcher never read the note while the swapper ran")
    unit_note = f"watcher alone: {sw.swaps} swaps, {len(reports)} reports read"

    # 2. special files beside a good one: nothing blocks, nothing foreign is read
    trig2 = work / "trigger-special"
    trig2.mkdir()
    os.mkfifo(trig2 / "pipe")
    (trig2 / "link").symlink_to(secret)
    os.link(secret, trig2 / "hard")
    (trig2 / "good").write_bytes(note)
    got: list[ManualReport] = []
    w2 = TriggerDirWatcher(trig2, got.append, settle_s=0.0, use_observer=False)
    t = threading.Thread(target=w2.rescan, daemon=True)
    t.start()
    t.join(20)
    res.trials += 1
    if t.is_alive():
        res.stall("the trigger watcher blocked on a FIFO")
    elif [r.note for r in got] != [note.decode()]:
        res.loss(f"special files in the trigger dir: reports {[r.note[:40] for r in got]}")

    # 3. the running daemon: every bundle it seals while the swapper runs
    trig3 = work / "trigger-daemon"
    trig3.mkdir()
    cfg_path = quick_config(
        work / "agent",
        [],
        f'trigger_dir = "{trig3}"\nmanual_burst = 1000\nmanual_per_hour = 3600.0',
    )
    agent = Agent(load_config(cfg_path))
    agent.start()
    d_swaps = 600 if quick else 3000
    try:
        tw = next(x for x in agent.watchers if isinstance(x, TriggerDirWatcher))
        sw3 = SymlinkSwapper(trig3 / "report", secret, note, d_swaps, settled=True).start()
        while not sw3.done.is_set():
            tw.rescan()
        sw3.join()
        for p in trig3.iterdir():  # what the swapper left: not part of the sentinel wait
            p.unlink()
        (trig3 / ".s").write_text("SENTINEL end of swaps")
        os.rename(trig3 / ".s", trig3 / "sentinel")
        tw.rescan()
        root = agent.spool.root
        deadline = time.monotonic() + 120
        texts: list[tuple[str, bytes]] = []
        while time.monotonic() < deadline:
            texts = _bundle_texts(root)
            if any(b"SENTINEL end of swaps" in body for _, body in texts):
                break
            time.sleep(0.1)
        else:
            res.stall("the daemon did not seal the sentinel report within 120 s")
    finally:
        agent.stop()
    texts = _bundle_texts(agent.spool.root)
    manual = [(n, b) for n, b in texts if note in b or b"SENTINEL" in b]
    res.trials += len(manual)
    foreign = [n for n, b in texts if SECRET in b]
    if foreign:
        res.loss(f"{len(foreign)} of {len(texts)} bundles hold the private file", len(foreign))
    res.notes.append(
        f"{unit_note}; daemon: {sw3.swaps} swaps, {len(manual)} manual bundles sealed, "
        f"{len(foreign)} with foreign content; FIFO, hard link and symlink in the dir unread"
    )
    return res


def spool_and_queue(quick: bool, work: Path) -> Result:
    """The spool and the queue under a hostile local user: FIFOs and symlinks in place of retry sidecars (the uploader must not block: every bundle uploads within its deadline), every spool directory replaced by a symlink to a directory outside the state dir before start and sent/ and failed/ again while open (nothing may land outside; impostors moved aside), and one bundle whose manifest names another device among good ones against the real collector (422 device_mismatch: that one in failed/ with the reason, the others stored, no auth pause)."""
    import threading

    from agent.spool.maildir import Spool
    from agent.upload.uploader import Uploader
    from tests.bundle.kit import small_bundle
    from tests.upload.faultserver import FaultServer, Reply
    from tests.upload.test_uploader_collector import Collector, agent_setup

    res = Result("hostile_spool", "hostile spool and queue (agent)")
    rounds = 3 if quick else 10

    def drain(up: Uploader, timeout_s: float = 60.0) -> Any:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(up.drain_once(deadline_s=timeout_s)))
        t.daemon = True
        t.start()
        t.join(timeout_s + 15)
        return box[0] if box else None

    notes: list[str] = []
    # 1. FIFO / symlink sidecars
    with FaultServer() as srv:
        for r in range(rounds):
            cfg, spool = agent_setup(work / f"fifo{r}", srv.url, "tok")
            ids = []
            for i in range(4):
                b = small_bundle(f"fifo {r}.{i}")
                spool.enqueue(b.bundle_id, b.data, 1)
                ids.append(b.bundle_id)
            os.mkfifo(spool.root / "retry" / f"{ids[0]}.json")
            (spool.root / "retry" / f"{ids[1]}.json").symlink_to("/dev/zero")
            s = drain(Uploader(cfg, spool))
            res.trials += len(ids)
            if s is None:
                res.stall(f"round {r}: the uploader blocked on a FIFO sidecar")
                continue
            missing = set(ids) - set(srv.store)
            if missing:
                res.loss(f"round {r}: {len(missing)} bundles not uploaded: {s}", len(missing))
    notes.append(f"{rounds} rounds of a FIFO and a /dev/zero symlink as retry sidecars")

    # 2. symlinked spool dirs, before open and while open
    outside = work / "outside"
    outside.mkdir()
    states = ("tmp", "new", "cur", "failed", "sent", "retry")
    with FaultServer() as srv:
        for r, state in enumerate(states * (1 if quick else 2)):
            cfg, spool = agent_setup(work / f"link{r}", srv.url, "tok")
            d = spool.root / state
            for p in d.iterdir():
                p.unlink()
            d.rmdir()
            d.symlink_to(outside)
            spool = Spool(cfg.agent.state_dir, spool.limits).open()
            for s2 in ("sent", "failed"):  # and again while open
                if s2 != state:
                    (spool.root / s2).rmdir()
                    (spool.root / s2).symlink_to(outside)
            good, bad = small_bundle(f"link {r}"), small_bundle(f"bad {r}")
            spool.enqueue(bad.bundle_id, bad.data, 2)
            spool.enqueue(good.bundle_id, good.data, 1)
            srv.script(Reply(422, body=b'{"status": "invalid_bundle"}'))
            s = drain(Uploader(cfg, spool))
            res.trials += 2
            if s is None:
                res.stall(f"{state}: the uploader blocked")
                continue
            if list(outside.iterdir()):
                res.loss(f"{state} symlinked: files written outside: {list(outside.iterdir())}")
                for p in outside.iterdir():
                    p.unlink()
            if good.bundle_id not in srv.store:
                res.loss(f"{state} symlinked: the good bundle was not uploaded")
            if [i.bundle_id for i in spool.items("failed")] != [bad.bundle_id]:
                res.loss(f"{state} symlinked: the refused bundle is not in failed/")
    notes.append(
        f"each of {', '.join(states)} symlinked out at start, sent/ and failed/ while open"
    )

    # 3. the device-mismatch bundle against the real collector
    conds: list[tuple[str, bool]] = []
    for r in range(rounds):
        col = Collector(work / f"collector{r}")
        try:
            cfg, spool = agent_setup(work / f"mismatch{r}", col.url, col.token)
            foreign = small_bundle("renamed terminal", device="T-OLD-NAME")
            spool.enqueue(foreign.bundle_id, foreign.data, 2)
            good_ids = set()
            for i in range(3):
                b = small_bundle(f"good {i}")
                spool.enqueue(b.bundle_id, b.data, 1)
                good_ids.add(b.bundle_id)
            up = Uploader(cfg, spool, on_condition=lambda k, bad, s: conds.append((k, bad)))
            s = drain(up)
            res.trials += 4
            if s is None:
                res.stall(f"round {r}: the drain did not end")
                continue
            stored = {b["bundle_id"] for b in col.listing()["bundles"]}
            if stored != good_ids:
                res.loss(
                    f"round {r}: stored {len(stored)} of 3 good bundles", len(good_ids - stored)
                )
            failed = list(spool.items("failed"))
            reason = spool.failure_reason(failed[0]) if failed else ""
            if [i.bundle_id for i in failed] != [
                foreign.bundle_id
            ] or "device_mismatch" not in reason:
                res.loss(
                    f"round {r}: the foreign bundle is not in failed/ with its reason: {reason!r}"
                )
            if up.status()["paused_for_auth"]:
                res.loss(f"round {r}: the queue was paused for auth")
        finally:
            col.thread.stop()
    if conds:
        res.loss(f"auth conditions raised for a per-bundle refusal: {conds[:3]}", len(conds))
    notes.append(f"{rounds} rounds of 3 good + 1 other-device bundle against the collector")
    res.notes.append("; ".join(notes))
    return res

"""Hostile bundles for the reader, hostile uploads for the collector: all refused, nothing written outside."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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
        expect_refused("another device's manifest", env.upload(make_bundle(device="T-0009")))
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

"""Collector and sealed bundles (issue 17): origin checked without decrypting, refusals
with a one-line reason (422), indexed after decryption, kept and counted when it cannot
open, downloads serve the encrypted original."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyrage import x25519

from agent.bundle.format import ENVELOPE, ENVELOPE_SIG, PAYLOAD, BundleReader
from agent.bundle.sealed import generate_signing_key, public_pem, seal_envelope
from tests.bundle.kit import KEY, make_bundle
from tests.collector.test_app import DEV, Env


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in entries:
            zf.writestr(n, d)
    return buf.getvalue()


def _entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


class Fleet:
    def __init__(self, tmp: Path):
        self.ident = x25519.Identity.generate()
        (tmp / "age.txt").write_text(f"# collector\n{self.ident}\n")
        self.sk = generate_signing_key(tmp / "dev.ed25519")
        self.other = generate_signing_key(tmp / "other.ed25519")
        (tmp / "pubkeys").mkdir()
        (tmp / "pubkeys" / f"{DEV}.pub").write_text(public_pem(self.sk.public_key()))

    def sealed(self, sk: object = None, recipient: str = "", seed: int = 0) -> SimpleNamespace:
        b = make_bundle(device=DEV, seed=seed)
        data = seal_envelope(
            b.data,
            b.manifest,
            recipients=[recipient or str(self.ident.to_public())],
            signing_key=sk or self.sk,  # type: ignore[arg-type]
            rank=3,
        )
        return SimpleNamespace(bundle_id=b.bundle_id, data=data, manifest=b.manifest)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


@pytest.fixture
def senv(tmp_path: Path, fleet: Fleet) -> Iterator[Env]:
    e = Env(
        tmp_path,
        device_pubkeys_dir=str(tmp_path / "pubkeys"),
        age_identity_file=str(tmp_path / "age.txt"),
    )
    (tmp_path / "keys" / f"{DEV}.key").write_bytes(KEY + b"\n")
    yield e
    e.close()


def _metric(env: Env, name: str) -> float:
    text = env.http.get(f"{env.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_sealed_bundle_indexed_shown_and_downloaded_encrypted(senv: Env, fleet: Fleet) -> None:
    b = fleet.sealed()
    r = senv.upload(b)
    assert r.status_code == 201, r.text
    listed = senv.http.get(f"{senv.url}/v1/bundles", timeout=10).json()["bundles"]
    assert listed[0]["signature_checked"] is True
    assert listed[0]["fault_key"] == b.manifest["trigger"]["key"]
    base = f"{senv.url}/v1/bundles/{b.bundle_id}"
    assert senv.http.get(f"{base}/download", timeout=10).content == b.data  # ciphertext
    m = senv.http.get(base, timeout=10).json()
    assert m["files"] and m["sealed"]["schema"] == "posagent.sealed/1"
    page = senv.http.get(f"{senv.url}/bundles/{b.bundle_id}", timeout=10)
    assert page.status_code == 200 and "undecryptable" not in page.text


def test_undecryptable_bundle_is_kept_counted_and_shown(senv: Env, fleet: Fleet) -> None:
    escrow_only = str(x25519.Identity.generate().to_public())
    b = fleet.sealed(recipient=escrow_only)
    assert senv.upload(b).status_code == 201
    assert _metric(senv, "posagent_collector_undecryptable_bundles_total") == 1.0
    listed = senv.http.get(f"{senv.url}/v1/bundles", timeout=10).json()["bundles"]
    assert listed[0]["summary"].startswith("undecryptable:")
    base = f"{senv.url}/v1/bundles/{b.bundle_id}"
    assert senv.http.get(f"{base}/download", timeout=10).content == b.data
    assert "undecryptable" in senv.http.get(base, timeout=10).json()
    page = senv.http.get(f"{senv.url}/bundles/{b.bundle_id}", timeout=10)
    assert page.status_code == 200 and "undecryptable" in page.text


def test_tampered_swapped_and_foreign_bundles_refused_422(senv: Env, fleet: Fleet) -> None:
    good = fleet.sealed()
    e = _entries(good.data)
    ct = bytearray(e[PAYLOAD])
    ct[-3] ^= 1
    tampered = _zip(
        [(ENVELOPE, e[ENVELOPE]), (ENVELOPE_SIG, e[ENVELOPE_SIG]), (PAYLOAD, bytes(ct))]
    )
    other = _entries(fleet.sealed(seed=5).data)
    swapped = _zip(
        [(ENVELOPE, e[ENVELOPE]), (ENVELOPE_SIG, other[ENVELOPE_SIG]), (PAYLOAD, e[PAYLOAD])]
    )
    foreign = fleet.sealed(sk=fleet.other, seed=7)
    for data, bid, reason in (
        (tampered, good.bundle_id, "payload.age changed"),
        (swapped, good.bundle_id, "does not verify"),
        (foreign.data, foreign.bundle_id, "another key"),
    ):
        r = senv.put(data, bid)
        assert r.status_code == 422, (reason, r.text)
        err = r.json()["error"]
        assert reason in err and "\n" not in err
    assert senv.count() == 0


def test_plain_hmac_only_bundle_still_accepted(senv: Env) -> None:
    b = make_bundle(device=DEV)  # queued before the upgrade: no manifest.ed25519
    assert senv.upload(b).status_code == 201
    with BundleReader(b.data) as r:
        assert not r.sealed

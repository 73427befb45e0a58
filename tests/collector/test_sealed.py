"""Collector and sealed bundles (issue 17): origin checked without decrypting, refusals
with a one-line reason (422), indexed after decryption, kept and counted when it cannot
open, downloads serve the encrypted original; the fleet key and a device's signing key
rotated (old and new both accepted), a key revoked, undecryptable bundles indexed again
once their identity is added, a corrupt key file told in one line."""

from __future__ import annotations

import io
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyrage import x25519
from structlog.testing import capture_logs

from agent.bundle.format import ENVELOPE, ENVELOPE_SIG, PAYLOAD, BundleReader, key_id
from agent.bundle.sealed import generate_signing_key, load_signing_key, public_pem, seal_envelope
from collector.app import record_from_manifest
from collector.config import CollectorConfig
from collector.storage import migrate_store, open_store
from collector.storage.sqlite import SqliteIndex
from tests.bundle.kit import KEY, make_bundle
from tests.collector.test_app import DEV, Env
from tests.conftest import posagent_argv, write_config


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
    foreign = fleet.sealed(sk=fleet.other, seed=7)  # another terminal's key
    kid = key_id(fleet.sk.public_key())
    mismatch = (
        f"envelope Ed25519 signature does not verify with public key {kid} of device {DEV} "
        "(signed by another key, or edited)"
    )
    for data, bid, reason in (
        (
            tampered,
            good.bundle_id,
            "payload.age changed (size or sha256 differs from the envelope)",
        ),
        (swapped, good.bundle_id, mismatch),
        (foreign.data, foreign.bundle_id, mismatch),
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


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """`posagent collector ARGS` on a config naming env's store and key files."""
    c = env.cfg
    conf = write_config(
        env.tmp / "cli",
        f'[collector]\ndata_dir = "{c.data_dir}"\ntokens_file = "{c.tokens_file}"\n'
        f'device_keys_dir = "{c.device_keys_dir}"\n'
        f'device_pubkeys_dir = "{c.device_pubkeys_dir}"\n'
        f'age_identity_file = "{c.age_identity_file}"\n',
    )
    return subprocess.run(
        posagent_argv("collector", *args, "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _listed(env: Env) -> dict[str, dict[str, object]]:
    rows = env.http.get(f"{env.url}/v1/bundles", timeout=10).json()["bundles"]
    return {r["bundle_id"]: r for r in rows}


def _shown(env: Env, bid: str) -> None:
    """The bundle's page, manifest and screenshot come from its decrypted inside."""
    page = env.http.get(f"{env.url}/bundles/{bid}", timeout=10)
    assert page.status_code == 200 and "undecryptable" not in page.text
    assert env.http.get(f"{env.url}/v1/bundles/{bid}", timeout=10).json()["files"]
    png = env.http.get(f"{env.url}/v1/bundles/{bid}/screenshot.png", timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_fleet_key_rotation_old_and_new_identities_in_one_file(
    senv: Env, fleet: Fleet, tmp_path: Path
) -> None:
    """age_identity_file holds the old and the new identity (age-keygen output, one after
    the other): a bundle queued before the rotation (sealed to the old key) and one
    sealed after it both index and show."""
    new = x25519.Identity.generate()
    (tmp_path / "age.txt").write_text(
        f"# created: 2026-01-01T00:00:00Z\n# public key: {fleet.ident.to_public()}\n"
        f"{fleet.ident}\n\n# created: 2026-12-01T00:00:00Z\n"
        f"# public key: {new.to_public()}\n{new}\n"
    )
    before = fleet.sealed(seed=1)  # queued on the terminal before the rotation
    after = fleet.sealed(recipient=str(new.to_public()), seed=2)
    for b in (before, after):
        assert senv.upload(b).status_code == 201
    listed = _listed(senv)
    for b in (before, after):
        row = listed[b.bundle_id]
        assert row["fault_key"] == b.manifest["trigger"]["key"], row
        assert not str(row["summary"]).startswith("undecryptable"), row
        _shown(senv, b.bundle_id)
    assert _metric(senv, "posagent_collector_undecryptable_bundles_total") == 0.0


def test_device_key_rotation_old_and_new_signatures_verify(
    senv: Env, fleet: Fleet, tmp_path: Path
) -> None:
    """The terminal rotates its signing key (`posagent key rotate`); the collector's
    <device>.pub holds what `posagent key show-public --all` prints (new, then old): the
    bundle signed before the rotation and the one after both pass."""
    cfg = write_config(tmp_path / "term")
    assert subprocess.run(posagent_argv("keygen", "--config", str(cfg)), timeout=60).returncode == 0
    key_path = tmp_path / "term" / "state" / "keys" / "device.ed25519"
    old = load_signing_key(key_path)
    queued = fleet.sealed(sk=old, seed=3)  # signed, still queued when the key rotates
    r = subprocess.run(
        posagent_argv("key", "rotate", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    new = load_signing_key(key_path)
    assert key_id(old.public_key()) in r.stdout and key_id(new.public_key()) in r.stdout
    fresh = fleet.sealed(sk=new, seed=4)
    both = subprocess.run(
        posagent_argv("key", "show-public", "--all", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    (tmp_path / "pubkeys" / f"{DEV}.pub").write_text(both)
    for b in (queued, fresh):
        r = senv.upload(b)
        assert r.status_code == 201, r.text
    assert all(row["signature_checked"] for row in _listed(senv).values())


def test_revoked_key_refused_with_one_line_reason(senv: Env, fleet: Fleet, tmp_path: Path) -> None:
    """`posagent collector revoke-key DEVICE KEY_ID` moves the key to <device>.revoked:
    its bundles are refused (422, one line), the device's other key still signs, and the
    device's bundles without an Ed25519 signature are refused from then on."""
    pub = tmp_path / "pubkeys" / f"{DEV}.pub"
    pub.write_text(public_pem(fleet.other.public_key()) + public_pem(fleet.sk.public_key()))
    stored = fleet.sealed(seed=10)
    assert senv.upload(stored).status_code == 201  # accepted before the revocation
    kid = key_id(fleet.sk.public_key())
    r = _cli(senv, "revoke-key", DEV, "0123456789abcdef")
    assert r.returncode == 66 and kid in r.stderr, r.stderr  # the ids on file are named
    r = _cli(senv, "revoke-key", DEV, kid)
    assert r.returncode == 0 and kid in r.stdout, r.stderr
    assert kid in (tmp_path / "pubkeys" / f"{DEV}.revoked").read_text()
    assert public_pem(fleet.sk.public_key()) not in pub.read_text()
    stolen = fleet.sealed(seed=11)
    r = senv.upload(stolen)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert f"signed by revoked key {kid} of device {DEV}" in err and "\n" not in err
    other = fleet.sealed(sk=fleet.other, seed=12)
    assert senv.upload(other).status_code == 201
    hmac_only = make_bundle(device=DEV, seed=13)
    r = senv.upload(hmac_only)
    assert r.status_code == 422 and "revoked key" in r.json()["error"], r.text
    assert set(_listed(senv)) == {stored.bundle_id, other.bundle_id}


def test_corrupt_device_pubkey_file_is_a_one_line_422_and_a_log_line(
    senv: Env, fleet: Fleet, tmp_path: Path
) -> None:
    (tmp_path / "pubkeys" / f"{DEV}.pub").write_text(
        public_pem(fleet.sk.public_key()) + "-----BEGIN PUBLIC KEY-----\nbroken\n"
        "-----END PUBLIC KEY-----\n"
    )
    with capture_logs() as logs:
        r = senv.upload(fleet.sealed())
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err.startswith(f"device {DEV}'s public key file on the collector is unusable: ")
    assert f"{DEV}.pub:" in err and "\n" not in err and str(tmp_path) not in err
    events = [e for e in logs if e["event"] == "device_pubkey_unusable"]
    assert events and events[0]["device"] == DEV and str(tmp_path / "pubkeys") in events[0]["error"]
    assert senv.count() == 0


def test_reindex_opens_undecryptable_bundles_once_the_identity_is_added(
    senv: Env, fleet: Fleet, tmp_path: Path
) -> None:
    escrow = x25519.Identity.generate()  # the collector does not hold it yet
    lost = fleet.sealed(recipient=str(escrow.to_public()), seed=20)
    fine = fleet.sealed(seed=21)
    for b in (lost, fine):
        assert senv.upload(b).status_code == 201
    row = _listed(senv)[lost.bundle_id]
    assert str(row["summary"]).startswith("undecryptable:")
    r = _cli(senv, "reindex", "--undecryptable")
    assert r.returncode == 0 and "opened and indexed 0" in r.stdout and "1 still" in r.stdout
    (tmp_path / "age.txt").write_text(f"{fleet.ident}\n{escrow}\n")
    r = _cli(senv, "reindex", "--undecryptable")
    assert r.returncode == 0 and "opened and indexed 1 " in r.stdout, r.stdout + r.stderr
    row2 = _listed(senv)[lost.bundle_id]
    assert row2["fault_key"] == lost.manifest["trigger"]["key"]
    assert row2["summary"] == lost.manifest["trigger"]["summary"]
    assert row2["received_at"] == row["received_at"] and row2["sha256"] == row["sha256"]
    _shown(senv, lost.bundle_id)
    r = _cli(senv, "reindex", "--undecryptable")  # nothing left to do
    assert r.returncode == 0 and "opened and indexed 0 bundle(s); 0 still" in r.stdout


def test_index_update_rewrites_one_row_by_id_and_digest(tmp_path: Path) -> None:
    idx = SqliteIndex(tmp_path / "index.sqlite3", migrate=True)
    b = make_bundle(device=DEV)
    rec = record_from_manifest(
        b.manifest,
        size_bytes=len(b.data),
        sha256="a" * 64,
        signature_checked=False,
        received_at=time.time(),
    )
    assert idx.add(rec)
    assert idx.update(replace(rec, summary="opened", signature_checked=True))
    got = idx.get(rec.bundle_id)
    assert got is not None and got.summary == "opened" and got.signature_checked
    assert not idx.update(replace(rec, sha256="b" * 64, summary="other bytes"))
    idx.close()


def test_index_update_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    cfg = CollectorConfig(data_dir=str(tmp_path), index_url=pg_url)
    migrate_store(cfg)
    store = open_store(cfg)
    b = make_bundle(device=DEV)
    rec = record_from_manifest(
        b.manifest,
        size_bytes=len(b.data),
        sha256="a" * 64,
        signature_checked=False,
        received_at=time.time(),
    )
    try:
        assert store.index.add(rec)
        assert store.index.update(replace(rec, summary="opened"))  # type: ignore[attr-defined]
        got = store.index.get(rec.bundle_id)
        assert got is not None and got.summary == "opened"
        assert not store.index.update(replace(rec, sha256="b" * 64))  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize(
    "content",
    [None, "AGE-SECRET-KEY-1NOTAKEY\n", "# only a comment\n"],
    ids=["missing", "bad", "empty"],
)
def test_serve_refuses_an_unusable_age_identity_file_naming_it(
    tmp_path: Path, content: str | None
) -> None:
    ident = tmp_path / "collector-age.txt"
    if content is not None:
        ident.write_text(content)
    conf = write_config(
        tmp_path,
        f'[collector]\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp_path / "store"}"\n'
        f'age_identity_file = "{ident}"\n',
    )
    r = subprocess.run(
        posagent_argv("collector", "serve", "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if str(ident) in ln]
    assert len(lines) == 1 and "age_identity_file" in lines[0], r.stderr

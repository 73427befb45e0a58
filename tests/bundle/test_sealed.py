"""Signatures anyone can check and the sealed form (issue 17): Ed25519, age, refusals."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyrage import x25519

from agent.bundle.format import (
    ED_SIGNATURE,
    ENVELOPE,
    ENVELOPE_SIG,
    MANIFEST,
    PAYLOAD,
    SIGNATURE,
    BundleCorrupt,
    BundleReader,
    BundleSignatureError,
    DeviceInfo,
    Entry,
    seal,
    text_entry,
)
from agent.bundle.sealed import (
    KeyFileError,
    Undecryptable,
    decrypt_payload,
    generate_signing_key,
    load_signing_key,
    open_sealed,
    public_pem,
    seal_envelope,
)
from agent.core.redact import Redactor
from tests.conftest import posagent_argv

KEY = b"k" * 32
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in entries:
            zf.writestr(n, d)
    return buf.getvalue()


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, object]:
    ident = x25519.Identity.generate()
    escrow = x25519.Identity.generate()
    (tmp_path / "id.txt").write_text(str(ident) + "\n")
    sk = generate_signing_key(tmp_path / "device.ed25519")
    (tmp_path / "device.pub").write_text(public_pem(sk.public_key()))
    other = generate_signing_key(tmp_path / "other.ed25519")
    (tmp_path / "other.pub").write_text(public_pem(other.public_key()))
    return {
        "ident": ident,
        "recipients": [str(ident.to_public()), str(escrow.to_public())],
        "sk": sk,
        "other": other,
        "dir": tmp_path,
    }


def make(sk: object, device: str = "T-1") -> tuple[bytes, dict[str, object]]:
    b = seal(
        device=DeviceInfo(id=device),
        trigger={"kind": "fault", "key": "printer.paper_end", "severity": "critical"},
        entries=[text_entry("report.txt", "paper end at till 3"), Entry("screenshot.png", PNG)],
        key=KEY,
        redactor=Redactor(),
        signing_key=sk,  # type: ignore[arg-type]
    )
    return b.data, b.manifest


def make_sealed(fleet: dict[str, object], sk: object = None) -> bytes:
    data, m = make(sk or fleet["sk"])
    return seal_envelope(
        data,
        m,
        recipients=fleet["recipients"],  # type: ignore[arg-type]
        signing_key=sk or fleet["sk"],  # type: ignore[arg-type]
        rank=3,
    )


def posagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(posagent_argv(*args), capture_output=True, text=True, timeout=60)


def test_signing_key_file_is_0600_never_overwritten_and_refused_when_others_can_read(
    tmp_path: Path,
) -> None:
    p = tmp_path / "k"
    sk = load_signing_key(p, create=True)
    assert (p.stat().st_mode & 0o777) == 0o600
    assert load_signing_key(p).public_key() == sk.public_key()
    with pytest.raises(FileExistsError):
        generate_signing_key(p)
    os.chmod(p, 0o644)
    with pytest.raises(KeyFileError, match=str(p)):
        load_signing_key(p)
    os.chmod(p, 0o600)
    p.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match=f"{p} is corrupt"):
        load_signing_key(p)


def test_plain_bundle_carries_both_signatures_and_verifies_with_either(fleet: dict) -> None:
    data, m = make(fleet["sk"])
    with BundleReader(data) as r:
        assert r.names[:3] == [MANIFEST, SIGNATURE, ED_SIGNATURE]
        assert r.verify(KEY).signature_checked
        res = r.verify(None, fleet["sk"].public_key())
        assert res.ed25519_checked and res.manifest["signer"] == m["signer"]
        with pytest.raises(BundleSignatureError, match="another key"):
            r.verify(None, fleet["other"].public_key())


def test_hmac_only_bundle_stays_readable() -> None:
    data, _ = make(None)
    with BundleReader(data) as r:
        assert ED_SIGNATURE not in r.names
        assert r.verify(KEY).signature_checked
        with pytest.raises(BundleSignatureError, match="HMAC-only"):
            r.verify(None, generate_pub())


def generate_pub() -> object:
    return Ed25519PrivateKey.generate().public_key()


def test_sealed_form_checks_without_decrypting_and_opens_with_the_identity(fleet: dict) -> None:
    sealed = make_sealed(fleet)
    with BundleReader(sealed) as r:
        assert r.sealed and r.names == [ENVELOPE, ENVELOPE_SIG, PAYLOAD]
        res = r.verify(None, fleet["sk"].public_key())
        env = res.manifest
        assert env["schema"] == "posagent.sealed/1" and env["device"] == {"id": "T-1"}
        assert env["severity"] == "critical" and len(env["recipients"]) == 2
        assert r.verify(None).manifest["bundle_id"] == env["bundle_id"]  # the spool's check
    with zipfile.ZipFile(io.BytesIO(sealed)) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert b"paper end" not in sealed and PNG[16:48] not in sealed
    inner = open_sealed(sealed, [fleet["ident"]])
    with BundleReader(inner) as ir:
        assert ir.verify(KEY, fleet["sk"].public_key()).manifest["bundle_id"] == env["bundle_id"]
    with pytest.raises(Undecryptable):
        open_sealed(sealed, [x25519.Identity.generate()])


def test_tampered_ciphertext_swapped_signatures_and_another_terminal_are_refused(
    fleet: dict,
) -> None:
    pub = fleet["sk"].public_key()
    sealed = make_sealed(fleet)
    ents = dict(_entries(sealed))
    # tampered ciphertext
    ct = bytearray(ents[PAYLOAD])
    ct[-5] ^= 1
    bad = _zip(
        [(ENVELOPE, ents[ENVELOPE]), (ENVELOPE_SIG, ents[ENVELOPE_SIG]), (PAYLOAD, bytes(ct))]
    )
    with BundleReader(bad) as r, pytest.raises(BundleCorrupt, match="payload.age changed"):
        r.verify(None, pub)
    # swapped signatures: another bundle's envelope signature
    other = dict(_entries(make_sealed(fleet)))
    swapped = _zip(
        [(ENVELOPE, ents[ENVELOPE]), (ENVELOPE_SIG, other[ENVELOPE_SIG]), (PAYLOAD, ents[PAYLOAD])]
    )
    with BundleReader(swapped) as r, pytest.raises(BundleSignatureError, match="envelope"):
        r.verify(None, pub)
    # an edited envelope (severity raised) no longer matches its signature
    env = json.loads(ents[ENVELOPE])
    env["severity"] = "info"
    edited = _zip(
        [
            (ENVELOPE, json.dumps(env).encode()),
            (ENVELOPE_SIG, ents[ENVELOPE_SIG]),
            (PAYLOAD, ents[PAYLOAD]),
        ]
    )
    with BundleReader(edited) as r, pytest.raises(BundleSignatureError):
        r.verify(None, pub)
    # signed by another terminal
    foreign = make_sealed(fleet, fleet["other"])
    with BundleReader(foreign) as r, pytest.raises(BundleSignatureError, match="another key"):
        r.verify(None, pub)
    # swapped plain signatures: manifest.ed25519 from another bundle
    a = dict(_entries(make(fleet["sk"])[0]))
    b = dict(_entries(make(fleet["sk"])[0]))
    a[ED_SIGNATURE] = b[ED_SIGNATURE]
    with BundleReader(_zip(list(a.items()))) as r, pytest.raises(BundleSignatureError):
        r.verify(None, pub)


def test_cli_verify_decrypt_and_one_line_refusals(fleet: dict) -> None:
    d: Path = fleet["dir"]  # type: ignore[assignment]
    sealed = d / "b.zip"
    sealed.write_bytes(make_sealed(fleet))
    ok = posagent("bundle", "verify", str(sealed), "--public-key", str(d / "device.pub"))
    assert ok.returncode == 0 and "Ed25519 verified" in ok.stdout, ok.stderr
    r = posagent("bundle", "verify", str(sealed), "--public-key", str(d / "other.pub"))
    assert r.returncode == 65 and len(r.stderr.strip().splitlines()) == 1
    assert "another key" in r.stderr
    out = d / "inner.zip"
    r = posagent("bundle", "decrypt", str(sealed), "--identity", str(d / "id.txt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    with BundleReader(out.read_bytes()) as ir:
        assert ir.verify(KEY, fleet["sk"].public_key()).ed25519_checked
    tampered = d / "t.zip"
    ents = _entries(sealed.read_bytes())
    ents[2] = (PAYLOAD, ents[2][1][:-1] + bytes([ents[2][1][-1] ^ 1]))
    tampered.write_bytes(_zip(ents))
    r = posagent("bundle", "verify", str(tampered), "--public-key", str(d / "device.pub"))
    assert r.returncode == 65 and "payload.age changed" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


AGE = shutil.which("age")


@pytest.mark.skipif(AGE is None, reason="Debian's age CLI not installed (apt-get install age)")
def test_round_trip_with_debian_age_cli(fleet: dict) -> None:
    d: Path = fleet["dir"]  # type: ignore[assignment]
    sealed = make_sealed(fleet)
    (d / "payload.age").write_bytes(dict(_entries(sealed))[PAYLOAD])
    inner = subprocess.run(
        [AGE, "-d", "-i", str(d / "id.txt"), str(d / "payload.age")],
        capture_output=True,
        check=True,
    ).stdout
    with BundleReader(inner) as ir:
        assert ir.verify(KEY, fleet["sk"].public_key()).manifest["device"]["id"] == "T-1"
    # the reverse: age -r output opens with posagent's decrypt path (pyrage)
    plain, _ = make(fleet["sk"])
    (d / "plain.zip").write_bytes(plain)
    ct = subprocess.run(
        [AGE, "-r", str(fleet["ident"].to_public()), str(d / "plain.zip")],
        capture_output=True,
        check=True,
    ).stdout
    assert pyrage.decrypt(ct, [fleet["ident"]]) == plain
    # wrapped in the sealed form by hand, `posagent bundle decrypt` opens it
    assert decrypt_payload(ct, [fleet["ident"]]) == plain


def test_signing_key_that_cannot_be_made_is_a_one_line_key_error(tmp_path: Path) -> None:
    """A path the key cannot be written at (here: below a regular file; in the unit: a
    read-only /etc) is a KeyFileError naming it, exit 78 through crypto_from_config."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyFileError, match=str(tmp_path / "file")):
        load_signing_key(tmp_path / "file" / "k", create=True)

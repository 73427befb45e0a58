"""Keys that rotate (issue 17): a device's several public keys (KeyRing), revoked keys,
the PEM key files, `posagent key rotate`, and a running daemon that seals to a new fleet
key after its reload (SIGHUP) and signs with a rotated key from its next bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pyrage import x25519

from agent.bundle.format import (
    ENVELOPE,
    ENVELOPE_SIG,
    BundleReader,
    BundleSignatureError,
    KeyRevoked,
    key_id,
)
from agent.bundle.sealed import (
    KeyFileError,
    KeyRing,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    open_sealed,
    parse_public_keys,
    public_pem,
    recipient_fingerprint,
    retired_keys_path,
    rotate_signing_key,
    sign_ed25519,
)
from tests.bundle.test_sealed import make, make_sealed
from tests.conftest import posagent_argv, quick_config, wait_until


def _sig(sk: object, data: bytes) -> bytes:
    return sign_ed25519(sk, data)  # type: ignore[arg-type]


def test_keyring_accepts_any_current_key_and_refuses_a_revoked_one(tmp_path: Path) -> None:
    old = generate_signing_key(tmp_path / "old")
    new = generate_signing_key(tmp_path / "new")
    stranger = generate_signing_key(tmp_path / "stranger")
    data = b"envelope bytes"
    ring = KeyRing("T-1", [new.public_key(), old.public_key()])
    ring.check(data, _sig(old, data), "envelope")
    ring.check(data, _sig(new, data), "envelope")
    with pytest.raises(BundleSignatureError, match="signed by another key, or edited") as e:
        ring.check(data, _sig(stranger, data), "envelope")
    assert key_id(old.public_key()) in str(e.value) and key_id(new.public_key()) in str(e.value)
    with pytest.raises(BundleSignatureError, match="not base64"):
        ring.check(data, b"@@@\n", "envelope")
    kid = key_id(old.public_key())
    ring.revoked = {kid: (old.public_key(), 1_000_000.0)}
    with pytest.raises(KeyRevoked) as r:
        ring.check(data, _sig(old, data), "envelope")
    assert str(r.value) == (
        f"envelope signed by revoked key {kid} of device T-1 (revoked 1970-01-12T13:46:40.000Z)"
    )
    ring.valid_at = 999_999.0  # a bundle stored before the revocation, indexed again
    ring.check(data, _sig(old, data), "envelope")
    ring.check(data, _sig(new, data), "envelope")
    only_revoked = KeyRing("T-1", [], ring.revoked)
    with pytest.raises(BundleSignatureError, match="no public key on file that is not revoked"):
        only_revoked.check(data, _sig(new, data), "envelope")


def test_reader_checks_a_sealed_and_a_plain_bundle_with_a_keyring(tmp_path: Path) -> None:
    sk = generate_signing_key(tmp_path / "dev")
    other = generate_signing_key(tmp_path / "other")
    ident = x25519.Identity.generate()
    fl = {"recipients": [str(ident.to_public())], "sk": sk}
    ring = KeyRing("T-1", [other.public_key(), sk.public_key()])
    with BundleReader(make_sealed(fl)) as r:
        assert r.verify(None, ring).ed25519_checked
    with BundleReader(make(sk)[0]) as r:
        assert r.verify(None, ring).ed25519_checked


def test_key_files_hold_several_blocks_with_comments_and_errors_name_the_line(
    tmp_path: Path,
) -> None:
    a = generate_signing_key(tmp_path / "a").public_key()
    b = generate_signing_key(tmp_path / "b").public_key()
    p = tmp_path / "T-1.pub"
    p.write_text(
        f"# current\n{public_pem(a)}\n# key x retired 2026-12-01T00:00:00Z\n{public_pem(b)}"
    )
    blocks = parse_public_keys(p)
    assert [x.pub for x in blocks] == [a, b] and blocks[1].comments[0].startswith("# key x")
    with pytest.raises(KeyFileError, match="holds 2 keys, not one"):
        load_public_key(p)
    p.write_text(public_pem(a) + "ssh-ed25519 AAAA...\n")
    with pytest.raises(KeyFileError, match=f"{p}:4 is neither a PEM public key block"):
        parse_public_keys(p)
    p.write_text(public_pem(a) + "-----BEGIN PUBLIC KEY-----\nAAAA\n")
    with pytest.raises(KeyFileError, match=f"{p}:4 is corrupt: no -----END"):
        parse_public_keys(p)
    p.write_text("-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFileError, match=f"{p}:1 is corrupt"):
        parse_public_keys(p)
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    p.write_bytes(rsa_pem)
    with pytest.raises(KeyFileError, match=f"{p}:1 is not an Ed25519 key"):
        parse_public_keys(p)


def test_rotate_keeps_mode_and_records_the_old_public_key(tmp_path: Path) -> None:
    path = tmp_path / "device.ed25519"
    old = generate_signing_key(path)
    os.chmod(path, 0o640)  # install.sh: root:posagent 0640
    (tmp_path / "device.ed25519.new").write_text("left by a rotation that died")
    old_pub, new = rotate_signing_key(path)
    assert old_pub == old.public_key() and new.public_key() != old.public_key()
    assert load_signing_key(path).public_key() == new.public_key()
    assert path.stat().st_mode & 0o777 == 0o640
    assert not (tmp_path / "device.ed25519.new").exists()
    record = retired_keys_path(path)
    blocks = parse_public_keys(record)
    assert [b.pub for b in blocks] == [old.public_key()]
    assert blocks[0].comments[0].startswith(f"# key {key_id(old.public_key())} retired 20")
    rotate_signing_key(path)
    assert len(parse_public_keys(record)) == 2


def test_cli_verify_with_a_two_key_file_and_rotate_without_a_key(tmp_path: Path) -> None:
    old = generate_signing_key(tmp_path / "old")
    new = generate_signing_key(tmp_path / "new")
    bundle = tmp_path / "b.zip"
    bundle.write_bytes(make(old)[0])
    both = tmp_path / "T-1.pub"
    both.write_text(public_pem(new.public_key()) + public_pem(old.public_key()))
    r = subprocess.run(
        posagent_argv("bundle", "verify", str(bundle), "--public-key", str(both)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "Ed25519 verified" in r.stdout, r.stderr
    cfg = quick_config(tmp_path / "term", [])
    r = subprocess.run(
        posagent_argv("key", "rotate", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78 and "posagent keygen" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _report(cfg: Path, note: str) -> Path:
    r = subprocess.run(
        posagent_argv("report", "--note", note, "--json", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["via"] == "daemon", reply
    return Path(reply["path"])


def _envelope(path: Path) -> dict[str, object]:
    with BundleReader(path.read_bytes()) as r:
        env = r.verify(None).manifest
        assert r.read(ENVELOPE) and r.read(ENVELOPE_SIG)
    return env


@pytest.mark.slow
def test_daemon_seals_to_a_new_fleet_key_after_sighup_and_signs_with_a_rotated_key(
    tmp_path: Path,
) -> None:
    """The terminal picks up a new `[bundle] encrypt_to` at its reload (SIGHUP), as every
    other setting: an edited but not reloaded config changes nothing. `posagent key
    rotate` takes effect at the next bundle without a reload. One sealing worker serves
    the captures and goes with the daemon."""
    old_id, new_id = x25519.Identity.generate(), x25519.Identity.generate()
    cfg = quick_config(tmp_path, [], "manual_burst = 10\n")  # in [capture]
    text = cfg.read_text()
    cfg.write_text(text.replace("[bundle]\n", f'[bundle]\nencrypt_to = ["{old_id.to_public()}"]\n'))
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        posagent_argv("run", "--config", str(cfg)), stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        assert wait_until(lambda: b"agent_started" in log.read_bytes(), 60), log.read_text()
        first = _report(cfg, "before the rotation")
        cfg.write_text(
            text.replace("[bundle]\n", f'[bundle]\nencrypt_to = ["{new_id.to_public()}"]\n')
        )
        edited = _report(cfg, "config edited, not reloaded")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: b"config_reloaded" in log.read_bytes(), 60), log.read_text()
        reloaded = _report(cfg, "after the reload")
        key_path = tmp_path / "state" / "keys" / "device.ed25519"  # the home in the state dir
        before_rotation = load_signing_key(key_path).public_key()
        r = subprocess.run(
            posagent_argv("key", "rotate", "--config", str(cfg)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        rotated = _report(cfg, "after the key rotation")
        workers = [
            c
            for c in psutil.Process(proc.pid).children()
            if "--serve" in c.cmdline() and "agent.bundle.sealed" in c.cmdline()
        ]
        assert len(workers) == 1  # one sealing worker served the captures since the reload
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert wait_until(lambda: not workers[0].is_running() or workers[0].status() == "zombie", 10)
    old_fp, new_fp = (recipient_fingerprint(str(i.to_public())) for i in (old_id, new_id))
    assert _envelope(first)["recipients"] == [old_fp]
    assert _envelope(edited)["recipients"] == [old_fp]
    assert _envelope(reloaded)["recipients"] == [new_fp]
    assert _envelope(rotated)["recipients"] == [new_fp]
    open_sealed(first.read_bytes(), [old_id])
    open_sealed(edited.read_bytes(), [old_id])
    open_sealed(reloaded.read_bytes(), [new_id])
    after_rotation = load_signing_key(key_path).public_key()
    for p in (first, edited, reloaded):
        assert _envelope(p)["signer"] == key_id(before_rotation)
    assert _envelope(rotated)["signer"] == key_id(after_rotation)
    ring = KeyRing("T-TEST", [after_rotation, before_rotation])
    for p in (first, edited, reloaded, rotated):  # the collector's .pub after the rotation
        with BundleReader(p.read_bytes()) as r:
            assert r.verify(None, ring).ed25519_checked

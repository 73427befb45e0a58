"""posagent keygen / key show-public, and the encryption warnings and refusals of
check-config, status and selftest (issue 17)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyrage import x25519

from agent.bundle.sealed import generate_signing_key, load_public_key, load_signing_key
from tests.conftest import posagent_argv, write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(posagent_argv(*args), capture_output=True, text=True, timeout=60)


def test_keygen_makes_a_0600_key_once_and_show_public_prints_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    key = tmp_path / "state" / "keys" / "device.ed25519"  # its home in the state dir
    r = run("keygen", "--config", str(cfg))
    assert r.returncode == 0 and "made a new" in r.stdout, r.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    first = key.read_bytes()
    r = run("keygen", "--config", str(cfg))
    assert r.returncode == 0 and "kept the existing" in r.stdout
    assert key.read_bytes() == first
    pub = run("key", "show-public", "--config", str(cfg))
    assert pub.returncode == 0 and "PRIVATE" not in pub.stdout
    assert load_public_key(pub.stdout.encode()) == load_signing_key(key).public_key()


def test_check_config_warns_without_recipient_and_refuses_bad_keys(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    r = run("check-config", "--config", str(cfg))
    assert r.returncode == 0 and "plaintext" in r.stderr
    home = tmp_path / "state" / "keys" / "device.ed25519"
    assert f"# signing key: none yet, made at {home} at first start" in r.stdout
    generate_signing_key(tmp_path / "device.ed25519")  # an older install's, beside device.key
    r = run("check-config", "--config", str(cfg))
    assert f"# signing key: {tmp_path / 'device.ed25519'} (an older install's: " in r.stdout
    (tmp_path / "device.ed25519").unlink()
    r = run("status", "--config", str(cfg))
    assert "plaintext" in r.stderr
    recipient = str(x25519.Identity.generate().to_public())
    # encrypt_to goes in the existing [bundle] table
    text = cfg.read_text().replace("[bundle]\n", f'[bundle]\nencrypt_to = ["{recipient}"]\n', 1)
    cfg.write_text(text)
    r = run("check-config", "--config", str(cfg))
    assert r.returncode == 0 and "plaintext" not in r.stderr, r.stderr
    cfg.write_text(text.replace(recipient, "age1notakey"))
    r = run("check-config", "--config", str(cfg))
    assert r.returncode == 78 and "bundle.encrypt_to" in r.stderr
    cfg.write_text(text.replace(f'encrypt_to = ["{recipient}"]', "require_encryption = true"))
    r = run("check-config", "--config", str(cfg))
    assert r.returncode == 78 and "require_encryption" in r.stderr
    key = tmp_path / "state" / "keys" / "device.ed25519"
    key.parent.mkdir(mode=0o700)
    key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    cfg.write_text(text)
    r = run("check-config", "--config", str(cfg))
    assert r.returncode == 78 and str(key) in r.stderr

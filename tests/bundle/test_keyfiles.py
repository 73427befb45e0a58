"""Where the signing key lives and its rotation in two steps (agent/bundle/keyfiles.py,
issue 17 item 4): a key made before beside hmac_key_file (/etc/posagent, read-only under
the unit) stays the terminal's identity; a rotation writes the new key to the state dir,
staged, vouched for by the old key, and promoted later, the old key kept; the sealing
worker signs with whichever key is in force at each bundle."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from agent.bundle.finish import SealWorker, _sign_args, _worker
from agent.bundle.format import BundleReader, key_id
from agent.bundle.keyfiles import (
    kept_key_path,
    pending_path,
    promote,
    read_pending,
    retired_keys_path,
    staging_path,
)
from agent.bundle.sealed import (
    KeyFileError,
    begin_rotation,
    generate_signing_key,
    load_public_key,
    load_signing_key,
    parse_public_keys,
    rotate_signing_key,
    rotation_statement,
)
from agent.core.config import load_config
from agent.core.secret_files import check_secret_files
from tests.bundle.test_sealed import make
from tests.conftest import write_config


def _paths(tmp: Path) -> tuple[Path, Path]:
    """(the home in the state dir, the legacy path beside hmac_key_file) of write_config."""
    return tmp / "state" / "keys" / "device.ed25519", tmp / "device.ed25519"


def test_the_key_is_looked_for_in_its_home_then_at_the_legacy_path(tmp_path: Path) -> None:
    cfg = load_config(str(write_config(tmp_path)))
    home, legacy = _paths(tmp_path)
    b, state = cfg.bundle, cfg.agent.state_dir
    assert b.signing_key_candidates(state) == [str(home), str(legacy)]
    assert b.signing_key_path(state) == str(home)  # nothing yet: made in its home
    generate_signing_key(legacy)  # an install before the key had its home
    assert b.signing_key_path(state) == str(legacy)
    generate_signing_key(home)
    assert b.signing_key_path(state) == str(home)
    assert home.parent.stat().st_mode & 0o777 == 0o700
    # signing_key_file set: that file alone, made and rotated where it is
    path = write_config(tmp_path / "x")
    mine = tmp_path / "x" / "mine.ed25519"
    path.write_text(
        path.read_text().replace("[bundle]\n", f'[bundle]\nsigning_key_file = "{mine}"\n')
    )
    explicit = load_config(str(path))
    state = explicit.agent.state_dir
    assert explicit.bundle.signing_key_candidates(state) == [str(mine)]
    assert explicit.bundle.signing_key_home(state) == explicit.bundle.signing_key_path(state)


def test_rotation_from_the_legacy_key_is_staged_then_promoted_to_the_home(
    tmp_path: Path,
) -> None:
    cfg = load_config(str(write_config(tmp_path)))
    home, legacy = _paths(tmp_path)
    old = generate_signing_key(legacy)
    legacy_bytes = legacy.read_bytes()
    pending, pem, signature = begin_rotation(legacy, home, command_id="c-1", device="T-TEST")
    # staged: the new key is beside its home, 0600; the old one still signs
    staged = staging_path(home)
    assert staged.stat().st_mode & 0o777 == 0o600
    new = load_signing_key(staged)
    assert pending.key_id == key_id(new.public_key()) == key_id(load_public_key(pem.encode()))
    assert pending.previous == key_id(old.public_key())
    assert read_pending(home) == pending
    assert cfg.bundle.signing_key_path(cfg.agent.state_dir) == str(legacy)
    # the old key vouches for the new one: its signature over the statement
    statement = rotation_statement("c-1", "T-TEST", pem, pending.previous)
    old.public_key().verify(base64.b64decode(signature), statement)
    # promoted: the new key in its home, the legacy key untouched, its public half retired
    promote(home, pending)
    assert cfg.bundle.signing_key_path(cfg.agent.state_dir) == str(home)
    assert load_signing_key(home).public_key() == new.public_key()
    assert legacy.read_bytes() == legacy_bytes
    (retired,) = parse_public_keys(retired_keys_path(home))
    assert retired.pub == old.public_key()
    assert retired.comments[0].startswith(f"# key {pending.previous} retired 20")
    assert not staged.exists() and not pending_path(home).exists()
    promote(home, pending)  # again (a crash after the rename): nothing changes
    assert load_signing_key(home).public_key() == new.public_key()
    assert len(parse_public_keys(retired_keys_path(home))) == 1


def test_rotation_in_its_home_keeps_the_old_private_key(tmp_path: Path) -> None:
    home, _ = _paths(tmp_path)
    old = generate_signing_key(home)
    pending, _, _ = begin_rotation(home, home, command_id="c-2", device="T-TEST")
    promote(home, pending)
    kept = kept_key_path(home, pending.previous)
    assert load_signing_key(kept).public_key() == old.public_key()
    assert load_signing_key(home).public_key() != old.public_key()
    assert kept.stat().st_mode & 0o777 == 0o600
    # `posagent key rotate` does both steps at once, the same way
    prev, newer = rotate_signing_key(home)
    assert key_id(prev) == pending.key_id
    assert load_signing_key(home).public_key() == newer.public_key()
    assert len(parse_public_keys(retired_keys_path(home))) == 2


def test_a_rotation_that_cannot_read_the_old_key_stages_nothing(tmp_path: Path) -> None:
    home, legacy = _paths(tmp_path)
    legacy.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    legacy.chmod(0o600)
    with pytest.raises(KeyFileError, match=f"signing key {legacy} is corrupt"):
        begin_rotation(legacy, home, command_id="c-3", device="T-TEST")
    assert not staging_path(home).exists() and read_pending(home) is None


def test_the_sealing_worker_signs_with_the_key_in_force_at_each_bundle(tmp_path: Path) -> None:
    cfg = load_config(str(write_config(tmp_path)))
    home, legacy = _paths(tmp_path)
    old = generate_signing_key(legacy)
    w = SealWorker(_worker("--serve", *_sign_args(cfg)))
    try:
        data, m = make(None)
        with BundleReader(w(data, m, 0)) as r:
            assert r.verify(None, old.public_key()).ed25519_checked
        pending, _, _ = begin_rotation(legacy, home, command_id="c-4", device="T-TEST")
        data, m = make(None)
        with BundleReader(w(data, m, 0)) as r:  # staged only: still the old key
            assert r.verify(None, old.public_key()).ed25519_checked
        promote(home, pending)
        data, m = make(None)
        with BundleReader(w(data, m, 0)) as r:
            assert r.verify(None, load_signing_key(home).public_key()).ed25519_checked
        assert w.started == 1  # the same worker: no reload needed
    finally:
        w.close()
    assert os.path.exists(legacy)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_root_accepts_the_key_the_daemons_user_owns_in_its_home(tmp_path: Path) -> None:
    """The daemon (user posagent, owner of the state dir) makes and rotates the key in its
    home: `posagent check-config` run as root accepts it; a key owned by any other user
    is refused as before."""
    cfg = load_config(str(write_config(tmp_path)))
    home, _ = _paths(tmp_path)
    generate_signing_key(home)
    daemon_uid = 4242
    for p in (tmp_path / "state", home.parent, home):
        os.chown(p, daemon_uid, daemon_uid)
    assert not [p for p in check_secret_files(cfg, euid=0) if p.refuse]
    os.chown(home, daemon_uid + 1, daemon_uid)
    (refused,) = [p for p in check_secret_files(cfg, euid=0) if p.refuse]
    assert refused.key == "bundle.signing_key_file" and "owned by uid 4243" in refused.message

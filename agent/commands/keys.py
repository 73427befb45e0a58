"""`posagent keygen`, `posagent key show-public [--all]` and `posagent key rotate`: the
Ed25519 device signing key.

The private key is made on the terminal (mode 0600, never overwritten by keygen) at
`[bundle] signing_key_file`, else `<state_dir>/keys/device.ed25519` (a key made
before beside hmac_key_file is used where it is: agent.bundle.keyfiles); only public keys (PEM) leave it, for the
collector's `device_pubkeys_dir/<device_id>.pub` and for `posagent bundle verify
--public-key`. `key rotate` replaces the key with a new one (same owner and mode)
(written to the home, the old one kept) and appends the old public key to
`<key>.retired.pub`: bundles it
signed (those still queued) verify as long as the collector keeps it in the
device's `.pub` file beside the new one. `show-public --all` prints the current
key then the retired ones, a `.pub` file for the collector as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.bundle.keyfiles import hand_to_dir_owner, make_home_dir
from agent.bundle.sealed import (
    KeyFileError,
    key_id,
    load_signing_key,
    parse_public_keys,
    public_pem,
    retired_keys_path,
    rotate_signing_key,
)
from agent.commands.common import load
from agent.commands.output import err, out
from agent.core.config import Config
from agent.core.exits import EX_CONFIG, EX_OK


def run(args: argparse.Namespace) -> int:
    """keygen: make the key if absent; key show-public: print the public key(s);
    key rotate: a new key, the old public key kept on record."""
    cfg = load(args)
    path = Path(cfg.bundle.signing_key_path(cfg.agent.state_dir))
    action = "keygen" if args.command == "keygen" else f"key {args.key_cmd}"
    home = Path(cfg.bundle.signing_key_home(cfg.agent.state_dir))
    try:
        if action == "key rotate":
            return _rotate(path, home, cfg.agent.device_id)
        create = action == "keygen"
        existed = path.exists()
        if create and not existed:
            make_home_dir(path)
        key = load_signing_key(path, create=create)
        if create and not existed:
            hand_to_dir_owner(path)  # root at install: the daemon's user signs with it
        retired = _retired(cfg) if getattr(args, "all", False) else ""
    except (KeyFileError, OSError) as e:
        err(f"posagent {action}: {e}")
        return EX_CONFIG
    pub = key.public_key()
    if create:
        what = "kept the existing" if existed else "made a new"
        out(f"{what} Ed25519 signing key {path} (key id {key_id(pub)})")
        out("public key (for the collector's device_pubkeys_dir/<device_id>.pub):")
    out(public_pem(pub).rstrip("\n"))
    if retired:
        out(retired.rstrip("\n"))
    return EX_OK


def _retired(cfg: Config) -> str:
    """The retired public keys on record beside every place the key may live (the home
    and the legacy path), each with its `# key ... retired ...` line, once each."""
    seen: set[str] = set()
    text = ""
    for candidate in cfg.bundle.signing_key_candidates(cfg.agent.state_dir):
        record = retired_keys_path(candidate)
        if not record.exists():
            continue
        for b in parse_public_keys(record):
            if b.key_id not in seen:
                seen.add(b.key_id)
                text += "\n".join(b.comments) + "\n" + b.pem
    return text


def _rotate(path: Path, home: Path, device: str) -> int:
    old, new = rotate_signing_key(path, home)
    pub = new.public_key()
    out(f"rotated the Ed25519 signing key {path}: {key_id(old)} -> {key_id(pub)}")
    if home != path:
        out(f"the new key is {home} (the old one stays at {path}, no longer used)")
    out(f"the old public key is kept in {retired_keys_path(home)}")
    out(
        f"add the new public key to the collector's device_pubkeys_dir/{device}.pub beside "
        "the old one (posagent key show-public --all prints both), or rotate on command "
        "(rotate-signing-key: the collector learns the new key itself); the daemon signs "
        "with it from its next bundle"
    )
    out(public_pem(pub).rstrip("\n"))
    return EX_OK

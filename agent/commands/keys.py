"""`posagent keygen`, `posagent key show-public [--all]` and `posagent key rotate`: the
Ed25519 device signing key.

The private key is made on the terminal (mode 0600, never overwritten by keygen) at
the path of `[bundle] signing_key_file`; only public keys (PEM) leave it, for the
collector's `device_pubkeys_dir/<device_id>.pub` and for `posagent bundle verify
--public-key`. `key rotate` replaces the key with a new one (same owner and mode)
and appends the old public key to `<signing_key_file>.retired.pub`: bundles it
signed (those still queued) verify as long as the collector keeps it in the
device's `.pub` file beside the new one. `show-public --all` prints the current
key then the retired ones, a `.pub` file for the collector as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
from agent.core.exits import EX_CONFIG, EX_OK


def run(args: argparse.Namespace) -> int:
    """keygen: make the key if absent; key show-public: print the public key(s);
    key rotate: a new key, the old public key kept on record."""
    cfg = load(args)
    path = Path(cfg.bundle.signing_key_path())
    action = "keygen" if args.command == "keygen" else f"key {args.key_cmd}"
    try:
        if action == "key rotate":
            return _rotate(path, cfg.agent.device_id)
        create = action == "keygen"
        existed = path.exists()
        key = load_signing_key(path, create=create)
        retired = _retired(path) if getattr(args, "all", False) else ""
    except KeyFileError as e:
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


def _retired(path: Path) -> str:
    """The retired public keys on record, each with its `# key ... retired ...` line."""
    record = retired_keys_path(path)
    if not record.exists():
        return ""
    return "".join("\n".join(b.comments) + "\n" + b.pem for b in parse_public_keys(record))


def _rotate(path: Path, device: str) -> int:
    old, new = rotate_signing_key(path)
    pub = new.public_key()
    out(f"rotated the Ed25519 signing key {path}: {key_id(old)} -> {key_id(pub)}")
    out(f"the old public key is kept in {retired_keys_path(path)}")
    out(
        f"add the new public key to the collector's device_pubkeys_dir/{device}.pub beside "
        "the old one (posagent key show-public --all prints both); the daemon signs with it "
        "from its next bundle"
    )
    out(public_pem(pub).rstrip("\n"))
    return EX_OK

"""`posagent keygen` and `posagent key show-public`: the Ed25519 device signing key.

The private key is made on the terminal (mode 0600, never overwritten) at the
path of `[bundle] signing_key_file`; only the public key (PEM) leaves it, for
the collector's `device_pubkeys_dir` and for `posagent bundle verify --public-key`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.bundle.sealed import KeyFileError, key_id, load_signing_key, public_pem
from agent.commands.common import load
from agent.commands.output import err, out
from agent.core.exits import EX_CONFIG, EX_OK


def run(args: argparse.Namespace) -> int:
    """keygen: make the key if absent; key show-public: print the public key."""
    cfg = load(args)
    path = Path(cfg.bundle.signing_key_path())
    create = args.command == "keygen"
    existed = path.exists()
    try:
        key = load_signing_key(path, create=create)
    except KeyFileError as e:
        err(f"posagent {args.command}: {e}")
        return EX_CONFIG
    pub = key.public_key()
    if create:
        what = "kept the existing" if existed else "made a new"
        out(f"{what} Ed25519 signing key {path} (key id {key_id(pub)})")
        out("public key (for the collector's device_pubkeys_dir/<device_id>.pub):")
    out(public_pem(pub).rstrip("\n"))
    return EX_OK

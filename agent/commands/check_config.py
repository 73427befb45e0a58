"""`posagent check-config`: validate the config and print the effective values, secrets hidden.

The effective config is the local file with the channel's layers around it
(agent/core/layers.py: remote config under it, collector commands over it);
each value not left at its default carries a comment saying where it came
from (`# local file`, `# remote`, `# default + remote`, `# set-level until …`,
`# command checkin-interval`). A layer that could not be applied is a warning
on stderr. A comment line says which signing key file is in force (its home in
the state dir, or an older install's beside hmac_key_file) and whether a
rotation waits for the collector (agent/bundle/keyfiles.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.bundle.keyfiles import read_pending
from agent.commands.common import check_bundle_crypto, check_secret_files, load
from agent.commands.output import emit_json, out
from agent.core.config import Config, dump_toml, origins, to_dict
from agent.core.exits import EX_OK
from agent.core.layers import DEFAULT


def run(args: argparse.Namespace) -> int:
    """Validate and print the effective config."""
    cfg = load(args)
    check_secret_files(cfg)
    check_bundle_crypto(cfg)
    for w in cfg.layer_warnings:
        print(f"warning: {w}", file=sys.stderr)
    data = to_dict(cfg, hide_secrets=True)
    if args.json:
        emit_json(data)
    else:
        notes = {k: v for k, v in origins(cfg).items() if v != DEFAULT}
        out(f"# effective config from {cfg.source} (secrets hidden)")
        out("# each value not at its default says where it came from")
        out(signing_key_note(cfg))
        out(dump_toml(data, notes))
    return EX_OK


def signing_key_note(cfg: Config) -> str:
    """One comment line: the signing key file in force, where a rotation writes the next."""
    state = cfg.agent.state_dir
    path, home = cfg.bundle.signing_key_path(state), cfg.bundle.signing_key_home(state)
    if not Path(path).exists():
        note = f"# signing key: none yet, made at {home} at first start (or posagent keygen)"
    elif path == home:
        note = f"# signing key: {path}"
    else:
        note = f"# signing key: {path} (an older install's: the first rotation writes {home})"
    pending = read_pending(home)
    if pending is not None:
        note += f"; rotation to key {pending.key_id} staged"
        if pending.command_id:
            note += f", waiting for the collector to acknowledge {pending.command_id}"
    return note

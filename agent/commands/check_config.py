"""`posagent check-config`: validate the config and print the effective values, secrets hidden.

The effective config is the local file with the channel's layers around it
(agent/core/layers.py: remote config under it, collector commands over it);
each value not left at its default carries a comment saying where it came
from (`# local file`, `# remote`, `# default + remote`, `# set-level until …`,
`# command checkin-interval`). A layer that could not be applied is a warning
on stderr.
"""

from __future__ import annotations

import argparse
import sys

from agent.commands.common import check_bundle_crypto, check_secret_files, load
from agent.commands.output import emit_json, out
from agent.core.config import dump_toml, origins, to_dict
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
        out(dump_toml(data, notes))
    return EX_OK

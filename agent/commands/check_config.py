"""`posagent check-config`: validate the config and print the effective values, secrets hidden."""

from __future__ import annotations

import argparse

from agent.commands.common import check_bundle_crypto, check_secret_files, load
from agent.commands.output import emit_json, out
from agent.core.config import dump_toml, to_dict
from agent.core.exits import EX_OK


def run(args: argparse.Namespace) -> int:
    """Validate and print the effective config."""
    cfg = load(args)
    check_secret_files(cfg)
    check_bundle_crypto(cfg)
    data = to_dict(cfg, hide_secrets=True)
    if args.json:
        emit_json(data)
    else:
        out(f"# effective config from {cfg.source} (secrets hidden)")
        out(dump_toml(data))
    return EX_OK

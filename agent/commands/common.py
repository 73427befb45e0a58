"""What the commands share: loading the config, logging, the spool, the device key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.bundle.finish import encryption_warning
from agent.bundle.format import load_key
from agent.core import log
from agent.core.config import Config, ConfigError, config_path, load_config
from agent.core.redact import redactor_for
from agent.core.secret_files import require_safe_secret_files
from agent.spool.maildir import Spool, limits_from_config


def load(args: argparse.Namespace) -> Config:
    """The config named by --config (else $POSAGENT_CONFIG, else the default path)."""
    return load_config(getattr(args, "config", None))


def check_secret_files(cfg: Config) -> None:
    """Warn on stderr about secret files every user can read; ConfigError (78) on ones others can change."""
    for problem in require_safe_secret_files(cfg):
        print(f"warning: secret file {problem}", file=sys.stderr)


def check_bundle_crypto(cfg: Config) -> None:
    """ConfigError (78) for a corrupt signing key, a bad recipient, or encryption required
    without a recipient; a warning on stderr when bundles will be written in plaintext."""
    # lazy: cryptography and pyrage stay out of `posagent run`, which imports this module
    from agent.bundle.sealed import crypto_from_config

    try:
        crypto_from_config(cfg, create=False)
    except ConfigError as e:
        if (
            e.key != "bundle.signing_key_file"
            or Path(cfg.bundle.signing_key_path(cfg.agent.state_dir)).exists()
        ):
            raise
        print(
            f"warning: no signing key yet at {cfg.bundle.signing_key_path(cfg.agent.state_dir)} "
            "(made at first start, or by posagent keygen)",
            file=sys.stderr,
        )
    if encryption_warning(cfg):
        print(f"warning: {encryption_warning(cfg)}", file=sys.stderr)


def setup_logging(cfg: Config, level: str | None = None, stream: Any = None) -> None:
    """Log to stderr through the config's redactor, so command output stays clean."""
    log.configure(
        level or cfg.agent.log_level, cfg.agent.log_format, redactor_for(cfg), stream or sys.stderr
    )


def open_spool(cfg: Config) -> Spool:
    """The config's spool, opened (recovers nothing a running daemon may be using)."""
    return Spool(cfg.agent.state_dir, limits_from_config(cfg.spool), cfg.fs_roots()).open()


def key_for_reading(args: argparse.Namespace) -> bytes | None:
    """The device key for verify/show: --key-file, else the config's hmac_key_file."""
    if getattr(args, "key_file", None):
        return load_key(args.key_file)
    if getattr(args, "no_key", False):
        return None
    path = config_path(getattr(args, "config", None))
    if not path.exists():
        return None
    try:
        cfg = load_config(path)
    except ConfigError:
        return None
    try:
        return load_key(cfg.bundle.hmac_key_file)
    except Exception:
        return None

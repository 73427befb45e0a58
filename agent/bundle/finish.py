"""The last step of a capture, kept out of the daemon's memory (issue 17).

Signing (Ed25519) and encryption (age) need `cryptography` and `pyrage`, about
10 MB of RSS once imported. The daemon never imports them: when its config is a
file, each bundle is finished in a short-lived child, `python -m
agent.bundle.sealed --key FILE --to RECIPIENT... --rank N` (the plaintext zip
on stdin, the signed or sealed bytes on stdout), as the screenshot is taken in
one. The key file and recipients are those of the config the daemon loaded: a
new `[bundle] encrypt_to` (a fleet key rotation) takes effect at the daemon's
reload (SIGHUP, `systemctl reload posagent`) like every other setting, and a
config edited but not reloaded never changes how bundles are sealed. The
key file is read for each bundle: `posagent key rotate` takes effect at the
next one. The
start-up check of the signing key and recipients runs in a child the same way
(`--check`, exit 78 with the file named). A config that is not a file (tests,
benchmarks) is finished in-process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bundle.policy import encryption_warning, require_recipient
from agent.core.config import Config, ConfigError
from drivers.shell import ShellError, run_argv

__all__ = ["encryption_warning", "require_recipient"]

FINISH_TIMEOUT_S = 30.0
Finisher = Callable[[bytes, dict[str, Any], int], bytes]


class FinishError(Exception):
    """The bundle could not be signed or sealed; it is not enqueued in plaintext instead."""


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.bundle.sealed", *args]


def _sign_args(cfg: Config) -> list[str]:
    """The key file and recipients of the config the caller loaded (not the file's
    current text: an edited config takes effect at the daemon's reload)."""
    args = ["--key", str(cfg.bundle.signing_key_path())]
    for r in cfg.bundle.encrypt_to:
        args += ["--to", r]
    return args


def in_child(cfg: Config) -> bool:
    """True when the config is a file a child can read (the daemon, `posagent run`)."""
    return bool(cfg.source) and Path(cfg.source).is_file()


def check_keys(cfg: Config) -> None:
    """Load (or make) the signing key and parse the recipients, in a child when possible;
    ConfigError (exit 78) naming the key or file when either is unusable."""
    require_recipient(cfg)
    if not in_child(cfg):
        # lazy: cryptography and pyrage stay out of a daemon (in_child) process
        from agent.bundle.sealed import crypto_from_config

        crypto_from_config(cfg, create=True)
        return
    try:
        r = run_argv(_worker("--config", cfg.source, "--check"), FINISH_TIMEOUT_S)
    except ShellError as e:
        raise ConfigError(f"signing key check failed: {e}", file=cfg.source) from None
    if r.returncode != 0:
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(lines[-1] if lines else f"signing key check: exit {r.returncode}")


def finisher(cfg: Config) -> Finisher:
    """The capture's last step: (plaintext zip, manifest, rank) → what the spool stores."""
    if in_child(cfg):

        def child(data: bytes, manifest: dict[str, Any], rank: int) -> bytes:
            try:
                argv = _worker(*_sign_args(cfg), "--rank", str(rank))
                r = run_argv(argv, FINISH_TIMEOUT_S, stdin=data)
            except ShellError as e:
                raise FinishError(f"bundle signing worker: {e}") from None
            if r.returncode != 0 or not r.stdout:
                lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
                raise FinishError(lines[-1][:300] if lines else f"exit {r.returncode}")
            return r.stdout

        return child
    # lazy: cryptography and pyrage stay out of a daemon (in_child) process
    from agent.bundle.sealed import crypto_from_config, finish

    key, recipients = crypto_from_config(cfg, create=True)

    def here(data: bytes, manifest: dict[str, Any], rank: int) -> bytes:
        return finish(data, manifest, key, recipients, rank)

    return here

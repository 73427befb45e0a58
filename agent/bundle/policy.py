"""Whether bundles are encrypted: the warning and the refusal (issue 17); no crypto imported."""

from __future__ import annotations

from agent.core.config import Config, ConfigError


def encryption_warning(cfg: Config) -> str:
    """'' when bundles are encrypted, else the warning selftest, status and check-config print."""
    if cfg.bundle.encrypt_to:
        return ""
    return (
        "bundle.encrypt_to names no age recipient: bundles are stored and sent in plaintext "
        "(screenshots, logs); set encrypt_to (and require_encryption = true)"
    )


def require_recipient(cfg: Config) -> None:
    """ConfigError (78) when require_encryption is set without a recipient."""
    if cfg.bundle.require_encryption and not cfg.bundle.encrypt_to:
        raise ConfigError(
            "require_encryption = true but encrypt_to names no recipient: "
            "refusing to write plaintext bundles",
            file=cfg.source,
            key="bundle.encrypt_to",
        )

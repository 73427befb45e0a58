"""The collector's configuration: the `[collector]` table of a posagent config file.

The table is read and validated with the agent's typed loader
(`agent.core.config.parse_section`): unknown keys, wrong types and values out
of range are errors located by file, key and line, exit 78.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.bundle.trigger import TriggerKind
from agent.core.config import ConfigError, _f, parse_section, read_config_text
from agent.core.model import Severity

MAX_DAYS = 36500


@dataclass(frozen=True)
class RetentionConfig:
    """`[collector.retention]`: days to keep bundles (0: forever), by trigger kind and
    severity (the longer wins when both name a bundle), else default_days."""

    default_days: int = _f(0, min=0, max=MAX_DAYS)
    kind_days: dict[str, int] = _f({})
    severity_days: dict[str, int] = _f({})
    interval_s: float = _f(3600.0, min=0.0, max=7 * 86400.0)  # 0: serve never runs it
    batch_size: int = _f(500, min=1, max=10_000)


@dataclass(frozen=True)
class CollectorConfig:
    listen: str = "127.0.0.1:8080"
    data_dir: str = "/var/lib/posagent-collector"
    tokens_file: str = "/etc/posagent/collector-tokens"
    device_keys_dir: str = ""
    # issue 17: <device_id>.pub (Ed25519 PEM, `posagent key show-public`); the age identity
    device_pubkeys_dir: str = ""
    age_identity_file: str = ""
    max_body_mib: int = _f(32, min=1, max=4096)
    rate_per_minute: int = _f(120, min=1, max=1_000_000)
    operator_token_file: str = ""
    # the fleet engines (collector.storage); empty: the embedded files + SQLite in data_dir
    index_url: str = _f("", pattern=r"^$|^postgres(ql)?://")
    blob_url: str = _f("", pattern=r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    s3_endpoint_url: str = _f("", pattern=r"^$|^https?://")
    s3_region: str = _f("us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    # TLS terminated by `collector serve` itself (both or neither; re-read on SIGHUP)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # slow or idle clients (collector.server.GuardedH11Protocol)
    header_timeout_s: int = _f(10, min=1, max=3600)
    body_timeout_s: int = _f(120, min=1, max=86400)
    max_idle_per_client: int = _f(32, min=0, max=1_000_000)
    # Retry-After of the 503 answered while the store is unavailable or full
    unavailable_retry_after_s: int = _f(60, min=1, max=3600)


def parse_collector_config(text: str, file: str = "<string>") -> CollectorConfig:
    """The `[collector]` table of TOML text; raises ConfigError."""
    cfg = parse_section(text, file, "collector", CollectorConfig)
    r = cfg.retention
    for table, known, days in (
        ("kind_days", [k.value for k in TriggerKind], r.kind_days),
        ("severity_days", [s.value for s in Severity], r.severity_days),
    ):
        for name, value in days.items():
            key = f"collector.retention.{table}.{name}"
            if name not in known:
                raise ConfigError(f"unknown (known: {', '.join(known)})", file=file, key=key)
            if not 0 <= value <= MAX_DAYS:
                raise ConfigError(f"days must be 0 (forever) to {MAX_DAYS}", file=file, key=key)
    return cfg


def load_collector_config(path: str | None = None) -> CollectorConfig:
    """The `[collector]` table of the config file (--config, $POSAGENT_CONFIG, default)."""
    text, file = read_config_text(path)
    return parse_collector_config(text, file)

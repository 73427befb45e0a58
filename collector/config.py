"""The collector's configuration: the `[collector]` table of a posagent config file.

The table is read and validated with the agent's typed loader
(`agent.core.config.parse_section`): unknown keys, wrong types and values out
of range are errors located by file, key and line, exit 78.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.config import _f, parse_section, read_config_text


@dataclass(frozen=True)
class CollectorConfig:
    listen: str = "127.0.0.1:8080"
    data_dir: str = "/var/lib/posagent-collector"
    tokens_file: str = "/etc/posagent/collector-tokens"
    device_keys_dir: str = ""
    max_body_mib: int = _f(32, min=1, max=4096)
    rate_per_minute: int = _f(120, min=1, max=1_000_000)
    operator_token_file: str = ""
    # the fleet engines (collector.storage); empty: the embedded files + SQLite in data_dir
    index_url: str = _f("", pattern=r"^$|^postgres(ql)?://")
    blob_url: str = _f("", pattern=r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    s3_endpoint_url: str = _f("", pattern=r"^$|^https?://")
    s3_region: str = _f("us-east-1", pattern=r"^[a-z0-9-]{1,32}$")


def parse_collector_config(text: str, file: str = "<string>") -> CollectorConfig:
    """The `[collector]` table of TOML text; raises ConfigError."""
    return parse_section(text, file, "collector", CollectorConfig)


def load_collector_config(path: str | None = None) -> CollectorConfig:
    """The `[collector]` table of the config file (--config, $POSAGENT_CONFIG, default)."""
    text, file = read_config_text(path)
    return parse_collector_config(text, file)

"""The collector's configuration: the `[collector]` table of a posagent config file.

The table is read and validated with the agent's typed loader
(`agent.core.config.parse_section`): unknown keys, wrong types and values out
of range are errors located by file, key and line, exit 78.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.bundle.remedies import REMEDIES
from agent.bundle.trigger import TriggerKind
from agent.core.config import ConfigError, _f, parse_section, read_config_text
from agent.core.model import Severity
from collector.i18n import DEFAULT_LANGUAGE, LANGUAGES

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
class RemedyText:
    """A fleet's wording of one remedy in one language ("" keeps the built-in text)."""

    merchant: str = ""
    support: str = ""


@dataclass(frozen=True)
class RemedyOverride(RemedyText):
    """`[collector.remedies."<fault key>"]`: the fleet's own remedy, shown in every language
    unless `[collector.remedies."<fault key>".translations.<lang>]` words it for that one."""

    translations: dict[str, RemedyText] = _f({})


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
    # issue 15: a fleet's own "what to do" per fault key (collector.remedies.remedy_for)
    remedies: dict[str, RemedyOverride] = _f({})
    # issue 16, the two-way channel (docs/CHANNEL.md): the command key (collector keygen),
    # silent terminals, the recipients given at enrollment, enrollment throttle per address
    signing_key_file: str = ""
    silent_after_checkins: int = _f(3, min=1, max=1000)
    silent_check_interval_s: float = _f(10.0, min=0.5, max=3600)
    encrypt_to: list[str] = _f([])
    enroll_per_minute: int = _f(10, min=1, max=100_000)


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
    _check_remedies(cfg.remedies, file)
    return cfg


MAX_REMEDY_CHARS = 500


def _check_remedies(remedies: dict[str, RemedyOverride], file: str) -> None:
    """Fault keys the remedy table knows, languages the collector speaks, texts that fit
    one line of a page."""
    for fault, ov in remedies.items():
        key = f'collector.remedies."{fault}"'
        if fault not in REMEDIES:
            raise ConfigError(
                "unknown fault key (the keys of docs/ARCHITECTURE.md §8)", file=file, key=key
            )
        texts: list[tuple[str, RemedyText]] = [(key, ov)]
        for lang, t in ov.translations.items():
            if lang not in LANGUAGES or lang == DEFAULT_LANGUAGE:
                known = ", ".join(x for x in LANGUAGES if x != DEFAULT_LANGUAGE)
                raise ConfigError(
                    f"unknown language (known: {known}; the plain keys are the default)",
                    file=file,
                    key=f"{key}.translations.{lang}",
                )
            texts.append((f"{key}.translations.{lang}", t))
        for where, t in texts:
            if not (t.merchant or t.support or (t is ov and ov.translations)):
                raise ConfigError("set merchant, support or both", file=file, key=where)
            for name, text in (("merchant", t.merchant), ("support", t.support)):
                if len(text) > MAX_REMEDY_CHARS:
                    raise ConfigError(
                        f"longer than {MAX_REMEDY_CHARS} characters",
                        file=file,
                        key=f"{where}.{name}",
                    )
                if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
                    raise ConfigError(
                        "control characters (a line break, a tab) are not allowed",
                        file=file,
                        key=f"{where}.{name}",
                    )


def load_collector_config(path: str | None = None) -> CollectorConfig:
    """The `[collector]` table of the config file (--config, $POSAGENT_CONFIG, default)."""
    text, file = read_config_text(path)
    return parse_collector_config(text, file)

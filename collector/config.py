"""The collector's configuration: the `[collector]` table of a posagent config file.

The table is read and validated with the agent's typed loader
(`agent.core.config.parse_section`): unknown keys, wrong types and values out
of range are errors located by file, key and line, exit 78.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from agent.bundle.remedies import REMEDIES
from agent.bundle.trigger import TriggerKind
from agent.core.config import ConfigError, _f, parse_section, read_config_text
from agent.core.model import Severity
from collector.i18n import DEFAULT_LANGUAGE, LANGUAGES

MAX_DAYS = 36500
# the incident events a webhook or the email channel can be subscribed to (collector.notify)
NOTIFY_EVENTS = ("incident.opened", "incident.reopened", "incident.escalated", "incident.resolved")
HOOK_NAME = r"^[A-Za-z0-9._-]{1,64}$"


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
class IncidentsConfig:
    """`[collector.incidents]` (`collector.incidents`): how bundles become incidents and
    when an incident resolves or escalates by itself (seconds; 0 turns the rule off)."""

    # a recurrence of a cleared fault within this reopens its incident (counted)
    reopen_window_s: float = _f(3600.0, min=0.0, max=366 * 86400.0)
    # cleared and quiet this long: resolved by the collector (0: only by a person)
    auto_resolve_after_s: float = _f(86400.0, min=0.0, max=366 * 86400.0)
    # a critical incident still raised and open (not acknowledged) this long: escalated once
    escalate_after_s: float = _f(1800.0, min=0.0, max=366 * 86400.0)
    # how often each `collector serve` groups what was left ungrouped, resolves, escalates
    interval_s: float = _f(60.0, min=0.0, max=86400.0)


@dataclass(frozen=True)
class WebhookConfig:
    """`[[collector.webhooks]]`: one receiver of incident events (`collector.notify`)."""

    name: str = _f("", pattern=HOOK_NAME)
    url: str = _f("", pattern=r"^https?://[^\s]+$")
    secret_file: str = ""  # the HMAC-SHA256 key: 0600, at least 32 characters
    events: list[str] = _f(list(NOTIFY_EVENTS))
    timeout_s: float = _f(10.0, min=0.5, max=120.0)


@dataclass(frozen=True)
class EmailConfig:
    """`[collector.email]`: incident events by mail through an SMTP server (off while
    smtp_host is empty)."""

    smtp_host: str = ""
    smtp_port: int = _f(25, min=1, max=65535)
    starttls: bool = False
    ca_file: str = ""  # PEM certificates trusted for STARTTLS; empty: the system's
    username: str = ""
    password_file: str = ""
    mail_from: str = ""
    to: list[str] = _f([])
    events: list[str] = _f(list(NOTIFY_EVENTS))
    timeout_s: float = _f(30.0, min=1.0, max=300.0)
    language: str = DEFAULT_LANGUAGE  # the messages' words: "en" or "zh-Hans"


@dataclass(frozen=True)
class NotifyConfig:
    """`[collector.notify]`: the delivery worker of the notifications outbox."""

    interval_s: float = _f(2.0, min=0.0, max=3600.0)  # 0: serve runs no delivery worker
    backoff_base_s: float = _f(10.0, min=0.01, max=3600.0)
    backoff_max_s: float = _f(3600.0, min=0.01, max=86400.0)
    max_attempts: int = _f(20, min=1, max=1000)
    max_age_s: float = _f(86400.0, min=1.0, max=30 * 86400.0)
    batch_size: int = _f(20, min=1, max=1000)
    log_days: int = _f(30, min=1, max=MAX_DAYS)


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
    # gone (issue 15): the read side has user accounts; a value set is refused with the way out
    operator_token_file: str = ""
    # the collector's address as people reach it (links in notifications); "": <listen>
    public_url: str = _f("", pattern=r"^$|^https?://[^\s/]+(/[^\s]*)?$")
    # people (issue 15): sessions, login throttling (counted in the index's database)
    session_lifetime_s: int = _f(43200, min=300, max=30 * 86400)
    session_idle_s: int = _f(3600, min=60, max=30 * 86400)
    login_failures_per_account: int = _f(5, min=1, max=1000)
    login_failures_per_address: int = _f(20, min=1, max=100_000)
    login_window_s: int = _f(900, min=10, max=86400)
    # reverse proxies (addresses or CIDR networks) whose X-Forwarded-For / -Proto are believed
    trusted_proxies: list[str] = _f([])
    # the fleet engines (collector.storage); empty: the embedded files + SQLite in data_dir
    index_url: str = _f("", pattern=r"^$|^postgres(ql)?://")
    blob_url: str = _f("", pattern=r"^$|^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    s3_endpoint_url: str = _f("", pattern=r"^$|^https?://")
    s3_region: str = _f("us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    incidents: IncidentsConfig = field(default_factory=IncidentsConfig)
    # TLS terminated by `collector serve` itself (both or neither; re-read on SIGHUP)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # slow or idle clients (collector.server.GuardedHttpToolsProtocol)
    header_timeout_s: int = _f(10, min=1, max=3600)
    # an idle connection is kept this long after an answer: above the terminals' check-in
    # interval, so each check-in reuses its connection (no TCP/TLS handshake, docs/CHANNEL.md)
    keepalive_s: int = _f(360, min=1, max=86400)
    body_timeout_s: int = _f(120, min=1, max=86400)
    max_idle_per_client: int = _f(32, min=0, max=1_000_000)
    # issue 15: a fleet's own "what to do" per fault key (collector.remedies.remedy_for)
    remedies: dict[str, RemedyOverride] = _f({})
    # issue 15 item 6: notifications of incident events (collector.notify)
    webhooks: list[WebhookConfig] = field(default_factory=list)
    email: EmailConfig = field(default_factory=EmailConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    # Retry-After of the 503 answered while the store is unavailable or full
    unavailable_retry_after_s: int = _f(60, min=1, max=3600)
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
    if cfg.operator_token_file:
        raise ConfigError(
            "no longer read: the read side has user accounts "
            "(posagent collector user add NAME --role admin; token create NAME for scripts); "
            "remove this key",
            file=file,
            key="collector.operator_token_file",
        )
    for n, net in enumerate(cfg.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"not an address or network: {net[:60]!r}",
                file=file,
                key=f"collector.trusted_proxies[{n}]",
            ) from None
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
    _check_notify(cfg, file)
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


def _check_notify(cfg: CollectorConfig, file: str) -> None:
    """Cross-checks of the notification channels (the secrets are read by collector.notify)."""
    names: set[str] = set()
    for i, hook in enumerate(cfg.webhooks):
        key = f"collector.webhooks[{i}]"
        for name, value in (
            ("name", hook.name),
            ("url", hook.url),
            ("secret_file", hook.secret_file),
        ):
            if not value:
                raise ConfigError("required", file=file, key=f"{key}.{name}")
        if hook.name in names:
            raise ConfigError(
                f"webhook name {hook.name!r} used twice", file=file, key=f"{key}.name"
            )
        names.add(hook.name)
        _check_events(hook.events, file, f"{key}.events")
    e = cfg.email
    if e.smtp_host:
        if not re.match(r"^[^@\s<>]+@[^@\s<>]+$", e.mail_from):
            raise ConfigError(
                "an address (name@host) is required", file=file, key="collector.email.mail_from"
            )
        if not e.to:
            raise ConfigError(
                "at least one recipient is required", file=file, key="collector.email.to"
            )
        for addr in e.to:
            if not re.match(r"^[^@\s<>,]+@[^@\s<>,]+$", addr):
                raise ConfigError(
                    f"{addr[:80]!r} is not an address (name@host)",
                    file=file,
                    key="collector.email.to",
                )
        if len(set(e.to)) != len(e.to):
            raise ConfigError("a recipient is listed twice", file=file, key="collector.email.to")
        if e.username and not e.password_file:
            raise ConfigError(
                "username needs password_file", file=file, key="collector.email.password_file"
            )
        _check_events(e.events, file, "collector.email.events")
    if e.language not in LANGUAGES:
        raise ConfigError(
            f"must be one of {', '.join(LANGUAGES)}", file=file, key="collector.email.language"
        )
    if cfg.notify.backoff_max_s < cfg.notify.backoff_base_s:
        raise ConfigError(
            "must not be below backoff_base_s", file=file, key="collector.notify.backoff_max_s"
        )


def _check_events(events: list[str], file: str, key: str) -> None:
    for name in events:
        if name not in NOTIFY_EVENTS:
            raise ConfigError(
                f"unknown event {name[:60]!r} (known: {', '.join(NOTIFY_EVENTS)})",
                file=file,
                key=key,
            )


def load_collector_config(path: str | None = None) -> CollectorConfig:
    """The `[collector]` table of the config file (--config, $POSAGENT_CONFIG, default)."""
    text, file = read_config_text(path)
    return parse_collector_config(text, file)

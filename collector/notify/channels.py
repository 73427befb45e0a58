"""The configured notification channels with their secrets read: `load_channels(cfg)`.

A webhook's HMAC secret (`[[collector.webhooks]] secret_file`) and the SMTP password
(`[collector.email] password_file`) are read once, when the collector starts. Refused
with a `ConfigError` (exit 78) naming the file: a file that is missing, a symbolic link,
not a regular file, readable or writable by group or others (chmod 0600, owned by the
collector's user or root), or a webhook secret shorter than `MIN_SECRET` characters
(``openssl rand -hex 32`` makes a good one). The secret is the file's text without
surrounding whitespace, used as UTF-8 bytes by the receiver and the collector alike.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.config import ConfigError
from agent.core.secret_files import check_file
from collector.config import CollectorConfig

MIN_SECRET = 32


@dataclass(frozen=True)
class Hook:
    """One webhook receiver with its secret."""

    name: str
    url: str
    secret: bytes = field(repr=False)
    events: frozenset[str]
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Mail:
    """The SMTP channel: the server, the sender and the recipients."""

    host: str
    port: int
    mail_from: str
    to: tuple[str, ...]
    events: frozenset[str]
    starttls: bool = False
    ca_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_s: float = 30.0
    language: str = "en"  # the messages' words (collector.i18n.LANGUAGES)


@dataclass(frozen=True)
class Channels:
    """Every configured channel; `targets` are the (channel, target) pairs of the outbox."""

    hooks: tuple[Hook, ...] = ()
    mail: Mail | None = None

    @property
    def empty(self) -> bool:
        return not self.hooks and self.mail is None

    def hook(self, name: str) -> Hook | None:
        return next((h for h in self.hooks if h.name == name), None)

    def targets(self) -> list[tuple[str, str]]:
        out = [("webhook", h.name) for h in self.hooks]
        if self.mail is not None:
            out += [("email", to) for to in self.mail.to]
        return out

    def subscribed(self, event: str) -> list[tuple[str, str]]:
        """The (channel, target) pairs whose filter takes event."""
        out = [("webhook", h.name) for h in self.hooks if event in h.events]
        if self.mail is not None and event in self.mail.events:
            out += [("email", to) for to in self.mail.to]
        return out


def read_secret(path: str, key: str, *, min_len: int = 1) -> str:
    """The stripped text of a secret file only its owner can read; ConfigError naming it."""
    refused = [p for p in check_file(key, path) if p.refuse]
    if refused:
        raise ConfigError(f"{path} {refused[0].message}", file=path, key=key)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found", file=path, key=key) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}", file=path, key=key) from None
    if mode & 0o044:
        raise ConfigError(
            f"{path} is readable by group or others (mode {mode:04o}): chmod 0600",
            file=path,
            key=key,
        )
    if len(text) < min_len:
        raise ConfigError(
            f"{path} holds a secret shorter than {min_len} characters "
            "(make one with: openssl rand -hex 32)",
            file=path,
            key=key,
        )
    return text


def load_channels(cfg: CollectorConfig) -> Channels:
    """The channels cfg configures, secrets read; ConfigError (exit 78) on a bad secret."""
    hooks = tuple(
        Hook(
            name=h.name,
            url=h.url,
            secret=read_secret(
                h.secret_file, f"collector.webhooks[{i}].secret_file", min_len=MIN_SECRET
            ).encode("utf-8"),
            events=frozenset(h.events),
            timeout_s=h.timeout_s,
        )
        for i, h in enumerate(cfg.webhooks)
    )
    e = cfg.email
    mail = None
    if e.smtp_host:
        password = (
            read_secret(e.password_file, "collector.email.password_file") if e.password_file else ""
        )
        mail = Mail(
            host=e.smtp_host,
            port=e.smtp_port,
            mail_from=e.mail_from,
            to=tuple(e.to),
            events=frozenset(e.events),
            starttls=e.starttls,
            ca_file=e.ca_file,
            username=e.username,
            password=password,
            timeout_s=e.timeout_s,
            language=e.language,
        )
    return Channels(hooks, mail)

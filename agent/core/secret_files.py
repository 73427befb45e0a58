"""Who else can read or change the agent's secret files (docs/ARCHITECTURE.md §9).

The device token (`upload.token_file`), the bundle HMAC key
(`bundle.hmac_key_file`), the Ed25519 signing key (`bundle.signing_key_file`)
the TLS client key (`upload.client_key_file`) and the enrollment token
(`upload.enrollment_token_file`) are
read from files. One check, used by `posagent check-config`, `posagent
selftest` and the daemon at start:

- refused (a `ConfigError`, exit 78, naming the file): a symbolic link (its
  target can be changed under the agent), not a regular file, writable by
  group or others, owned by a user other than root or the agent's (the user
  running the check, or the owner of the state dir: the daemon's user, who
  writes the device token at enrollment and its signing key's home, so that
  `posagent check-config` run as root accepts them), or in a
  directory every user may write without the sticky bit;
- warned about: readable by every user (mode o+r): chmod 0640 or 0600.

A file that does not exist is not judged here (the uploader and the bundle
writer say what a missing secret means).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.core.config import Config, ConfigError


@dataclass(frozen=True)
class SecretFileProblem:
    """One finding about one secret file."""

    key: str  # the config key naming the file
    path: str
    message: str
    refuse: bool  # True: the agent will not use it; False: a warning

    def __str__(self) -> str:
        return f"{self.key}: {self.path} {self.message}"


def secret_paths(cfg: Config) -> list[tuple[str, str]]:
    """(config key, path) of every secret file the config names."""
    pairs = [
        ("upload.token_file", cfg.upload.token_file),
        ("bundle.hmac_key_file", cfg.bundle.hmac_key_file),
        ("bundle.signing_key_file", cfg.bundle.signing_key_path(cfg.agent.state_dir)),
        ("upload.client_key_file", cfg.upload.client_key_file),
        ("upload.enrollment_token_file", cfg.upload.enrollment_token_file),
    ]
    return [(k, p) for k, p in pairs if p]


def check_file(
    key: str, path: str, euid: int | None = None, agent_uid: int | None = None
) -> list[SecretFileProblem]:
    """What is wrong with one secret file ([] when fine or absent); agent_uid: the
    daemon's user (the state dir's owner), whose files are its own."""
    uid = os.geteuid() if euid is None else euid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    except OSError as e:
        return [SecretFileProblem(key, path, f"cannot be examined: {e.strerror or e}", True)]

    def refuse(msg: str) -> list[SecretFileProblem]:
        return [SecretFileProblem(key, path, msg, True)]

    if stat.S_ISLNK(st.st_mode):
        return refuse("is a symbolic link: secrets are not read through links (use the file)")
    if not stat.S_ISREG(st.st_mode):
        return refuse("is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    out: list[SecretFileProblem] = []
    if mode & 0o022:
        who = " and ".join(w for b, w in ((0o020, "group"), (0o002, "others")) if mode & b)
        out += refuse(f"is writable by {who} (mode {mode:04o}): chmod go-w")
    if st.st_uid not in (0, uid) and st.st_uid != agent_uid:
        out += refuse(f"is owned by uid {st.st_uid}, another user who can rewrite it")
    parent = Path(path).parent
    try:
        pst = os.stat(parent)
        if pst.st_mode & 0o002 and not pst.st_mode & stat.S_ISVTX:
            out += refuse(f"is in {parent}, a directory every user may write (no sticky bit)")
    except OSError:
        pass
    if mode & 0o004:
        out.append(
            SecretFileProblem(
                key, path, f"is readable by every user (mode {mode:04o}): chmod o-r", False
            )
        )
    return out


def check_secret_files(cfg: Config, euid: int | None = None) -> list[SecretFileProblem]:
    """Every finding about the config's secret files, refusals first."""
    try:
        agent_uid: int | None = os.stat(cfg.agent.state_dir).st_uid
    except OSError:
        agent_uid = None
    found = [p for key, path in secret_paths(cfg) for p in check_file(key, path, euid, agent_uid)]
    return sorted(found, key=lambda p: not p.refuse)


def require_safe_secret_files(cfg: Config, euid: int | None = None) -> list[SecretFileProblem]:
    """The warnings; raises ConfigError (exit 78) naming the first file others can change."""
    found = check_secret_files(cfg, euid)
    for p in found:
        if p.refuse:
            raise ConfigError(f"{p.path} {p.message}", file=cfg.source, key=p.key)
    return found

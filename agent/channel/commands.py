"""Collector commands: the envelope checks and each kind's arguments (docs/CHANNEL.md §3).

A command runs only when all hold, checked in this order, the first that
fails naming the refusal: the signature verifies (checked by the upload child,
which holds `cryptography`; its verdict comes in as `sig_problem`), the
envelope is well formed, `device` is this terminal, `expires_at` is ahead
(with COMMAND_GRACE_S for a wrong clock), the id was never seen, the kind is
known and its args valid. Pure functions: the channel persists the seen ids
(agent/channel/store.py) and runs the command.

There is no kind that runs a program named by the collector: `selftest` runs
the agent's own selftest, `logs` sends only a file the local config lists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.core.timefmt import parse_rfc3339
from agent.faults.catalog import RULES
from agent.upload.protocol import COMMAND_GRACE_S, COMMAND_KINDS

KINDS = COMMAND_KINDS
MAX_ENVELOPE_BYTES = 16 * 1024
MAX_SET_LEVEL_S = 7 * 86400.0
NOTE_MAX = 10_000
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_FAULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "severity": str,
    "raise_after": (int, float),
    "clear_after": (int, float),
}
_CAPTURE_FIELDS = (
    "cooldown_s",
    "bundles_per_hour",
    "burst",
    "critical_reserve",
    "manual_per_hour",
    "manual_burst",
)


class Refused(Exception):
    """A command not run; the message is the one-line reason recorded as its result."""


@dataclass(frozen=True)
class Command:
    """A command that passed every check."""

    id: str
    kind: str
    args: dict[str, Any]
    expires_at: float
    issued_at: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # set-level: dotted config keys
    until: float = 0.0  # set-level: when its values end


def envelope_id(raw: bytes) -> str:
    """The id an envelope claims (to report a refusal against), "" when none is readable."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    cid = doc.get("id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) and _ID.match(cid) else ""


def check_command(
    raw: bytes,
    sig_problem: str,
    *,
    device_id: str,
    now: float,
    seen: Mapping[str, float],
    command_logs: Mapping[str, str],
) -> Command:
    """The command of one envelope, or Refused naming why it must not run."""
    if sig_problem:
        raise Refused(sig_problem)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise Refused(f"envelope larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise Refused("envelope is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise Refused("envelope is not a v1 command")
    cid, device, kind, args = doc.get("id"), doc.get("device"), doc.get("kind"), doc.get("args")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise Refused("envelope has no valid id")
    if device != device_id:
        raise Refused(f"for another device ({str(device)[:64]!r})")
    try:
        expires = parse_rfc3339(str(doc.get("expires_at")))
    except ValueError:
        raise Refused("expires_at is not an RFC 3339 time") from None
    if expires + COMMAND_GRACE_S <= now:
        raise Refused(f"expired at {doc.get('expires_at')}")
    if cid in seen:
        raise Refused("replayed: this command id was already run")
    if kind not in KINDS:
        raise Refused(f"unknown kind {str(kind)[:40]!r}")
    if not isinstance(args, dict):
        raise Refused("args is not an object")
    cmd = Command(cid, kind, args, expires, str(doc.get("issued_at", "")))
    return _check_args(cmd, now, command_logs)


def _only(args: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise Refused(f"unknown argument(s): {', '.join(extra)[:100]}")


def _check_args(cmd: Command, now: float, command_logs: Mapping[str, str]) -> Command:
    a = cmd.args
    if cmd.kind == "capture":
        _only(a, {"note"})
        note = a.get("note", "")
        if not isinstance(note, str) or len(note) > NOTE_MAX:
            raise Refused(f"note must be a string of at most {NOTE_MAX} characters")
        return cmd
    if cmd.kind in ("selftest", "rotate-token", "rotate-signing-key"):
        _only(a, set())
        return cmd
    if cmd.kind == "logs":
        _only(a, {"name"})
        name = a.get("name")
        if not isinstance(name, str) or name not in command_logs:
            raise Refused(f"log {str(name)[:64]!r} is not in [upload] command_logs")
        return cmd
    if cmd.kind == "checkin-interval":
        _only(a, {"seconds"})
        s = a.get("seconds")
        if isinstance(s, bool) or not isinstance(s, int) or not 30 <= s <= 86400:
            raise Refused("seconds must be an integer from 30 to 86400")
        return cmd
    return _set_level(cmd, now)


def _set_level(cmd: Command, now: float) -> Command:
    a = cmd.args
    _only(a, {"faults", "capture", "until"})
    try:
        until = parse_rfc3339(str(a.get("until")))
    except ValueError:
        raise Refused("until is not an RFC 3339 time") from None
    if until <= now:
        raise Refused("until is in the past")
    if until - now > MAX_SET_LEVEL_S + COMMAND_GRACE_S:
        raise Refused("until is more than 7 days ahead")
    faults, capture = a.get("faults", {}), a.get("capture", {})
    if not isinstance(faults, dict) or not isinstance(capture, dict):
        raise Refused("faults and capture must be objects")
    values: dict[str, Any] = {}
    for key, ov in faults.items():
        if key not in RULES:
            raise Refused(f"faults: unknown fault key {str(key)[:64]!r}")
        if not isinstance(ov, dict):
            raise Refused(f"faults.{key}: not an object")
        for name, v in ov.items():
            if name == "enabled":
                ok = isinstance(v, bool)
            else:
                typ = _FAULT_FIELDS.get(name)
                ok = typ is not None and isinstance(v, typ) and not isinstance(v, bool)
            if not ok:
                raise Refused(f"faults.{key}.{str(name)[:40]}: not an override field of its type")
            values[f"faults.{key}.{name}"] = v
    for name, v in capture.items():
        if name not in _CAPTURE_FIELDS or isinstance(v, bool) or not isinstance(v, int | float):
            raise Refused(f"capture.{str(name)[:40]}: not a capture limit of its type")
        values[f"capture.{name}"] = v
    if not values:
        raise Refused("set-level sets nothing")
    return Command(cmd.id, cmd.kind, a, cmd.expires_at, cmd.issued_at, values, until)

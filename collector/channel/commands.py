"""Commands for a terminal (docs/CHANNEL.md §3): kinds, their args, queue, delivery, results.

`validate` checks a kind and its args as the terminal will (unknown kinds and unknown
args are refused: there is no kind that runs a program). `queue` signs the envelope once
(`collector.channel.signing`) and stores it in ``device_commands`` with status
``queued``; `deliverable` hands each check-in the device's commands that are neither
answered nor expired (the same signed bytes every time: the terminal runs an id at most
once), and `mark_delivered` counts the deliveries. An expired command is never
delivered. `acknowledge` records the results a check-in carries (``done``, ``refused``,
``failed`` with a one-line detail) once: a result for a command already answered, another
device's or an unknown one changes nothing.

Status shown: queued, delivered, done, refused, failed, or expired (queued or delivered
and past its expiry).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.core.timefmt import parse_rfc3339, rfc3339
from agent.upload.protocol import COMMAND_KINDS
from collector.channel import keys
from collector.channel.errors import BadRequest
from collector.channel.hooks import _audit
from collector.channel.remote_config import (
    CAPTURE_LIMITS,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    RemoteConfigError,
    check,
)
from collector.channel.signing import Signer
from collector.storage.sql import Row, Tx

KINDS = COMMAND_KINDS
RESULTS = ("done", "refused", "failed")
OPEN = ("queued", "delivered")
DEFAULT_EXPIRES_S = 900
MIN_EXPIRES_S, MAX_EXPIRES_S = 30, 86400
MAX_SET_LEVEL_S = 7 * 86400
MAX_DETAIL = 300
MAX_NOTE = 500
MAX_RESULTS = 100
_LOG_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
COLUMNS = (
    "id, device, kind, args, issued_at, expires_at, issued_by, envelope, signature, status, "
    "deliveries, delivered_at, result_at, detail"
)


def _only(args: Mapping[str, Any], allowed: tuple[str, ...], kind: str) -> None:
    extra = sorted(set(args) - set(allowed))
    if extra:
        known = ", ".join(allowed) or "none"
        raise BadRequest(f"{kind}: unknown args {', '.join(extra)[:100]} (known: {known})")


def _set_level(args: Mapping[str, Any], now: float) -> dict[str, Any]:
    _only(args, ("faults", "capture", "until"), "set-level")
    until_text = args.get("until")
    if not isinstance(until_text, str):
        raise BadRequest("set-level: until (RFC 3339) is required")
    try:
        until = parse_rfc3339(until_text)
    except ValueError:
        raise BadRequest(f"set-level: until {until_text[:40]!r} is not RFC 3339") from None
    if not now < until <= now + MAX_SET_LEVEL_S:
        raise BadRequest("set-level: until must be in the future, at most 7 days ahead")
    faults = args.get("faults", {})
    capture = args.get("capture", {})
    if not isinstance(faults, dict) or not isinstance(capture, dict):
        raise BadRequest("set-level: faults and capture are objects")
    if not faults and not capture:
        raise BadRequest("set-level: set faults, capture or both")
    try:
        for key, fields in faults.items():
            if not isinstance(fields, dict) or not fields:
                raise BadRequest(f"set-level: faults.{key[:64]} is an object of fields")
            for field, value in fields.items():
                check(f"faults.{key}.{field}", value)
        for field, value in capture.items():
            if field not in CAPTURE_LIMITS:
                raise BadRequest(
                    f"set-level: capture.{field[:40]} (known: {', '.join(CAPTURE_LIMITS)})"
                )
            check(f"capture.{field}", value)
    except RemoteConfigError as e:
        raise BadRequest(f"set-level: {e}") from None
    return {"faults": faults, "capture": capture, "until": rfc3339(until)}


def validate(kind: Any, args: Any, now: float) -> dict[str, Any]:
    """The args of a command of that kind, checked; BadRequest (one line) when refused."""
    if kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object")
    if kind == "capture":
        _only(args, ("note",), kind)
        note = args.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
            raise BadRequest(f"capture: note is a string of at most {MAX_NOTE} characters")
        return {"note": note} if note else {}
    if kind in ("selftest", "rotate-token", "rotate-signing-key"):
        _only(args, (), kind)
        return {}
    if kind == "logs":
        _only(args, ("name",), kind)
        name = args.get("name")
        if not isinstance(name, str) or not _LOG_NAME.match(name):
            raise BadRequest("logs: name is a [upload] command_logs name (A-Z a-z 0-9 . _ -)")
        return {"name": name}
    if kind == "checkin-interval":
        _only(args, ("seconds",), kind)
        s = args.get("seconds")
        if (
            isinstance(s, bool)
            or not isinstance(s, int)
            or not MIN_INTERVAL_S <= s <= MAX_INTERVAL_S
        ):
            raise BadRequest(
                f"checkin-interval: seconds is an integer {MIN_INTERVAL_S}-{MAX_INTERVAL_S}"
            )
        return {"seconds": s}
    return _set_level(args, now)


def expires_in(value: Any) -> int:
    """expires_in_s of a request (default 900 s), bounded; BadRequest otherwise."""
    if value is None:
        return DEFAULT_EXPIRES_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest("expires_in_s must be a number of seconds")
    if not MIN_EXPIRES_S <= value <= MAX_EXPIRES_S:
        raise BadRequest(f"expires_in_s must be {MIN_EXPIRES_S}-{MAX_EXPIRES_S}")
    return int(value)


@dataclass(frozen=True)
class Command:
    id: str
    device: str
    kind: str
    args: dict[str, Any]
    issued_at: float
    expires_at: float
    issued_by: str
    envelope: str  # base64 of the canonical envelope
    signature: str  # base64 Ed25519
    status: str
    deliveries: int
    delivered_at: float | None
    result_at: float | None
    detail: str

    @classmethod
    def of_row(cls, r: Row) -> Command:
        args = json.loads(r[3])
        return cls(
            id=str(r[0]),
            device=str(r[1]),
            kind=str(r[2]),
            args=args if isinstance(args, dict) else {},
            issued_at=float(r[4]),
            expires_at=float(r[5]),
            issued_by=str(r[6]),
            envelope=str(r[7]),
            signature=str(r[8]),
            status=str(r[9]),
            deliveries=int(r[10]),
            delivered_at=None if r[11] is None else float(r[11]),
            result_at=None if r[12] is None else float(r[12]),
            detail=str(r[13]),
        )

    def shown_status(self, now: float) -> str:
        if self.status in OPEN and self.expires_at <= now:
            return "expired"
        return self.status

    def wire(self) -> dict[str, str]:
        """As a check-in reply carries it."""
        return {"envelope": self.envelope, "signature": self.signature}

    def to_json(self, now: float) -> dict[str, Any]:
        def t(v: float | None) -> str | None:
            return None if v is None else rfc3339(v)

        return {
            "command_id": self.id,
            "device_id": self.device,
            "kind": self.kind,
            "args": self.args,
            "issued_at": rfc3339(self.issued_at),
            "expires_at": rfc3339(self.expires_at),
            "issued_by": self.issued_by,
            "status": self.shown_status(now),
            "deliveries": self.deliveries,
            "delivered_at": t(self.delivered_at),
            "result_at": t(self.result_at),
            "detail": self.detail,
        }


def queue(
    tx: Tx,
    signer: Signer,
    device: str,
    kind: str,
    args: dict[str, Any],
    *,
    expires_in_s: int,
    by: str,
    address: str,
    now: float,
) -> Command:
    """Sign and store a validated command for device (NoSigningKey when there is no key)."""
    cid = str(uuid.uuid4())
    envelope = {
        "v": 1,
        "id": cid,
        "device": device,
        "kind": kind,
        "args": args,
        "issued_at": rfc3339(now),
        "expires_at": rfc3339(now + expires_in_s),
    }
    env_b64, sig_b64 = signer.sign(envelope)
    row = (cid, device, kind, json.dumps(args, ensure_ascii=False), now, now + expires_in_s)
    tx.execute(
        f"INSERT INTO device_commands ({COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, NULL, NULL, '')",
        (*row, by[:100], env_b64, sig_b64),
    )
    _audit(tx, by, "command.queue", device, address, {"command": cid, "kind": kind, "args": args})
    cmd = get(tx, cid)
    assert cmd is not None
    return cmd


def get(tx: Tx, command_id: str) -> Command | None:
    row = tx.one(f"SELECT {COLUMNS} FROM device_commands WHERE id = ?", (command_id,))
    return None if row is None else Command.of_row(row)


def deliverable(tx: Tx, device: str, now: float, limit: int = 20) -> list[Command]:
    """The device's commands neither answered nor expired, oldest first."""
    rows = tx.all(
        f"SELECT {COLUMNS} FROM device_commands WHERE device = ? "
        "AND status IN ('queued', 'delivered') AND expires_at > ? ORDER BY issued_at, id LIMIT ?",
        (device, now, limit),
    )
    return [Command.of_row(r) for r in rows]


def mark_delivered(tx: Tx, ids: list[str], now: float) -> None:
    for cid in ids:
        tx.execute(
            "UPDATE device_commands SET status = 'delivered', deliveries = deliveries + 1, "
            "delivered_at = ? WHERE id = ? AND status IN ('queued', 'delivered')",
            (now, cid),
        )


def recent(tx: Tx, device: str, limit: int = 50) -> list[Command]:
    """The device's commands, newest first."""
    rows = tx.all(
        f"SELECT {COLUMNS} FROM device_commands WHERE device = ? "
        "ORDER BY issued_at DESC, id DESC LIMIT ?",
        (device, limit),
    )
    return [Command.of_row(r) for r in rows]


@dataclass(frozen=True)
class Result:
    command_id: str
    status: str
    detail: str
    key: dict[str, str] | None = None  # rotate-signing-key: the proof (collector.channel.keys)


def parse_results(raw: Any) -> list[Result]:
    """The results of a check-in body; BadRequest (one line) when malformed."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_RESULTS:
        raise BadRequest(f"results must be a list of at most {MAX_RESULTS}")
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise BadRequest(f"results[{i}] must be an object")
        cid, status, detail = r.get("command_id"), r.get("status"), r.get("detail", "")
        if not isinstance(cid, str) or len(cid) > 64:
            raise BadRequest(f"results[{i}].command_id must be a command id")
        if status not in RESULTS:
            raise BadRequest(f"results[{i}].status must be one of {', '.join(RESULTS)}")
        if detail is None:
            detail = ""
        if not isinstance(detail, str):
            raise BadRequest(f"results[{i}].detail must be a string")
        one_line = " ".join(detail.split())[:MAX_DETAIL]
        try:
            proof = keys.parse_proof(r.get("key"), i)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        out.append(Result(cid, str(status), one_line, proof))
    return out


def acknowledge(
    tx: Tx,
    device: str,
    results: list[Result],
    *,
    address: str,
    now: float,
    keys_cfg: Any = None,
) -> list[dict[str, str]]:
    """Record results of the device's open commands; the outcome of each
    rotate-signing-key among them (command_id, status, detail), which the check-in's
    reply carries back (``key_rotations``: the terminal puts its new key in force only
    when it was trusted).

    A ``done`` rotate-signing-key whose proof holds adds the new key to the device's
    keys (`collector.channel.keys.accept_rotation`, keys_cfg: the collector's config,
    for device_pubkeys_dir); one whose proof does not is recorded ``failed``, the key
    not trusted."""
    rotations: list[dict[str, str]] = []
    for r in results:
        row = tx.one(
            "SELECT kind FROM device_commands "
            "WHERE id = ? AND device = ? AND status IN ('queued', 'delivered')",
            (r.command_id, device),
        )
        if row is None:
            continue
        status, detail = r.status, r.detail
        extra: dict[str, Any] = {}
        rotation = str(row[0]) == keys.KIND
        if rotation and status == "done":
            status, detail, extra = _rotation(tx, device, r, keys_cfg, now)
        # RETURNING, not the row count: the check-in's transaction is pipelined
        # (`collector.storage.sql`), where a statement's count is not read
        changed = tx.one(
            "UPDATE device_commands SET status = ?, detail = ?, result_at = ? "
            "WHERE id = ? AND device = ? AND status IN ('queued', 'delivered') RETURNING id",
            (status, detail, now, r.command_id, device),
        )
        if changed is not None:
            if rotation:
                rotations.append({"command_id": r.command_id, "status": status, "detail": detail})
            _audit(
                tx,
                f"device:{device}",
                "command.result",
                device,
                address,
                {"command": r.command_id, "status": status, "detail": detail, **extra},
            )
    return rotations


def _rotation(
    tx: Tx, device: str, r: Result, keys_cfg: Any, now: float
) -> tuple[str, str, dict[str, Any]]:
    row = tx.one("SELECT pubkeys FROM devices WHERE id = ?", (device,))
    pubkeys = "" if row is None else str(row[0])
    try:
        text, detail = keys.accept_rotation(keys_cfg, device, pubkeys, r.command_id, r.key, now)
    except keys.RotationRefused as e:
        why = " ".join(f"key rotation refused: {e}".split())[:MAX_DETAIL]
        return "failed", why, {"refused": True}
    if text != pubkeys:
        tx.execute("UPDATE devices SET pubkeys = ? WHERE id = ?", (text, device))
    return "done", detail, {"key_id": detail.rsplit(" ", 1)[-1]}

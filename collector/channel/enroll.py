"""Enrollment tokens and enrollment (docs/CHANNEL.md §1).

An admin makes a token for a site (and tenant): `posagent collector enroll-token create
--site S [--tenant T] [--uses N] [--expires 7d]` prints it once; the table
``enroll_tokens`` keeps its SHA-256, its limits and a short public ``id`` (the first 12
hex of the hash) that `enroll-token list` shows and `enroll-token revoke ID` takes.

`enroll` is ``POST /v1/enroll``, in one transaction:

1. the token is known and not revoked (else 401 ``bad_token``), not expired (410
   ``token_expired``), not used up (410 ``token_used_up``; a use is taken atomically, so
   two terminals racing for the last use cannot both have it);
2. the device id is not enrolled, nor registered in the tokens file, at another site or
   tenant (409 ``device_elsewhere``);
3. a new device is stored; a known one (a re-imaged terminal: same id, a token for the
   same site) gets a new device token that replaces the old, its new public key joins
   the old ones, and everything it did before stays (bundles, commands, outages are kept
   by device id).

A refusal changes nothing (the transaction rolls back), and the terminal keeps its
enrollment token to try again later.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.bundle.sealed import KeyFileError, parse_public_keys
from agent.core.timefmt import rfc3339
from collector.accounts.errors import AccountError
from collector.accounts.users import place_site
from collector.auth import hash_token, new_token, valid_device_id, valid_site
from collector.channel import devices
from collector.channel.errors import BadRequest, ChannelError
from collector.channel.hooks import _audit
from collector.storage.sql import Database, Row, Tx

MAX_USES = 1_000_000
MAX_EXPIRES_S = 366 * 86400
DEFAULT_EXPIRES_S = 7 * 86400
_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TOKEN_COLUMNS = "id, site, tenant, uses_max, uses, created_at, expires_at, revoked_at, created_by"


def parse_duration(text: str) -> int:
    """'7d', '12h', '30m', '90s', '2w' or bare seconds; ValueError (one line) otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text[:40]!r} (e.g. 7d, 12h, 30m)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class EnrollToken:
    """An enrollment token as stored (never the token itself)."""

    id: str
    site: str
    tenant: str
    uses_max: int  # 0: no limit
    uses: int
    created_at: float
    expires_at: float
    revoked_at: float | None
    created_by: str

    @classmethod
    def of_row(cls, r: Row) -> EnrollToken:
        return cls(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            int(r[3]),
            int(r[4]),
            float(r[5]),
            float(r[6]),
            None if r[7] is None else float(r[7]),
            str(r[8]),
        )

    def state(self, now: float) -> str:
        """usable | revoked | expired | used up."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.uses_max and self.uses >= self.uses_max:
            return "used up"
        return "usable"

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site,
            "tenant": self.tenant,
            "uses": self.uses,
            "uses_max": self.uses_max,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "revoked_at": None if self.revoked_at is None else rfc3339(self.revoked_at),
            "created_by": self.created_by,
            "state": self.state(now),
        }


def create_token(
    db: Database,
    *,
    site: str,
    tenant: str = "",
    uses: int = 1,
    expires_s: int = DEFAULT_EXPIRES_S,
    by: str,
    now: float,
) -> tuple[str, EnrollToken]:
    """A new enrollment token (printed once by the caller) and its stored row.

    ValueError (one line) for a bad site or tenant (a site of another tenant too), uses
    outside 0..MAX_USES (0: no limit) or an expiry outside 60 s .. 366 days. With a
    tenant, the site is placed under it (`collector.accounts.users.place_site`)."""
    if not valid_site(site):
        raise ValueError(f"invalid site {site[:60]!r} (1-200 characters, no '#', no controls)")
    if tenant and not valid_site(tenant):
        raise ValueError(f"invalid tenant {tenant[:60]!r} (1-200 characters, no controls)")
    if not 0 <= uses <= MAX_USES:
        raise ValueError(f"--uses must be 0 (no limit) to {MAX_USES}")
    if not 60 <= expires_s <= MAX_EXPIRES_S:
        raise ValueError("--expires must be between 60 s and 366 days")
    token = new_token()
    digest = hash_token(token)
    row = EnrollToken(digest[:12], site, tenant, uses, 0, now, now + expires_s, None, by)
    with db.transaction() as tx:
        if tenant:  # the site joins the tenant, so its people see what enrolls there
            try:
                place_site(tx, site, tenant)
            except AccountError as e:
                raise ValueError(str(e)) from None
        tx.execute(
            f"INSERT INTO enroll_tokens ({_TOKEN_COLUMNS}, token_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, site, tenant, uses, 0, now, row.expires_at, None, by, digest),
        )
        _audit(tx, by, "enroll_token.create", row.id, "local", {"site": site, "uses": uses})
    return token, row


def list_tokens(db: Database) -> list[EnrollToken]:
    """Every enrollment token, newest first."""
    with db.transaction(write=False) as tx:
        rows = tx.all(f"SELECT {_TOKEN_COLUMNS} FROM enroll_tokens ORDER BY created_at DESC, id")
    return [EnrollToken.of_row(r) for r in rows]


def revoke_token(db: Database, token_id: str, *, by: str, now: float) -> EnrollToken:
    """Revoke the token of that id (or the token itself, pasted); LookupError when none."""
    text = token_id.strip()
    key = text.lower() if re.fullmatch(r"[0-9a-fA-F]{12}", text) else hash_token(text)[:12]
    with db.transaction() as tx:
        tx.execute(
            "UPDATE enroll_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (now, key),
        )
        row = tx.one(f"SELECT {_TOKEN_COLUMNS} FROM enroll_tokens WHERE id = ?", (key,))
        if row is None:
            raise LookupError(f"no enrollment token {text[:40]!r} (see enroll-token list)")
        _audit(tx, by, "enroll_token.revoke", key, "local")
    return EnrollToken.of_row(row)


# --------------------------------------------------------------------------- enrollment


@dataclass(frozen=True)
class Enrollment:
    """What `enroll` did: the device's new token (given once) and where it is filed."""

    device_id: str
    device_token: str
    site: str
    tenant: str
    reenrolled: bool


@dataclass(frozen=True)
class EnrollRequest:
    token: str
    device_id: str
    pem: str
    key_id: str
    agent_version: str
    boot_id: str


def _text(body: Mapping[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of 1-{limit} characters")
    return value


def parse_request(body: Any) -> EnrollRequest:
    """The body of ``POST /v1/enroll``; BadRequest (one line) when malformed."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    token = _text(body, "enrollment_token", 200, required=True)
    device_id = _text(body, "device_id", 64, required=True)
    if not valid_device_id(device_id):
        raise BadRequest("device_id: letters, digits, . _ : - (1-64)")
    pem = _text(body, "ed25519_public_key", 4096, required=True)
    try:
        blocks = parse_public_keys(pem.encode())
    except KeyFileError as e:
        reason = str(e).replace("public key <bytes>:", "line ")
        raise BadRequest(f"ed25519_public_key: {reason}") from None
    if len(blocks) != 1:
        raise BadRequest(f"ed25519_public_key must hold one PEM public key, not {len(blocks)}")
    return EnrollRequest(
        token=token,
        device_id=device_id,
        pem=blocks[0].pem,
        key_id=blocks[0].key_id,
        agent_version=_text(body, "agent_version", 64),
        boot_id=_text(body, "boot_id", 64),
    )


def _token_row(tx: Tx, token: str, now: float) -> EnrollToken:
    digest = hash_token(token)
    row = tx.one(
        f"SELECT {_TOKEN_COLUMNS}, token_hash FROM enroll_tokens WHERE token_hash = ?", (digest,)
    )
    if row is None or not hmac.compare_digest(str(row[9]), digest):
        raise ChannelError(401, "bad_token", "unknown enrollment token")
    t = EnrollToken.of_row(row)
    if t.revoked_at is not None:
        raise ChannelError(401, "bad_token", "enrollment token revoked")
    if t.expires_at <= now:
        raise ChannelError(
            410, "token_expired", f"enrollment token expired {rfc3339(t.expires_at)}"
        )
    if t.uses_max and t.uses >= t.uses_max:
        raise ChannelError(
            410, "token_used_up", f"enrollment token used {t.uses} time(s) of {t.uses_max}"
        )
    return t


def enroll(
    db: Database,
    req: EnrollRequest,
    *,
    address: str,
    now: float,
    file_site: Callable[[str], str | None] = lambda device: None,
    interval_s: int = 300,
) -> Enrollment:
    """Enroll (or re-enroll) req.device_id; ChannelError with the refusal, nothing changed.

    file_site(device): the device's site in the tokens file (None: not there)."""
    with db.transaction() as tx:
        t = _token_row(tx, req.token, now)
        tx.lock(f"device:{req.device_id}")
        registered = file_site(req.device_id)
        if registered and registered != t.site:
            raise ChannelError(
                409, "device_elsewhere", f"device {req.device_id} is registered at another site"
            )
        known = devices.get(tx, req.device_id)
        if known is not None and (known.site, known.tenant) != (t.site, t.tenant):
            raise ChannelError(
                409,
                "device_elsewhere",
                f"device {req.device_id} is enrolled at another site or tenant",
            )
        taken = tx.execute(
            "UPDATE enroll_tokens SET uses = uses + 1 WHERE id = ? AND (uses_max = 0 OR uses < uses_max)",
            (t.id,),
        )
        if taken != 1:
            raise ChannelError(410, "token_used_up", "enrollment token used up")
        token = new_token()
        key_block = f"# key {req.key_id} enrolled {rfc3339(now)}\n{req.pem}"
        if known is None:
            tx.execute(
                "INSERT INTO devices (id, site, tenant, token_hash, pubkeys, enrolled_at, "
                "enroll_token_id, interval_s, agent_version, boot_id, address) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    req.device_id,
                    t.site,
                    t.tenant,
                    hash_token(token),
                    key_block,
                    now,
                    t.id,
                    interval_s,
                    req.agent_version,
                    req.boot_id,
                    address[:100],
                ),
            )
        else:
            pubkeys = known.pubkeys
            if req.key_id not in known.key_ids():
                pubkeys = (pubkeys.rstrip("\n") + "\n" if pubkeys.strip() else "") + key_block
            tx.execute(
                "UPDATE devices SET token_hash = ?, next_token_hash = NULL, pubkeys = ?, "
                "enrollments = enrollments + 1, enroll_token_id = ?, agent_version = ?, "
                "boot_id = ?, address = ? WHERE id = ?",
                (
                    hash_token(token),
                    pubkeys,
                    t.id,
                    req.agent_version,
                    req.boot_id,
                    address[:100],
                    req.device_id,
                ),
            )
        action = "device.reenroll" if known else "device.enroll"
        _audit(
            tx,
            f"device:{req.device_id}",
            action,
            req.device_id,
            address,
            {"site": t.site, "tenant": t.tenant, "enroll_token": t.id, "key_id": req.key_id},
        )
    return Enrollment(req.device_id, token, t.site, t.tenant, known is not None)

"""The registry of enrolled devices (table ``devices``, docs/CHANNEL.md §1, §2, §5).

A device enrolled with an enrollment token has a row here: its site and tenant (from the
token, never from what the terminal claims), the SHA-256 of its device token, its
Ed25519 public keys (PEM blocks, each after a ``# key <id> enrolled <time>`` line: a
re-imaged terminal's new key joins the old ones), and what its last check-in said.
Devices registered by hand (`collector add-device`, the tokens file) have no row until
they enroll; `collector.auth.DeviceTokens` resolves both kinds.

Token rotation (§3 ``rotate-token``): `rotate_token` stores the new token's hash in
``next_token_hash``; the old token keeps working until the new one is first used
(`resolve_token` then promotes it), so a reply lost on the way never locks a terminal out.

State (`Device.state`): ``never`` (enrolled, no check-in yet), ``ok``, ``late`` (its
interval has passed without a check-in), ``silent`` (§5, `collector.channel.silent`).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from agent.bundle.sealed import KeyFileError, PemBlock, parse_public_keys
from agent.core.timefmt import rfc3339
from collector.auth import hash_token, new_token
from collector.channel.keys import lives
from collector.storage.sql import Database, Row, Tx

COLUMNS = (
    "id, site, tenant, enrolled_at, enrollments, last_seen, interval_s, summary, "
    "agent_version, boot_id, config_digest, address, silent_since, silent_deadline, pubkeys"
)
MAX_LIST = 500


@dataclass(frozen=True)
class Device:
    """One enrolled device as the registry holds it."""

    id: str
    site: str
    tenant: str
    enrolled_at: float
    enrollments: int
    last_seen: float | None
    interval_s: int
    summary: dict[str, Any] | None
    agent_version: str
    boot_id: str
    config_digest: str
    address: str
    silent_since: float | None
    silent_deadline: float | None
    pubkeys: str

    @classmethod
    def of_row(cls, row: Row) -> Device:
        summary = _json_object(row[7])
        return cls(
            id=str(row[0]),
            site=str(row[1]),
            tenant=str(row[2]),
            enrolled_at=float(row[3]),
            enrollments=int(row[4]),
            last_seen=None if row[5] is None else float(row[5]),
            interval_s=int(row[6]),
            summary=summary,
            agent_version=str(row[8]),
            boot_id=str(row[9]),
            config_digest=str(row[10]),
            address=str(row[11]),
            silent_since=None if row[12] is None else float(row[12]),
            silent_deadline=None if row[13] is None else float(row[13]),
            pubkeys=str(row[14]),
        )

    def state(self, now: float) -> str:
        """never | ok | late | silent."""
        if self.silent_since is not None:
            return "silent"
        if self.last_seen is None:
            return "never"
        return "late" if now > self.last_seen + self.interval_s * 1.5 else "ok"

    def key_ids(self) -> list[str]:
        """The ids of the public keys it enrolled with (oldest first)."""
        return [b.key_id for b in public_keys(self.pubkeys)]

    def to_json(self, now: float) -> dict[str, Any]:
        """The device in `GET /v1/devices` (times in RFC 3339)."""
        return {
            "device_id": self.id,
            "site": self.site,
            "tenant": self.tenant,
            "state": self.state(now),
            "enrolled_at": rfc3339(self.enrolled_at),
            "enrollments": self.enrollments,
            "last_seen": None if self.last_seen is None else rfc3339(self.last_seen),
            "interval_s": self.interval_s,
            "silent_since": None if self.silent_since is None else rfc3339(self.silent_since),
            "agent_version": self.agent_version,
            "boot_id": self.boot_id,
            "config_digest": self.config_digest,
            "summary": self.summary,
            "key_ids": self.key_ids(),
            "keys": [k.to_json() for k in lives(self.pubkeys)],
        }


def _json_object(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def public_keys(pem_text: str) -> list[PemBlock]:
    """The PEM blocks of a device's ``pubkeys`` ([] when none parse: logged by the caller)."""
    if not pem_text.strip():
        return []
    try:
        return parse_public_keys(pem_text.encode())
    except KeyFileError:
        return []


def get(tx: Tx, device_id: str) -> Device | None:
    row = tx.one(f"SELECT {COLUMNS} FROM devices WHERE id = ?", (device_id,))
    return None if row is None else Device.of_row(row)


def _site_filter(sites: frozenset[str] | None, site: str) -> tuple[str, list[Any]]:
    conds: list[str] = []
    params: list[Any] = []
    if sites is not None:
        if not sites:
            return " WHERE 1 = 0", []
        ordered = sorted(sites)
        conds.append(f"site IN ({', '.join('?' for _ in ordered)})")
        params += ordered
    if site:
        conds.append("site = ?")
        params.append(site)
    return (" WHERE " + " AND ".join(conds) if conds else ""), params


def listing(
    tx: Tx, sites: frozenset[str] | None, *, site: str = "", limit: int = 100, offset: int = 0
) -> tuple[list[Device], int]:
    """Devices within reach (sites None: every site), by id; (page, total)."""
    where, params = _site_filter(sites, site)
    rows = tx.all(
        f"SELECT {COLUMNS} FROM devices{where} ORDER BY id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    )
    total = tx.one(f"SELECT COUNT(*) FROM devices{where}", params)
    return [Device.of_row(r) for r in rows], int(total[0]) if total else 0


def resolve_token(db: Database, token: str) -> tuple[str, str] | None:
    """(device id, site) of an enrolled device's token, or None.

    A token waiting in next_token_hash (a rotation) is promoted on its first use: from then
    on the old one is refused."""
    if not token:
        return None
    digest = hash_token(token)
    with db.transaction(write=False) as tx:
        row = tx.one(
            "SELECT id, site, token_hash, next_token_hash FROM devices "
            "WHERE token_hash = ? OR next_token_hash = ?",
            (digest, digest),
        )
    if row is None:
        return None
    device, site, current, nxt = str(row[0]), str(row[1]), str(row[2]), row[3]
    if hmac.compare_digest(current, digest):
        return device, site
    if nxt is None or not hmac.compare_digest(str(nxt), digest):
        return None
    with db.transaction() as tx:
        tx.execute(
            "UPDATE devices SET token_hash = next_token_hash, next_token_hash = NULL "
            "WHERE id = ? AND next_token_hash = ?",
            (device, digest),
        )
    return device, site


def rotate_token(tx: Tx, device_id: str) -> str:
    """A new device token for device_id (its hash waits in next_token_hash); the token."""
    token = new_token()
    tx.execute(
        "UPDATE devices SET next_token_hash = ? WHERE id = ?", (hash_token(token), device_id)
    )
    return token


def site_of(db: Database, device_id: str) -> str | None:
    """The enrolled device's site, or None when it is not enrolled."""
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT site FROM devices WHERE id = ?", (device_id,))
    return None if row is None else str(row[0])


def pem_of(db: Database, device_id: str) -> str | None:
    """The enrolled device's public keys as PEM text, or None when it is not enrolled."""
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT pubkeys FROM devices WHERE id = ?", (device_id,))
    return None if row is None else str(row[0])

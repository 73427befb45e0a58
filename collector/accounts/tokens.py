"""Personal API tokens for scripts: ``Authorization: Bearer pat_...`` (migration 0005).

`create` returns the token once (``pat_`` + 256 random bits); the row keeps its SHA-256,
a name, and its user. A token acts as its user with the user's role and tenants; it
stops working when revoked or when the user is disabled. Lookup is by the hash (an
attacker cannot steer SHA-256 prefixes), so a wrong token costs one indexed read.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from collector import audit
from collector.access import Principal
from collector.accounts.errors import InvalidAccount, NoSuchAccount
from collector.accounts.users import USER_COLUMNS, User, _user
from collector.storage.sql import Database, bookkeeping

PREFIX = "pat_"
TOKEN_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
TOUCH_S = 60.0


@dataclass(frozen=True)
class TokenInfo:
    id: int
    user: str
    name: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(
    db: Database, user_name: str, name: str, *, actor: Principal | str, address: str
) -> tuple[int, str]:
    """A new token for user_name: (id, token). The token is shown once, never stored."""
    if not TOKEN_NAME_RE.match(name):
        raise InvalidAccount("token name: 1-64 characters, no control characters")
    token = PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as tx:
        row = tx.one("SELECT id, disabled FROM users WHERE name = ?", (user_name,))
        if row is None:
            raise NoSuchAccount(f"no user {user_name[:64]!r}")
        if row[1]:
            raise InvalidAccount(f"user {user_name!r} is disabled")
        made = tx.one(
            "INSERT INTO api_tokens (user_id, name, token_hash, created_at)"
            " VALUES (?, ?, ?, ?) RETURNING id",
            (row[0], name, _hash(token), time.time()),
        )
        assert made is not None
        audit.record(tx, actor, "token.create", user_name, address, {"id": made[0], "name": name})
    return int(made[0]), token


def resolve(db: Database, token: str) -> User | None:
    """The user a live token acts as, or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    key = _hash(token)
    now = time.time()
    with db.transaction(write=False) as tx:
        row = tx.one(
            f"SELECT t.id, t.last_used_at, {USER_COLUMNS} FROM api_tokens t"
            " JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.revoked_at IS NULL",
            (key,),
        )
        if row is None:
            return None
        user = _user(tx, row[2:])
    if user.disabled:
        return None
    if row[1] is None or now - float(row[1]) >= TOUCH_S:
        bookkeeping(
            db,
            "UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
            (now, row[0]),
            what="token_touch",
        )
    return user


def revoke(db: Database, token_id: int, *, actor: Principal | str, address: str) -> str:
    """Revoke a token by id; the user's name. NoSuchAccount when unknown or revoked."""
    with db.transaction() as tx:
        row = tx.one(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
            " RETURNING user_id, name",
            (time.time(), token_id),
        )
        if row is None:
            raise NoSuchAccount(f"no live token {token_id}")
        owner = tx.one("SELECT name FROM users WHERE id = ?", (row[0],))
        user_name = str(owner[0]) if owner else "?"
        audit.record(
            tx, actor, "token.revoke", user_name, address, {"id": token_id, "name": row[1]}
        )
    return user_name


def list_tokens(db: Database, user_name: str = "") -> list[TokenInfo]:
    """Every token (of one user when named), oldest first."""
    sql = (
        "SELECT t.id, u.name, t.name, t.created_at, t.last_used_at, t.revoked_at"
        " FROM api_tokens t JOIN users u ON u.id = t.user_id"
    )
    params: tuple[Any, ...] = ()
    if user_name:
        sql += " WHERE u.name = ?"
        params = (user_name,)
    with db.transaction(write=False) as tx:
        rows = tx.all(sql + " ORDER BY t.id", params)
    return [TokenInfo(int(r[0]), r[1], r[2], float(r[3]), r[4], r[5]) for r in rows]

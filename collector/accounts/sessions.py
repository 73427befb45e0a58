"""Server-side sessions: one row of ``sessions`` per login (migration 0005).

The cookie holds 256 random bits, new at every login; the row holds only its SHA-256
(a copy of the database opens no session) with the user, the session's CSRF token, and
its times. A session ends:

- at ``expires_at`` (login + ``[collector] session_lifetime_s``),
- after ``session_idle_s`` without a request (``last_seen`` is refreshed at most once
  every `TOUCH_S`, so a read costs no write),
- at logout, or when the user is disabled or their password changes: the row is
  deleted, so every instance refuses the cookie from then on.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from collector.accounts.users import USER_COLUMNS, User, _user
from collector.storage.sql import Database, Tx, bookkeeping

TOUCH_S = 30.0


@dataclass(frozen=True)
class SessionPolicy:
    lifetime_s: float
    idle_s: float


@dataclass(frozen=True)
class Session:
    """A live session: its user and its CSRF token."""

    user: User
    csrf: str
    expires_at: float


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


def start(tx: Tx, user: User, address: str, policy: SessionPolicy) -> tuple[str, str]:
    """A new session for user: (cookie value, CSRF token). Ended sessions are pruned."""
    now = time.time()
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    tx.execute(
        "DELETE FROM sessions WHERE expires_at < ? OR last_seen < ?",
        (now, now - policy.idle_s),
    )
    tx.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf, created_at, last_seen, expires_at,"
        " address) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (_key(cookie), user.id, csrf, now, now, now + policy.lifetime_s, address[:100]),
    )
    return cookie, csrf


def resolve(db: Database, cookie: str, policy: SessionPolicy) -> Session | None:
    """The live session of a cookie, or None (unknown, expired, idle, user disabled)."""
    if not cookie or len(cookie) > 200:
        return None
    key = _key(cookie)
    now = time.time()
    with db.transaction(write=False) as tx:
        row = tx.one(
            f"SELECT s.csrf, s.last_seen, s.expires_at, {USER_COLUMNS}"
            " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?",
            (key,),
        )
        if row is None:
            return None
        user = _user(tx, row[3:])
    csrf, last_seen, expires_at = str(row[0]), float(row[1]), float(row[2])
    if now >= expires_at or now - last_seen > policy.idle_s or user.disabled:
        bookkeeping(db, "DELETE FROM sessions WHERE id_hash = ?", (key,), what="session_end")
        return None
    if now - last_seen >= TOUCH_S:
        bookkeeping(
            db,
            "UPDATE sessions SET last_seen = ? WHERE id_hash = ?",
            (now, key),
            what="session_touch",
        )
    return Session(user, csrf, expires_at)


def end(db: Database, cookie: str) -> bool:
    """Delete the cookie's session; True when there was one."""
    with db.transaction() as tx:
        return tx.execute("DELETE FROM sessions WHERE id_hash = ?", (_key(cookie),)) > 0

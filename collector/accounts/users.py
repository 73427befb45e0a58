"""Users, tenants and sites in the index's database (migration 0005), and the `Principal`
each user is on the read side.

- A **tenant** (a merchant) owns **sites** (``sites(site, tenant)``); a device belongs to a
  site (its registered site in tokens_file, `collector.auth`), so a tenant's bundles are
  those filed under its sites.
- A **user** has a role (`collector.access.Role`): ``admin`` (every tenant; users,
  devices, settings), ``support`` (the tenants listed for them, or every tenant with
  ``all_tenants``), ``merchant`` (read-only, their tenants). Rules: an admin lists no
  tenants; a merchant lists at least one and never all; a support user lists some or all.
- Users are never deleted (the audit log names them): ``disable`` ends their sessions and
  refuses their tokens and logins.
- A user may choose the pages' language (``language``, migration 0009; `set_language`):
  '' follows the browser, else a language the collector speaks (`collector.i18n`).

Every change writes its audit entry in the same transaction (`collector.audit.record`).
Passwords are hashed before the transaction opens (Argon2 is the slow step).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from collector import audit
from collector.access import Principal, Role
from collector.accounts import passwords
from collector.accounts.errors import AccountExists, InvalidAccount, NoSuchAccount
from collector.auth import valid_site
from collector.i18n import LANGUAGES
from collector.storage.sql import Conflict, Database, Tx

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TENANT_RE = re.compile(r"^[^\x00-\x1f\x7f#]{1,100}$")

USER_COLUMNS = (
    "u.id, u.name, u.role, u.all_tenants, u.disabled, u.must_change, u.created_at, u.language"
)


@dataclass(frozen=True)
class User:
    """An account (never its password hash)."""

    id: int
    name: str
    role: Role
    tenants: tuple[str, ...]
    all_tenants: bool
    disabled: bool
    must_change: bool
    created_at: float
    language: str = ""  # '' follows the browser

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "tenants": "*" if self.all_tenants else list(self.tenants),
            "disabled": self.disabled,
            "must_change_password": self.must_change,
            "created_at": self.created_at,
            "language": self.language,
        }


def valid_user_name(name: str) -> bool:
    """1-64 of letters, digits, '.', '_', '@', '-', starting with a letter or digit."""
    return bool(USER_NAME_RE.match(name))


def valid_tenant(name: str) -> bool:
    """1-100 characters, no control characters, no '#', no surrounding spaces."""
    return bool(TENANT_RE.match(name)) and name == name.strip()


def check_scope(role: Role, tenants: Sequence[str], all_tenants: bool) -> None:
    """InvalidAccount unless the tenants fit the role (module docstring)."""
    for t in tenants:
        if not valid_tenant(t):
            raise InvalidAccount(f"invalid tenant {t[:60]!r} (1-100 characters, no '#')")
    if role is Role.ADMIN and (tenants or all_tenants):
        raise InvalidAccount("an admin sees every tenant: no --tenant or --all-tenants")
    if role is Role.MERCHANT and (all_tenants or not tenants):
        raise InvalidAccount("a merchant user needs --tenant T (their own), never --all-tenants")
    if role is Role.SUPPORT and not (tenants or all_tenants):
        raise InvalidAccount("a support user serves --tenant T ... or --all-tenants")
    if tenants and all_tenants:
        raise InvalidAccount("--tenant and --all-tenants exclude each other")


def parse_role(text: str) -> Role:
    """Role from its name; InvalidAccount otherwise."""
    try:
        return Role(text)
    except ValueError:
        raise InvalidAccount(f"unknown role {text[:20]!r} (admin, support or merchant)") from None


def ensure_tenant(tx: Tx, name: str) -> None:
    """Create the tenant row when missing."""
    if not valid_tenant(name):
        raise InvalidAccount(f"invalid tenant {name[:60]!r} (1-100 characters, no '#')")
    tx.execute(
        "INSERT INTO tenants (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (name, time.time()),
    )


def place_site(tx: Tx, site: str, tenant: str, *, move: bool = False) -> bool:
    """Give site to tenant; True when it changed. AccountExists when the site belongs to
    another tenant and move is False."""
    if not valid_site(site):
        raise InvalidAccount(f"invalid site {site[:60]!r} (1-200 characters, no '#')")
    ensure_tenant(tx, tenant)
    row = tx.one("SELECT tenant FROM sites WHERE site = ?", (site,))
    if row is not None:
        if row[0] == tenant:
            return False
        if not move:
            raise AccountExists(f"site {site[:60]!r} belongs to tenant {row[0]!r}")
        tx.execute("UPDATE sites SET tenant = ? WHERE site = ?", (tenant, site))
        return True
    tx.execute(
        "INSERT INTO sites (site, tenant, created_at) VALUES (?, ?, ?)",
        (site, tenant, time.time()),
    )
    return True


def site_tenants(db: Database) -> dict[str, str]:
    """site -> tenant for every placed site."""
    with db.transaction(write=False) as tx:
        return {r[0]: r[1] for r in tx.all("SELECT site, tenant FROM sites")}


def tenants(db: Database) -> list[str]:
    with db.transaction(write=False) as tx:
        return [r[0] for r in tx.all("SELECT name FROM tenants ORDER BY name")]


def _user(tx: Tx, row: Sequence[Any]) -> User:
    tl = tx.all("SELECT tenant FROM user_tenants WHERE user_id = ? ORDER BY tenant", (row[0],))
    return User(
        id=int(row[0]),
        name=row[1],
        role=Role(row[2]),
        tenants=tuple(t[0] for t in tl),
        all_tenants=bool(row[3]),
        disabled=bool(row[4]),
        must_change=bool(row[5]),
        created_at=float(row[6]),
        language=str(row[7] or ""),
    )


def user_by_id(tx: Tx, user_id: int) -> User | None:
    row = tx.one(f"SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?", (user_id,))
    return None if row is None else _user(tx, row)


def user_and_hash(tx: Tx, name: str) -> tuple[User, str] | None:
    """The user and their password hash (for a login), or None."""
    row = tx.one(f"SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.name = ?", (name,))
    return None if row is None else (_user(tx, row), str(row[8]))


def get_user(db: Database, name: str) -> User:
    """The named user; NoSuchAccount otherwise."""
    with db.transaction(write=False) as tx:
        found = user_and_hash(tx, name)
    if found is None:
        raise NoSuchAccount(f"no user {name[:64]!r}")
    return found[0]


def list_users(db: Database) -> list[User]:
    with db.transaction(write=False) as tx:
        rows = tx.all(f"SELECT {USER_COLUMNS} FROM users u ORDER BY u.name")
        return [_user(tx, r) for r in rows]


def principal(tx: Tx, user: User, via: str) -> Principal:
    """What user may see: every site (admin, support for all tenants) or their tenants' sites."""
    if user.role is Role.ADMIN or (user.role is Role.SUPPORT and user.all_tenants):
        sites: frozenset[str] | None = None
    else:
        rows = tx.all(
            "SELECT s.site FROM sites s JOIN user_tenants t ON t.tenant = s.tenant"
            " WHERE t.user_id = ?",
            (user.id,),
        )
        sites = frozenset(r[0] for r in rows)
    return Principal(user.name, user.role, sites, user_id=user.id, via=via, language=user.language)


def add_user(
    db: Database,
    name: str,
    role: Role,
    *,
    password: str,
    tenants_: Iterable[str] = (),
    all_tenants: bool = False,
    must_change: bool = False,
    actor: Principal | str,
    address: str,
) -> User:
    """Create a user (InvalidAccount, WeakSecret, AccountExists)."""
    if not valid_user_name(name):
        raise InvalidAccount(f"invalid user name {name[:64]!r} (1-64 of letters, digits, . _ @ -)")
    tl = sorted(set(tenants_))
    check_scope(role, tl, all_tenants)
    hashed = passwords.hash_password(password)
    now = time.time()
    try:
        with db.transaction() as tx:
            row = tx.one(
                "INSERT INTO users (name, role, all_tenants, password_hash, must_change,"
                " disabled, created_at, password_changed_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, role.value, int(all_tenants), hashed, int(must_change), now, now),
            )
            if row is None:
                raise AccountExists(f"user {name!r} exists")
            for t in tl:
                ensure_tenant(tx, t)
                tx.execute("INSERT INTO user_tenants (user_id, tenant) VALUES (?, ?)", (row[0], t))
            audit.record(
                tx,
                actor,
                "user.add",
                name,
                address,
                {"role": role.value, "tenants": "*" if all_tenants else tl},
            )
            user = user_by_id(tx, int(row[0]))
    except Conflict as e:
        raise AccountExists(f"user {name!r} exists") from e
    assert user is not None
    return user


def set_disabled(
    db: Database, name: str, disabled: bool, *, actor: Principal | str, address: str
) -> None:
    """Disable (ending every session) or enable a user; NoSuchAccount."""
    with db.transaction() as tx:
        row = tx.one("SELECT id FROM users WHERE name = ?", (name,))
        if row is None:
            raise NoSuchAccount(f"no user {name[:64]!r}")
        tx.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), row[0]))
        if disabled:
            tx.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
        audit.record(tx, actor, "user.disable" if disabled else "user.enable", name, address)


def set_password(
    db: Database,
    name: str,
    password: str,
    *,
    must_change: bool,
    actor: Principal | str,
    address: str,
    action: str = "user.passwd",
) -> None:
    """Replace a user's password, end their sessions and clear their failed logins."""
    hashed = passwords.hash_password(password)
    with db.transaction() as tx:
        row = tx.one("SELECT id FROM users WHERE name = ?", (name,))
        if row is None:
            raise NoSuchAccount(f"no user {name[:64]!r}")
        tx.execute(
            "UPDATE users SET password_hash = ?, must_change = ?, password_changed_at = ?"
            " WHERE id = ?",
            (hashed, int(must_change), time.time(), row[0]),
        )
        tx.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
        tx.execute("DELETE FROM login_failures WHERE account = ?", (name,))
        audit.record(tx, actor, action, name, address)


def set_language(
    db: Database, name: str, language: str, *, actor: Principal | str, address: str
) -> None:
    """A user's language for the pages: '' (the browser's) or one of `LANGUAGES`
    (InvalidAccount otherwise; NoSuchAccount)."""
    if language and language not in LANGUAGES:
        known = ", ".join(sorted(LANGUAGES))
        raise InvalidAccount(f"unknown language {language[:20]!r} (known: {known}, or none)")
    with db.transaction() as tx:
        row = tx.one("SELECT id, language FROM users WHERE name = ?", (name,))
        if row is None:
            raise NoSuchAccount(f"no user {name[:64]!r}")
        if row[1] == language:
            return
        tx.execute("UPDATE users SET language = ? WHERE id = ?", (language, row[0]))
        audit.record(tx, actor, "user.language", name, address, {"language": language})


def rehash(db: Database, user_id: int, password: str) -> None:
    """Store a fresh hash of a password that just verified (stronger parameters)."""
    hashed = passwords.hash_password(password)
    with db.transaction() as tx:
        tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (hashed, user_id))

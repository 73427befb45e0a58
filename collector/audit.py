"""The audit log: who did what, to what, when and from where (issue 15 item 2).

Every operator action is one row of ``audit_log`` (migration 0005): ``at`` (epoch
seconds), ``actor`` (a user's name, ``cli:<login>`` for the command line, or the name
tried at a failed login), ``action``, ``target`` (a bundle id, user name, device id, hold,
...), ``address`` (the client's address as `collector.accounts.web.client_address` sees
it, ``local`` for the command line) and an optional JSON ``detail``.

The table is append-only: nothing in the collector updates or deletes a row, and both
engines refuse to (a trigger). Admins read it on ``/audit`` and export it as JSON lines at
``GET /v1/audit`` (`entries`: since/until/limit, oldest first).

`record(db_or_tx, who, action, target, address, detail=None)` is the one way to write
it: pass an open transaction to make the entry part of the change it records (the change
and its entry commit together), or a `Database` to write it in a transaction of its own.

Actions (``<object>.<verb>``): ``bundle.view`` (the page), ``bundle.manifest``,
``bundle.download``, ``bundle.screenshot``, ``bundle.entry``, ``bundle.diagnostics``,
``bundle.denied`` (a per-bundle request for a bundle out of the caller's reach;
``incident.denied`` is the same for an incident),
``login.ok``, ``login.failed``, ``login.throttled``, ``logout``, ``password.change``,
``user.add``, ``user.disable``, ``user.enable``, ``user.passwd``, ``token.create``,
``token.revoke``, ``token.refused`` (a wrong Bearer token), ``device.add``,
``device.rotate``, ``site.place``, ``hold.place``, ``hold.update``, ``hold.release``,
``audit.export``. Other modules add their own (``incident.*``, ``note.*``).
"""

from __future__ import annotations

import getpass
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.core.timefmt import rfc3339
from collector.access import Principal
from collector.storage.sql import Database, Tx

MAX_LIMIT = 100_000
MAX_DETAIL_CHARS = 4000


@dataclass(frozen=True)
class Entry:
    """One audit row."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    address: str
    detail: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines form (at in RFC 3339 and epoch seconds)."""
        return {
            "id": self.id,
            "at": rfc3339(self.at),
            "at_epoch": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "address": self.address,
            "detail": self.detail,
        }


def cli_actor() -> str:
    """The actor of a command-line change: ``cli:<login name>``."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "?"
    return f"cli:{who}"[:100]


def _detail_text(who: Principal | str, detail: Mapping[str, Any] | None) -> str | None:
    merged: dict[str, Any] = dict(detail or {})
    if isinstance(who, Principal) and who.via != "open":
        merged.setdefault("via", who.via)
    if not merged:
        return None
    text = json.dumps(merged, ensure_ascii=False, default=str, sort_keys=True)
    if len(text) > MAX_DETAIL_CHARS:
        text = json.dumps({"truncated": text[: MAX_DETAIL_CHARS - 100]})
    return text


def record(
    db_or_tx: Database | Tx,
    who: Principal | str,
    action: str,
    target: str,
    address: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one entry (in tx's transaction, or in a new one on db)."""
    actor = who.name if isinstance(who, Principal) else who
    row = (
        time.time(),
        actor[:100],
        action[:64],
        target[:300],
        address[:100],
        _detail_text(who, detail),
    )
    sql = (
        "INSERT INTO audit_log (at, actor, action, target, address, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    if isinstance(db_or_tx, Database):
        with db_or_tx.transaction() as tx:
            tx.execute(sql, row)
    else:
        db_or_tx.execute(sql, row)


def _parse_detail(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


def entries(
    db: Database,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int = 1000,
    newest_first: bool = False,
    actor: str = "",
    action: str = "",
) -> list[Entry]:
    """Entries with since <= at < until (and the actor / action prefix when given)."""
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    for bound, op in ((since, ">="), (until, "<")):
        if bound is not None:
            if not math.isfinite(bound):
                raise ValueError("since/until must be finite")
            where.append(f"at {op} ?")
            params.append(bound)
    if actor:
        where.append("actor = ?")
        params.append(actor)
    if action:
        where.append("(action = ? OR action LIKE ?)")
        params += [action, action.replace("%", "").replace("_", "") + ".%"]
    order = "DESC" if newest_first else "ASC"
    sql = (
        "SELECT id, at, actor, action, target, address, detail FROM audit_log"
        f" WHERE {' AND '.join(where)} ORDER BY at {order}, id {order} LIMIT ?"
    )
    params.append(max(1, min(MAX_LIMIT, limit)))
    with db.transaction(write=False) as tx:
        rows = tx.all(sql, params)
    return [
        Entry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], _parse_detail(r[6])) for r in rows
    ]

"""``POST /v1/checkins`` (docs/CHANNEL.md §2): the check-ins that came together in one
transaction (`receive_many`, the group commit of `collector.channel.writer`).

`parse` checks the body (64 KiB at most, read by the handler): the summary's known
fields by type (unknown scalar fields are kept, for newer agents), at most
`MAX_SUMMARY_KEYS`; the results (`collector.channel.commands.parse_results`).

`receive_many` then does everything else of each check-in, in one transaction for the
group (`receive`: one alone): resolves the device token (an enrolled device's,
`Caller.token_hash`; a tokens-file device is known before), runs the handler's checks
(`Admit`: 403, 429, the body's 400) and `process`'s work, reading the device in one
statement (`Stored`: its state, whether a command may be deliverable, the remote config
for its site joined; the group's enrolled devices in one statement), pipelined on
PostgreSQL: a check-in alone is two round trips (BEGIN and the SELECT, the UPDATE and
COMMIT), where a separate token lookup and a statement per read took about eleven; a
group is two as well.

`process`, in one transaction: stores the device's state (last_seen, summary, boot
id, agent version, config digest, interval, address; a device registered in the tokens
file rather than enrolled gets its registry row on its first check-in), sets when it
will be silent (``silent_deadline``: now + silent_after_checkins × interval + the
long-poll's wait) and, when it was silent, closes its outage (`collector.channel.silent`);
records the results (the outcome of a key rotation among them goes back in the reply,
``key_rotations``); picks the commands to deliver (`commands.deliverable`, counted as
delivered) and the remote config for its site, sent only when its digest differs from
the one the terminal holds.

A check-in may name the collector's state (``base``: the ``state`` token of the reply
to the device's previous check-in, `state_token` of the stored boot id, agent version,
config digest, interval and summary) and send only what changed: a field left out keeps
its stored value, the summary's fields sent replace the stored ones. A ``base`` that is
not the stored state's token changes nothing and is answered ``409 resend`` (the
terminal sends the whole check-in).

A long-poll (``?wait=``, `collector.channel.waiters`) that found nothing to deliver asks
again with `deliver` when woken.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.channel import commands, remote_config, silent
from collector.channel.errors import BadRequest, ChannelError
from collector.channel.remote_config import MAX_INTERVAL_S, MIN_INTERVAL_S
from collector.storage.sql import STATEMENT_PARAMS, Database, Row, Tx

MAX_BODY = 64 * 1024
MAX_WAIT_S = 55
MAX_SUMMARY_KEYS = 32
MAX_FAULTS = 100
MAX_TEXT = 200
_NUMBERS = ("battery_pct", "payment_latency_ms", "queue_depth", "queue_oldest_age_s")
_TEXTS = ("link", "printer")
MAX_BASE = 64


@dataclass(frozen=True)
class CheckIn:
    """A parsed check-in; with `base`, None is "unchanged" (the stored value)."""

    device_id: str
    boot_id: str | None
    agent_version: str | None
    config_digest: str | None
    interval_s: int | None
    summary: dict[str, Any] | None
    results: list[commands.Result] = field(default_factory=list)
    base: str = ""


class Resend(ChannelError):
    """A check-in whose base is not the stored state (409 resend)."""

    def __init__(self) -> None:
        super().__init__(
            409, "resend", "base is not the state this collector holds: send the whole check-in"
        )


def state_token(
    boot_id: str, agent_version: str, config_digest: str, interval_s: int | None, summary: str
) -> str:
    """The token of a device's stored state (`summary` as stored: its JSON text)."""
    text = json.dumps([boot_id, agent_version, config_digest, interval_s, summary])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scalar(key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise BadRequest(f"summary.{key[:40]} is not a finite number")
        return value
    if isinstance(value, str):
        return value[:MAX_TEXT]
    raise BadRequest(f"summary.{key[:40]} must be a number, a string, a boolean or null")


def _summary(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_SUMMARY_KEYS:
        raise BadRequest(f"summary must be an object of at most {MAX_SUMMARY_KEYS} fields")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if len(key) > 64:
            raise BadRequest("summary field names are at most 64 characters")
        if key == "active_faults":
            if value is None:
                out[key] = None
                continue
            if not isinstance(value, list) or len(value) > MAX_FAULTS:
                raise BadRequest(f"summary.active_faults must be a list of at most {MAX_FAULTS}")
            if not all(isinstance(f, str) for f in value):
                raise BadRequest("summary.active_faults must hold fault keys (strings)")
            out[key] = [f[:MAX_TEXT] for f in value]
            continue
        v = _scalar(key, value)
        if (
            key in _NUMBERS
            and v is not None
            and (isinstance(v, bool) or not isinstance(v, int | float))
        ):
            raise BadRequest(f"summary.{key} must be a number or null")
        if key in _TEXTS and v is not None and not isinstance(v, str):
            raise BadRequest(f"summary.{key} must be a string or null")
        if key == "ac_online" and v is not None and not isinstance(v, bool):
            raise BadRequest("summary.ac_online must be a boolean or null")
        out[key] = v
    return out


def _text(body: Mapping[str, Any], name: str, limit: int) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of at most {limit} characters")
    return value


def parse(body: Any, device: str, default_interval_s: int = 300) -> CheckIn:
    """The check-in of device (the token's); BadRequest (one line) when malformed."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    claimed = body.get("device_id", device)
    if claimed != device:
        raise BadRequest("device_id differs from X-Posagent-Device")
    base = body.get("base", "")
    if not isinstance(base, str) or len(base) > MAX_BASE:
        raise BadRequest(f"base must be a string of at most {MAX_BASE} characters")
    kept = bool(base)  # a field left out keeps its stored value

    def text(name: str, limit: int) -> str | None:
        return None if kept and name not in body else _text(body, name, limit)

    interval: int | None = None
    if not (kept and "interval_s" not in body):
        interval = body.get("interval_s", default_interval_s)
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int)
            or not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S
        ):
            raise BadRequest(f"interval_s must be an integer {MIN_INTERVAL_S}-{MAX_INTERVAL_S}")
    return CheckIn(
        device_id=device,
        boot_id=text("boot_id", 64),
        agent_version=text("agent_version", 64),
        config_digest=text("config_digest", 80),
        interval_s=interval,
        summary=None if kept and "summary" not in body else _summary(body.get("summary")),
        results=commands.parse_results(body.get("results")),
        base=base,
    )


@dataclass(frozen=True)
class Reply:
    """What a check-in is answered with."""

    commands: list[commands.Command]
    config: dict[str, Any] | None  # {"digest", "values"} when the terminal's differs
    next_checkin_s: int
    came_back: bool = False
    # the outcome of each rotate-signing-key result this check-in carried
    key_rotations: list[dict[str, str]] = field(default_factory=list)
    state: str = ""  # the stored state's token, the next check-in's base

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ok",
            "commands": [c.wire() for c in self.commands],
            "next_checkin_s": self.next_checkin_s,
        }
        if self.config is not None:
            out["config"] = self.config
        if self.key_rotations:
            out["key_rotations"] = self.key_rotations
        if self.state:
            out["state"] = self.state
        return out


@dataclass(frozen=True)
class Stored:
    """What a check-in reads of its device in one statement: its state (`_STATE`'s
    columns), whether any command may be deliverable, the remote config values for its
    site."""

    state: Row
    pending: bool
    values: dict[str, Any]


_STATE = (
    "d.site, d.tenant, d.boot_id, d.silent_since, d.agent_version, d.config_digest, "
    "d.interval_s, d.summary"
)
# a device's row with its count of commands neither answered nor expired and, joined,
# the remote config rows of the fleet and of its site (one row with NULLs when none)
_READ = (
    f"SELECT d.id, d.token_hash, d.next_token_hash, {_STATE}, "
    "(SELECT COUNT(*) FROM device_commands c WHERE c.device = d.id "
    "AND c.status IN ('queued', 'delivered') AND c.expires_at > ?), rc.site, rc.key, rc.value "
    "FROM devices d LEFT JOIN remote_config rc ON rc.site = '' OR rc.site = d.site WHERE "
)
_BY_TOKEN = _READ + "d.token_hash = ? OR d.next_token_hash = ?"
_BY_ID = _READ + "d.id = ?"


def _stored(rows: list[Row]) -> Stored:
    """Stored of `_READ`'s rows (one device's)."""
    head = rows[0]
    return Stored(head[3:11], bool(head[11]), remote_config.merged([r[12:15] for r in rows]))


@dataclass(frozen=True)
class Caller:
    """Who presents a check-in: a device of the tokens file (`device`, `site`), known
    before the transaction, or the SHA-256 of a device token (`token_hash`) that the
    check-in's transaction resolves to an enrolled device."""

    device: str = ""
    site: str = ""
    token_hash: str = ""


class Unknown(ChannelError):
    """No device has this token (401)."""

    def __init__(self) -> None:
        super().__init__(401, "unauthorized", "missing or unknown device token")


# (device, site) -> the parsed check-in and the long-poll's wait; the refusals due after
# the token's (403 another device's id, 429, 400), as ChannelError
Admit = Callable[[str, str], tuple[CheckIn, int]]


@dataclass(frozen=True)
class Incoming:
    """One check-in over HTTP, its body parsed or refused (`admit` says which): who
    presents it, the handler's checks, the tokens file read again when the token is
    neither in it (as last read) nor the index's (`reread`: (device, site) or None),
    the client's address and the time it came."""

    caller: Caller
    admit: Admit
    reread: Callable[[], tuple[str, str] | None]
    address: str
    now: float


Received = tuple[str, int, Reply]  # (device, the long-poll's wait, the reply)


def receive(db: Database, item: Incoming, *, silent_after: int, keys_cfg: Any = None) -> Received:
    """A check-in over HTTP in its own transaction: its token resolved (`Unknown`; an
    enrolled device's rotated token promoted on first use, as `devices.resolve_token`
    does), then `admit`'s checks, then `process`'s work; the refusal raised. A refusal by
    admit leaves the promotion done."""
    outcome = receive_many(db, [item], silent_after=silent_after, keys_cfg=keys_cfg)[0]
    if isinstance(outcome, ChannelError):
        raise outcome
    return outcome


def receive_many(
    db: Database, items: Sequence[Incoming], *, silent_after: int, keys_cfg: Any = None
) -> list[Received | ChannelError]:
    """Check-ins in one transaction (a group commit, `collector.channel.writer`), each as
    `receive` does it, in their order (a device's second check-in sees its first); each
    one's outcome, a refusal as the ChannelError. A refusal comes before any write of its
    check-in but a promoted token's (`_identify`, `admit`, `_store`'s checks), so the
    others' work commits with it. Anything else (the database's errors) is raised and
    the transaction rolled back: nothing of any of them is stored.

    The devices of the enrolled tokens are read in one statement for the group (one
    round trip on PostgreSQL, not one each); a device's later check-in in the group is
    read again, after its first one's writes."""
    out: list[Received | ChannelError] = []
    with db.transaction(pipeline=True) as opened:
        tx = _Held(opened)
        read = _Read(tx, items)
        for item in items:
            try:
                out.append(_receive(tx, item, read, silent_after=silent_after, keys_cfg=keys_cfg))
            except ChannelError as e:
                out.append(e)
        tx.flush()
    return out


_STATE_COLUMNS = (
    "last_seen",
    "interval_s",
    "summary",
    "agent_version",
    "boot_id",
    "config_digest",
    "address",
    "silent_deadline",
)
_SET_STATE = (
    f"UPDATE devices SET {' = ?, '.join(_STATE_COLUMNS)} = ?, silent_since = NULL WHERE id = ?"
)


class _Held:
    """A `Tx` that holds the group's `_SET_STATE` updates (one per device: a device's
    later check-in in the group reads it again first) and sends them as one statement
    before any other statement, and at `flush`: the same rows written, in their order
    relative to every read, one statement where there were as many as check-ins."""

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.dialect = tx.dialect
        self._rows: list[Sequence[Any]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if sql is _SET_STATE:
            self._rows.append(params)
            return 1
        self.flush()
        return self._tx.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self.flush()
        return self._tx.one(sql, params)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.flush()
        return self._tx.all(sql, params)

    def lock(self, name: str) -> None:
        self.flush()
        self._tx.lock(name)

    def lock_all(self, names: Sequence[str]) -> None:
        self.flush()
        self._tx.lock_all(names)

    def flush(self) -> None:
        """Send the held updates (`STATEMENT_PARAMS` values a statement at most)."""
        rows, self._rows = self._rows, []
        step = max(1, STATEMENT_PARAMS // (len(_STATE_COLUMNS) + 1))
        for k in range(0, len(rows), step):
            part = rows[k : k + step]
            if len(part) == 1:
                self._tx.execute(_SET_STATE, part[0])
                continue
            mark = f"({', '.join('?' * (len(_STATE_COLUMNS) + 1))})"
            sets = ", ".join(f"{c} = v.{c}" for c in _STATE_COLUMNS)
            self._tx.execute(
                f"WITH v ({', '.join(_STATE_COLUMNS)}, id) AS (VALUES "
                f"{', '.join([mark] * len(part))}) UPDATE devices SET {sets}, "
                "silent_since = NULL FROM v WHERE devices.id = v.id",
                [value for row in part for value in row],
            )


class _Read:
    """The `_BY_TOKEN` rows of a group's enrolled tokens, read at once (the count of
    deliverable commands as of the group's first check-in: one more at most, which
    `commands.deliverable` checks again) until a check-in of the device is written."""

    def __init__(self, tx: Tx, items: Sequence[Incoming]) -> None:
        self.tx = tx
        self.written: set[str] = set()
        hashes = list(dict.fromkeys(i.caller.token_hash for i in items if i.caller.token_hash))
        self.rows: dict[str, list[Row]] | None = None
        if len(hashes) > 1:
            self.rows = {h: [] for h in hashes}
            now = min(i.now for i in items)
            step = (STATEMENT_PARAMS - 1) // 2
            for k in range(0, len(hashes), step):
                part = hashes[k : k + step]
                marks = ", ".join("?" * len(part))
                for row in tx.all(
                    f"{_READ}d.token_hash IN ({marks}) OR d.next_token_hash IN ({marks})",
                    (now, *part, *part),
                ):
                    for h in {row[1], row[2]}.intersection(part):
                        self.rows[h].append(row)

    def by_token(self, token_hash: str, now: float) -> list[Row]:
        rows = None if self.rows is None else self.rows.get(token_hash)
        if rows is None or (rows and str(rows[0][0]) in self.written):
            return self.tx.all(_BY_TOKEN, (now, token_hash, token_hash))
        return rows


def _receive(tx: Tx, item: Incoming, read: _Read, *, silent_after: int, keys_cfg: Any) -> Received:
    device, site, stored = _identify(tx, item.caller, item.reread, item.now, read)
    read.written.add(device)  # its token may be promoted; its state is written next
    ci, wait_s = item.admit(device, site)
    reply = _store(
        tx,
        ci,
        stored,
        site=site,
        address=item.address,
        now=item.now,
        silent_after=silent_after,
        wait_s=wait_s,
        keys_cfg=keys_cfg,
    )
    return device, wait_s, reply


def _identify(
    tx: Tx,
    caller: Caller,
    reread: Callable[[], tuple[str, str] | None],
    now: float,
    read: _Read,
) -> tuple[str, str, Stored | None]:
    """(device, site, what is stored of it or None) of the caller; Unknown."""
    if caller.token_hash:
        rows = read.by_token(caller.token_hash, now)
        if rows:
            device, current, nxt = str(rows[0][0]), str(rows[0][1]), rows[0][2]
            if hmac.compare_digest(current, caller.token_hash):
                return device, str(rows[0][3]), _stored(rows)
            if nxt is not None and hmac.compare_digest(str(nxt), caller.token_hash):
                tx.execute(
                    "UPDATE devices SET token_hash = next_token_hash, next_token_hash = NULL "
                    "WHERE id = ? AND next_token_hash = ?",
                    (device, caller.token_hash),
                )
                return device, str(rows[0][3]), _stored(rows)
        again = reread()
        if again is None:
            raise Unknown()
        caller = Caller(device=again[0], site=again[1])
    return caller.device, caller.site, _by_id(tx, caller.device, now)


def _by_id(tx: Tx, device: str, now: float) -> Stored | None:
    rows = tx.all(_BY_ID, (now, device))
    return _stored(rows) if rows else None


def process(
    db: Database,
    ci: CheckIn,
    *,
    site: str,
    address: str,
    now: float,
    silent_after: int,
    wait_s: int = 0,
    keys_cfg: Any = None,
) -> Reply:
    """Store the check-in of a known device and build its reply (see the module
    docstring); Resend."""
    with db.transaction(pipeline=True) as tx:
        return _store(
            tx,
            ci,
            _by_id(tx, ci.device_id, now),
            site=site,
            address=address,
            now=now,
            silent_after=silent_after,
            wait_s=wait_s,
            keys_cfg=keys_cfg,
        )


def _store(
    tx: Tx,
    ci: CheckIn,
    stored: Stored | None,
    *,
    site: str,
    address: str,
    now: float,
    silent_after: int,
    wait_s: int,
    keys_cfg: Any,
) -> Reply:
    """`process` in tx, what is stored of the device read (`Stored`, None: no row yet)."""
    if stored is None:  # registered in the tokens file, checking in for the first time
        if ci.base:
            raise Resend()
        tx.execute(
            "INSERT INTO devices (id, site, tenant, token_hash, pubkeys, enrolled_at, "
            "enroll_token_id) VALUES (?, ?, '', ?, '', ?, 'tokens_file') "
            "ON CONFLICT (id) DO NOTHING",
            (ci.device_id, site, f"file:{ci.device_id}", now),
        )
        stored = Stored(
            (site, "", "", None, "", "", None, None), True, remote_config.values_for(tx, site)
        )
    row = stored.state
    dev_site, tenant, silent_since = str(row[0]), str(row[1]), row[3]
    old_boot, old_version, old_digest = str(row[2] or ""), str(row[4] or ""), str(row[5] or "")
    old_interval = None if row[6] is None else int(row[6])
    if ci.base and ci.base != state_token(
        old_boot, old_version, old_digest, old_interval, row[7] or ""
    ):
        raise Resend()
    summary = ci.summary if ci.summary is not None else {}
    if ci.base:
        kept = json.loads(row[7]) if row[7] else {}
        summary = {**(kept if isinstance(kept, dict) else {}), **summary}
        if len(summary) > MAX_SUMMARY_KEYS:
            raise BadRequest(f"summary must be an object of at most {MAX_SUMMARY_KEYS} fields")
    boot_id = old_boot if ci.boot_id is None else ci.boot_id
    version = old_version if ci.agent_version is None else ci.agent_version
    digest = old_digest if ci.config_digest is None else ci.config_digest
    interval = ci.interval_s if ci.interval_s is not None else (old_interval or 300)
    text = json.dumps(summary, ensure_ascii=False, allow_nan=False)
    deadline = now + silent_after * interval + wait_s
    tx.execute(
        _SET_STATE,
        (now, interval, text, version, boot_id, digest, address[:100], deadline, ci.device_id),
    )
    if silent_since is not None:
        silent.came_back(
            tx,
            ci.device_id,
            site=dev_site,
            tenant=tenant,
            now=now,
            rebooted=bool(boot_id and old_boot and boot_id != old_boot),
        )
    rotations: list[dict[str, str]] = []
    if ci.results:
        rotations = commands.acknowledge(
            tx, ci.device_id, ci.results, address=address, now=now, keys_cfg=keys_cfg
        )
    cmds = commands.deliverable(tx, ci.device_id, now) if stored.pending else []
    commands.mark_delivered(tx, [c.id for c in cmds], now)
    values = stored.values
    config_digest = remote_config.digest(values)
    config = None if config_digest == digest else {"digest": config_digest, "values": values}
    return Reply(
        cmds,
        config,
        interval,
        came_back=silent_since is not None,
        key_rotations=rotations,
        state=state_token(boot_id, version, digest, interval, text),
    )


def deliver(db: Database, device: str, now: float) -> list[commands.Command]:
    """The commands to deliver now (a long-poll woken), counted as delivered."""
    with db.transaction(write=False) as tx:
        if not commands.deliverable(tx, device, now, limit=1):
            return []
    with db.transaction() as tx:
        cmds = commands.deliverable(tx, device, now)
        commands.mark_delivered(tx, [c.id for c in cmds], now)
    return cmds

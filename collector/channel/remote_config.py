"""Remote config (docs/CHANNEL.md §4): fleet-wide and per-site values of the safe keys.

Table ``remote_config`` (site '' is the whole fleet): `posagent collector remote-config
set [--site S] KEY VALUE`, ``unset``, ``show``. A device gets `values_for` its site: the
fleet's values with its site's on top, as dotted keys, and their `digest`; a check-in
carries them only when that digest differs from the one the terminal sent.

The safe keys (`SAFE_KEYS`, plus ``faults.<catalog key>.<field>``) are those a fleet may
set without reaching into a terminal: intervals, capture limits, per-fault overrides and
privacy rules that only add to the terminal's own (sensitive-window patterns and mask
regions, which the terminal appends to its lists; the PIN flag file). A value is checked as the terminal will check it: by the agent's
own config parser (`agent.core.config.parse_config`: types, ranges, choices, regexes).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.bundle.remedies import REMEDIES
from agent.core import layers
from agent.core.config import ConfigError, parse_config
from collector.auth import valid_site
from collector.channel.hooks import _audit
from collector.channel.signing import canonical
from collector.storage.sql import Database, Tx

CHECKIN_INTERVAL = "upload.checkin_interval_s"
MIN_INTERVAL_S, MAX_INTERVAL_S = 30, 86400
CAPTURE_LIMITS = layers.CAPTURE_KEYS
# privacy lists only ever add to the terminal's own (the terminal appends them)
ADDITIVE_KEYS = tuple(sorted(layers.ADDITIVE_KEYS))
# the terminal's own list (agent.core.layers): a key it would refuse is never stored here
SAFE_KEYS = tuple(sorted(layers.REMOTE_KEYS))
FAULT_FIELDS = layers.FAULT_FIELDS
MAX_PATTERNS = 50


class RemoteConfigError(ValueError):
    """A key outside the safe list, or a value the terminal would refuse (one line)."""


def _toml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def check(key: str, value: Any) -> Any:
    """The value, checked for a safe key; RemoteConfigError (one line) otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RemoteConfigError(f"{key}: {value} is not a finite number")
    if key == CHECKIN_INTERVAL:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RemoteConfigError(f"{key}: expected an integer number of seconds")
        if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
            raise RemoteConfigError(f"{key}: must be {MIN_INTERVAL_S}-{MAX_INTERVAL_S} seconds")
        return value
    if key.startswith("faults."):
        fault, _, field = key[len("faults.") :].rpartition(".")
        if fault not in REMEDIES:
            raise RemoteConfigError(f"{key}: unknown fault key {fault!r}")
        if field not in FAULT_FIELDS:
            raise RemoteConfigError(f"{key}: the fields are {', '.join(FAULT_FIELDS)}")
        text = f'[faults."{fault}"]\n{field} = {_toml(value)}\n'
    elif key in SAFE_KEYS:
        section, _, field = key.partition(".")
        if key in ADDITIVE_KEYS and (
            not isinstance(value, list) or not value or len(value) > MAX_PATTERNS
        ):
            raise RemoteConfigError(f"{key}: a list of 1-{MAX_PATTERNS} patterns")
        text = f"[{section}]\n{field} = {_toml(value)}\n"
    else:
        raise RemoteConfigError(
            f"{key[:80]!r} is not a remote config key (the safe keys: "
            f"{', '.join(SAFE_KEYS)}, faults.<key>.<{'|'.join(FAULT_FIELDS)}>)"
        )
    try:
        parse_config(text, "remote config")
    except ConfigError as e:
        raise RemoteConfigError(f"{key}: {e.message}") from None
    return value


def parse_value(text: str) -> Any:
    """A value from the command line: JSON when it reads as JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def digest(values: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical values; '' when there are none (§2)."""
    if not values:
        return ""
    return "sha256:" + hashlib.sha256(canonical(values)).hexdigest()


@dataclass(frozen=True)
class Entry:
    site: str  # '' for the whole fleet
    key: str
    value: Any
    updated_at: float
    updated_by: str


def entries(tx: Tx, site: str | None = None) -> list[Entry]:
    """Every stored value (site None), or those of one scope ('' the fleet), by site and key."""
    where, params = ("", []) if site is None else (" WHERE site = ?", [site])
    rows = tx.all(
        f"SELECT site, key, value, updated_at, updated_by FROM remote_config{where} "
        "ORDER BY site, key",
        params,
    )
    return [Entry(str(s), str(k), json.loads(v), float(t), str(b)) for s, k, v, t, b in rows]


def values_for(tx: Tx, site: str) -> dict[str, Any]:
    """The values a device of site gets: the fleet's, its site's on top."""
    rows = tx.all(
        "SELECT site, key, value FROM remote_config WHERE site = '' OR site = ? ORDER BY site",
        (site,),
    )
    return merged(rows)


def merged(rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """`values_for` of its rows (site, key, value) for one device's site, in any order
    (the check-in reads them joined to the device's row: `collector.channel.checkin`)."""
    rows = [r for r in rows if r[1] is not None]
    fleet = {str(k): json.loads(v) for s, k, v in rows if s == ""}
    out = dict(fleet)
    out.update({str(k): json.loads(v) for s, k, v in rows if s != ""})
    return dict(sorted(out.items()))


def set_value(db: Database, site: str, key: str, value: Any, *, by: str, now: float) -> None:
    """Store a checked value for the fleet (site '') or one site; RemoteConfigError."""
    if site and not valid_site(site):
        raise RemoteConfigError(f"invalid site {site[:60]!r}")
    check(key, value)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO remote_config (site, key, value, updated_at, updated_by) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (site, key) DO UPDATE SET "
            "value = excluded.value, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by",
            (site, key, json.dumps(value, ensure_ascii=False), now, by),
        )
        _audit(tx, by, "remote_config.set", f"{site or '*'}:{key}", "local", {"value": value})


def unset_value(db: Database, site: str, key: str, *, by: str) -> bool:
    """Remove a value; False when it was not set."""
    with db.transaction() as tx:
        n = tx.execute("DELETE FROM remote_config WHERE site = ? AND key = ?", (site, key))
        if n:
            _audit(tx, by, "remote_config.unset", f"{site or '*'}:{key}", "local")
    return n > 0

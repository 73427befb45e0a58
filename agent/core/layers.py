"""The config layers around the local file (docs/CHANNEL.md §3-4): what the collector sent.

The effective config is, from bottom to top:

1. the defaults (the dataclasses of agent/core/config.py);
2. the remote config: fleet and site values the collector delivered in a
   check-in reply, and the recipients (`bundle.encrypt_to`) it gave at
   enrollment — `<state_dir>/remote.json`;
3. the local file (`/etc/posagent/agent.toml`): a key it sets wins over 2;
4. the commands: a `checkin-interval` command (kept in remote.json) and the
   `set-level` overrides not yet expired (`<state_dir>/overrides.json`), an
   operator's explicit, bounded act that wins for its window.

Only the SAFE keys below ever come from 2 or 4; anything else in those files
is ignored (and said). Privacy lists only ever add: a remote
`screen.sensitive_windows` or `screen.mask_regions` is appended to the list of
the layers under it, never replaces it, so the channel cannot switch a
protection off. This module is pure data: the files' formats and the merge
into the parsed TOML; agent/core/config.py builds and validates the result.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.files import atomic_write
from agent.core.timefmt import rfc3339

REMOTE_FILE = "remote.json"
OVERRIDES_FILE = "overrides.json"
MAX_FILE_BYTES = 256 * 1024

# default, remote, local file, commands: the words check-config shows
DEFAULT = "default"
REMOTE = "remote"
LOCAL = "local file"
COMMAND = "command checkin-interval"

FAULT_FIELDS = ("enabled", "raise_after", "clear_after", "severity")
CAPTURE_KEYS = (
    "cooldown_s",
    "bundles_per_hour",
    "burst",
    "critical_reserve",
    "manual_per_hour",
    "manual_burst",
)
ADDITIVE_KEYS = frozenset({"screen.sensitive_windows", "screen.mask_regions"})
# the keys a fleet may set remotely (the collector's `remote-config set` checks the same)
REMOTE_KEYS = frozenset(
    {
        "upload.checkin_interval_s",
        *(f"capture.{k}" for k in CAPTURE_KEYS),
        *ADDITIVE_KEYS,
        "screen.pin_flag_file",  # only where the local file names none: it can only add
    }
)
_FAULT_KEY = re.compile(r"^faults\.([a-z0-9_]+\.[a-z0-9_]+)\.([a-z_]+)$")


def split_key(dotted: str) -> tuple[str, ...] | None:
    """The TOML path of a safe dotted key (a fault key keeps its dot), else None."""
    m = _FAULT_KEY.match(dotted)
    if m:
        return ("faults", m.group(1), m.group(2)) if m.group(2) in FAULT_FIELDS else None
    if dotted in REMOTE_KEYS:
        section, leaf = dotted.split(".", 1)
        return (section, leaf)
    return None


def is_set_level_key(dotted: str) -> bool:
    """Keys a `set-level` command may set: fault overrides and capture limits."""
    return dotted.startswith("faults.") or dotted.removeprefix("capture.") in CAPTURE_KEYS


@dataclass
class RemoteState:
    """`<state_dir>/remote.json`: what the collector gave this terminal."""

    digest: str = ""  # of `values`, as the collector named it ("" = none held)
    values: dict[str, Any] = field(default_factory=dict)  # dotted safe keys
    encrypt_to: list[str] = field(default_factory=list)  # from enrollment
    checkin_interval_s: int | None = None  # from a checkin-interval command
    site: str = ""
    tenant: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "config": {"digest": self.digest, "values": self.values},
            "encrypt_to": self.encrypt_to,
            "checkin_interval_s": self.checkin_interval_s,
            "site": self.site,
            "tenant": self.tenant,
        }

    @classmethod
    def from_json(cls, doc: Any) -> RemoteState:
        """ValueError when the document is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
            raise ValueError("not a remote config document")
        conf = doc.get("config", {})
        values = conf.get("values", {})
        enc = doc.get("encrypt_to", [])
        interval = doc.get("checkin_interval_s")
        if not isinstance(values, dict) or not isinstance(enc, list):
            raise ValueError("config.values must be an object and encrypt_to a list")
        if not all(isinstance(r, str) for r in enc):
            raise ValueError("encrypt_to must hold strings")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int)):
            raise ValueError("checkin_interval_s must be an integer")
        return cls(
            str(conf.get("digest", "")),
            values,
            list(enc),
            interval,
            str(doc.get("site", "")),
            str(doc.get("tenant", "")),
        )


@dataclass(frozen=True)
class Override:
    """One set-level command's values, until an epoch time."""

    command_id: str
    until: float
    values: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.command_id, "until": self.until, "values": self.values}


def _read_json(path: Path) -> Any:
    """The JSON of a small state file; None when absent; ValueError/OSError otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return json.loads(raw)


def read_remote(state_dir: str | Path) -> RemoteState:
    """The remote state; an empty one when absent. ValueError/OSError when unreadable."""
    doc = _read_json(Path(state_dir) / REMOTE_FILE)
    return RemoteState() if doc is None else RemoteState.from_json(doc)


def write_remote(state_dir: str | Path, state: RemoteState) -> None:
    """Replace remote.json atomically (0600)."""
    data = json.dumps(state.to_json(), sort_keys=True).encode()
    atomic_write(Path(state_dir) / REMOTE_FILE, data, mode=0o600)


def read_overrides(state_dir: str | Path) -> list[Override]:
    """Every override in overrides.json (expired ones too); ValueError/OSError when unreadable."""
    doc = _read_json(Path(state_dir) / OVERRIDES_FILE)
    if doc is None:
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("overrides"), list):
        raise ValueError("not an overrides document")
    out = []
    for o in doc["overrides"]:
        if not isinstance(o, dict) or not isinstance(o.get("values"), dict):
            raise ValueError("an override is not an object with values")
        until = o.get("until")
        if isinstance(until, bool) or not isinstance(until, int | float):
            raise ValueError("an override has no numeric until")
        out.append(Override(str(o.get("id", "")), float(until), o["values"]))
    return out


def write_overrides(state_dir: str | Path, overrides: list[Override]) -> None:
    """Replace overrides.json atomically (0600)."""
    data = json.dumps({"v": 1, "overrides": [o.to_json() for o in overrides]}).encode()
    atomic_write(Path(state_dir) / OVERRIDES_FILE, data, mode=0o600)


def active_overrides(overrides: list[Override], now: float) -> list[Override]:
    """The overrides whose window has not ended, oldest command first."""
    return [o for o in overrides if o.until > now]


# --------------------------------------------------------------------------- the merge


def _get(d: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = d
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _put(d: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    node = d
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            return False
        node = nxt
    node[path[-1]] = value
    return True


@dataclass
class Layered:
    """The parsed TOML with the layers applied, and where each layered value came from."""

    data: dict[str, Any]
    origins: dict[str, str]  # dotted key → "remote", "local file + remote", "set-level until …"
    ignored: list[str]  # layer keys not applied (not safe), for a warning


def apply_layers(
    local: dict[str, Any],
    remote: RemoteState,
    overrides: list[Override],
    defaults: dict[str, Any],
    now: float | None = None,
) -> Layered:
    """The local TOML data (the agent's own tables) with the layers merged in.

    `defaults` is the default config as plain data (additive lists start from
    it when the local file does not set them).
    """
    now = time.time() if now is None else now
    data = copy.deepcopy(local)
    origins: dict[str, str] = {}
    ignored: list[str] = []
    under: dict[str, Any] = dict(remote.values)
    if remote.encrypt_to:
        under["bundle.encrypt_to"] = list(remote.encrypt_to)
    for dotted, value in sorted(under.items()):
        path = ("bundle", "encrypt_to") if dotted == "bundle.encrypt_to" else split_key(dotted)
        if path is None:
            ignored.append(dotted)
            continue
        present, mine = _get(local, path)
        if dotted in ADDITIVE_KEYS:
            base = mine if present else _get(defaults, path)[1]
            if not isinstance(value, list) or not isinstance(base, list):
                ignored.append(dotted)
                continue
            merged = list(base) + [v for v in value if v not in base]
            if merged != base and _put(data, path, merged):
                origins[dotted] = (LOCAL if present else DEFAULT) + " + " + REMOTE
            continue
        if present:
            continue  # the local file wins
        if _put(data, path, value):
            origins[dotted] = REMOTE
    over: list[tuple[str, Any, str]] = []
    if remote.checkin_interval_s is not None:
        over.append(("upload.checkin_interval_s", remote.checkin_interval_s, COMMAND))
    for o in active_overrides(overrides, now):
        for dotted, value in sorted(o.values.items()):
            over.append((dotted, value, f"set-level until {rfc3339(o.until)}"))
    for dotted, value, origin in over:
        path = split_key(dotted)
        if path is None or (origin != COMMAND and not is_set_level_key(dotted)):
            ignored.append(dotted)
            continue
        if _put(data, path, value):
            origins[dotted] = origin
    return Layered(data, origins, ignored)


def dotted_leaves(data: Any, prefix: str = "") -> list[str]:
    """Every leaf of plain config data as a dotted key (fault keys keep their dot)."""
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out += dotted_leaves(v, key)
            else:
                out.append(key)
    return out

"""The manifest's schema, `posagent.bundle/1`: every field's type, range and size.

`check_manifest` is the format's own check (the reader of `agent.bundle.format`
calls it on every manifest it parses): the fields of docs/ARCHITECTURE.md §4 have
their types, strings and lists are bounded, nesting is at most `MAX_DEPTH` deep,
and no number is non-finite or beyond 64 bits, so whatever passes can be indexed,
formatted and served as JSON. `plausible_time` is the window of times a working
clock writes ([2000, now + 1 day]); it is not part of the shape: a bundle from a
terminal whose clock was wrong is still evidence, and the collector lists it at
the time it arrived.

The trigger's own fields are checked by `agent.bundle.trigger.Trigger.from_json`.
Errors are `ManifestError` with a one-line reason naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DEPTH = 16
MAX_STRING = 256 * 1024  # any one string; the fields people read have their own, smaller limits
MAX_KEY = 200
MAX_LIST = 1024
MAX_KEYS = 256
MAX_FILES = 512
MAX_INT = 2**63 - 1
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
FUTURE_SLACK_S = 86400.0

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)

# field -> longest string allowed
_DEVICE = {"id": 64, "site": 200, "model": 200, "serial": 200, "platform": 40, "target": 40}
_AGENT = {"version": 100, "config_digest": 200}


class ManifestError(ValueError):
    """A manifest field of the wrong type, size or range; str() names the field."""


def _walk(value: Any) -> None:
    """Bounded depth, sizes and finite numbers everywhere (iterative: no recursion)."""
    stack: list[tuple[Any, str, int]] = [(value, "manifest", 1)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ManifestError(f"{where}: nested deeper than {MAX_DEPTH}")
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            if abs(v) > MAX_INT:
                raise ManifestError(f"{where}: integer out of range")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ManifestError(f"{where}: not a finite number")
        elif isinstance(v, str):
            if len(v) > MAX_STRING:
                raise ManifestError(f"{where}: string longer than {MAX_STRING}")
        elif isinstance(v, list):
            if len(v) > MAX_LIST:
                raise ManifestError(f"{where}: list longer than {MAX_LIST}")
            stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, dict):
            if len(v) > MAX_KEYS:
                raise ManifestError(f"{where}: more than {MAX_KEYS} keys")
            for k, x in v.items():
                if len(k) > MAX_KEY:
                    raise ManifestError(f"{where}: key longer than {MAX_KEY}")
                stack.append((x, f"{where}.{k[:40]}", depth + 1))
        else:  # pragma: no cover - json.loads makes nothing else
            raise ManifestError(f"{where}: unexpected {type(v).__name__}")


def _object(m: Mapping[str, Any], name: str, *, required: bool) -> Mapping[str, Any]:
    v = m.get(name)
    if v is None and not required:
        return {}
    if not isinstance(v, Mapping):
        raise ManifestError(f"{name}: not an object")
    return v


def _strings(section: Mapping[str, Any], name: str, limits: Mapping[str, int]) -> None:
    for k, limit in limits.items():
        v = section.get(k)
        if v is None:
            continue
        if not isinstance(v, str):
            raise ManifestError(f"{name}.{k}: not a string")
        if len(v) > limit:
            raise ManifestError(f"{name}.{k}: longer than {limit} characters")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INT


def parse_created_at(text: Any) -> float:
    """created_at (RFC 3339 with an offset) as epoch seconds; ManifestError when not one."""
    if not isinstance(text, str) or len(text) > 40 or not _RFC3339.match(text):
        raise ManifestError("created_at: not an RFC 3339 time")
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (ValueError, OverflowError):
        raise ManifestError("created_at: not an RFC 3339 time") from None


def check_manifest(m: Mapping[str, Any]) -> None:
    """The manifest's shape (schema and bundle_id are the reader's); ManifestError if off."""
    _walk(m)
    parse_created_at(m.get("created_at"))
    device = _object(m, "device", required=True)
    _strings(device, "device", _DEVICE)
    if not isinstance(device.get("id"), str) or not device["id"]:
        raise ManifestError("device.id: not a string")
    _strings(_object(m, "agent", required=False), "agent", _AGENT)
    _object(m, "trigger", required=True)  # its fields: Trigger.from_json
    files = m.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise ManifestError(f"files: not a list of at most {MAX_FILES}")
    for i, f in enumerate(files):
        if not isinstance(f, Mapping):
            raise ManifestError(f"files[{i}]: not an object")
        name, sha = f.get("name"), f.get("sha256")
        if not isinstance(name, str) or not 0 < len(name) <= 255:
            raise ManifestError(f"files[{i}].name: not a name")
        if not _count(f.get("size")):
            raise ManifestError(f"files[{i}].size: not a size")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise ManifestError(f"files[{i}].sha256: not a SHA-256 hex digest")
        _strings(f, f"files[{i}]", {"media_type": 100})
    red = _object(m, "redaction", required=False)
    _strings(red, "redaction", {"screenshot": 200})
    if not isinstance(red.get("ruleset", ""), str | int) or isinstance(red.get("ruleset"), bool):
        raise ManifestError("redaction.ruleset: not a version")
    counts = red.get("counts", {})
    if not isinstance(counts, Mapping) or not all(_count(n) for n in counts.values()):
        raise ManifestError("redaction.counts: not an object of counts")
    _strings(m, "manifest", {"boot_id": 64})
    up = m.get("uptime_s")
    if up is not None and (isinstance(up, bool) or not isinstance(up, int | float) or up < 0):
        raise ManifestError("uptime_s: not a number of seconds")
    if m.get("clock_synced") not in (None, True, False):
        raise ManifestError("clock_synced: not true, false or null")


def plausible_time(ts: float, now: float) -> bool:
    """True for a time a terminal with a working clock can have written: [2000-01-01, now + 1 day]."""
    return EARLIEST <= ts <= now + FUTURE_SLACK_S

"""The check-in's body: whole, or only what changed since the collector's state (docs/CHANNEL.md §2).

A check-in answered 200 carries `state`, the collector's token for what it now holds
of the terminal (boot id, agent version, remote config digest, interval, summary).
The next check-in names that token as `base` and sends only the fields whose value
differs from the ones of that check-in (a summary field as one of `summary`'s keys),
the results when there are any. Without a token (the first check-in, a collector
that sends none, after a `409 resend`) the check-in is whole.

Pure: `checkin_body(fields, results, acked)` → the body; `Acked` is what the caller keeps
from a 200 (`acked_after`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATE_FIELDS = ("boot_id", "agent_version", "config_digest", "interval_s")
MAX_TOKEN_CHARS = 64


@dataclass(frozen=True)
class Acked:
    """The collector's token and the fields of the check-in it acknowledged."""

    token: str
    fields: dict[str, Any]


def checkin_body(
    fields: dict[str, Any], results: list[dict[str, Any]], acked: Acked | None
) -> dict[str, Any]:
    """The body to send: `fields` holds device_id, sent_at, STATE_FIELDS and summary."""
    if acked is None:
        return {**fields, "results": results}
    body: dict[str, Any] = {"base": acked.token}
    for name in STATE_FIELDS:
        if fields.get(name) != acked.fields.get(name):
            body[name] = fields.get(name)
    now, before = fields.get("summary") or {}, acked.fields.get("summary") or {}
    changed = {k: v for k, v in now.items() if k not in before or before[k] != v}
    changed.update({k: None for k in before if k not in now})
    if changed:
        body["summary"] = changed
    if results:
        body["results"] = results
    return body


def acked_after(reply: dict[str, Any], fields: dict[str, Any]) -> Acked | None:
    """What to keep from a 200 reply to a check-in of these fields (None: send whole)."""
    token = reply.get("state")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        return None
    return Acked(token, fields)

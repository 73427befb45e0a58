"""The channel's small state files under `<state_dir>` (docs/CHANNEL.md §2-3).

- `command_results.json`: the outcome of every command run since the last
  check-in the collector answered 200; sent with each check-in, dropped once
  acknowledged, so a result survives a restart or a failed check-in;
- `commands_seen.json`: the id of every command run (or refused after its
  envelope checked out), kept until its expiry has passed: a replay is refused.

Each is replaced atomically (agent.core.files.atomic_write, 0600). A file that
cannot be read is logged and started afresh: the channel never stops on one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.core.files import atomic_write
from agent.core.timefmt import rfc3339
from agent.upload.protocol import COMMAND_GRACE_S

log = structlog.get_logger(__name__)

RESULTS_FILE = "command_results.json"
SEEN_FILE = "commands_seen.json"
MAX_RESULTS = 200  # a collector that never acknowledges cannot grow the file without bound
DETAIL_MAX = 300
STATUSES = ("done", "refused", "failed")


@dataclass(frozen=True)
class Result:
    """One command's outcome, as sent in a check-in's `results`."""

    command_id: str
    status: str  # done | refused | failed
    detail: str
    at: float
    # rotate-signing-key: the new public key and the old key's signature (docs/CHANNEL.md §3)
    key: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command_id": self.command_id,
            "status": self.status,
            "detail": self.detail,
            "at": rfc3339(self.at),
        }
        if self.key is not None:
            out["key"] = self.key
        return out


def one_line(text: str) -> str:
    """A detail as one bounded line."""
    return " ".join(str(text).split())[:DETAIL_MAX]


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("channel_state_unreadable", path=str(path), error=str(e))
        return None


class Results:
    """Command results awaiting the collector's acknowledgement."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / RESULTS_FILE
        self._items: list[dict[str, Any]] = []
        doc = _load(self.path)
        if isinstance(doc, list):
            self._items = [r for r in doc if isinstance(r, dict) and "command_id" in r]

    def add(self, result: Result) -> None:
        """Record (and persist) one outcome."""
        self._items.append(result.to_json())
        self._items = self._items[-MAX_RESULTS:]
        self._save()

    def pending(self) -> list[dict[str, Any]]:
        """What the next check-in carries."""
        return list(self._items)

    def acknowledge(self, sent: list[dict[str, Any]]) -> None:
        """The collector answered the check-in that carried `sent`: drop those."""
        if not sent:
            return
        self._items = [r for r in self._items if r not in sent]
        self._save()

    def _save(self) -> None:
        atomic_write(self.path, json.dumps(self._items).encode(), mode=0o600)


class Seen:
    """Command ids already taken, with their expiry (epoch seconds)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / SEEN_FILE
        doc = _load(self.path)
        self.ids: dict[str, float] = {}
        if isinstance(doc, dict):
            for k, v in doc.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self.ids[str(k)] = float(v)

    def add(self, command_id: str, expires_at: float, now: float) -> None:
        """Remember an id (durably, before the command runs: at most once), forget expired ones."""
        self.ids = {k: v for k, v in self.ids.items() if v + COMMAND_GRACE_S > now}
        self.ids[command_id] = expires_at
        atomic_write(self.path, json.dumps(self.ids).encode(), mode=0o600)

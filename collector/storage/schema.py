"""The index's schema history: versioned SQL files in ``migrations/``, one history for
every engine.

``NNNN_name.<dialect>.sql`` holds version NNNN for one engine (``sqlite``, ``postgres``); a
version without a file for an engine changes nothing there but is still recorded, so
both engines count the same versions. Applied versions are rows of ``schema_version``;
the current version is the highest. `posagent collector migrate` applies what is
missing; `collector serve` refuses any other version than `LATEST` (`check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from collector.storage.base import SchemaError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str  # "" when this version changes nothing for the engine


def _files() -> dict[int, dict[str, Path]]:
    out: dict[int, dict[str, Path]] = {}
    for p in MIGRATIONS_DIR.iterdir():
        m = _NAME.match(p.name)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(3)] = p
    return out


def migrations(dialect: str) -> list[Migration]:
    """Every version in order, with this dialect's SQL."""
    out = []
    for version, by_dialect in sorted(_files().items()):
        any_path = next(iter(by_dialect.values()))
        name = _NAME.match(any_path.name).group(2)  # type: ignore[union-attr]
        path = by_dialect.get(dialect)
        out.append(Migration(version, name, path.read_text(encoding="utf-8") if path else ""))
    return out


LATEST = max(_files())


def check(version: int, where: str) -> None:
    """Raise SchemaError unless version is LATEST (where names the index in the message)."""
    if version == LATEST:
        return
    if version > LATEST:
        raise SchemaError(
            f"{where}: schema {version} is newer than this collector knows ({LATEST}): "
            "upgrade the collector"
        )
    raise SchemaError(
        f"{where}: schema {version} is older than this collector knows ({LATEST}): "
        "run posagent collector migrate"
    )

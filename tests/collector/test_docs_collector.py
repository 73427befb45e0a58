"""The README's collector configuration reference is the code's: every `[collector]` key
(nested tables as `table.key`) has a row with its default, and every row is a key."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

from collector.config import CollectorConfig
from tests.conftest import ROOT


def _keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every key with its default; a list of tables (`[[collector.webhooks]]`) is a row of
    its own and its element's keys are rows `name[].key`."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        args = typing.get_args(hints[f.name])
        inner = args[0] if len(args) == 1 else None
        if dataclasses.is_dataclass(v):
            out.update(_keys(v, f"{prefix}{f.name}."))
        elif typing.get_origin(hints[f.name]) is list and dataclasses.is_dataclass(inner):
            out[prefix + f.name] = v
            out.update(_keys(inner(), f"{prefix}{f.name}[]."))
        else:
            out[prefix + f.name] = v
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    return repr(value)


def test_readme_collector_reference_matches_the_code() -> None:
    text = (ROOT / "README.md").read_text()
    m = re.search(
        r"<!-- collector-reference:begin -->(.*?)<!-- collector-reference:end -->", text, re.S
    )
    assert m, "README lacks the collector reference block"
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    code = _keys(CollectorConfig())
    assert sorted(rows) == sorted(code), set(rows) ^ set(code)
    for key, default in code.items():
        shown, meaning = rows[key]
        assert shown == _toml(default), (key, shown, _toml(default))
        assert len(meaning) > 10, key

"""The README stays true: quick start first, config reference equal to the sample, every command documented."""

from __future__ import annotations

import re

from agent.commands.main import build_parser
from agent.core.config import SAMPLE_CONFIG
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_quick_start_commands_come_first() -> None:
    """`make demo` and `make test` are the first commands a reader sees."""
    head = README.split("\n## ", 2)
    assert head[1].startswith("Quick start")
    block = head[1]
    assert block.index("make demo") < block.index("make test")


def test_config_reference_is_the_shipped_sample() -> None:
    """The README's config reference block is byte for byte the sample the package ships."""
    m = re.search(
        r"<!-- config-reference:start -->\n```toml\n(.*?)```\n<!-- config-reference:end -->",
        README,
        re.S,
    )
    assert m, "config reference block missing"
    assert m.group(1) == SAMPLE_CONFIG.read_text()


def test_every_command_is_in_the_readme() -> None:
    """Each `posagent` command has a line in the README."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"posagent {name}" in README, name

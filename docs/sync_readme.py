"""Regenerate the README's config reference block from the shipped sample (`make docs`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    readme = ROOT / "README.md"
    sample = (ROOT / "agent" / "data" / "agent.toml").read_text()
    text = readme.read_text()
    new, n = re.subn(
        r"(<!-- config-reference:start -->\n```toml\n).*?(```\n<!-- config-reference:end -->)",
        lambda m: m.group(1) + sample + m.group(2),
        text,
        flags=re.S,
    )
    if n != 1:
        sys.stderr.write("README has no config-reference block\n")
        return 1
    if new != text:
        readme.write_text(new)
        sys.stdout.write("README config reference updated\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

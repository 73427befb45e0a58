"""Every peer comparison (bench/peers_*.py) in one bench module, so `python -m bench` runs them.

Each peers_<name>.main() measures posagent and the peer on the same input in
the same process, alternating; one failing comparison is recorded as an
error and does not hide the others. Run: python -m bench.bench_peers
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

PEERS = ("spool", "escpos", "redact", "screen")


def main() -> dict[str, Any]:
    """Run each peer comparison; return {name: figures or {"error": ...}}."""
    out: dict[str, Any] = {}
    for name in PEERS:
        sys.stdout.write(f"-- peers_{name}\n")
        sys.stdout.flush()
        try:
            out[name] = importlib.import_module(f"bench.peers_{name}").main()
        except Exception as e:  # one broken comparison must not hide the others
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(f"   FAILED: {type(e).__name__}: {e}\n")
    return out


if __name__ == "__main__":
    main()

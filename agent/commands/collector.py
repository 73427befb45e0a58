"""`posagent collector ...`: the fleet's server (the collector package)."""

from __future__ import annotations

import argparse

from collector.cli import run as collector_run


def run(args: argparse.Namespace) -> int:
    """Dispatch `posagent collector ACTION` to the collector."""
    return collector_run(args)

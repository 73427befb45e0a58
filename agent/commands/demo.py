"""`posagent demo`: simulated terminal + collector + agent (the simulator package)."""

from __future__ import annotations

import argparse

from simulator.demo import main as demo_main


def run(args: argparse.Namespace) -> int:
    """Run the demo story; its exit code."""
    return demo_main(args)

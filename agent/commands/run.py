"""`posagent run`: the daemon, in the foreground (systemd Type=notify)."""

from __future__ import annotations

import argparse

from agent.daemon.runner import Daemon


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT; its exit code."""
    return Daemon(args.config).run()

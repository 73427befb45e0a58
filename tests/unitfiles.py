"""Checks of the systemd units in systemd/ with systemd-analyze (the agent's and the
collector's unit tests share them): verify and the offline exposure rating."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def verify_problems(unit: Path, tmp_path: Path) -> list[str]:
    """`systemd-analyze verify` of a copy of the unit whose ExecStart is this venv's
    posagent (verify checks that it exists): the lines that name the unit (asserted to
    exit 0)."""
    exe = Path(sys.executable).parent / "posagent"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/posagent/venv/bin/posagent", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if unit.name in line and "Unknown" not in line.split(":")[0]
    ]


def exposure(unit: Path) -> float:
    """`systemd-analyze security --offline=true`: the unit's overall exposure level."""
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    m = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", r.stdout + r.stderr
    )
    assert m, r.stdout + r.stderr
    return float(m.group(1))

"""systemd integration: unit verification, hardening exposure, the install script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unitfiles import exposure, needs_analyze, verify_problems

UNIT = ROOT / "systemd" / "posagent.service"


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit."""
    problems = verify_problems(UNIT, tmp_path)
    assert not problems, problems


@needs_analyze
def test_unit_exposure_at_most_2_5() -> None:
    """`systemd-analyze security --offline=true` rates the unit 2.5 or better."""
    assert exposure(UNIT) <= 2.5


def test_unit_has_required_settings() -> None:
    """Type=notify, watchdog, restart policy, dedicated user with only dialout/lp/video."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60s",
        "Restart=always",
        "RestartSec=5s",
        "User=posagent",
        "SupplementaryGroups=dialout lp video",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/posagent",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ):
        assert f"\n{line}\n" in text, line


@pytest.mark.slow
def test_install_script_into_a_tree(tmp_path: Path) -> None:
    """install.sh builds a real (non-editable) venv under opt/, config, key, unit, sysusers and tmpfiles."""
    root = tmp_path / "root"
    env = {**os.environ, "POSAGENT_ROOT": str(root), "PYTHON": sys.executable}
    r = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh"), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Next steps" in r.stdout
    venv_py = root / "opt/posagent/venv/bin/python"
    for rel in (
        "etc/posagent/agent.toml",
        "etc/posagent/device.key",
        "etc/systemd/system/posagent.service",
        "usr/lib/sysusers.d/posagent.conf",
        "usr/lib/tmpfiles.d/posagent.conf",
    ):
        assert (root / rel).is_file(), rel
    assert oct((root / "etc/posagent/device.key").stat().st_mode & 0o777) == "0o600"
    # the installed packages are real copies, not links to this checkout
    probe = subprocess.run(
        [
            str(venv_py),
            "-c",
            "import agent, drivers, simulator, agent.core.config as c; "
            "print(agent.__file__); print(c.SAMPLE_CONFIG.is_file())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(ROOT) not in probe.stdout.splitlines()[0]
    assert probe.stdout.splitlines()[1] == "True"
    chk = subprocess.run(
        [
            str(root / "opt/posagent/venv/bin/posagent"),
            "check-config",
            "--config",
            str(root / "etc/posagent/agent.toml"),
        ],
        capture_output=True,
        text=True,
    )
    assert chk.returncode == 0, chk.stderr
    # a second run keeps the edited config
    (root / "etc/posagent/agent.toml").write_text("[agent]\ndevice_id = 'T-KEEP'\n")
    r2 = subprocess.run(
        ["sh", str(ROOT / "systemd" / "install.sh"), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r2.returncode == 0 and "keeping existing" in r2.stdout
    assert "T-KEEP" in (root / "etc/posagent/agent.toml").read_text()

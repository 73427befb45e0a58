"""The collector's hardened systemd unit (issue 14 item 8): `systemd-analyze verify`, the
exposure rating, the settings the README promises, and add-device keeping the tokens
file readable by the unit's user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from collector.auth import TokenStore, add_device
from tests.conftest import ROOT, is_root
from tests.unitfiles import exposure, needs_analyze, verify_problems

UNIT = ROOT / "systemd" / "posagent-collector.service"


@needs_analyze
def test_collector_unit_verifies(tmp_path: Path) -> None:
    problems = verify_problems(UNIT, tmp_path)
    assert not problems, problems


@needs_analyze
def test_collector_unit_exposure_at_most_1_5() -> None:
    assert exposure(UNIT) <= 1.5


def test_collector_unit_settings() -> None:
    text = UNIT.read_text()
    for line in (
        "User=posagent-collector",
        "StateDirectory=posagent-collector",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=78",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ):
        assert f"\n{line}\n" in text, line
    assert (
        "/var/lib/posagent-collector"
        in (ROOT / "systemd" / "posagent-collector.tmpfiles.conf").read_text()
    )
    # the unit's data_dir is the config's default
    from collector.config import CollectorConfig

    assert CollectorConfig().data_dir == "/var/lib/posagent-collector"


@pytest.mark.skipif(not is_root(), reason="chown to another group needs root")
def test_add_device_keeps_the_tokens_file_group_and_mode(tmp_path: Path) -> None:
    """tmpfiles makes it root:posagent-collector 0640; add-device (as root) keeps both."""
    tokens = tmp_path / "collector-tokens"
    tokens.write_text("")
    os.chown(tokens, 0, 4242)
    tokens.chmod(0o640)
    tok = add_device(tokens, "T-0001", site="Store 12")
    st = tokens.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 0o640)
    store = TokenStore(tokens)
    assert store.resolve(tok) == "T-0001" and store.site_for("T-0001") == "Store 12"
    fresh = tmp_path / "new-tokens"
    add_device(fresh, "T-0002")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600

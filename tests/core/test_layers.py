"""agent/core/layers.py through the config loader: remote under the local file, commands
over it, privacy lists that only add, and bad layers that never stop the daemon."""

from __future__ import annotations

import time
from pathlib import Path

from agent.core.config import layered_config, load_config, origins
from agent.core.layers import Override, RemoteState, write_overrides, write_remote
from agent.core.sensitive import DEFAULT_SENSITIVE_WINDOWS


def local(tmp_path: Path, extra: str = "") -> tuple[str, Path]:
    text = f'[agent]\nstate_dir = "{tmp_path}"\n[capture]\nburst = 5\n{extra}'
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return text, path


def test_remote_goes_under_the_local_file_and_says_so(tmp_path: Path) -> None:
    _, path = local(tmp_path)
    write_remote(
        tmp_path,
        RemoteState(
            "sha256:1",
            {
                "capture.burst": 2,
                "capture.cooldown_s": 60.0,
                "faults.printer.paper_end.enabled": False,
            },
        ),
    )
    cfg = load_config(path)
    assert cfg.capture.burst == 5 and cfg.capture.cooldown_s == 60.0
    assert cfg.faults["printer.paper_end"].enabled is False
    where = origins(cfg)
    assert where["capture.burst"] == "local file"
    assert where["capture.cooldown_s"] == "remote"
    assert where["faults.printer.paper_end.enabled"] == "remote"
    assert where["power.interval_s"] == "default"


def test_privacy_lists_only_add(tmp_path: Path) -> None:
    _, path = local(tmp_path)
    write_remote(tmp_path, RemoteState("d", {"screen.sensitive_windows": ["(?i)gift pin"]}))
    cfg = load_config(path)
    assert cfg.screen.sensitive_windows == [*DEFAULT_SENSITIVE_WINDOWS, "(?i)gift pin"]
    write_remote(tmp_path, RemoteState("d", {"screen.sensitive_windows": []}))
    assert load_config(path).screen.sensitive_windows == list(DEFAULT_SENSITIVE_WINDOWS)


def test_set_level_wins_over_the_local_file_until_it_ends(tmp_path: Path) -> None:
    text, path = local(tmp_path)
    now = time.time()
    over = [Override("c-1", now + 60, {"capture.burst": 9})]
    assert layered_config(text, str(path), RemoteState(), over, now=now).capture.burst == 9
    assert layered_config(text, str(path), RemoteState(), over, now=now + 61).capture.burst == 5
    write_overrides(tmp_path, over)
    assert origins(load_config(path))["capture.burst"].startswith("set-level until ")


def test_unsafe_and_bad_layers_never_stop_the_agent(tmp_path: Path) -> None:
    _, path = local(tmp_path)
    write_remote(
        tmp_path, RemoteState("d", {"upload.endpoint": "https://evil", "capture.burst": 0})
    )
    cfg = load_config(path)
    assert cfg.upload.endpoint == "" and cfg.capture.burst == 5
    assert any("upload.endpoint" in w for w in cfg.layer_warnings)
    write_remote(tmp_path, RemoteState("d", {"capture.cooldown_s": -5.0}))
    cfg = load_config(path)
    assert cfg.capture.cooldown_s == 300.0
    assert any("remote config not applied" in w for w in cfg.layer_warnings)
    (tmp_path / "remote.json").write_text("{torn")
    cfg = load_config(path)
    assert any("remote.json not used" in w for w in cfg.layer_warnings)

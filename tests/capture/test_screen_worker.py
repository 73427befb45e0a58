"""The screenshot worker: capture in a child process, Pillow never loaded in the daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.capture.screen_worker import capture_in_child
from agent.core.config import load_config
from tests.conftest import write_config


def test_child_capture_reports_status_and_png(tmp_path: Path) -> None:
    """A command backend's PNG comes back byte-exact through the child, with its status."""
    png = tmp_path / "shot.png"
    from PIL import Image

    Image.new("RGB", (8, 6), (10, 200, 30)).save(png)
    cfg = load_config(
        write_config(tmp_path, f'[screen]\nbackend = "command"\ncommand = ["cat", "{png}"]\n')
    )
    res = capture_in_child(cfg)
    assert res.status == "captured", res.detail
    assert res.png is not None
    img = Image.open(__import__("io").BytesIO(res.png))
    assert img.size == (8, 6) and img.convert("RGB").getpixel((3, 3)) == (10, 200, 30)


def test_child_failure_is_a_skip_reason(tmp_path: Path) -> None:
    """A failing backend becomes skipped:<reason>, never an exception or an image."""
    cfg = load_config(
        write_config(tmp_path, '[screen]\nbackend = "command"\ncommand = ["false"]\n')
    )
    res = capture_in_child(cfg)
    assert res.png is None and res.status.startswith("skipped:")


def test_daemon_modules_do_not_import_pillow() -> None:
    """Importing the daemon and its capture path leaves PIL unloaded (it lives in the child)."""
    code = (
        "import sys, agent.daemon.runner, agent.capture.capturer, agent.capture.screen_worker, agent.capture.privacy;"
        "print('PIL' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"

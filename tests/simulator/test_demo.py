"""`posagent demo` end to end, and the simulated POS screen it relies on.

The demo runs as the user runs it (the console script, real collector and
agent subprocesses) on the Xvfb screen and on the framebuffer fallback; the
screen twin is checked through the agent's own capture drivers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.roots import Roots
from drivers.screen.fbdev import read_framebuffer
from drivers.screen.x11 import window_titles
from simulator.screen import PIN_TITLE, SALE_TITLE, SimScreen, render_pos_screen

ROOT = Path(__file__).resolve().parents[2]
HAS_XVFB = shutil.which("Xvfb") is not None and shutil.which("xwininfo") is not None


def _demo(tmp_path: Path, screen: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("posagent")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.commands.main"]
    return subprocess.run(
        [*argv, "demo", "--workdir", str(tmp_path / "demo"), "--screen", screen],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )


def _check_demo_output(r: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-2000:]
    for n in range(1, 6):
        assert f"[{n}/5]" in out
    assert "queued offline" in out and "queue drained" in out
    ids = re.findall(r"^\d\s+\S+\s+[\d.]+ s\s+([0-9a-f-]{36})", out, re.MULTILINE)
    assert len(ids) == 4, out
    assert "redaction.screenshot = 'skipped:" in out
    assert "all 5 steps passed" in out
    # the read side is closed: the demo made an admin and says how to log in
    assert re.search(r"collector login\s+user operator, password \S{12,}", out), out[-2000:]
    html = re.search(r"posagent bundle html (\S+) --config (\S+)", out)
    assert html is not None
    page = tmp_path / "bundle.html"
    exe = Path(sys.executable).with_name("posagent")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.commands.main"]
    subprocess.run(
        [*argv, "bundle", "html", html[1], "--config", html[2], "-o", str(page)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert "printer.paper_end" in page.read_text()


@pytest.mark.slow
@pytest.mark.timeout(160)
@pytest.mark.skipif(not HAS_XVFB, reason="Xvfb or xwininfo not installed")
def test_demo_on_xvfb_passes_every_step(tmp_path: Path) -> None:
    """The demo on the Xvfb POS screen passes all five steps and prints the table and a working bundle html command."""
    r = _demo(tmp_path, "x11")
    _check_demo_output(r, tmp_path)
    assert "skipped:sensitive window" in r.stdout
    assert "screen x11 :" in r.stdout


@pytest.mark.slow
@pytest.mark.timeout(160)
def test_demo_on_framebuffer_fallback_passes_every_step(tmp_path: Path) -> None:
    """The demo on the framebuffer-file screen (no Xvfb needed) passes all five steps too."""
    r = _demo(tmp_path, "fbdev")
    _check_demo_output(r, tmp_path)
    assert "screen fbdev" in r.stdout
    assert "redaction.screenshot = 'skipped:pin entry in progress'" in r.stdout


def test_framebuffer_screen_reads_back_through_the_fbdev_driver(tmp_path: Path) -> None:
    """The fallback framebuffer decodes with the agent's fbdev driver to the rendered POS screens."""
    scr = SimScreen(tmp_path / "w", tmp_path / "sys", tmp_path / "dev", backend="fbdev").start()
    roots = Roots(tmp_path / "sys", tmp_path / "proc", tmp_path / "dev", tmp_path, tmp_path)
    got = read_framebuffer(roots, "/dev/fb0", "xrgb8888")
    assert got.size == (320, 240)
    want = render_pos_screen("sale")
    assert got.convert("RGB").tobytes() == want.convert("RGB").tobytes()
    scr.set_pin(True)
    assert scr.pin_flag.exists()
    pin = read_framebuffer(roots, "/dev/fb0", "xrgb8888")
    assert pin.convert("RGB").tobytes() == render_pos_screen("pin").convert("RGB").tobytes()
    scr.set_pin(False)
    assert not scr.pin_flag.exists()
    assert scr.config()["pin_flag_file"] == str(scr.pin_flag)


@pytest.mark.skipif(not HAS_XVFB, reason="Xvfb or xwininfo not installed")
def test_xvfb_screen_switches_to_a_pin_titled_window(tmp_path: Path) -> None:
    """On Xvfb the POS window is titled for a sale, then "PIN entry" (what sensitive_windows matches), then back."""
    scr = SimScreen(tmp_path / "w", tmp_path / "sys", tmp_path / "dev", backend="x11").start()
    try:
        assert scr.backend == "x11" and scr.display.startswith(":")

        def viewable() -> tuple[str, ...]:
            return window_titles(scr.display, 5, lambda n: n in (SALE_TITLE, PIN_TITLE)).viewable

        assert viewable() == (SALE_TITLE,)
        scr.set_pin(True)
        assert viewable() == (PIN_TITLE,)
        scr.set_pin(False)
        assert viewable() == (SALE_TITLE,)
        assert scr.config()["sensitive_windows"] == ["PIN"]
    finally:
        scr.stop()
    assert scr.server is None and scr.window is None

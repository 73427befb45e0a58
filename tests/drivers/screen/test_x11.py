"""X11 screenshots on a real Xvfb server, and the xprop/xwininfo parsers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops

from drivers.roots import Roots
from drivers.screen import (
    GrabOptions,
    ScreenUnavailable,
    decode_png,
    grab_image,
    grab_png,
)
from drivers.screen.x11 import (
    grab_x11,
    parse_xprop_title,
    parse_xprop_window_id,
    parse_xwininfo_map_state,
    parse_xwininfo_tree,
    window_titles,
)
from drivers.shell import Shell
from tests.drivers.kit import Xvfb, known_image, tk_window, xvfb

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed")


@pytest.fixture(scope="module")
def xserver() -> Iterator[Xvfb]:
    """One Xvfb 320x240 server for the module."""
    with xvfb(320, 240) as server:
        yield server


@pytest.fixture(scope="module")
def painted(xserver: Xvfb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image.Image]:
    """The known image shown full-screen on the Xvfb display; yields the image."""
    img = known_image(320, 240)
    path = tmp_path_factory.mktemp("x11") / "card.png"
    img.save(path)
    with tk_window(xserver.display, path, "Sales screen"):
        yield img


def _wait_equal(display: str, expected: Image.Image, timeout_s: float = 5.0) -> Image.Image:
    deadline = time.monotonic() + timeout_s
    while True:
        got = grab_x11(display, 3.0)
        box = (0, 0, *expected.size)
        if ImageChops.difference(got.crop(box), expected).getbbox() is None:
            return got
        if time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_x11_capture_is_pixel_exact(xserver: Xvfb, painted: Image.Image) -> None:
    """A capture of the Xvfb screen equals the painted image pixel for pixel."""
    got = _wait_equal(xserver.display, painted)
    assert got.size == (320, 240)
    assert got.mode == "RGB"
    assert ImageChops.difference(got, painted).getbbox() is None


def test_grab_png_through_backend_selection(xserver: Xvfb, painted: Image.Image) -> None:
    """grab_png with backend x11 returns a PNG that decodes to the painted image."""
    _wait_equal(xserver.display, painted)
    png = grab_png(GrabOptions(backend="x11", display=xserver.display), "local", Shell(), Roots())
    img = decode_png(png, "test")
    assert ImageChops.difference(img, painted).getbbox() is None


def test_auto_picks_x11_from_display_env(
    xserver: Xvfb, painted: Image.Image, tmp_path: Path
) -> None:
    """auto on a local target with DISPLAY set uses x11 (no framebuffer under the fake /dev)."""
    _wait_equal(xserver.display, painted)
    roots = Roots(dev=tmp_path)
    backend, img = grab_image(
        GrabOptions(backend="auto"), "local", Shell(), roots, env={"DISPLAY": xserver.display}
    )
    assert backend == "x11"
    assert ImageChops.difference(img, painted).getbbox() is None


def test_grab_png_downscales_to_max_width(xserver: Xvfb, painted: Image.Image) -> None:
    """max_width=160 halves a 320x240 capture to 160x120."""
    png = grab_png(
        GrabOptions(backend="x11", display=xserver.display), "local", Shell(), Roots(), 160
    )
    assert decode_png(png, "test").size == (160, 120)


def test_missing_display_is_a_typed_error() -> None:
    """A display with no server raises ScreenUnavailable naming the display."""
    free = next(n for n in range(900, 999) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    with pytest.raises(ScreenUnavailable, match=rf"x11: cannot open display :{free}"):
        grab_x11(f":{free}", 3.0)


def test_empty_display_is_a_typed_error() -> None:
    """No configured display and no DISPLAY is ScreenUnavailable, not a crash."""
    with pytest.raises(ScreenUnavailable, match="no display configured"):
        grab_image(GrabOptions(backend="x11"), "local", Shell(), Roots(), env={})


def test_window_titles_sees_viewable_window(xserver: Xvfb, painted: Image.Image) -> None:
    """window_titles reports the Tk window's title as viewable and no active window (no WM)."""
    titles = window_titles(xserver.display, 3.0, lambda name: "Sales" in name)
    assert titles.active is None
    assert titles.viewable == ("Sales screen",)
    assert titles.unknown == ()


def test_window_titles_reads_net_active_window(xserver: Xvfb, tmp_path: Path) -> None:
    """With _NET_ACTIVE_WINDOW set on the root, the active window's title is read."""
    path = tmp_path / "one.png"
    known_image(40, 30).save(path)
    with tk_window(xserver.display, path, 'Ümlaut "quoted" title') as wid:
        subprocess.run(
            ["xprop", "-display", xserver.display, "-root", "-f", "_NET_ACTIVE_WINDOW", "32x",
             "-set", "_NET_ACTIVE_WINDOW", hex(wid)],
            check=True,
        )  # fmt: skip
        try:
            titles = window_titles(xserver.display, 3.0, lambda name: False)
        finally:
            subprocess.run(
                ["xprop", "-display", xserver.display, "-root", "-remove", "_NET_ACTIVE_WINDOW"],
                check=True,
            )
    assert titles.active == 'Ümlaut "quoted" title'
    assert titles.viewable == ()


def test_window_titles_on_missing_display_raises() -> None:
    """xprop failing to open the display raises ScreenUnavailable (callers fail closed)."""
    free = next(n for n in range(900, 999) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    with pytest.raises(ScreenUnavailable, match="x11: xprop"):
        window_titles(f":{free}", 3.0)


def test_xprop_parsers_on_known_formats() -> None:
    """Window-manager, CARDINAL and unset forms of xprop output parse as expected."""
    assert parse_xprop_window_id("_NET_ACTIVE_WINDOW(WINDOW): window id # 0x1e00007\n") == 0x1E00007
    assert parse_xprop_window_id("_NET_ACTIVE_WINDOW(WINDOW): window id # 0x0\n") is None
    assert parse_xprop_window_id("_NET_ACTIVE_WINDOW(CARDINAL) = 2097161\n") == 2097161
    assert parse_xprop_window_id("_NET_ACTIVE_WINDOW:  no such atom on any window.\n") is None
    text = '_NET_WM_NAME(UTF8_STRING) = "PIN \\"entry\\""\nWM_NAME(STRING) = "old"\n'
    assert parse_xprop_title(text) == 'PIN "entry"'
    assert parse_xprop_title('WM_NAME(STRING) = "Caf\\351"\n') == "Café"
    assert parse_xprop_title("WM_NAME:  not found.\n") is None


def test_xwininfo_parsers_on_real_output(xserver: Xvfb, painted: Image.Image) -> None:
    """The tree and map-state parsers read real xwininfo output from the Xvfb server."""
    tree = subprocess.run(
        ["xwininfo", "-display", xserver.display, "-root", "-tree"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    named = parse_xwininfo_tree(tree)
    assert [name for _, name in named] == ["Sales screen"]
    info = subprocess.run(
        ["xwininfo", "-display", xserver.display, "-id", hex(named[0][0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert parse_xwininfo_map_state(info) == "IsViewable"


@given(st.text())
def test_x11_parsers_never_crash(text: str) -> None:
    """Every x11 text parser accepts any input without raising."""
    parse_xprop_window_id(text)
    parse_xprop_title(text)
    parse_xwininfo_tree(text)
    parse_xwininfo_map_state(text)


def test_pillow_not_imported_by_package() -> None:
    """Importing drivers.screen does not import Pillow (it costs RSS)."""
    code = "import sys, drivers.screen, agent.capture.privacy; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Test helpers for screen tests: a known test image, and the Xvfb server and Tk
painter window of simulator.screen (one implementation for tests, bench and demo).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

from simulator.screen import TkWindow, Xvfb, xvfb

__all__ = ["Xvfb", "known_image", "tk_window", "xvfb"]


def known_image(width: int, height: int) -> Image.Image:
    """A deterministic test card: coloured quadrants, a grey ramp, a checker block."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    hw, hh = width // 2, height // 2
    d.rectangle((0, 0, hw - 1, hh - 1), fill=(255, 0, 0))
    d.rectangle((hw, 0, width - 1, hh - 1), fill=(0, 255, 0))
    d.rectangle((0, hh, hw - 1, height - 1), fill=(0, 0, 255))
    d.rectangle((hw, hh, width - 1, height - 1), fill=(255, 255, 0))
    for x in range(width):
        v = x * 255 // max(width - 1, 1)
        d.line((x, hh - 8, x, hh + 7), fill=(v, 255 - v, (v * 7) % 256))
    for y in range(16):
        for x in range(16):
            if (x + y) % 2 and 8 + x < width and 8 + y < height:
                img.putpixel((8 + x, 8 + y), (17, 34, 51))
    return img


@contextmanager
def tk_window(display: str, image: Path, title: str) -> Iterator[int]:
    """Show `image` in an undecorated Tk window at 0,0 on `display`; yields its titled window id."""
    window = TkWindow(display, image, title)
    try:
        yield window.window_id(title)
    finally:
        window.stop()

"""Test helpers for screen tests: an Xvfb server, a Tk window painting a known image.

Run as a script (`python screenkit.py paint IMAGE.png TITLE`) it is the Tk
painter: an undecorated window at 0,0 showing the image, printing "ready <id>"
once mapped.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from drivers.screen.x11 import parse_xwininfo_tree

HERE = Path(__file__).resolve()


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


@dataclass
class Xvfb:
    """A running Xvfb server."""

    display: str
    proc: subprocess.Popen[bytes]


@contextmanager
def xvfb(width: int = 320, height: int = 240) -> Iterator[Xvfb]:
    """Start Xvfb on a free display (chosen by the server via -displayfd); stop it after."""
    if shutil.which("Xvfb") is None:
        raise FileNotFoundError("Xvfb not installed")
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(wfd),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(wfd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], 10)
        number = os.read(rfd, 32).decode().strip() if ready else ""
        if not number:
            err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"Xvfb did not start: {err.strip()[:200]}")
        sock = Path(f"/tmp/.X11-unix/X{number}")
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield Xvfb(f":{number}", proc)
    finally:
        os.close(rfd)
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream:
            stream.close()


@contextmanager
def tk_window(display: str, image: Path, title: str) -> Iterator[int]:
    """Show `image` in an undecorated Tk window at 0,0 on `display`; yields its titled window id."""
    env = dict(os.environ, DISPLAY=display)
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "paint", str(image), title],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("ready"):
            err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"Tk painter did not start: {line!r} {err[:300]}")
        tree = subprocess.run(
            ["xwininfo", "-display", display, "-root", "-tree"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ids = [wid for wid, name in parse_xwininfo_tree(tree) if name == title]
        if not ids:
            raise RuntimeError(f"Tk window {title!r} not in the window tree")
        yield ids[0]
    finally:
        _stop(proc)


def _paint(image: str, title: str) -> None:
    import tkinter as tk

    root = tk.Tk()
    root.title(title)
    photo = tk.PhotoImage(file=image)
    root.overrideredirect(True)
    root.geometry(f"{photo.width()}x{photo.height()}+0+0")
    label = tk.Label(root, image=photo, borderwidth=0, highlightthickness=0, padx=0, pady=0)
    label.pack()
    root.update()
    print("ready", flush=True)
    root.mainloop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "paint":
        _paint(sys.argv[2], sys.argv[3])

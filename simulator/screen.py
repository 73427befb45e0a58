"""The simulated terminal's screen: Xvfb + a Tk window, or a framebuffer file.

- `xvfb()` starts Xvfb on a free display (the server picks it: -displayfd).
- `TkWindow` is an undecorated Tk window at 0,0 painting a PNG under a title,
  run as a child process (`python -m simulator.screen paint IMAGE TITLE`); it
  reads "show IMAGE TITLE" lines on stdin to repaint and retitle, and answers
  "ready" each time, so a switch is done when `show()` returns.
- `render_pos_screen(kind)` draws the POS app's screens ("sale", "pin").
- `SimScreen` is the screen of the simulated terminal: on Xvfb the Tk window
  shows the sale screen and switches to a window titled "PIN entry" (what a
  [screen] sensitive_windows regex matches); where Xvfb is missing it writes
  a plain-file framebuffer (<dev>/fb0, XRGB8888) with its fake sysfs geometry
  (<sys>/class/graphics/fb0/) and touches a PIN flag file during PIN entry.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.screen.x11 import parse_xwininfo_tree

SALE_TITLE = "POS - Sale"
PIN_TITLE = "PIN entry"


class ScreenSimError(RuntimeError):
    """The simulated screen could not be started."""


# --------------------------------------------------------------------------- processes


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> None:
    """SIGTERM the process group of a child started with start_new_session, SIGKILL if needed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout_s)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream:
            with contextlib.suppress(OSError):
                stream.close()


@dataclass
class Xvfb:
    """A running Xvfb server."""

    display: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the server."""
        stop_process(self.proc)


def xvfb_available() -> bool:
    """True when the Xvfb executable is on PATH."""
    return shutil.which("Xvfb") is not None


def start_xvfb(width: int = 320, height: int = 240, timeout_s: float = 10.0) -> Xvfb:
    """Start Xvfb on a display it chooses; FileNotFoundError if not installed."""
    if not xvfb_available():
        raise FileNotFoundError("Xvfb not installed")
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(wfd), "-screen", "0", f"{width}x{height}x24"]
        + ["-nolisten", "tcp"],
        pass_fds=(wfd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(wfd)
    try:
        number = _read_display_number(rfd, time.monotonic() + timeout_s)
        if not number:
            err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
            raise ScreenSimError(f"Xvfb did not start: {err.strip()[:200]}")
        _await_x_socket(Path(f"/tmp/.X11-unix/X{number}"), time.monotonic() + timeout_s)
        return Xvfb(f":{number}", proc)
    except BaseException:
        stop_process(proc)
        raise
    finally:
        os.close(rfd)


def _read_display_number(fd: int, deadline: float) -> str:
    """The display number Xvfb writes to -displayfd, read up to its newline.

    Xvfb writes the number and the newline separately and dies ("Cannot write
    display number") if the pipe is closed in between: read both.
    """
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            break
        chunk = os.read(fd, 32)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def _await_x_socket(path: Path, deadline: float) -> None:
    """Wait until the server accepts a connection on its unix socket."""
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
                return
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise ScreenSimError(f"X server socket {path} not accepting: {e}") from e
        time.sleep(0.02)


@contextmanager
def xvfb(width: int = 320, height: int = 240) -> Iterator[Xvfb]:
    """Xvfb for the duration of the block."""
    server = start_xvfb(width, height)
    try:
        yield server
    finally:
        server.stop()


class TkWindow:
    """A Tk painter child process showing a PNG in an undecorated window at 0,0."""

    def __init__(self, display: str, image: Path, title: str, timeout_s: float = 15.0) -> None:
        self.display = display
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.screen", "paint", str(image), title],
            env=dict(os.environ, DISPLAY=display),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        try:
            self._await_ready()
        except BaseException:
            self.stop()
            raise

    def _await_ready(self) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("ready"):
            err = ""
            if not line:  # EOF: the painter exited; say why
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2)
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read().decode()
            raise ScreenSimError(f"Tk painter did not answer: {line!r} {err.strip()[-300:]}")

    def show(self, image: Path, title: str) -> None:
        """Repaint with image under title; returns once the window shows it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"show\t{image}\t{title}\n".encode())
        self.proc.stdin.flush()
        self._await_ready()

    def window_id(self, title: str) -> int:
        """The X window id carrying this title (from xwininfo)."""

        tree = subprocess.run(
            ["xwininfo", "-display", self.display, "-root", "-tree"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        ids = [wid for wid, name in parse_xwininfo_tree(tree) if name == title]
        if not ids:
            raise ScreenSimError(f"Tk window {title!r} not in the window tree")
        return ids[0]

    def stop(self) -> None:
        """Close the window."""
        stop_process(self.proc)


def _paint(image: str, title: str) -> None:
    import tkinter as tk  # lazy: Tk only in the POS window's own process

    root = tk.Tk()
    photo = tk.PhotoImage(file=image)
    label = tk.Label(root, image=photo, borderwidth=0, highlightthickness=0, padx=0, pady=0)
    label.pack()
    root.overrideredirect(True)
    state: dict[str, Any] = {"photo": photo}

    def apply(img_path: str, new_title: str) -> None:
        p = tk.PhotoImage(file=img_path)
        state["photo"] = p
        label.configure(image=p)
        root.title(new_title)
        root.geometry(f"{p.width()}x{p.height()}+0+0")
        root.update()
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    def on_stdin(_fd: int, _mask: int) -> None:
        line = sys.stdin.readline()
        if not line:
            root.destroy()
            return
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3 and parts[0] == "show":
            apply(parts[1], parts[2])

    root.tk.createfilehandler(sys.stdin, tk.READABLE, on_stdin)
    apply(image, title)
    root.mainloop()


# --------------------------------------------------------------------------- rendering


def render_pos_screen(kind: str, width: int = 320, height: int = 240) -> Any:
    """A PIL image of the POS app: "sale" (basket, total) or "pin" (PIN entry keypad)."""
    from PIL import Image, ImageDraw  # lazy: Pillow only when a picture is drawn

    img = Image.new("RGB", (width, height), (236, 240, 245))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, width, 28), fill=(31, 42, 68))
    if kind == "pin":
        d.text((10, 9), "PAYMENT  Till 3", fill=(255, 255, 255))
        d.text((width // 2 - 40, 44), "Enter your PIN", fill=(20, 20, 20))
        d.rectangle((40, 64, width - 40, 92), fill=(255, 255, 255), outline=(120, 120, 120))
        d.text((width // 2 - 20, 72), "* * * *", fill=(20, 20, 20))
        for i, key in enumerate([*"123456789", "C", "0", "OK"]):
            x, y = 60 + (i % 3) * 70, 104 + (i // 3) * 30
            d.rectangle((x, y, x + 60, y + 24), fill=(210, 215, 225), outline=(150, 150, 160))
            d.text((x + 30 - 3 * len(key), y + 6), key, fill=(20, 20, 20))
    else:
        d.text((10, 9), "POS  Till 3  Sale", fill=(255, 255, 255))
        items = (("Coffee", 2.50), ("Croissant", 1.90), ("Water", 1.20), ("Sandwich", 4.80))
        for i, (name, price) in enumerate(items):
            y = 38 + i * 26
            d.rectangle((8, y, width - 8, y + 20), fill=(255, 255, 255), outline=(200, 205, 215))
            d.text((14, y + 5), name, fill=(30, 30, 30))
            d.text((width - 60, y + 5), f"{price:.2f}", fill=(30, 30, 30))
        total = sum(p for _, p in items)
        d.rectangle((8, height - 50, width - 8, height - 10), fill=(0, 120, 60))
        d.text((20, height - 36), f"TOTAL  {total:.2f}   PAY BY CARD", fill=(255, 255, 255))
    return img


def write_png(img: Any, path: Path) -> Path:
    """Save a PIL image as PNG (Tk reads PNG); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- the terminal's screen


class SimScreen:
    """The POS screen: Tk on Xvfb ("x11"), or a framebuffer file ("fbdev")."""

    def __init__(
        self,
        workdir: Path,
        sys_root: Path,
        dev_root: Path,
        *,
        backend: str = "auto",
        width: int = 320,
        height: int = 240,
    ) -> None:
        if backend not in ("auto", "x11", "fbdev"):
            raise ValueError("backend must be auto | x11 | fbdev")
        self.workdir = Path(workdir)
        self.sys_root = Path(sys_root)
        self.dev_root = Path(dev_root)
        self.requested = backend
        self.backend = ""
        self.width, self.height = width, height
        self.pin = False
        self.pin_flag = self.workdir / "pin_entry.flag"
        self.server: Xvfb | None = None
        self.window: TkWindow | None = None
        self.note = ""

    @property
    def display(self) -> str:
        """The X display ("" on the framebuffer fallback)."""
        return self.server.display if self.server is not None else ""

    def _image(self, kind: str) -> Path:
        return write_png(
            render_pos_screen(kind, self.width, self.height), self.workdir / f"screen_{kind}.png"
        )

    def start(self) -> SimScreen:
        """Start Xvfb + Tk, or fall back to the framebuffer file when Xvfb (or Tk) is missing."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.requested in ("auto", "x11"):
            try:
                self.server = start_xvfb(self.width, self.height)
                self.window = TkWindow(self.display, self._image("sale"), SALE_TITLE)
                self.backend = "x11"
                return self
            except (FileNotFoundError, ScreenSimError) as e:
                self.stop()
                if self.requested == "x11":
                    raise
                self.note = f"framebuffer fallback: {e}"
        self.backend = "fbdev"
        self._write_fb("sale")
        return self

    def _write_fb(self, kind: str) -> None:
        img = render_pos_screen(kind, self.width, self.height)
        gdir = self.sys_root / "class" / "graphics" / "fb0"
        gdir.mkdir(parents=True, exist_ok=True)
        (gdir / "virtual_size").write_text(f"{self.width},{self.height}\n")
        (gdir / "bits_per_pixel").write_text("32\n")
        (gdir / "stride").write_text(f"{self.width * 4}\n")
        (gdir / "name").write_text("simfb\n")
        self.dev_root.mkdir(parents=True, exist_ok=True)
        tmp = self.dev_root / ".fb0.tmp"
        tmp.write_bytes(img.convert("RGB").tobytes("raw", "BGRX"))
        os.replace(tmp, self.dev_root / "fb0")

    def set_pin(self, on: bool) -> None:
        """Switch to the PIN entry screen (on) or back to the sale screen."""
        self.pin = on
        kind = "pin" if on else "sale"
        if self.backend == "x11" and self.window is not None:
            self.window.show(self._image(kind), PIN_TITLE if on else SALE_TITLE)
        elif self.backend == "fbdev":
            self._write_fb(kind)
            if on:
                self.pin_flag.touch()
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.pin_flag.unlink()

    def config(self) -> dict[str, Any]:
        """The agent's [screen] section for this screen."""
        if self.backend == "x11":
            return {"backend": "x11", "display": self.display, "sensitive_windows": ["PIN"]}
        return {
            "backend": "fbdev",
            "fb_device": "/dev/fb0",
            "fb_pixel_format": "xrgb8888",
            "pin_flag_file": str(self.pin_flag),
            "pin_flag_max_age_s": 0.0,
        }

    def stop(self) -> None:
        """Close the window and the server."""
        if self.window is not None:
            self.window.stop()
            self.window = None
        if self.server is not None:
            self.server.stop()
            self.server = None


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "paint":
        _paint(sys.argv[2], sys.argv[3])
    else:
        sys.stderr.write("usage: python -m simulator.screen paint IMAGE.png TITLE\n")
        sys.exit(64)

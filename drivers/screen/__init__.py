"""Screenshots of the terminal's screen: x11, fbdev, wayland, android, adb, command.

Every backend has a timeout and fails with a ScreenError subtype whose text is
a short reason ("x11: cannot open display :9 ..."). Pillow is imported only
inside the functions that decode or encode images, never when this package is
imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from drivers.roots import Roots
from drivers.screen._png import PNG_SIGNATURE, decode_png, downscale, encode_png
from drivers.screen.android import grab_android
from drivers.screen.command import grab_command
from drivers.screen.errors import ScreenError, ScreenInvalid, ScreenTimeout, ScreenUnavailable
from drivers.screen.fbdev import grab_fbdev
from drivers.screen.wayland import grab_wayland, socket_exists
from drivers.screen.x11 import grab_x11
from drivers.shell import Shell

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "BACKENDS",
    "PNG_SIGNATURE",
    "GrabOptions",
    "ScreenError",
    "ScreenInvalid",
    "ScreenTimeout",
    "ScreenUnavailable",
    "auto_candidates",
    "decode_png",
    "downscale",
    "encode_png",
    "grab_image",
    "grab_png",
    "x11_display",
]

BACKENDS = ("auto", "x11", "fbdev", "wayland", "android", "adb", "command", "none")


@dataclass(frozen=True)
class GrabOptions:
    """Which screen to capture and how (the driver-side view of [screen])."""

    backend: str = "auto"
    display: str = ""  # x11; empty: $DISPLAY
    fb_device: str = "/dev/fb0"
    fb_pixel_format: str = ""  # DRM name (rgb565, xrgb8888, ...); empty: from the device
    wayland_display: str = ""  # name or absolute socket path; empty: $WAYLAND_DISPLAY
    command: Sequence[str] = field(default_factory=tuple)
    timeout_s: float = 3.0


def x11_display(opts: GrabOptions, env: Mapping[str, str]) -> str:
    """The X display to use: configured, else $DISPLAY, else ""."""
    return opts.display or env.get("DISPLAY", "")


def auto_candidates(
    opts: GrabOptions, target: str, roots: Roots, env: Mapping[str, str]
) -> list[str]:
    """Backends `auto` tries, in order, for a target (local | android | adb)."""
    if target == "android":
        return ["android"]
    if target == "adb":
        return ["adb"]
    out: list[str] = []
    if x11_display(opts, env):
        out.append("x11")
    if socket_exists(opts.wayland_display, env):
        out.append("wayland")
    if roots.dev_path(opts.fb_device).exists():
        out.append("fbdev")
    return out


def _grab_one(
    backend: str, opts: GrabOptions, shell: Shell, roots: Roots, env: Mapping[str, str]
) -> Image.Image:
    t = opts.timeout_s
    if backend == "x11":
        return grab_x11(x11_display(opts, env), t)
    if backend == "fbdev":
        return grab_fbdev(roots, opts.fb_device, opts.fb_pixel_format, t)
    if backend == "wayland":
        return decode_png(grab_wayland(opts.wayland_display, env, t), "wayland")
    if backend == "android":
        android = shell if shell.mode == "android" else Shell(mode="android")
        return decode_png(grab_android(android, t), "android")
    if backend == "adb":
        if shell.mode != "adb":
            raise ScreenUnavailable("adb: target is not adb")
        return decode_png(grab_android(shell, t), "adb")
    if backend == "command":
        return decode_png(grab_command(opts.command, t), "command")
    if backend == "none":
        raise ScreenUnavailable("none: screenshots disabled")
    raise ScreenUnavailable(f"{backend}: unknown backend")


def grab_image(
    opts: GrabOptions,
    target: str,
    shell: Shell,
    roots: Roots,
    env: Mapping[str, str] | None = None,
) -> tuple[str, Image.Image]:
    """(backend used, RGB or L image) of the screen; `auto` takes the first backend that works."""
    environ = os.environ if env is None else env
    if opts.backend != "auto":
        return opts.backend, _grab_one(opts.backend, opts, shell, roots, environ)
    candidates = auto_candidates(opts, target, roots, environ)
    if not candidates:
        raise ScreenUnavailable("auto: no X display, wayland socket or framebuffer found")
    reasons: list[str] = []
    for backend in candidates:
        try:
            return backend, _grab_one(backend, opts, shell, roots, environ)
        except ScreenError as e:
            reasons.append(str(e))
    raise ScreenUnavailable("auto: " + "; ".join(reasons))


def grab_png(
    opts: GrabOptions,
    target: str,
    shell: Shell,
    roots: Roots,
    max_width: int = 0,
    env: Mapping[str, str] | None = None,
) -> bytes:
    """Validated PNG bytes of the screen, downscaled to max_width when wider (0: keep)."""
    _, img = grab_image(opts, target, shell, roots, env)
    return encode_png(downscale(img, max_width))

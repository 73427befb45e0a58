"""Wayland (wlroots compositors such as cage): grim writes a PNG to stdout."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from drivers.screen.errors import ScreenTimeout, ScreenUnavailable
from drivers.shell import ShellTimeout, ShellUnavailable, run_argv


def wayland_socket(wayland_display: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(WAYLAND_DISPLAY, XDG_RUNTIME_DIR) to hand to grim.

    An absolute wayland_display is the socket path itself (its directory
    becomes XDG_RUNTIME_DIR); a bare name ("wayland-1") lives in the
    environment's XDG_RUNTIME_DIR. Empty: the environment's WAYLAND_DISPLAY.
    """
    name = wayland_display or env.get("WAYLAND_DISPLAY", "")
    if not name:
        raise ScreenUnavailable("wayland: no display configured and WAYLAND_DISPLAY unset")
    if os.path.isabs(name):
        return name, str(Path(name).parent)
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if not runtime:
        raise ScreenUnavailable(f"wayland: XDG_RUNTIME_DIR unset for display {name}")
    return name, runtime


def socket_exists(wayland_display: str, env: Mapping[str, str]) -> bool:
    """Whether the compositor's socket is there (used by backend auto-selection)."""
    try:
        name, runtime = wayland_socket(wayland_display, env)
    except ScreenUnavailable:
        return False
    return Path(runtime, name).exists()


def grab_wayland(
    wayland_display: str, env: Mapping[str, str], timeout_s: float, grim: str = "grim"
) -> bytes:
    """PNG bytes of every output of the compositor, from `grim -`."""
    name, runtime = wayland_socket(wayland_display, env)
    argv = ["env", f"WAYLAND_DISPLAY={name}", f"XDG_RUNTIME_DIR={runtime}", grim, "-l", "1", "-"]
    try:
        r = run_argv(argv, timeout_s)
    except ShellTimeout as e:
        raise ScreenTimeout(f"wayland: grim: no image within {timeout_s:g} s") from e
    except ShellUnavailable as e:
        raise ScreenUnavailable(f"wayland: {e}") from e
    if r.returncode == 127:
        raise ScreenUnavailable(f"wayland: {grim}: not found")
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ScreenUnavailable(
            f"wayland: grim: {err[-1][:160] if err else f'exit {r.returncode}'}"
        )
    return r.stdout

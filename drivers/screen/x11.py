"""X11: root-window capture with Pillow (XCB) and window titles with xprop/xwininfo.

Pillow is imported inside the functions that need it (it costs RSS).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.screen._deadline import run_with_deadline
from drivers.screen.errors import ScreenUnavailable
from drivers.shell import ShellError, ShellResult, run_argv

if TYPE_CHECKING:
    from PIL import Image


def grab_x11(display: str, timeout_s: float) -> Image.Image:
    """Capture the whole root window of `display` (e.g. ":0") as an RGB image."""
    if not display:
        raise ScreenUnavailable("x11: no display configured and DISPLAY unset")

    def grab() -> Image.Image:
        from PIL import ImageGrab  # lazy: Pillow stays out of the daemon's process

        try:
            img = ImageGrab.grab(xdisplay=display)
        except OSError as e:
            raise ScreenUnavailable(f"x11: cannot open display {display} ({e})") from e
        return img.convert("RGB") if img.mode != "RGB" else img

    return run_with_deadline("x11", grab, timeout_s)


# --------------------------------------------------------------------------- parsers

_WINDOW_ID = re.compile(r"window id # (0x[0-9A-Fa-f]+|\d+)")
_PROP_VALUE = re.compile(r"^[A-Za-z_]+\([A-Z_0-9]+\) = (0x[0-9A-Fa-f]+|\d+)\s*$", re.M)
_TITLE = re.compile(r'^(_NET_WM_NAME|WM_NAME)\([A-Z_0-9]+\) = "(.*)"\s*$', re.M)
_TREE_LINE = re.compile(r'^\s*(0x[0-9A-Fa-f]+) "(.*)": \(', re.M)
_MAP_STATE = re.compile(r"Map State:\s*(\w+)")
_ESCAPE = re.compile(r"\\([0-7]{1,3}|.)")


def _int(token: str) -> int:
    return int(token, 16) if token.lower().startswith("0x") else int(token)


def parse_xprop_window_id(text: str) -> int | None:
    """The window id of an xprop property such as _NET_ACTIVE_WINDOW; None when unset or 0.

    Accepts the WINDOW form a window manager sets ("window id # 0x1e00007") and
    the plain "= 0x..." / "= 123" forms.
    """
    m = _WINDOW_ID.search(text) or _PROP_VALUE.search(text)
    if not m:
        return None
    value = _int(m.group(1))
    return value or None


def _unescape(value: str) -> str:
    def sub(m: re.Match[str]) -> str:
        tok = m.group(1)
        if tok[0] in "01234567":
            return chr(int(tok, 8))
        return {"n": "\n", "t": "\t"}.get(tok, tok)

    return _ESCAPE.sub(sub, value)


def parse_xprop_title(text: str) -> str | None:
    """A window's title from `xprop -id W _NET_WM_NAME WM_NAME`; _NET_WM_NAME wins."""
    found = {m.group(1): _unescape(m.group(2)) for m in _TITLE.finditer(text)}
    return found.get("_NET_WM_NAME", found.get("WM_NAME"))


def parse_xwininfo_tree(text: str) -> list[tuple[int, str]]:
    """Named windows (id, name) from `xwininfo -root -tree`, in output order."""
    return [(int(m.group(1), 16), m.group(2)) for m in _TREE_LINE.finditer(text)]


def parse_xwininfo_map_state(text: str) -> str | None:
    """The "Map State" of `xwininfo -id W` (IsViewable, IsUnMapped, IsUnviewable)."""
    m = _MAP_STATE.search(text)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class X11Titles:
    """What the X server says about windows: the active one and the viewable named ones."""

    active: str | None  # title of _NET_ACTIVE_WINDOW (None without a window manager)
    viewable: tuple[str, ...]  # names of viewable windows that passed the filter
    unknown: tuple[str, ...]  # names that passed the filter but whose map state is unknown


def _tool(argv: list[str], timeout_s: float) -> ShellResult:
    try:
        r = run_argv(argv, timeout_s)
    except ShellError as e:
        raise ScreenUnavailable(f"x11: {e}") from e
    return r


def _fail(r: ShellResult) -> ScreenUnavailable:
    err = r.stderr.decode("utf-8", "replace").strip().splitlines()
    first = err[0][:160] if err else f"exit {r.returncode}"
    return ScreenUnavailable(f"x11: {r.argv[0]}: {first}")


def window_titles(
    display: str,
    timeout_s: float,
    wanted: Callable[[str], bool] = lambda _name: True,
) -> X11Titles:
    """Read the active window's title and the viewable named windows accepted by `wanted`.

    The map state is asked only for windows `wanted` accepts (one xwininfo call
    each). Any tool failure raises ScreenUnavailable: callers fail closed.
    """
    if not display:
        raise ScreenUnavailable("x11: no display configured and DISPLAY unset")
    r = _tool(["xprop", "-display", display, "-root", "_NET_ACTIVE_WINDOW"], timeout_s)
    if r.returncode != 0:
        raise _fail(r)
    active: str | None = None
    wid = parse_xprop_window_id(r.text)
    if wid is not None:
        r = _tool(
            ["xprop", "-display", display, "-id", hex(wid), "_NET_WM_NAME", "WM_NAME"], timeout_s
        )
        if r.returncode != 0:
            raise _fail(r)
        active = parse_xprop_title(r.text) or ""
    r = _tool(["xwininfo", "-display", display, "-root", "-tree"], timeout_s)
    if r.returncode != 0:
        raise _fail(r)
    viewable: list[str] = []
    unknown: list[str] = []
    for win, name in parse_xwininfo_tree(r.text):
        if not wanted(name):
            continue
        s = _tool(["xwininfo", "-display", display, "-id", hex(win)], timeout_s)
        state = parse_xwininfo_map_state(s.text) if s.returncode == 0 else None
        if state is None:
            unknown.append(name)
        elif state == "IsViewable":
            viewable.append(name)
    return X11Titles(active, tuple(viewable), tuple(unknown))

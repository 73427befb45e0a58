"""Linux framebuffer (/dev/fbN): geometry, pixel format, and decoding to an image.

A real framebuffer node describes itself with the FBIOGET_VSCREENINFO and
FBIOGET_FSCREENINFO ioctls. A plain file (tests, the simulator, a dump) has
no ioctls: its geometry comes from sysfs (<sys>/class/graphics/fbN/
virtual_size, bits_per_pixel, stride, pan, mode) and its channel layout from
the configured pixel format (DRM fourcc names) or a default per depth.
Pixel words are taken as little-endian (every ARM/x86 POS terminal).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.roots import Roots
from drivers.screen._deadline import run_with_deadline
from drivers.screen.errors import ScreenUnavailable

if TYPE_CHECKING:
    from PIL import Image  # lazy: Pillow stays out of the daemon's process

FBIOGET_VSCREENINFO = 0x4600
FBIOGET_FSCREENINFO = 0x4602
FB_MAJOR = 29


@dataclass(frozen=True)
class Bitfield:
    """Where one colour channel sits in a pixel word (struct fb_bitfield)."""

    offset: int
    length: int


@dataclass(frozen=True)
class FbGeometry:
    """What is needed to decode a framebuffer's visible area."""

    xres: int
    yres: int
    xres_virtual: int
    yres_virtual: int
    xoffset: int
    yoffset: int
    bits_per_pixel: int
    stride: int  # bytes per line (line_length), padding included
    red: Bitfield
    green: Bitfield
    blue: Bitfield
    grayscale: bool = False
    name: str = ""


# DRM fourcc names (channel bit positions in a little-endian pixel word) -> (bpp, r, g, b)
PIXEL_FORMATS: dict[str, tuple[int, Bitfield, Bitfield, Bitfield]] = {
    "rgb565": (16, Bitfield(11, 5), Bitfield(5, 6), Bitfield(0, 5)),
    "bgr565": (16, Bitfield(0, 5), Bitfield(5, 6), Bitfield(11, 5)),
    "xrgb1555": (16, Bitfield(10, 5), Bitfield(5, 5), Bitfield(0, 5)),
    "xbgr1555": (16, Bitfield(0, 5), Bitfield(5, 5), Bitfield(10, 5)),
    "rgb888": (24, Bitfield(16, 8), Bitfield(8, 8), Bitfield(0, 8)),
    "bgr888": (24, Bitfield(0, 8), Bitfield(8, 8), Bitfield(16, 8)),
    "xrgb8888": (32, Bitfield(16, 8), Bitfield(8, 8), Bitfield(0, 8)),
    "argb8888": (32, Bitfield(16, 8), Bitfield(8, 8), Bitfield(0, 8)),
    "xbgr8888": (32, Bitfield(0, 8), Bitfield(8, 8), Bitfield(16, 8)),
    "abgr8888": (32, Bitfield(0, 8), Bitfield(8, 8), Bitfield(16, 8)),
    "rgbx8888": (32, Bitfield(24, 8), Bitfield(16, 8), Bitfield(8, 8)),
    "bgrx8888": (32, Bitfield(8, 8), Bitfield(16, 8), Bitfield(24, 8)),
}
DEFAULT_FORMAT_BY_BPP = {16: "rgb565", 24: "rgb888", 32: "xrgb8888"}

# (bpp, red offset, green offset, blue offset, channel lengths) -> Pillow raw mode for "RGB"
_RAWMODES: dict[tuple[int, int, int, int, tuple[int, int, int]], str] = {
    (16, 11, 5, 0, (5, 6, 5)): "BGR;16",
    (16, 0, 5, 11, (5, 6, 5)): "RGB;16",
    (16, 10, 5, 0, (5, 5, 5)): "BGR;15",
    (16, 0, 5, 10, (5, 5, 5)): "RGB;15",
    (15, 10, 5, 0, (5, 5, 5)): "BGR;15",
    (15, 0, 5, 10, (5, 5, 5)): "RGB;15",
    (24, 16, 8, 0, (8, 8, 8)): "BGR",
    (24, 0, 8, 16, (8, 8, 8)): "RGB",
    (32, 16, 8, 0, (8, 8, 8)): "BGRX",
    (32, 0, 8, 16, (8, 8, 8)): "RGBX",
    (32, 24, 16, 8, (8, 8, 8)): "XBGR",
    (32, 8, 16, 24, (8, 8, 8)): "XRGB",
}


def rawmode(geom: FbGeometry) -> tuple[str, str]:
    """Pillow (mode, rawmode) that decodes this pixel layout; ScreenUnavailable if none does."""
    if geom.grayscale or geom.bits_per_pixel == 8:
        if geom.bits_per_pixel != 8:
            raise ScreenUnavailable(f"fbdev: unsupported grayscale depth {geom.bits_per_pixel}")
        return "L", "L"
    lengths = (geom.red.length, geom.green.length, geom.blue.length)
    key = (geom.bits_per_pixel, geom.red.offset, geom.green.offset, geom.blue.offset, lengths)
    raw = _RAWMODES.get(key)
    if raw is None:
        raise ScreenUnavailable(
            f"fbdev: unsupported pixel format {geom.bits_per_pixel} bpp "
            f"r{geom.red.offset}/{geom.red.length} g{geom.green.offset}/{geom.green.length} "
            f"b{geom.blue.offset}/{geom.blue.length}"
        )
    return "RGB", raw


# --------------------------------------------------------------------------- ioctl structs


class _Bitfield(ctypes.Structure):
    _fields_ = [
        ("offset", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
        ("msb_right", ctypes.c_uint32),
    ]


class FbVarScreeninfo(ctypes.Structure):
    """struct fb_var_screeninfo (linux/fb.h)."""

    _fields_ = [
        ("xres", ctypes.c_uint32),
        ("yres", ctypes.c_uint32),
        ("xres_virtual", ctypes.c_uint32),
        ("yres_virtual", ctypes.c_uint32),
        ("xoffset", ctypes.c_uint32),
        ("yoffset", ctypes.c_uint32),
        ("bits_per_pixel", ctypes.c_uint32),
        ("grayscale", ctypes.c_uint32),
        ("red", _Bitfield),
        ("green", _Bitfield),
        ("blue", _Bitfield),
        ("transp", _Bitfield),
        ("nonstd", ctypes.c_uint32),
        ("activate", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("width", ctypes.c_uint32),
        ("accel_flags", ctypes.c_uint32),
        ("pixclock", ctypes.c_uint32),
        ("left_margin", ctypes.c_uint32),
        ("right_margin", ctypes.c_uint32),
        ("upper_margin", ctypes.c_uint32),
        ("lower_margin", ctypes.c_uint32),
        ("hsync_len", ctypes.c_uint32),
        ("vsync_len", ctypes.c_uint32),
        ("sync", ctypes.c_uint32),
        ("vmode", ctypes.c_uint32),
        ("rotate", ctypes.c_uint32),
        ("colorspace", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 4),
    ]


class FbFixScreeninfo(ctypes.Structure):
    """struct fb_fix_screeninfo (linux/fb.h), native alignment."""

    _fields_ = [
        ("id", ctypes.c_char * 16),
        ("smem_start", ctypes.c_ulong),
        ("smem_len", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("type_aux", ctypes.c_uint32),
        ("visual", ctypes.c_uint32),
        ("xpanstep", ctypes.c_uint16),
        ("ypanstep", ctypes.c_uint16),
        ("ywrapstep", ctypes.c_uint16),
        ("line_length", ctypes.c_uint32),
        ("mmio_start", ctypes.c_ulong),
        ("mmio_len", ctypes.c_uint32),
        ("accel", ctypes.c_uint32),
        ("capabilities", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16 * 2),
    ]


def parse_screeninfo(var: bytes, fix: bytes) -> FbGeometry:
    """Geometry from the raw FBIOGET_VSCREENINFO and FBIOGET_FSCREENINFO buffers."""
    if len(var) < ctypes.sizeof(FbVarScreeninfo) or len(fix) < ctypes.sizeof(FbFixScreeninfo):
        raise ScreenUnavailable("fbdev: short screeninfo buffer")
    v = FbVarScreeninfo.from_buffer_copy(var)
    f = FbFixScreeninfo.from_buffer_copy(fix)
    bpp = v.bits_per_pixel
    stride = f.line_length or (v.xres_virtual * bpp + 7) // 8
    return FbGeometry(
        xres=v.xres,
        yres=v.yres,
        xres_virtual=v.xres_virtual,
        yres_virtual=v.yres_virtual,
        xoffset=v.xoffset,
        yoffset=v.yoffset,
        bits_per_pixel=bpp,
        stride=stride,
        red=Bitfield(v.red.offset, v.red.length),
        green=Bitfield(v.green.offset, v.green.length),
        blue=Bitfield(v.blue.offset, v.blue.length),
        grayscale=v.grayscale == 1,
        name=f.id.decode("ascii", "replace").rstrip("\x00"),
    )


# --------------------------------------------------------------------------- sysfs / fbset text

_PAIR = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")
_MODE = re.compile(r"(\d+)x(\d+)")


def parse_pair(text: str) -> tuple[int, int] | None:
    """ "X,Y" as sysfs prints virtual_size and pan; None if malformed."""
    m = _PAIR.match(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_int(text: str) -> int | None:
    """One non-negative decimal integer (bits_per_pixel, stride); None if malformed."""
    t = text.strip()
    return int(t) if t.isdigit() and len(t) < 10 else None


def parse_mode(text: str) -> tuple[int, int] | None:
    """Visible resolution from sysfs `mode` ("U:1366x768p-0"); None if absent or malformed."""
    m = _MODE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_fbset_info(text: str) -> FbGeometry | None:
    """Geometry from `fbset -i` output (geometry, rgba, LineLength, Name); None if incomplete."""
    geo = re.search(r"^\s*geometry\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)
    if not geo:
        return None
    xres, yres, xv, yv, bpp = (int(g) for g in geo.groups())
    if bpp == 0 or bpp > 32:
        return None
    rgba = re.search(r"^\s*rgba\s+(\d+)/(\d+),(\d+)/(\d+),(\d+)/(\d+)", text, re.M)
    if rgba:
        rl, ro, gl, go, bl, bo = (int(g) for g in rgba.groups())
        red, green, blue = Bitfield(ro, rl), Bitfield(go, gl), Bitfield(bo, bl)
    else:
        red, green, blue = Bitfield(0, 8), Bitfield(0, 8), Bitfield(0, 8)
    line = re.search(r"^\s*LineLength\s*:\s*(\d+)\s*$", text, re.M)
    name = re.search(r"^\s*Name\s*:\s*(.*?)\s*$", text, re.M)
    return FbGeometry(
        xres=xres,
        yres=yres,
        xres_virtual=xv,
        yres_virtual=yv,
        xoffset=0,
        yoffset=0,
        bits_per_pixel=bpp,
        stride=int(line.group(1)) if line else (xv * bpp + 7) // 8,
        red=red,
        green=green,
        blue=blue,
        grayscale=bool(re.search(r"^\s*grayscale\s+true", text, re.M)),
        name=name.group(1) if name else "",
    )


def _read_attr(path: Path) -> str | None:
    try:
        return path.read_text("ascii", "replace")
    except OSError:
        return None


def sysfs_geometry(roots: Roots, fb_name: str, pixel_format: str = "") -> FbGeometry:
    """Geometry of a plain-file framebuffer from <sys>/class/graphics/<fb_name>/ and the format."""
    base = roots.sys_path("class", "graphics", fb_name)
    vsize = parse_pair(_read_attr(base / "virtual_size") or "")
    bpp = parse_int(_read_attr(base / "bits_per_pixel") or "")
    if vsize is None or bpp is None:
        raise ScreenUnavailable(f"fbdev: geometry unknown (no ioctl, no {base}/virtual_size)")
    stride = parse_int(_read_attr(base / "stride") or "") or (vsize[0] * bpp + 7) // 8
    pan = parse_pair(_read_attr(base / "pan") or "") or (0, 0)
    visible = parse_mode(_read_attr(base / "mode") or "")
    if visible is None:
        visible = (vsize[0] - pan[0], vsize[1] - pan[1])
    fmt = pixel_format or DEFAULT_FORMAT_BY_BPP.get(bpp, "")
    if bpp == 8 and not pixel_format:
        fmt = "gray8"
    if fmt == "gray8":
        red = green = blue = Bitfield(0, 8)
        gray = True
    elif fmt in PIXEL_FORMATS:
        fbpp, red, green, blue = PIXEL_FORMATS[fmt]
        if fbpp != bpp and not (fbpp == 16 and bpp == 15):
            raise ScreenUnavailable(f"fbdev: pixel format {fmt} does not match {bpp} bpp")
        gray = False
    else:
        raise ScreenUnavailable(f"fbdev: no pixel format known for {bpp} bpp")
    return FbGeometry(
        xres=visible[0],
        yres=visible[1],
        xres_virtual=vsize[0],
        yres_virtual=vsize[1],
        xoffset=pan[0],
        yoffset=pan[1],
        bits_per_pixel=bpp,
        stride=stride,
        red=red,
        green=green,
        blue=blue,
        grayscale=gray,
        name=(_read_attr(base / "name") or "").strip(),
    )


def ioctl_geometry(fd: int) -> FbGeometry:
    """Geometry of a real framebuffer node from its two screeninfo ioctls."""
    var = bytearray(ctypes.sizeof(FbVarScreeninfo))
    fix = bytearray(ctypes.sizeof(FbFixScreeninfo))
    try:
        fcntl.ioctl(fd, FBIOGET_VSCREENINFO, var)
        fcntl.ioctl(fd, FBIOGET_FSCREENINFO, fix)
    except OSError as e:
        raise ScreenUnavailable(f"fbdev: screeninfo ioctl failed: {e.strerror}") from e
    return parse_screeninfo(bytes(var), bytes(fix))


# --------------------------------------------------------------------------- decoding


def check_geometry(geom: FbGeometry) -> None:
    """Refuse geometry that cannot describe a visible area inside the buffer."""
    bytes_pp = (geom.bits_per_pixel + 7) // 8
    if geom.xres <= 0 or geom.yres <= 0 or geom.xres > 16384 or geom.yres > 16384:
        raise ScreenUnavailable(f"fbdev: bad resolution {geom.xres}x{geom.yres}")
    if bytes_pp == 0 or geom.bits_per_pixel > 32:
        raise ScreenUnavailable(f"fbdev: bad depth {geom.bits_per_pixel}")
    if (geom.xoffset + geom.xres) * bytes_pp > geom.stride:
        raise ScreenUnavailable(
            f"fbdev: stride {geom.stride} too small for {geom.xres}+{geom.xoffset} px"
        )


def visible_span(geom: FbGeometry) -> tuple[int, int]:
    """(byte offset, byte count) of the rows holding the visible area."""
    bytes_pp = (geom.bits_per_pixel + 7) // 8
    start = geom.yoffset * geom.stride + geom.xoffset * bytes_pp
    count = (geom.yres - 1) * geom.stride + geom.xres * bytes_pp
    return start, count


def decode_visible(data: bytes, geom: FbGeometry) -> Image.Image:
    """Decode the visible area from bytes that start at visible_span()'s offset."""
    from PIL import Image  # lazy: Pillow stays out of the daemon's process

    check_geometry(geom)
    mode, raw = rawmode(geom)
    _, count = visible_span(geom)
    if len(data) < count:
        raise ScreenUnavailable(f"fbdev: short read ({len(data)} of {count} bytes)")
    return Image.frombytes(mode, (geom.xres, geom.yres), data, "raw", raw, geom.stride, 1)


def decode_framebuffer(buffer: bytes, geom: FbGeometry) -> Image.Image:
    """Decode the visible (panned) area of a whole framebuffer memory dump."""
    check_geometry(geom)
    start, count = visible_span(geom)
    return decode_visible(buffer[start : start + count], geom)


def read_framebuffer(roots: Roots, device: str, pixel_format: str = "") -> Image.Image:
    """Read and decode the visible area of a framebuffer node or plain file."""
    path = roots.dev_path(device)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ScreenUnavailable(f"fbdev: no such device {path}") from None
    except OSError as e:
        raise ScreenUnavailable(f"fbdev: cannot open {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == FB_MAJOR:
            geom = ioctl_geometry(fd)
            if pixel_format:
                geom = _override_format(geom, pixel_format)
        elif stat.S_ISREG(st.st_mode):
            geom = sysfs_geometry(roots, path.name, pixel_format)
        else:
            raise ScreenUnavailable(f"fbdev: {path} is not a framebuffer")
        check_geometry(geom)
        start, count = visible_span(geom)
        data = os.pread(fd, count, start)
    except OSError as e:
        raise ScreenUnavailable(f"fbdev: cannot read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    return decode_visible(data, geom)


def _override_format(geom: FbGeometry, pixel_format: str) -> FbGeometry:
    if pixel_format == "gray8":
        return replace(geom, grayscale=True)
    if pixel_format not in PIXEL_FORMATS:
        raise ScreenUnavailable(f"fbdev: unknown pixel format {pixel_format}")
    _, red, green, blue = PIXEL_FORMATS[pixel_format]
    return replace(geom, red=red, green=green, blue=blue)


def grab_fbdev(roots: Roots, device: str, pixel_format: str, timeout_s: float) -> Image.Image:
    """Framebuffer capture with a deadline."""
    return run_with_deadline(
        "fbdev", lambda: read_framebuffer(roots, device, pixel_format), timeout_s
    )

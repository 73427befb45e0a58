"""Framebuffer capture from plain files with a fake sysfs, and the geometry parsers."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops

from drivers.roots import Roots
from drivers.screen import GrabOptions, ScreenUnavailable, grab_image
from drivers.screen.fbdev import (
    PIXEL_FORMATS,
    Bitfield,
    FbFixScreeninfo,
    FbGeometry,
    FbVarScreeninfo,
    decode_framebuffer,
    parse_fbset_info,
    parse_mode,
    parse_pair,
    parse_screeninfo,
    read_framebuffer,
    sysfs_geometry,
)
from drivers.shell import Shell
from tests.drivers.kit import known_image

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "linux"
FBSET = {
    "rpi": FIXTURES / "fbset_info_raspberrypi_bcm2708_1366x768_16bpp.txt",
    "spi": FIXTURES / "fbset_info_spi_tft_fb_ili9340_320x240.txt",
    "vesa": FIXTURES / "fbset_info_x86_vesa_vga_1600x1200_16bpp.txt",
}


def _expand(value: int, length: int) -> int:
    """How Pillow widens an n-bit channel to 8 bits."""
    return value * 255 // ((1 << length) - 1)


def encode_pixels(img: Image.Image, fmt: str) -> tuple[list[bytes], Image.Image]:
    """Pack each row of img in a DRM pixel format; also return the expected decoded image."""
    bpp, red, green, blue = PIXEL_FORMATS[fmt]
    size = bpp // 8
    n = img.width * img.height
    packed = bytearray(n * size)
    expected_bands = []
    for band, bf in zip(img.split(), (red, green, blue), strict=True):
        raw = band.tobytes()
        widen = bytes(_expand(v >> (8 - bf.length), bf.length) for v in range(256))
        expected_bands.append(Image.frombytes("L", img.size, raw.translate(widen)))
        for k in range(size):
            table = bytes(
                (((v >> (8 - bf.length)) << bf.offset) >> (8 * k)) & 0xFF for v in range(256)
            )
            part = raw.translate(table)
            if any(table):
                old = int.from_bytes(packed[k::size], "little")
                packed[k::size] = (old | int.from_bytes(part, "little")).to_bytes(n, "little")
    if size == 4:
        x_byte = ({0, 8, 16, 24} - {red.offset, green.offset, blue.offset}).pop() // 8
        packed[x_byte::4] = b"\xff" * n
    row = img.width * size
    rows = [bytes(packed[y * row : (y + 1) * row]) for y in range(img.height)]
    expected = Image.merge("RGB", expected_bands)
    return rows, expected


def write_fb(
    tmp: Path,
    img: Image.Image,
    fmt: str,
    *,
    stride_pad: int = 0,
    virtual: tuple[int, int] | None = None,
    pan: tuple[int, int] = (0, 0),
    with_mode: bool = True,
) -> Roots:
    """A plain-file /dev/fb0 holding img at the pan offset, plus its fake sysfs; returns roots."""
    bpp = PIXEL_FORMATS[fmt][0]
    size = bpp // 8
    vw, vh = virtual or img.size
    stride = vw * size + stride_pad
    rows, _ = encode_pixels(img, fmt)
    buf = bytearray(b"\xa5" * (stride * vh))
    for y, row in enumerate(rows):
        start = (pan[1] + y) * stride + pan[0] * size
        buf[start : start + len(row)] = row
    dev = tmp / "dev"
    dev.mkdir(exist_ok=True)
    (dev / "fb0").write_bytes(bytes(buf))
    sysfs = tmp / "sys" / "class" / "graphics" / "fb0"
    sysfs.mkdir(parents=True, exist_ok=True)
    (sysfs / "virtual_size").write_text(f"{vw},{vh}\n")
    (sysfs / "bits_per_pixel").write_text(f"{bpp}\n")
    (sysfs / "stride").write_text(f"{stride}\n")
    (sysfs / "pan").write_text(f"{pan[0]},{pan[1]}\n")
    (sysfs / "name").write_text("test fb\n")
    if with_mode:
        (sysfs / "mode").write_text(f"U:{img.width}x{img.height}p-60\n")
    return Roots(sys=tmp / "sys", dev=dev)


def same(a: Image.Image, b: Image.Image) -> bool:
    """Pixel equality."""
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


@pytest.mark.parametrize(
    "fmt", ["rgb565", "bgr565", "xrgb8888", "argb8888", "xbgr8888", "rgb888", "bgr888"]
)
def test_formats_decode_to_exact_colours(tmp_path: Path, fmt: str) -> None:
    """Each pixel format decodes to the colours it encodes (565: the 5/6-bit values widened)."""
    img = known_image(64, 48)
    roots = write_fb(tmp_path, img, fmt)
    got = read_framebuffer(roots, "/dev/fb0", "" if fmt in ("rgb565", "xrgb8888") else fmt)
    _, expected = encode_pixels(img, fmt)
    assert same(got, expected)
    assert got.getpixel((2, 2)) == (255, 0, 0)
    assert got.getpixel((40, 2)) == (0, 255, 0)
    assert got.getpixel((2, 40)) == (0, 0, 255)


def test_bgr_order_is_not_confused_with_rgb(tmp_path: Path) -> None:
    """A BGR framebuffer read as its default RGB layout swaps red and blue (format matters)."""
    img = known_image(32, 32)
    roots = write_fb(tmp_path, img, "xbgr8888")
    assert read_framebuffer(roots, "/dev/fb0", "xbgr8888").getpixel((2, 2)) == (255, 0, 0)
    assert read_framebuffer(roots, "/dev/fb0", "").getpixel((2, 2)) == (0, 0, 255)


def test_stride_padding_is_skipped(tmp_path: Path) -> None:
    """Line padding beyond the visible width (as on the Raspberry Pi, LineLength 2752) is ignored."""
    img = known_image(50, 20)
    roots = write_fb(tmp_path, img, "rgb565", stride_pad=12)
    assert same(read_framebuffer(roots, "/dev/fb0"), encode_pixels(img, "rgb565")[1])


@pytest.mark.parametrize("fmt", ["rgb565", "xrgb8888"])
def test_pan_offsets_crop_the_visible_area(tmp_path: Path, fmt: str) -> None:
    """A double-height virtual buffer panned to y=40, x=8 yields exactly the visible area."""
    img = known_image(64, 40)
    roots = write_fb(tmp_path, img, fmt, virtual=(80, 80), pan=(8, 40), stride_pad=4)
    got = read_framebuffer(roots, "/dev/fb0")
    assert same(got, encode_pixels(img, fmt)[1])


def test_without_mode_the_visible_area_is_the_rest_after_pan(tmp_path: Path) -> None:
    """With no sysfs mode, a buffer panned to the second half shows that half."""
    img = known_image(40, 30)
    roots = write_fb(tmp_path, img, "xrgb8888", virtual=(40, 60), pan=(0, 30), with_mode=False)
    assert same(read_framebuffer(roots, "/dev/fb0"), img)


@pytest.mark.parametrize("name", sorted(FBSET))
def test_fbset_fixture_geometry_decodes(tmp_path: Path, name: str) -> None:
    """A fake sysfs built from a real fbset -i geometry decodes a frame of that size."""
    geom = parse_fbset_info(FBSET[name].read_text())
    assert geom is not None
    img = known_image(geom.xres, geom.yres)
    row_bytes = geom.xres_virtual * geom.bits_per_pixel // 8
    roots = write_fb(tmp_path, img, "rgb565", stride_pad=geom.stride - row_bytes)
    assert sysfs_geometry(roots, "fb0").stride == geom.stride
    got = read_framebuffer(roots, "/dev/fb0")
    assert same(got, encode_pixels(img, "rgb565")[1])


def test_parse_fbset_on_real_fixtures() -> None:
    """fbset -i outputs give size, depth, RGB565 bitfields and LineLength (padding included)."""
    rpi = parse_fbset_info(FBSET["rpi"].read_text())
    assert rpi is not None
    assert (rpi.xres, rpi.yres, rpi.bits_per_pixel, rpi.stride) == (1366, 768, 16, 2752)
    assert (rpi.red, rpi.green, rpi.blue) == (Bitfield(11, 5), Bitfield(5, 6), Bitfield(0, 5))
    assert rpi.name == "BCM2708 FB"
    spi = parse_fbset_info(FBSET["spi"].read_text())
    assert spi is not None
    assert (spi.xres, spi.yres, spi.stride, spi.name) == (320, 240, 640, "fb_ili9340")
    vesa = parse_fbset_info(FBSET["vesa"].read_text())
    assert vesa is not None
    assert (vesa.xres_virtual, vesa.yres_virtual, vesa.stride) == (1600, 1200, 3200)


def test_sysfs_text_parsers() -> None:
    """virtual_size/pan pairs and the mode string parse; junk gives None."""
    assert parse_pair("1366,768\n") == (1366, 768)
    assert parse_pair("1366x768") is None
    assert parse_mode("U:1366x768p-0\n") == (1366, 768)
    assert parse_mode("") is None


def test_screeninfo_structs_decode() -> None:
    """Packed fb_var/fb_fix_screeninfo buffers give geometry, bitfields, stride and name."""
    var = FbVarScreeninfo()
    var.xres, var.yres, var.xres_virtual, var.yres_virtual = 1280, 800, 1280, 1600
    var.xoffset, var.yoffset, var.bits_per_pixel = 0, 800, 32
    var.red.offset, var.red.length = 16, 8
    var.green.offset, var.green.length = 8, 8
    var.blue.offset, var.blue.length = 0, 8
    fix = FbFixScreeninfo()
    fix.id = b"simplefb"
    fix.line_length = 5120
    assert ctypes.sizeof(FbVarScreeninfo) == 160
    geom = parse_screeninfo(bytes(var), bytes(fix))
    assert (geom.xres, geom.yres, geom.yoffset, geom.stride) == (1280, 800, 800, 5120)
    assert geom.red == Bitfield(16, 8)
    assert geom.name == "simplefb"
    with pytest.raises(ScreenUnavailable):
        parse_screeninfo(b"\x00" * 10, bytes(fix))


def test_missing_node_and_missing_sysfs_are_typed_errors(tmp_path: Path) -> None:
    """No node, or a plain file without sysfs geometry, raise ScreenUnavailable with the path."""
    roots = Roots(sys=tmp_path / "sys", dev=tmp_path / "dev")
    with pytest.raises(ScreenUnavailable, match="fbdev: no such device"):
        read_framebuffer(roots, "/dev/fb0")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "fb0").write_bytes(b"\x00" * 100)
    with pytest.raises(ScreenUnavailable, match="geometry unknown"):
        read_framebuffer(roots, "/dev/fb0")


def test_short_file_is_a_typed_error(tmp_path: Path) -> None:
    """A framebuffer file shorter than its geometry says is reported, not decoded as garbage."""
    roots = write_fb(tmp_path, known_image(20, 10), "rgb565")
    (tmp_path / "dev" / "fb0").write_bytes(b"\x00" * 50)
    with pytest.raises(ScreenUnavailable, match="short read"):
        read_framebuffer(roots, "/dev/fb0")


def test_format_depth_mismatch_is_refused(tmp_path: Path) -> None:
    """Configuring xrgb8888 for a 16 bpp framebuffer is an error, not a garbled image."""
    roots = write_fb(tmp_path, known_image(20, 10), "rgb565")
    with pytest.raises(ScreenUnavailable, match="does not match 16 bpp"):
        read_framebuffer(roots, "/dev/fb0", "xrgb8888")


def test_auto_falls_back_to_fbdev(tmp_path: Path) -> None:
    """auto on a local target without X or Wayland uses the framebuffer node."""
    img = known_image(32, 24)
    roots = write_fb(tmp_path, img, "xrgb8888")
    backend, got = grab_image(GrabOptions(), "local", Shell(), roots, env={})
    assert backend == "fbdev"
    assert same(got, img)


def test_auto_with_nothing_found(tmp_path: Path) -> None:
    """auto with no display, socket or node raises ScreenUnavailable saying so."""
    roots = Roots(sys=tmp_path, dev=tmp_path)
    with pytest.raises(ScreenUnavailable, match="auto: no X display"):
        grab_image(GrabOptions(), "local", Shell(), roots, env={})


@given(st.text())
def test_fbset_and_sysfs_parsers_never_crash(text: str) -> None:
    """The text parsers accept any input without raising."""
    parse_fbset_info(text)
    parse_pair(text)
    parse_mode(text)


_small = st.integers(min_value=0, max_value=40)


@settings(max_examples=150, deadline=None)
@given(
    xres=_small,
    yres=_small,
    xoff=_small,
    yoff=_small,
    bpp=st.sampled_from([0, 8, 15, 16, 24, 32, 33]),
    stride=st.integers(min_value=0, max_value=200),
    offsets=st.tuples(_small, _small, _small),
    data=st.binary(max_size=4000),
)
def test_decode_never_crashes_on_any_geometry(
    xres: int,
    yres: int,
    xoff: int,
    yoff: int,
    bpp: int,
    stride: int,
    offsets: tuple[int, int, int],
    data: bytes,
) -> None:
    """Any geometry decodes or raises ScreenUnavailable, never anything else."""
    geom = FbGeometry(
        xres=xres,
        yres=yres,
        xres_virtual=xres + xoff,
        yres_virtual=yres + yoff,
        xoffset=xoff,
        yoffset=yoff,
        bits_per_pixel=bpp,
        stride=stride,
        red=Bitfield(offsets[0], 8),
        green=Bitfield(offsets[1], 8),
        blue=Bitfield(offsets[2], 8),
    )
    try:
        img = decode_framebuffer(data, geom)
    except ScreenUnavailable:
        return
    assert img.size == (xres, yres)


def test_struct_sizes_match_linux_abi() -> None:
    """fb_fix_screeninfo has the kernel's size on this platform (80 bytes on 64-bit)."""
    expected = 80 if struct.calcsize("P") == 8 else 68
    assert ctypes.sizeof(FbFixScreeninfo) == expected

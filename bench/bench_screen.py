"""Benchmark: screenshot backends and the privacy pipeline.

Measures an X11 capture on Xvfb at 320x240 and 1024x768 (raw grab, and grab +
PNG encode), framebuffer decoding of a 1280x800 frame (XRGB8888 and RGB565,
with the file read), and the full capture_screen pipeline with and without
OCR masking. Median of N runs, one core. Run: python -m bench.bench_screen
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.capture.privacy import capture_screen
from agent.core.config import ScreenConfig
from drivers.roots import Roots
from drivers.screen import GrabOptions, encode_png, grab_png
from drivers.screen.fbdev import read_framebuffer
from drivers.screen.x11 import grab_x11
from drivers.shell import Shell
from tests.drivers.kit import known_image, tk_window, xvfb


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up (imports, first connection)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def _x11(width: int, height: int, tmp: Path, runs: int) -> dict[str, float]:
    img = known_image(width, height)
    path = tmp / f"x11_{width}.png"
    img.save(path)
    with xvfb(width, height) as server, tk_window(server.display, path, "bench"):
        opts = GrabOptions(backend="x11", display=server.display)
        return {
            f"x11_grab_{width}x{height}_ms": _median_ms(
                lambda: grab_x11(server.display, 5.0), runs
            ),
            f"x11_grab_png_{width}x{height}_ms": _median_ms(
                lambda: grab_png(opts, "local", Shell(), Roots()), runs
            ),
        }


def _fbdev(tmp: Path, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    img = known_image(1280, 800)
    for fmt, raw, bpp in (("xrgb8888", "BGRX", 32), ("rgb565", None, 16)):
        root = tmp / fmt
        (root / "dev").mkdir(parents=True)
        sysfs = root / "sys" / "class" / "graphics" / "fb0"
        sysfs.mkdir(parents=True)
        stride = 1280 * bpp // 8
        if raw is not None:
            data = img.tobytes("raw", raw)
        else:
            # RGB565 little-endian from the 8-bit channels
            rgb = img.tobytes()
            data = bytearray(1280 * 800 * 2)
            for i in range(1280 * 800):
                r, g, b = rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]
                word = ((r >> 3) << 11) | ((g >> 2) << 5) | (b >> 3)
                data[2 * i] = word & 0xFF
                data[2 * i + 1] = word >> 8
        (root / "dev" / "fb0").write_bytes(bytes(data))
        (sysfs / "virtual_size").write_text("1280,800\n")
        (sysfs / "bits_per_pixel").write_text(f"{bpp}\n")
        (sysfs / "stride").write_text(f"{stride}\n")
        roots = Roots(sys=root / "sys", dev=root / "dev")
        out[f"fbdev_decode_1280x800_{fmt}_ms"] = _median_ms(
            lambda roots=roots: read_framebuffer(roots, "/dev/fb0"), runs
        )
        out[f"fbdev_decode_png_1280x800_{fmt}_ms"] = _median_ms(
            lambda roots=roots: encode_png(read_framebuffer(roots, "/dev/fb0")), runs
        )
    return out


def _pipeline(tmp: Path, runs: int) -> dict[str, float]:
    from PIL import ImageDraw, ImageFont

    img = known_image(800, 480)
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if font.exists():
        ImageDraw.Draw(img).text(
            (20, 200), "4111 1111 1111 1111", fill=(0, 0, 0), font=ImageFont.truetype(str(font), 36)
        )
    path = tmp / "pipeline.png"
    img.save(path)
    base = ScreenConfig(backend="command", command=["cat", str(path)], mask_regions=["0,0,50,50"])
    out = {
        "pipeline_800x480_mask_regions_ms": _median_ms(
            lambda: capture_screen(base, "local", Shell(), Roots(), env={}), runs
        )
    }
    if shutil.which("tesseract"):
        ocr = ScreenConfig(backend="command", command=["cat", str(path)], ocr_mask=True)
        out["pipeline_800x480_ocr_ms"] = _median_ms(
            lambda: capture_screen(ocr, "local", Shell(), Roots(), env={}), max(3, runs // 4)
        )
    return out


def main() -> dict[str, float]:
    """Run every measurement, print the figures, and return them."""
    runs = 15
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-screen-") as d:
        tmp = Path(d)
        if shutil.which("Xvfb"):
            results.update(_x11(320, 240, tmp, runs))
            results.update(_x11(1024, 768, tmp, runs))
        results.update(_fbdev(tmp, runs))
        results.update(_pipeline(tmp, runs))
    for key, value in results.items():
        print(f"{key:40s} {value:10.2f}")
    return results


if __name__ == "__main__":
    main()

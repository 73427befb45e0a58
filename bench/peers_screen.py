"""Screenshot of an Xvfb screen against mss and ImageMagick's `import -window root`.

One Xvfb display per size (320x240, the simulated terminal's; 1024x768) with
a Tk window painting a known test card. Each side produces PNG bytes of the
whole root window, alternating run by run (median of N):
- ours: drivers.screen.grab_png (x11 backend: XGetImage via ctypes, PNG encode),
  and the raw grab alone (drivers.screen.x11.grab_x11);
- mss: mss.mss(display=...).grab(monitor) + mss.tools.to_png, and the raw grab;
- ImageMagick: `import -window root png:-` as a child process.
Each PNG is decoded and compared with ours pixel by pixel (same picture?).
Run: python -m bench.peers_screen
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUNS = 15


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _same_pixels(a: bytes, b: bytes) -> float:
    """Percentage of identical RGB pixels of two PNGs (0 when sizes differ)."""
    from PIL import Image, ImageChops

    ia = Image.open(io.BytesIO(a)).convert("RGB")
    ib = Image.open(io.BytesIO(b)).convert("RGB")
    if ia.size != ib.size:
        return 0.0
    diff = ImageChops.difference(ia, ib).convert("L")
    hist = diff.histogram()
    return round(hist[0] / (ia.size[0] * ia.size[1]) * 100, 2)


def _size(width: int, height: int, tmp: Path) -> dict[str, Any]:
    import mss
    import mss.tools

    from drivers.roots import Roots
    from drivers.screen import GrabOptions, grab_png
    from drivers.screen.x11 import grab_x11
    from drivers.shell import Shell
    from tests.drivers.kit import known_image, tk_window, xvfb

    path = tmp / f"card_{width}.png"
    known_image(width, height).save(path)
    out: dict[str, Any] = {"runs": RUNS}
    with xvfb(width, height) as server, tk_window(server.display, path, "bench"):
        display = server.display
        opts = GrabOptions(backend="x11", display=display)
        sct = getattr(mss, "MSS", mss.mss)(display=display)
        monitor = sct.monitors[0]
        magick = shutil.which("import")

        def ours_png() -> bytes:
            return grab_png(opts, "local", Shell(), Roots())

        def ours_raw() -> object:
            return grab_x11(display, 5.0)

        def mss_raw() -> object:
            return sct.grab(monitor)

        def mss_png() -> bytes:
            shot = sct.grab(monitor)
            png = mss.tools.to_png(shot.rgb, shot.size)
            assert png is not None
            return png

        def magick_png() -> bytes:
            assert magick is not None
            r = subprocess.run(
                [magick, "-display", display, "-window", "root", "png:-"],
                capture_output=True,
                timeout=30,
                check=True,
            )
            return r.stdout

        sides: dict[str, Callable[[], Any]] = {
            "posagent_png": ours_png,
            "posagent_raw": ours_raw,
            "mss_png": mss_png,
            "mss_raw": mss_raw,
        }
        if magick:
            sides["imagemagick_import_png"] = magick_png
        times: dict[str, list[float]] = {k: [] for k in sides}
        last: dict[str, Any] = {}
        for fn in sides.values():
            fn()  # warm-up: first connection, imports
        for _ in range(RUNS):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                last[name] = fn()
                times[name].append(time.perf_counter() - t0)
        sct.close()
        for name in sides:
            out[f"{name}_ms"] = _ms(times[name])
        for name in ("posagent_png", "mss_png", "imagemagick_import_png"):
            if name in last:
                out[f"{name}_kb"] = round(len(last[name]) / 1024, 1)
        out["mss_same_pixels_pct"] = _same_pixels(last["posagent_png"], last["mss_png"])
        if magick:
            out["imagemagick_same_pixels_pct"] = _same_pixels(
                last["posagent_png"], last["imagemagick_import_png"]
            )
        else:
            out["imagemagick"] = "import (ImageMagick) not installed"
    return out


def main() -> dict[str, Any]:
    """Both sizes, every side; print and return the figures."""
    if not shutil.which("Xvfb"):
        print("   Xvfb not installed: no figures")
        return {"skipped": "Xvfb not installed"}
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peers-screen") as d:
        for w, h in ((320, 240), (1024, 768)):
            figures[f"{w}x{h}"] = _size(w, h, Path(d))
            print(f"   {w}x{h}: {figures[f'{w}x{h}']}")
    return figures


if __name__ == "__main__":
    main()

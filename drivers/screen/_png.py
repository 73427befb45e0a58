"""PNG checks and re-encoding shared by every backend (Pillow imported lazily)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from drivers.screen.errors import ScreenInvalid

if TYPE_CHECKING:
    from PIL import Image  # lazy: Pillow stays out of the daemon's process

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 64_000_000


def decode_png(data: bytes, label: str) -> Image.Image:
    """Check the signature and decode fully; ScreenInvalid("<label>: ...") otherwise."""
    # lazy: Pillow stays out of the daemon's process
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ScreenInvalid(f"{label}: empty output")
    if not data.startswith(PNG_SIGNATURE):
        raise ScreenInvalid(f"{label}: output is not a PNG ({len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            w, h = img.size
            if w <= 0 or h <= 0 or w * h > MAX_PIXELS:
                raise ScreenInvalid(f"{label}: PNG size {w}x{h} out of range")
            img.load()
            out = img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()
    except (
        OSError,
        ValueError,
        SyntaxError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
    ) as e:
        raise ScreenInvalid(f"{label}: PNG does not decode ({e})") from e
    return out


def encode_png(img: Image.Image, compress_level: int = 6) -> bytes:
    """Encode an image as PNG without metadata."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def downscale(img: Image.Image, max_width: int) -> Image.Image:
    """Shrink to max_width keeping the aspect ratio; 0 or a narrower image: unchanged."""
    from PIL import Image  # lazy: Pillow stays out of the daemon's process

    if max_width <= 0 or img.width <= max_width:
        return img
    height = max(1, round(img.height * max_width / img.width))
    return img.resize((max_width, height), Image.Resampling.LANCZOS)

"""A real kernel framebuffer: vfb in a qemu guest, captured by the agent's fbdev backend under its unit.

The guest loads `vfb`, the test draws a known picture straight into /dev/fb0
(bytes packed from the channel layout the kernel reports, rows beyond the
visible area filled with a colour the picture does not use), then drops a
file into the running daemon's trigger dir. The daemon (the installed
posagent.service: User=posagent, DevicePolicy=closed, DeviceAllow=/dev/fb0 r)
seals a manual-report bundle; its screenshot.png must equal the picture pixel
for pixel. Run by `make field` (about 1-2 min with a cached image; the first
build takes several minutes).
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.field.qemu import VFB_ARGS, Guest, build_image, overlay, qemu_missing

pytestmark = [
    pytest.mark.timeout(1200),  # TCG boots: minutes, more on a busy machine; the image build too
    pytest.mark.skipif(bool(qemu_missing()), reason=qemu_missing() or "ok"),
    pytest.mark.skipif(
        not os.environ.get("POSAGENT_FIELD"), reason="slow qemu guest test: run `make field`"
    ),
]

# In the guest: the framebuffer's geometry from its own ioctls (not the agent's code).
GEOMETRY_PY = r"""
import fcntl, json, struct
with open("/dev/fb0", "rb") as f:
    var = fcntl.ioctl(f, 0x4600, bytes(160))
    fix = fcntl.ioctl(f, 0x4602, bytes(80))
v = struct.unpack_from("8I12I", var)
line_length = struct.unpack_from("I", fix, 16 + 8 + 4 * 4 + 2 * 3 + 2)[0]
smem_len = struct.unpack_from("I", fix, 16 + 8)[0]
print(json.dumps({"xres": v[0], "yres": v[1], "xres_virtual": v[2], "yres_virtual": v[3],
  "xoffset": v[4], "yoffset": v[5], "bpp": v[6], "red": v[8:10], "green": v[11:13],
  "blue": v[14:16], "line_length": line_length, "smem_len": smem_len}))
"""

# In the guest: exit 0 once spool/new/ holds a manual-report bundle.
FIND_MANUAL_PY = (
    "import glob, json, sys, zipfile\n"
    'for f in glob.glob("/var/lib/posagent/spool/new/*"):\n'
    '    try: m = json.loads(zipfile.ZipFile(f).read("manifest.json"))\n'
    "    except Exception: continue\n"
    '    if m["trigger"]["kind"] == "manual": sys.exit(0)\n'
    "sys.exit(1)\n"
)

AGENT_TOML = """\
[agent]
device_id = "T-FB"
site = "Field"

[network]
interfaces = []
payment_hosts = []

[screen]
backend = "fbdev"
timeout_s = 20.0

[capture]
trigger_dir = "/var/lib/posagent/trigger"
# TCG emulates the CPU about ten times slower than a terminal runs: the default 5 s
# budget (screenshot worker: interpreter, Pillow, PNG) runs out there.
total_budget_s = 60.0
probe_timeout_s = 20.0
"""

OUTSIDE = (255, 0, 255)  # fills the rows past the visible area; never in the picture


def picture(width: int, height: int) -> list[tuple[int, int, int]]:
    """A gradient with six flat squares: every channel takes many values, corners are known."""
    px: list[tuple[int, int, int]] = []
    squares = [
        ((10, 10), (255, 0, 0)),
        ((80, 10), (0, 255, 0)),
        ((150, 10), (0, 0, 255)),
        ((width - 60, height - 60), (255, 255, 255)),
        ((10, height - 60), (0, 0, 0)),
        ((width - 60, 10), (255, 255, 0)),
    ]
    for y in range(height):
        for x in range(width):
            c = ((x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), (x + 2 * y) % 254)
            for (sx, sy), col in squares:
                if sx <= x < sx + 50 and sy <= y < sy + 50:
                    c = col
            px.append(c)
    return px


def pack(px: list[tuple[int, int, int]], geom: dict[str, Any]) -> bytes:
    """The framebuffer memory for the picture, in the layout the kernel reported."""
    width, height = int(geom["xres"]), int(geom["yres"])
    vrows = int(geom["yres_virtual"])
    stride = int(geom["line_length"])
    bpp = int(geom["bpp"])
    assert bpp == 32, geom
    (ro, rl), (go, gl), (bo, bl) = (tuple(map(int, geom[c])) for c in ("red", "green", "blue"))
    assert (rl, gl, bl) == (8, 8, 8), geom

    def word(c: tuple[int, int, int]) -> bytes:
        return struct.pack("<I", (c[0] << ro) | (c[1] << go) | (c[2] << bo))

    out = bytearray()
    outside_row = word(OUTSIDE) * (stride // 4)
    for y in range(vrows):
        if y < height:
            row = b"".join(word(c) for c in px[y * width : (y + 1) * width])
            out += row + word(OUTSIDE) * ((stride - len(row)) // 4)
        else:
            out += outside_row
    return bytes(out[: int(geom["smem_len"])])


def test_fbdev_capture_of_vfb_under_the_unit_matches_pixel_by_pixel(tmp_path: Path) -> None:
    """The daemon's fbdev screenshot of a real /dev/fb0 equals what was drawn, pixel by pixel."""
    from PIL import Image

    image = build_image()
    guest = Guest(image, overlay(image, tmp_path / "disk.qcow2"), tmp_path)
    guest.start()
    try:
        boot_s = guest.wait_agent()
        guest.run(["modprobe", "vfb", *VFB_ARGS])
        guest.wait_for("test -c /dev/fb0", 30, "/dev/fb0")
        # the kernel's framebuffer console would draw over the picture: the POS app owns fb0
        guest.run(
            "for v in /sys/class/vtconsole/vtcon*; do"
            " grep -q 'frame buffer' $v/name && echo 0 > $v/bind; done; true"
        )
        geom = json.loads(guest.run(["python3", "-c", GEOMETRY_PY]).text)
        width, height = geom["xres"], geom["yres"]
        px = picture(width, height)
        guest.run("cat > /dev/fb0", stdin=pack(px, geom))
        node = guest.run(["stat", "-c", "%A %G", "/dev/fb0"]).text.strip()

        guest.write_file("/etc/posagent/agent.toml", AGENT_TOML, "0640", "root:posagent")
        guest.run(["systemctl", "start", "posagent"])
        ready_s = guest.wait_unit_active()
        guest.wait_for("test -d /var/lib/posagent/trigger", 60, "trigger dir")
        guest.write_file("/var/lib/posagent/trigger/field-fb", "framebuffer field test\n")
        t0 = time.monotonic()
        guest.wait_for(f"python3 -c '{FIND_MANUAL_PY}'", 180, "manual-report bundle in spool/new")
        names = guest.run("ls /var/lib/posagent/spool/new/").text.split()
        bundles = [guest.read_file(f"/var/lib/posagent/spool/new/{n}") for n in names]
        unit = guest.run(
            [
                "systemctl",
                "show",
                "posagent",
                "-p",
                "User",
                "-p",
                "DevicePolicy",
                "-p",
                "DeviceAllow",
            ]
        ).text
    finally:
        guest.power_cut()

    manual = []
    for data in bundles:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest["trigger"]["kind"] == "manual":
                shot = z.read("screenshot.png") if "screenshot.png" in z.namelist() else b""
                manual.append((manifest, shot))
    assert len(manual) == 1, [m for m, _ in manual]
    manifest, shot = manual[0]
    assert "User=posagent" in unit and "DevicePolicy=closed" in unit, unit
    assert manifest["redaction"]["screenshot"] == "captured", manifest["redaction"]
    got = Image.open(io.BytesIO(shot)).convert("RGB")
    assert got.size == (width, height), (got.size, geom)
    want = Image.new("RGB", (width, height))
    want.putdata(px)
    got_px = [got.getpixel((i % width, i // width)) for i in range(width * height)]
    bad = [i for i, (a, b) in enumerate(zip(got_px, px, strict=True)) if a != b]
    print(
        f"vfb {geom}; /dev/fb0 {node}; boot {boot_s:.1f} s; posagent active at {ready_s:.1f} s; "
        f"bundle {time.monotonic() - t0:.1f} s after the trigger; "
        f"{len(px) - len(bad)}/{len(px)} pixels equal"
    )
    assert not bad, [(i % width, i // width, got_px[i], px[i]) for i in bad[:10]]

"""A minimal Wayland client (wire protocol over the socket, shm buffer) showing a known image.

Test helper for the wayland screenshot backend: `python wlpaint.py` with
WAYLAND_DISPLAY (absolute socket path) set maps one xdg toplevel, fills it
with screenkit.known_image at the size the compositor configures, prints
"ready WxH" and serves pings until killed. No Wayland library needed.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.drivers.kit import known_image

WL_SHM_FORMAT_XRGB8888 = 1


class Conn:
    """Just enough of the Wayland wire protocol."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 2

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def send(self, obj: int, opcode: int, payload: bytes = b"", fd: int | None = None) -> None:
        msg = struct.pack("<II", obj, ((8 + len(payload)) << 16) | opcode) + payload
        if fd is None:
            self.sock.sendall(msg)
        else:
            fds = array.array("i", [fd])
            self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])

    def recv(self) -> tuple[int, int, bytes]:
        while len(self.buf) < 8 or len(self.buf) < (struct.unpack_from("<I", self.buf, 4)[0] >> 16):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("compositor closed the connection")
            self.buf += chunk
        obj, word = struct.unpack_from("<II", self.buf)
        size = word >> 16
        payload, self.buf = self.buf[8:size], self.buf[size:]
        return obj, word & 0xFFFF, payload


def wl_string(s: str) -> bytes:
    data = s.encode() + b"\0"
    return struct.pack("<I", len(data)) + data + b"\0" * (-len(data) % 4)


def read_string(payload: bytes, offset: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", payload, offset)
    s = payload[offset + 4 : offset + 4 + n - 1].decode()
    return s, offset + 4 + n + (-n % 4)


def main() -> None:
    c = Conn(os.environ["WAYLAND_DISPLAY"])
    registry, done = c.new_id(), c.new_id()
    c.send(1, 1, struct.pack("<I", registry))  # wl_display.get_registry
    c.send(1, 0, struct.pack("<I", done))  # wl_display.sync
    globals_: dict[str, int] = {}
    while True:
        obj, op, payload = c.recv()
        if obj == registry and op == 0:
            (name,) = struct.unpack_from("<I", payload)
            iface, _ = read_string(payload, 4)
            globals_[iface] = name
        elif obj == done:
            break
        elif obj == 1 and op == 0:
            raise SystemExit(f"wayland error: {payload!r}")
    ids: dict[str, int] = {}
    for iface, version in (("wl_compositor", 4), ("wl_shm", 1), ("xdg_wm_base", 1)):
        ids[iface] = c.new_id()
        c.send(
            registry,
            0,
            struct.pack("<I", globals_[iface])
            + wl_string(iface)
            + struct.pack("<II", version, ids[iface]),
        )
    surface, xdg_surface, toplevel = c.new_id(), c.new_id(), c.new_id()
    c.send(ids["wl_compositor"], 0, struct.pack("<I", surface))
    c.send(ids["xdg_wm_base"], 2, struct.pack("<II", xdg_surface, surface))
    c.send(xdg_surface, 1, struct.pack("<I", toplevel))
    c.send(surface, 6)  # commit without a buffer: ask for a configure
    width = height = 0
    shown = (0, 0)
    pending_sync = 0
    while True:
        obj, op, payload = c.recv()
        if obj == 1 and op == 0:
            raise SystemExit(f"wayland error: {payload!r}")
        if obj == ids["xdg_wm_base"] and op == 0:  # ping
            c.send(ids["xdg_wm_base"], 3, payload[:4])
        elif obj == toplevel and op == 0:  # configure(width, height, states)
            w, h = struct.unpack_from("<ii", payload)
            width, height = (w or 320), (h or 240)
        elif obj == xdg_surface and op == 0:  # configure(serial)
            c.send(xdg_surface, 4, payload[:4])  # ack_configure
            if shown == (0, 0):  # draw once: see the module docstring
                attach(c, ids["wl_shm"], surface, width, height)
                shown = (width, height)
                pending_sync = c.new_id()
                c.send(1, 0, struct.pack("<I", pending_sync))  # a roundtrip: later configures first
        elif obj == pending_sync:
            print(f"ready {shown[0]}x{shown[1]}", flush=True)


def attach(c: Conn, shm: int, surface: int, width: int, height: int) -> None:
    stride = width * 4
    size = stride * height
    fd = os.memfd_create("wlpaint")
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as m:
        m[:] = known_image(width, height).tobytes("raw", "BGRX")
    pool, buffer = c.new_id(), c.new_id()
    c.send(shm, 0, struct.pack("<Ii", pool, size), fd=fd)  # fd travels out of band
    os.close(fd)
    c.send(
        pool, 0, struct.pack("<Iiiiii", buffer, 0, width, height, stride, WL_SHM_FORMAT_XRGB8888)
    )
    c.send(surface, 1, struct.pack("<Iii", buffer, 0, 0))  # attach
    c.send(surface, 2, struct.pack("<iiii", 0, 0, width, height))  # damage
    c.send(surface, 6)  # commit


if __name__ == "__main__":
    main()

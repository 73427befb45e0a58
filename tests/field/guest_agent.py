"""The command agent that runs inside a qemu guest (installed by tests/field/qemu.py).

It reads JSON requests, one per line, from the virtio-serial port
/dev/virtio-ports/posagent.cmd and answers each with one JSON line carrying
the same id: ``{"id", "argv", "stdin" (base64), "timeout_s"}`` →
``{"id", "rc", "out", "err"}`` (base64). Commands run one at a time, as root.
It runs under the guest's own python3 (standard library only).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from typing import Any

PORT = "/dev/virtio-ports/posagent.cmd"


def handle(req: dict[str, Any]) -> dict[str, Any]:
    """Run one request's argv and return the reply."""
    argv = [str(a) for a in req.get("argv", [])]
    stdin = base64.b64decode(str(req.get("stdin", "")))
    timeout = float(req.get("timeout_s", 60))
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = -9, e.stdout or b"", (e.stderr or b"") + b"\ntimeout\n"
    except OSError as e:
        rc, out, err = 127, b"", str(e).encode()
    return {
        "id": req.get("id"),
        "rc": rc,
        "out": base64.b64encode(out).decode(),
        "err": base64.b64encode(err).decode(),
    }


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (the port accepts partial writes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> None:
    """Serve requests until the guest stops."""
    while not os.path.exists(PORT):
        time.sleep(0.1)
    fd = os.open(PORT, os.O_RDWR)
    buf = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:  # the host side is not connected
            time.sleep(0.1)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                continue
            write_all(fd, json.dumps(handle(req)).encode() + b"\n")


if __name__ == "__main__":
    main()

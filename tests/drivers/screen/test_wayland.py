"""Wayland capture with grim against a real headless cage compositor showing a known image."""

from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import ImageChops

from drivers.roots import Roots
from drivers.screen import GrabOptions, ScreenUnavailable, grab_image
from drivers.shell import Shell
from tests.drivers.kit import known_image

HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.skipif(shutil.which("cage") is None, reason="cage not installed"),
    pytest.mark.skipif(shutil.which("grim") is None, reason="grim not installed"),
]


@dataclass
class Cage:
    """A running cage compositor with the known-image client mapped."""

    socket: Path
    size: tuple[int, int]  # the client's window, at 0,0


def _drop_privileges() -> list[str]:
    """cage refuses to run as root: run it as `nobody` when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and no unprivileged user 'nobody' to run cage as")
    return ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


@pytest.fixture(scope="module")
def cage() -> Iterator[Cage]:
    """cage (headless, pixman) as an unprivileged user, with tests/drivers/screen/wlpaint.py's window mapped."""
    runtime = Path(tempfile.mkdtemp(prefix="posagent-wl-"))
    if os.geteuid() == 0:
        os.chown(runtime, pwd.getpwnam("nobody").pw_uid, -1)
    runtime.chmod(0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_RUNTIME_DIR": str(runtime),
        "WLR_BACKENDS": "headless",
        "WLR_RENDERER": "pixman",
        "WLR_LIBINPUT_NO_DEVICES": "1",
        # cage is built with Xwayland support; without the Xwayland binary it refuses to
        # start unless WLR_XWAYLAND names an executable (never run: Xwayland is lazy).
        "WLR_XWAYLAND": shutil.which("Xwayland") or "/bin/false",
    }
    # cage's own child only keeps it running; the painting client runs as us and connects to
    # the socket (cage shows any toplevel), since the venv may be unreadable for `nobody`.
    proc = subprocess.Popen(
        [*_drop_privileges(), "cage", "--", "sleep", "3600"],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    sock = runtime / "wayland-0"
    painter: subprocess.Popen[bytes] | None = None
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not sock.exists():
            _stop(proc)
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            pytest.skip(f"cage did not start here: {err[-1] if err else '(no stderr)'}")
        painter = subprocess.Popen(
            [sys.executable, str(HERE / "wlpaint.py")],
            env={**os.environ, "WAYLAND_DISPLAY": str(sock)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert painter.stdout is not None and painter.stderr is not None
        ready, _, _ = select.select([painter.stdout], [], [], 15)
        line = painter.stdout.readline().decode() if ready else ""
        if not line.startswith("ready"):
            _stop(painter)
            err = painter.stderr.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"wayland test client failed: {err[-1] if err else line!r}")
        w, h = (int(v) for v in line.split()[1].split("x"))
        yield Cage(sock, (w, h))
    finally:
        if painter is not None:
            _stop(painter)
        _stop(proc)
        shutil.rmtree(runtime, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process group we started and wait for it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_grim_capture_is_pixel_exact(cage: Cage) -> None:
    """grim's capture of cage equals the image the client drew, pixel for pixel."""
    opts = GrabOptions(backend="wayland", wayland_display=str(cage.socket))
    expected = known_image(*cage.size)
    box = (0, 0, *cage.size)
    deadline = time.monotonic() + 5
    while True:
        backend, img = grab_image(opts, "local", Shell(), Roots(), env={})
        diff = ImageChops.difference(img.crop(box), expected).getbbox()
        if diff is None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert backend == "wayland"
    assert img.width >= cage.size[0] and img.height >= cage.size[1]
    assert diff is None
    assert img.getpixel((img.width - 1, img.height - 1)) == (0, 0, 0)  # cage's background


def test_auto_finds_wayland_socket_from_env(cage: Cage, tmp_path: Path) -> None:
    """auto with WAYLAND_DISPLAY and XDG_RUNTIME_DIR in the environment picks wayland."""
    env = {"WAYLAND_DISPLAY": cage.socket.name, "XDG_RUNTIME_DIR": str(cage.socket.parent)}
    backend, img = grab_image(GrabOptions(), "local", Shell(), Roots(dev=tmp_path), env=env)
    assert backend == "wayland"
    assert img.width >= 320


def test_wrong_socket_name_is_unavailable(cage: Cage) -> None:
    """A socket name that is not there fails with grim's reason."""
    with pytest.raises(ScreenUnavailable, match=r"^wayland: grim: "):
        grab_image(
            GrabOptions(backend="wayland", wayland_display=str(cage.socket) + "-missing"),
            "local",
            Shell(),
            Roots(),
        )

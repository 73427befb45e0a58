"""Android (screencap in a root shell), adb (exec-out via the fake adb) and command backends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from drivers.roots import Roots
from drivers.screen import (
    GrabOptions,
    ScreenInvalid,
    ScreenTimeout,
    ScreenUnavailable,
    decode_png,
    encode_png,
    grab_image,
    grab_png,
)
from drivers.screen.wayland import socket_exists, wayland_socket
from drivers.shell import Shell
from simulator.fake_adb import FakeAdb


@pytest.fixture
def fake_adb(tmp_path: Path) -> FakeAdb:
    """The simulator's fake adb with one healthy device."""
    return FakeAdb(tmp_path / "adb")


def adb_shell(fake: FakeAdb) -> Shell:
    """A Shell talking to the fake adb."""
    return Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))


def test_adb_exec_out_screencap(fake_adb: FakeAdb) -> None:
    """backend adb runs `adb -s SERIAL exec-out screencap -p` and decodes the PNG."""
    fake_adb.set(screen={"width": 200, "height": 100, "color": [10, 20, 30]})
    backend, img = grab_image(GrabOptions(backend="adb"), "adb", adb_shell(fake_adb), Roots())
    assert backend == "adb"
    assert img.size == (200, 100)
    assert img.getpixel((100, 80)) == (10, 20, 30)
    assert ["-s", fake_adb.serial, "exec-out", "screencap -p"] in fake_adb.calls()


def test_auto_on_adb_target_uses_adb(fake_adb: FakeAdb) -> None:
    """auto with target adb picks the adb backend."""
    backend, img = grab_image(GrabOptions(), "adb", adb_shell(fake_adb), Roots(), env={})
    assert backend == "adb"
    assert img.size == (320, 240)


def test_adb_device_gone_is_unavailable(fake_adb: FakeAdb) -> None:
    """A device that fell off the bus gives ScreenUnavailable naming adb."""
    fake_adb.drop()
    with pytest.raises(ScreenUnavailable, match=r"^adb: "):
        grab_image(GrabOptions(backend="adb"), "adb", adb_shell(fake_adb), Roots())


def test_adb_hang_times_out(fake_adb: FakeAdb) -> None:
    """A hanging adb is killed at the timeout and reported as ScreenTimeout."""
    fake_adb.set(hang=True)
    with pytest.raises(ScreenTimeout, match="adb: screencap: no image within 0.5 s"):
        grab_image(GrabOptions(backend="adb", timeout_s=0.5), "adb", adb_shell(fake_adb), Roots())


def test_adb_backend_needs_adb_target() -> None:
    """Asking for adb with a local shell is a typed error, not an adb call."""
    with pytest.raises(ScreenUnavailable, match="adb: target is not adb"):
        grab_image(GrabOptions(backend="adb"), "local", Shell(), Roots())


def _fake_tool(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def test_android_root_shell_screencap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backend android runs `screencap -p` through the local root shell (a fake on PATH)."""
    png = tmp_path / "screen.png"
    Image.new("RGB", (48, 32), (200, 10, 10)).save(png)
    bindir = tmp_path / "bin"
    _fake_tool(
        bindir,
        "screencap",
        "import sys\n"
        "assert sys.argv[1:] == ['-p'], sys.argv\n"
        f"sys.stdout.buffer.write(open({str(png)!r}, 'rb').read())\n",
    )
    monkeypatch.setenv("PATH", f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    backend, img = grab_image(GrabOptions(), "android", Shell(mode="android"), Roots(), env={})
    assert backend == "android"
    assert img.size == (48, 32)
    assert img.getpixel((5, 5)) == (200, 10, 10)


def test_android_screencap_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing screencap gives ScreenUnavailable with its last stderr line."""
    bindir = tmp_path / "bin"
    _fake_tool(bindir, "screencap", "import sys\nsys.stderr.write('Capturing failed.\\n')\n"
               "raise SystemExit(1)\n")  # fmt: skip
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    with pytest.raises(ScreenUnavailable, match="android: screencap: Capturing failed."):
        grab_image(GrabOptions(backend="android"), "android", Shell(mode="android"), Roots())


def test_android_screencap_garbage_is_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are not a PNG (e.g. adb shell CRLF-mangled output) raise ScreenInvalid."""
    png = encode_png(Image.new("RGB", (8, 8)))
    mangled = png.replace(b"\n", b"\r\n")
    bindir = tmp_path / "bin"
    _fake_tool(bindir, "screencap", f"import sys\nsys.stdout.buffer.write({mangled!r})\n")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    with pytest.raises(ScreenInvalid, match="android: output is not a PNG"):
        grab_image(GrabOptions(backend="android"), "android", Shell(mode="android"), Roots())


def test_command_backend(tmp_path: Path) -> None:
    """backend command runs the configured argv and decodes its PNG stdout."""
    png = tmp_path / "s.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(png)
    argv = ["cat", str(png)]
    out = grab_png(GrabOptions(backend="command", command=argv), "local", Shell(), Roots())
    img = decode_png(out, "t")
    assert img.size == (30, 20)
    assert img.getpixel((0, 0)) == (1, 2, 3)


def test_command_failures_are_typed(tmp_path: Path) -> None:
    """Exit status, timeout, missing executable, empty and truncated output each raise a type."""
    fail = ["sh", "-c", "echo 'no screen here' >&2; exit 3"]
    with pytest.raises(ScreenUnavailable, match="command: sh: no screen here"):
        grab_image(GrabOptions(backend="command", command=fail), "local", Shell(), Roots())
    with pytest.raises(ScreenTimeout, match="command: no image within 0.5 s"):
        grab_image(
            GrabOptions(backend="command", command=["sleep", "5"], timeout_s=0.5),
            "local",
            Shell(),
            Roots(),
        )
    with pytest.raises(ScreenUnavailable, match="not found"):
        grab_image(
            GrabOptions(backend="command", command=[str(tmp_path / "nope")]),
            "local",
            Shell(),
            Roots(),
        )
    with pytest.raises(ScreenInvalid, match="command: empty output"):
        grab_image(GrabOptions(backend="command", command=["true"]), "local", Shell(), Roots())
    half = tmp_path / "half.png"
    half.write_bytes(encode_png(Image.new("RGB", (64, 64), (9, 9, 9)))[:60])
    with pytest.raises(ScreenInvalid, match="PNG does not decode"):
        grab_image(
            GrabOptions(backend="command", command=["cat", str(half)]), "local", Shell(), Roots()
        )
    with pytest.raises(ScreenUnavailable, match="command: no command configured"):
        grab_image(GrabOptions(backend="command", command=()), "local", Shell(), Roots())


def test_none_backend_is_unavailable() -> None:
    """backend none never captures."""
    with pytest.raises(ScreenUnavailable, match="none: screenshots disabled"):
        grab_image(GrabOptions(backend="none"), "local", Shell(), Roots())


def test_wayland_socket_resolution(tmp_path: Path) -> None:
    """An absolute socket path sets XDG_RUNTIME_DIR to its folder; a name needs the env's."""
    sock = tmp_path / "wayland-7"
    assert wayland_socket(str(sock), {}) == (str(sock), str(tmp_path))
    assert wayland_socket("", {"WAYLAND_DISPLAY": "w-1", "XDG_RUNTIME_DIR": "/run/u"}) == (
        "w-1",
        "/run/u",
    )
    with pytest.raises(ScreenUnavailable, match="XDG_RUNTIME_DIR unset"):
        wayland_socket("w-1", {})
    with pytest.raises(ScreenUnavailable, match="WAYLAND_DISPLAY unset"):
        wayland_socket("", {})
    assert not socket_exists(str(sock), {})
    sock.write_text("")
    assert socket_exists(str(sock), {})


def test_wayland_without_compositor_is_unavailable(tmp_path: Path) -> None:
    """grim with no compositor behind the socket path fails with its own stderr line."""
    with pytest.raises(ScreenUnavailable, match=r"^wayland: "):
        grab_image(
            GrabOptions(backend="wayland", wayland_display=str(tmp_path / "wayland-9")),
            "local",
            Shell(),
            Roots(),
        )

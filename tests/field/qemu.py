"""A qemu guest running the agent under the real systemd unit, for field tests.

`build_image()` turns a cached debootstrap tree (tests/field/debian.py) with a
kernel into a raw ext4 disk image with the project installed by its own
`systemd/install.sh` from an offline wheelhouse, plus a small command agent
(tests/field/guest_agent.py) on a virtio-serial port. The image is cached
under the cache dir, keyed by the tree, the project's sources and this file;
it is rebuilt when missing or stale.

`Guest` boots that image (`qemu-system-x86_64 -accel tcg`, the tree's kernel
and initrd) on a disk of the caller's (a qcow2 overlay or a raw copy), runs
commands in it, and cuts its power (SIGKILL of qemu: what the guest had not
flushed to its virtual disk is gone). The kernel console and the agent's log
(`StandardOutput=journal+console`) go to a file on the host, so what the
agent logged survives the cut. Every wait polls until a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.field.debian import (
    BASE_INCLUDE,
    PROJECT,
    build_tree,
    build_wheelhouse,
    cache_dir,
    locked,
    remove_tree,
)

TREE_NAME = "posagent-bookworm-qemu"
TREE_INCLUDE = BASE_INCLUDE + ["linux-image-amd64", "udev", "kmod"]
IMAGE_SIZE = "3G"
GUEST_AGENT = Path(__file__).with_name("guest_agent.py")
OPT_PY = "/opt/posagent/venv/bin/python"
POSAGENT = "/opt/posagent/venv/bin/posagent"
# Modules udev would load for qemu's emulated hardware that a terminal test never uses:
# each costs boot time under TCG.
BLACKLIST = ["kvm", "kvm_amd", "kvm_intel", "cfg80211", "parport_pc", "ppdev", "pcspkr", "floppy"]
SMP = 1  # a second TCG thread made boots slower on a busy 2-core machine
VFB_ARGS = ["vfb_enable=1", "mode_option=800x480-32", "videomemorysize=4194304"]
# What the image holds of the project: a change to any of these rebuilds it.
_HASHED = ["pyproject.toml", "agent", "drivers", "collector", "simulator", "systemd"]

GUEST_AGENT_UNIT = """\
[Unit]
Description=posagent field-test command agent (virtio-serial)
DefaultDependencies=no
After=systemd-udevd.service
[Service]
ExecStart=/usr/bin/python3 /usr/local/sbin/posagent-guest-agent
Restart=always
RestartSec=1
[Install]
WantedBy=sysinit.target
"""

NETWORK_FILE = """\
[Match]
Name=eth0
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
"""

LOG_DROPIN = """\
# field tests: the agent's log also goes to the console (ttyS0), which the host keeps
[Service]
StandardOutput=journal+console
StandardError=journal+console
"""


def qemu_missing() -> str:
    """Why a guest cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mkfs)"
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install qemu-system-x86 qemu-utils e2fsprogs debootstrap)"
    return ""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: its raw disk image, kernel, initrd and the device key in it."""

    disk: Path
    kernel: Path
    initrd: Path
    device_key: bytes
    build_s: float  # how long building it took (0.0 when it came from the cache)


def _source_digest() -> str:
    h = hashlib.sha256()
    for f in (Path(__file__), GUEST_AGENT):
        h.update(f.read_bytes())
    h.update(json.dumps(sorted(TREE_INCLUDE)).encode())
    for item in _HASHED:
        p = PROJECT / item
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(PROJECT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _run(argv: Sequence[str], timeout: float = 600.0, **kw: object) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, list(argv), r.stdout, r.stderr)
    return str(r.stdout)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.symlink_to(target)


@contextlib.contextmanager
def _chroot_mounts(stage: Path) -> Iterator[None]:
    points = []
    try:
        for what in ("proc", "sys", "dev"):
            target = stage / what
            target.mkdir(exist_ok=True)
            _run(["mount", "--bind", f"/{what}", str(target)])
            points.append(target)
        yield
    finally:
        for p in reversed(points):
            subprocess.run(["umount", "-l", str(p)], capture_output=True, check=False)


def _prepare_stage(stage: Path) -> None:
    """Install the project with systemd/install.sh and add the guest plumbing."""
    wheel = build_wheelhouse(stage / "opt" / "wheelhouse")
    shutil.copytree(PROJECT / "systemd", stage / "tmp" / "posagent-systemd")
    env = [
        "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
        "PIP_NO_INDEX=1", "PIP_FIND_LINKS=/opt/wheelhouse", "PIP_DISABLE_PIP_VERSION_CHECK=1",
    ]  # fmt: skip
    with _chroot_mounts(stage):
        _run(
            ["chroot", str(stage), *env, "sh", "/tmp/posagent-systemd/install.sh",
             f"/opt/wheelhouse/{wheel.name}"],
            timeout=900,
        )  # fmt: skip
    shutil.rmtree(stage / "tmp" / "posagent-systemd")
    shutil.rmtree(stage / "opt" / "wheelhouse")
    etc = stage / "etc"
    _write(etc / "fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    _write(etc / "hostname", "posterm\n")
    _write(etc / "hosts", "127.0.0.1 localhost\n127.0.1.1 posterm\n")
    # the serial console belongs to the kernel and the host's log, not to a login prompt
    _link(etc / "systemd/system/serial-getty@ttyS0.service", "/dev/null")
    _link(etc / "systemd/system/getty@tty1.service", "/dev/null")
    # e2scrub_reap took 11 s of every TCG boot; a test guest has no LVM snapshots to reap
    _link(etc / "systemd/system/e2scrub_reap.service", "/dev/null")
    shutil.copy2(GUEST_AGENT, stage / "usr/local/sbin/posagent-guest-agent")
    _write(etc / "systemd/system/posagent-guest-agent.service", GUEST_AGENT_UNIT)
    _link(
        etc / "systemd/system/sysinit.target.wants/posagent-guest-agent.service",
        "/etc/systemd/system/posagent-guest-agent.service",
    )
    _write(etc / "systemd/network/10-eth0.network", NETWORK_FILE)
    _link(
        etc / "systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    )
    _link(
        etc / "systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/lib/systemd/system/systemd-networkd.socket",
    )
    _write(etc / "systemd/system/posagent.service.d/field-console.conf", LOG_DROPIN)
    _write(etc / "modprobe.d/vfb.conf", "options vfb " + " ".join(VFB_ARGS) + "\n")


def build_image() -> GuestImage:
    """The cached guest image for the current sources; built (several minutes) when missing."""
    t0 = time.monotonic()
    tree = build_tree(TREE_NAME, TREE_INCLUDE)
    cache = cache_dir()
    key = _source_digest()
    out = cache / f"qemu-image-{key}"
    with locked(cache / ".qemu-image.lock"):
        if not (out / ".complete").exists():
            for stale in cache.glob("qemu-image-*"):
                remove_tree(stale)  # one image at a time: each is a few GiB
            for stale in cache.glob(".qemu-stage-*"):
                remove_tree(stale)
            stage = Path(tempfile.mkdtemp(prefix=".qemu-stage-", dir=cache))
            tmp_out = Path(tempfile.mkdtemp(prefix=".qemu-image-", dir=cache))
            try:
                _run(["cp", "-a", f"{tree}/.", str(stage)])
                _prepare_stage(stage)
                kernels = sorted((stage / "boot").glob("vmlinuz-*"))
                initrds = sorted((stage / "boot").glob("initrd.img-*"))
                if not kernels or not initrds:
                    raise RuntimeError(f"no kernel or initrd in {tree}/boot")
                shutil.copy2(kernels[-1], tmp_out / "vmlinuz")
                shutil.copy2(initrds[-1], tmp_out / "initrd.img")
                shutil.copy2(stage / "etc/posagent/device.key", tmp_out / "device.key")
                disk = tmp_out / "disk.img"
                _run(["truncate", "-s", IMAGE_SIZE, str(disk)])
                _run(["mkfs.ext4", "-q", "-F", "-L", "posroot", "-d", str(stage), str(disk)])
                (tmp_out / ".complete").write_text(f"{time.monotonic() - t0:.1f}\n")
                os.rename(tmp_out, out)
            finally:
                remove_tree(stage)
                remove_tree(tmp_out)
            built = time.monotonic() - t0
        else:
            built = 0.0
    return GuestImage(
        disk=out / "disk.img",
        kernel=out / "vmlinuz",
        initrd=out / "initrd.img",
        device_key=(out / "device.key").read_bytes().strip(),
        build_s=built,
    )


def overlay(image: GuestImage, dest: Path) -> Path:
    """A qcow2 overlay of the image at dest: the test writes there, the cache stays clean."""
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "raw", str(dest)])
    return dest


def raw_copy(image: GuestImage, dest: Path) -> Path:
    """A sparse raw copy of the image at dest (a disk that outlives many boots and cuts)."""
    _run(["cp", "--sparse=always", str(image.disk), str(dest)])
    return dest


class GuestError(Exception):
    """The guest did not reach a state in time, or a command failed."""


@dataclass(frozen=True)
class Completed:
    """What a command in the guest returned."""

    rc: int
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        """stdout as text."""
        return self.out.decode(errors="replace")


class Guest:
    """One boot of a guest: start, wait for its command agent, run commands, cut or stop."""

    def __init__(self, image: GuestImage, disk: Path, workdir: Path, *, net: bool = False):
        self.image = image
        self.disk = disk
        self.workdir = workdir
        self.net = net
        self.console = workdir / "console.log"
        self.sock_path = workdir / "cmd.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 0
        self.started_at = 0.0
        # own copies: a build for newer sources removes this image from the cache mid-run
        workdir.mkdir(parents=True, exist_ok=True)
        self.kernel = workdir / "vmlinuz"
        self.initrd = workdir / "initrd.img"
        for src, dst in ((image.kernel, self.kernel), (image.initrd, self.initrd)):
            if not dst.exists():
                shutil.copy2(src, dst)

    def argv(self) -> list[str]:
        """The qemu command line."""
        fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
        nic = "user,model=virtio-net-pci" if self.net else "none"
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", str(SMP),
            "-nodefaults", "-nographic", "-vga", "none", "-no-reboot", "-monitor", "none",
            "-serial", f"file:{self.console}",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 "
            "systemd.show_status=false modprobe.blacklist=" + ",".join(BLACKLIST),
            "-drive", f"file={self.disk},if=virtio,format={fmt},cache=writeback",
            "-nic", nic,
            "-chardev", f"socket,id=cmd,path={self.sock_path},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=cmd,name=posagent.cmd",
        ]  # fmt: skip

    def start(self) -> None:
        """Start qemu (a new power-on of the same disk)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.console.unlink()
        self._buf = b""
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=open(self.workdir / "qemu.out", "ab"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise GuestError(f"qemu exited {self.proc.returncode}: {self._qemu_out()}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                self._sock = s
                return
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise GuestError("qemu's command socket never appeared") from None
                time.sleep(0.1)

    def _qemu_out(self) -> str:
        try:
            return (self.workdir / "qemu.out").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        """True while qemu runs."""
        return self.proc is not None and self.proc.poll() is None

    def console_text(self) -> str:
        """Everything the guest wrote to its serial console in this boot."""
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def _send(self, req: dict[str, object]) -> None:
        assert self._sock is not None
        self._sock.settimeout(120.0)  # a large stdin takes a while through the port
        self._sock.sendall(json.dumps(req).encode() + b"\n")

    def _reply(self, ids: set[int], deadline: float) -> dict[str, object]:
        assert self._sock is not None
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    rep = json.loads(line)
                except ValueError:
                    continue
                if rep.get("id") in ids:
                    return dict(rep)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from the guest agent")
            if not self.alive():
                raise GuestError(f"qemu exited {self.proc and self.proc.returncode}")
            self._sock.settimeout(min(left, 1.0))
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError("command socket closed")
            self._buf += chunk

    def wait_agent(self, timeout_s: float = 240.0) -> float:
        """Wait until the guest's command agent answers; return seconds since power-on."""
        deadline = time.monotonic() + timeout_s
        sent: set[int] = set()
        while True:
            self._next_id += 1
            sent.add(self._next_id)
            self._send({"id": self._next_id, "argv": ["true"], "timeout_s": 10})
            try:
                self._reply(sent, min(deadline, time.monotonic() + 3.0))
                return time.monotonic() - self.started_at
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise GuestError(
                        f"guest agent silent after {timeout_s:.0f} s; console tail:\n"
                        + self.console_text()[-3000:]
                    ) from None

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        stdin: bytes = b"",
        timeout_s: float = 120.0,
        check: bool = True,
    ) -> Completed:
        """Run a command in the guest as root (a str goes through sh -c)."""
        cmd = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        self._next_id += 1
        rid = self._next_id
        self._send(
            {
                "id": rid,
                "argv": cmd,
                "stdin": base64.b64encode(stdin).decode(),
                "timeout_s": timeout_s,
            }
        )
        rep = self._reply({rid}, time.monotonic() + timeout_s + 30)
        done = Completed(
            int(rep["rc"]),  # type: ignore[call-overload]
            base64.b64decode(str(rep["out"])),
            base64.b64decode(str(rep["err"])),
        )
        if check and done.rc != 0:
            raise GuestError(
                f"{cmd!r} exited {done.rc}: {done.err.decode(errors='replace')[-2000:]}"
            )
        return done

    def read_file(self, path: str) -> bytes:
        """A file's bytes from the guest."""
        return self.run(["cat", path]).out

    def write_file(self, path: str, data: bytes | str, mode: str = "0644", owner: str = "") -> None:
        """Write a file in the guest (mode, and owner as user:group when given), fsynced."""
        raw = data.encode() if isinstance(data, str) else data
        script = f'cat > "$1.tmp" && chmod {mode} "$1.tmp"'
        if owner:
            script += f' && chown {owner} "$1.tmp"'
        script += ' && mv "$1.tmp" "$1" && sync'
        self.run(["sh", "-c", script, "sh", path], stdin=raw)

    def wait_for(self, script: str, timeout_s: float, what: str, every_s: float = 0.5) -> str:
        """Poll a shell condition in the guest until it exits 0; return its stdout."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            r = self.run(script, check=False, timeout_s=max(5.0, timeout_s))
            if r.rc == 0:
                return r.text
            last = (r.text + r.err.decode(errors="replace")).strip()[-500:]
            if time.monotonic() >= deadline:
                raise GuestError(f"{what}: not within {timeout_s:.0f} s ({last})")
            time.sleep(every_s)

    def wait_unit_active(self, unit: str = "posagent", timeout_s: float = 120.0) -> float:
        """Wait until a unit is active (for Type=notify: READY arrived); seconds since power-on."""
        self.wait_for(f"systemctl is-active --quiet {unit}", timeout_s, f"{unit} active")
        return time.monotonic() - self.started_at

    def boot_id(self) -> str:
        """The guest kernel's boot id (as the agent writes it into manifests)."""
        return self.read_file("/proc/sys/kernel/random/boot_id").decode().strip()

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL qemu; nothing the guest did not flush survives."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close()

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """A clean poweroff; a guest that does not stop in time has its power cut."""
        if self.alive():
            with contextlib.suppress(GuestError, TimeoutError, OSError):
                self.run(["systemctl", "--no-block", "poweroff"], timeout_s=10)
            assert self.proc is not None
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.power_cut()
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def json_events(console: str) -> list[dict[str, object]]:
    """The agent's JSON log lines found in a console log (journald prefixes them)."""
    out: list[dict[str, object]] = []
    for m in re.finditer(r"(\{\"[^\n]*\})\s*$", console, re.M):
        try:
            ev = json.loads(m.group(1))
        except ValueError:
            continue
        if isinstance(ev, dict) and "event" in ev:
            out.append(ev)
    return out

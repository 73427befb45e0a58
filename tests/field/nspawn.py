"""A booted Debian container (systemd-nspawn) on a throw-away layer over a cached tree.

`booted(tree, name)` mounts an overlay (lower: the cached tree, which stays clean; upper: a
temporary directory) or, where overlayfs is unavailable, copies the tree; boots it with
`systemd-nspawn -b --register=no --keep-unit --console=pipe`; waits until
`systemctl is-system-running` says running or degraded; yields a `Container` whose `run()`
executes commands inside through `nsenter -t <container pid 1> -a env -i PATH=...`; and always
tears down: poweroff, wait for the exit, then SIGKILL what is left, unmount, delete.

Every wait polls a state until a deadline; none is a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_DEADLINE_S = 120.0
STOP_DEADLINE_S = 45.0
POLL_S = 0.25

T = TypeVar("T")


class ContainerError(RuntimeError):
    """The container did not boot, or a command in it failed."""


def wait_until(
    probe: Callable[[], T | None], deadline_s: float, what: str, poll_s: float = POLL_S
) -> T:
    """Call `probe` until it returns something other than None (returned) or the deadline
    passes (ContainerError naming `what`)."""
    end = time.monotonic() + deadline_s
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() >= end:
            raise ContainerError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def _children(pid: int) -> list[int]:
    """Direct children of pid (from /proc/PID/task/*/children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _nspid(pid: int) -> list[int]:
    """The NSpid line of a process: its pid in each nested pid namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def find_leader(nspawn_pid: int) -> int | None:
    """The host pid of the container's PID 1: a descendant of nspawn that is pid 1 inside."""
    todo = [nspawn_pid]
    while todo:
        pid = todo.pop()
        ns = _nspid(pid)
        if len(ns) >= 2 and ns[-1] == 1:
            return pid
        todo += _children(pid)
    return None


@dataclass
class Container:
    """A booted container: its name, root directory (the writable view) and PID 1."""

    name: str
    root: Path
    leader: int
    console_log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside (all namespaces of PID 1, a clean environment); text output."""
        envs = [f"PATH={PATH}", "LANG=C.UTF-8"] + [f"{k}={v}" for k, v in (env or {}).items()]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *envs, *argv]
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a /bin/sh script inside."""
        return self.run(["/bin/sh", "-ec", script], **kw)  # type: ignore[arg-type]

    def alive(self) -> bool:
        """True while nspawn runs."""
        return self.process.poll() is None

    def system_state(self) -> str:
        """`systemctl is-system-running` inside (initializing, starting, running, degraded...)."""
        r = self.run(["systemctl", "is-system-running"], check=False, timeout=30)
        return r.stdout.strip() or r.stderr.strip()

    def console(self) -> str:
        """What the container printed on its console so far (boot messages)."""
        return self.console_log.read_text(errors="replace")


def _overlay(lower: Path, work: Path) -> Path | None:
    """Mount lower + an upper under work at work/merged; None when overlayfs is unavailable."""
    upper, wdir, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, wdir, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={wdir}"
    r = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    return merged if r.returncode == 0 else None


def _copy(tree: Path, work: Path) -> Path:
    dest = work / "copy"
    subprocess.run(["cp", "-a", "--reflink=auto", str(tree), str(dest)], check=True, timeout=600)
    return dest


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def booted(
    tree: Path,
    name: str,
    *,
    nspawn_args: Sequence[str] = (),
    prepare: Callable[[Path], None] | None = None,
    boot_deadline_s: float = BOOT_DEADLINE_S,
) -> Iterator[Container]:
    """Boot `tree` (never modified) as container `name`; yield it once systemd is up.

    `prepare(root)` may write files into the writable root before the boot (units to mask,
    files to copy in). `nspawn_args` are added to the nspawn command line (--bind=..., ...).
    """
    work = Path(tempfile.mkdtemp(prefix=f"nspawn-{name}-"))
    root: Path | None = None
    mounted = False
    proc: subprocess.Popen[bytes] | None = None
    leader: int | None = None
    try:
        root = _overlay(tree, work)
        mounted = root is not None
        if root is None:
            root = _copy(tree, work)
        if prepare is not None:
            prepare(root)
        log = work / "console.log"
        cmd = [
            "systemd-nspawn",
            "-D",
            str(root),
            "-b",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "-M",
            name,
            *nspawn_args,
        ]
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
            )
        p = proc

        def leader_up() -> int | None:
            if p.poll() is not None:
                raise ContainerError(f"nspawn exited {p.returncode}:\n{log.read_text()[-3000:]}")
            return find_leader(p.pid)

        leader = wait_until(leader_up, boot_deadline_s, "the container's PID 1")
        c = Container(name, root, leader, log, proc)
        started = time.monotonic()

        def up() -> str | None:
            if not c.alive():
                raise ContainerError(f"nspawn exited {p.returncode}:\n{c.console()[-3000:]}")
            state = c.system_state()
            return state if state in ("running", "degraded") else None

        remaining = boot_deadline_s - (time.monotonic() - started)
        wait_until(up, max(remaining, 5.0), "systemd to reach running/degraded")
        yield c
    finally:
        if proc is not None:
            _teardown(proc, leader)
        if mounted and root is not None:
            subprocess.run(["umount", str(root)], check=False, capture_output=True)
            if os.path.ismount(root):
                subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _teardown(proc: subprocess.Popen[bytes], leader: int | None) -> None:
    """poweroff (SIGRTMIN+4 to systemd), wait for nspawn to exit, then SIGKILL what is left."""
    if proc.poll() is None and leader is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGRTMIN + 4)  # systemd: start poweroff.target
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_DEADLINE_S)
    if proc.poll() is None:
        if leader is not None:
            _kill(leader)  # PID 1 of the namespace: the kernel kills every process in it
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if proc.poll() is None:
        _kill(proc.pid)
        proc.wait(timeout=10)

"""Processes read from <proc>/<pid>/ under Roots: name, command line, owner, display.

A reader for `posagent discover` that works on the real /proc and on a fake
tree alike (psutil only knows one /proc). Processes that vanish or cannot be
read while the directory is walked are skipped, never an error.
"""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from drivers.roots import Roots

GUI_ENV = ("DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "XDG_RUNTIME_DIR")


@dataclass(frozen=True)
class Proc:
    """One process: pid, kernel name (comm), argv, real uid and owner, GUI environment."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    uid: int | None
    user: str
    env: dict[str, str] = field(default_factory=dict)  # GUI_ENV keys, when readable

    @property
    def command(self) -> str:
        """argv joined by spaces, or [name] for a kernel thread."""
        return " ".join(self.cmdline) if self.cmdline else f"[{self.name}]"


def _user(uid: int | None) -> str:
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _read(path: Path, limit: int = 65536) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _uid(status: bytes | None) -> int | None:
    for line in (status or b"").splitlines():
        if line.startswith(b"Uid:"):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                return int(parts[1])
    return None


def _env(raw: bytes | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (raw or b"").split(b"\0"):
        key, sep, value = item.partition(b"=")
        k = key.decode("utf-8", "replace")
        if sep and k in GUI_ENV:
            out[k] = value.decode("utf-8", "replace")
    return out


def read_process(roots: Roots, pid: int) -> Proc | None:
    """One process from <proc>/<pid>, None when it is gone or has no name."""
    base = roots.proc_path(str(pid))
    comm = _read(base / "comm", 256)
    if comm is None:
        return None
    cmd = _read(base / "cmdline") or b""
    argv = tuple(a.decode("utf-8", "replace") for a in cmd.split(b"\0") if a)
    uid = _uid(_read(base / "status", 8192))
    return Proc(
        pid,
        comm.decode("utf-8", "replace").strip(),
        argv,
        uid,
        _user(uid),
        _env(_read(base / "environ", 262144)),
    )


def iter_processes(roots: Roots) -> Iterator[Proc]:
    """Every readable process under <proc>, by pid."""
    try:
        pids = sorted(int(p.name) for p in roots.proc.iterdir() if p.name.isdigit())
    except OSError:
        return
    for pid in pids:
        proc = read_process(roots, pid)
        if proc is not None:
            yield proc

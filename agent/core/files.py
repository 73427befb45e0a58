"""Durable file writes: the one fsync of a directory and the one atomic replace.

Every durable write in posagent (spool, flight recorder, markers, the collector's
blob store and token table) goes through these two functions: write a staging
file beside the target, fsync it, rename it over the target, fsync the
directory — memfaultd's "staging then rename" (docs/ARCHITECTURE.md, "Files").

Reading a file from a directory others can write (trigger dir, crash dirs, POS
logs, heartbeat and PIN flag, spool sidecars) goes through `open_regular`,
`read_regular` or `stat_regular`, re-exported from `drivers.files` (drivers may
not import the agent): no link followed, no FIFO blocking, regular files only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from drivers.files import NotRegularFile, open_regular, read_fd, read_regular, stat_regular

__all__ = [
    "NotRegularFile",
    "atomic_write",
    "fsync_dir",
    "open_regular",
    "read_fd",
    "read_regular",
    "stat_regular",
    "unlink_durably",
]


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename into it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o640) -> None:
    """Write to a temp file beside path, fsync, rename over path, fsync the directory.

    `mode` is the new file's permission bits (before the umask). With
    durable=False the data and the rename are not fsynced (a cache that may be
    lost in a power cut, never left torn).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        # A leftover (or planted: a FIFO, a link) staging file is removed, never opened:
        # O_EXCL creates a new file or fails, it neither follows a link nor opens a FIFO.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def unlink_durably(path: Path) -> None:
    """Remove a file (missing is fine) and fsync its directory."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)

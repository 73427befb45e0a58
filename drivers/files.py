"""Reading files from directories other users can write: never through a link, never a FIFO.

A trigger file, a crash dump, a POS log, a heartbeat or PIN flag, a spool
sidecar: each lives in a directory someone else may write, who can swap the
file for a symlink to a file only the agent may read, or for a FIFO that blocks
the reader forever. Checking first (`is_symlink()`) and opening after is a race
(renameat2 RENAME_EXCHANGE wins it), so the check is made on what was opened:

- `open_regular`: open with O_NOFOLLOW (a link in the last component fails with
  ELOOP) and O_NONBLOCK (a FIFO opens without a writer instead of blocking), then
  fstat the descriptor and refuse anything but a regular file;
- `read_regular`: that, then read at most `limit` bytes from the same descriptor;
- `stat_regular`: the lstat of a path that must be a regular file (for callers
  that only need the mtime and may not have read access: a heartbeat, a PIN flag).

Every refusal is an OSError (`NotRegularFile` for a FIFO, device, socket or
directory; ELOOP for a link), so callers keep their one `except OSError`.
`agent.core.files` re-exports these for the agent; this is the only copy.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class NotRegularFile(OSError):
    """The path is a FIFO, socket, device or directory where a regular file was expected."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _refuse(path: str | Path, st: os.stat_result) -> NotRegularFile:
    return NotRegularFile(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", str(path))


def open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """(fd, fstat) of a regular file opened without following a link; the caller closes fd.

    Raises OSError: ELOOP when the path is a symlink, NotRegularFile when it is
    anything but a regular file, and whatever open() raises otherwise.
    """
    try:
        fd = os.open(path, _FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_fd(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from fd's current position (loops over short reads)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_regular(path: str | Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file, opened without following a link."""
    fd, _ = open_regular(path)
    try:
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def stat_regular(path: str | Path) -> os.stat_result:
    """lstat of a path that must be a regular file (a link or FIFO raises, see module doc)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st)
    return st

"""One way to run a command on the terminal: locally, in an Android root shell, or over adb.

Every call has a timeout and returns a ShellResult or raises a ShellError
subtype; nothing here decides policy.
"""

from __future__ import annotations

import os
import select
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


class ShellError(Exception):
    """A command could not be run to completion."""


class ShellTimeout(ShellError):
    """The command overran its timeout and was killed."""


class ShellUnavailable(ShellError):
    """The executable (sh, adb) is missing, or the adb device is not reachable."""


@dataclass(frozen=True)
class ShellResult:
    """Exit status and raw output of one command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout decoded leniently."""
        return self.stdout.decode("utf-8", "replace")


def run_argv(argv: Sequence[str], timeout_s: float, stdin: bytes | None = None) -> ShellResult:
    """Run argv with a hard timeout; the whole process group is killed on overrun."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        raise ShellUnavailable(f"{argv[0]}: not found") from e
    except OSError as e:
        raise ShellUnavailable(f"{argv[0]}: {e.strerror}") from e
    try:
        out, err = _collect(proc, stdin, time.monotonic() + timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise ShellTimeout(f"{argv[0]}: no result within {timeout_s:g} s") from None
    return ShellResult(tuple(argv), proc.returncode, out, err)


def _collect(
    proc: subprocess.Popen[bytes], stdin: bytes | None, deadline: float
) -> tuple[bytes, bytes]:
    """`communicate` with a deadline whose waits are select() timeouts, never time.sleep:
    under libfaketime with a real monotonic clock (the simulator's clock scenarios),
    time.sleep fails with EINVAL, and Popen.wait(timeout) sleeps between its polls."""
    chunks: dict[int, list[bytes]] = {}
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            chunks[f.fileno()] = []
            sel.register(f, selectors.EVENT_READ)
    pending = memoryview(stdin or b"")
    if proc.stdin is not None:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in sel.select(min(left, 1.0)):
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(key.fd, pending[:65536])
                    except BrokenPipeError:
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
    while proc.poll() is None:  # output closed: the child is on its way out
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        select.select([], [], [], min(left, 0.01))
    out_fd = proc.stdout.fileno() if proc.stdout is not None else -1
    err_fd = proc.stderr.fileno() if proc.stderr is not None else -1
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    return b"".join(chunks.get(out_fd, [])), b"".join(chunks.get(err_fd, []))


@dataclass(frozen=True)
class Shell:
    """Runs shell command lines on the terminal the agent watches.

    mode "local" and "android" run `sh -c` on this machine (on Android the
    agent lives in a root shell); mode "adb" runs `adb -s SERIAL shell` or
    `exec-out` for binary output.
    """

    mode: str = "local"
    adb_serial: str = ""
    adb_path: str = "adb"

    def _prefix(self, exec_out: bool) -> list[str]:
        if self.mode == "adb":
            base = [self.adb_path]
            if self.adb_serial:
                base += ["-s", self.adb_serial]
            return [*base, "exec-out" if exec_out else "shell"]
        return ["sh", "-c"]

    def run(self, command: str, timeout_s: float = 5.0, *, binary: bool = False) -> ShellResult:
        """Run one command line; binary=True keeps stdout byte-exact (adb exec-out)."""
        result = run_argv([*self._prefix(binary), command], timeout_s)
        if self.mode == "adb" and result.returncode != 0:
            err = result.stderr.decode("utf-8", "replace").strip()
            low = err.lower()
            if "device" in low and ("not found" in low or "offline" in low or "no devices" in low):
                raise ShellUnavailable(f"adb: {err}")
        return result

    def check(self, command: str, timeout_s: float = 5.0, *, binary: bool = False) -> bytes:
        """Run and return stdout; a non-zero exit raises ShellError with stderr."""
        r = self.run(command, timeout_s, binary=binary)
        if r.returncode != 0:
            err = r.stderr.decode("utf-8", "replace").strip()[:200]
            raise ShellError(f"{shlex.split(command)[0]}: exit {r.returncode}: {err}")
        return r.stdout

    def adb_state(self, timeout_s: float = 5.0) -> str:
        """`adb get-state` for the configured device: "device", "offline", or the error."""
        argv = [self.adb_path] + (["-s", self.adb_serial] if self.adb_serial else [])
        r = run_argv([*argv, "get-state"], timeout_s)
        if r.returncode == 0:
            return r.text.strip()
        return r.stderr.decode("utf-8", "replace").strip() or f"exit {r.returncode}"

    def reconnect(self, timeout_s: float = 5.0) -> None:
        """Ask adb to reconnect the device (after it dropped off)."""
        argv = [self.adb_path] + (["-s", self.adb_serial] if self.adb_serial else [])
        run_argv([*argv, "reconnect"], timeout_s)

"""One way to run a command on the terminal: locally, in an Android root shell, or over adb.

Every call has a timeout and returns a ShellResult or raises a ShellError
subtype; nothing here decides policy.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
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
        out, err = proc.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise ShellTimeout(f"{argv[0]}: no result within {timeout_s:g} s") from None
    return ShellResult(tuple(argv), proc.returncode, out, err)


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

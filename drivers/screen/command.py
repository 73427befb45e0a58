"""A configured command (argv) that writes a PNG to stdout."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.screen.errors import ScreenTimeout, ScreenUnavailable
from drivers.shell import ShellTimeout, ShellUnavailable, run_argv


def grab_command(argv: Sequence[str], timeout_s: float) -> bytes:
    """stdout of argv (expected PNG); a non-zero exit is ScreenUnavailable with stderr."""
    if not argv:
        raise ScreenUnavailable("command: no command configured")
    try:
        r = run_argv(list(argv), timeout_s)
    except ShellTimeout as e:
        raise ScreenTimeout(f"command: no image within {timeout_s:g} s") from e
    except ShellUnavailable as e:
        raise ScreenUnavailable(f"command: {e}") from e
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ScreenUnavailable(
            f"command: {argv[0]}: {err[-1][:160] if err else f'exit {r.returncode}'}"
        )
    return r.stdout

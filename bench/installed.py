"""The daemon as a terminal runs it: the one way the benches start the `posagent run` they measure.

A terminal runs the agent from /opt/posagent/venv, which systemd/install.sh makes with
`python -m venv` and `pip install SOURCE` (the runtime dependencies only, not editable), under
systemd/posagent.service's environment. The dev venv differs in what it holds: rich and
pygments (structlog imports them at start when installed, some 5 MiB of RSS), the collector's
and the tests' packages. So bench_daemon and bench_channel_live start their daemons with
`daemon_stack_args()` and read their memory with `rss_mib` / `hwm_mib` / `private_mib`:

- `installed_venv()`: such a venv, built from a clean copy of the source the wheel is made of
  (tests.field.debian.source_items: an in-place build would reuse build/lib) with the dev
  venv's base interpreter, cached as build/bench-venv/<digest> (gitignored, removed by
  `make clean`), the digest of that source and the Python version: a second run reuses it
  (a CI runner that keeps the workspace too), a changed source builds another beside it
  (under a lock) and never replaces one a running bench's daemons use; the two newest are
  kept.
  pip itself is not upgraded as install.sh does (nothing of it is in the daemon).
- `unit_environ()`: what the unit gives the daemon: systemd's PATH and a UTF-8 LANG, the
  unit's `Environment=` assignments (PYTHONDONTWRITEBYTECODE, MALLOC_ARENA_MAX), no
  PYTHONPATH (the code is the venv's) and nothing of the caller's environment.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.field.debian import PROJECT, copy_source, locked, source_items

CACHE = PROJECT / "build" / "bench-venv"
KEEP = 2  # venvs of different sources kept in CACHE
UNIT = PROJECT / "systemd" / "posagent.service"
# systemd's PATH for system services (systemd.exec(5), "Environment variables in spawned processes")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


class InstallError(RuntimeError):
    """The venv could not be made (the message has pip's last lines)."""


def _files(item: Path) -> list[Path]:
    if item.is_file():
        return [item]
    return sorted(
        p
        for p in item.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.name.endswith(".pyc")
        and not any(part.endswith(".egg-info") for part in p.parts)
    )


def source_digest() -> str:
    """sha256 over the installed source (names and bytes) and the interpreter's version."""
    h = hashlib.sha256(sys.version.encode())
    for item in source_items():
        for f in _files(PROJECT / item):
            h.update(str(f.relative_to(PROJECT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _base_python() -> str:
    """The interpreter the dev venv was made from (install.sh uses the system's python3)."""
    return str(getattr(sys, "_base_executable", "") or sys.executable)


def installed_venv(cache: Path = CACHE) -> Path:
    """A venv with the package installed as install.sh installs it; built once per source."""
    digest = source_digest()
    venv = cache / digest[:16]
    stamp = venv / ".complete"
    with locked(cache.parent / ".bench-venv.lock"):
        if stamp.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # a build that did not finish
        with tempfile.TemporaryDirectory(prefix="posagent-src-") as td:
            src = Path(td) / "src"
            src.mkdir()
            copy_source(src)
            for argv in (
                [_base_python(), "-m", "venv", str(venv)],
                [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(src)],
            ):
                r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
                if r.returncode != 0:
                    tail = " | ".join((r.stdout + r.stderr).strip().splitlines()[-3:])
                    raise InstallError(f"{' '.join(argv[:4])}: exit {r.returncode}: {tail}")
        stamp.write_text(digest)
        older = sorted(
            (p for p in cache.iterdir() if (p / "pyvenv.cfg").exists() and p != venv),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in older[KEEP - 1 :]:
            shutil.rmtree(old, ignore_errors=True)
    return venv


def unit_environ(unit: Path = UNIT) -> dict[str, str]:
    """The environment systemd gives the daemon under the unit (its Environment= lines)."""
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def daemon_stack_args() -> dict[str, Any]:
    """simulator.stack.Stack keyword arguments that run the installed daemon under the unit's
    environment."""
    venv = installed_venv()
    return {"agent_argv": [str(venv / "bin" / "posagent")], "agent_environ": unit_environ()}


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    """The process's resident set (VmRSS), MiB, 2 decimals; its children apart."""
    return round(_status_kib(pid, "VmRSS") / 1024, 2)


def hwm_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB, 2 decimals."""
    return round(_status_kib(pid, "VmHWM") / 1024, 2)


def private_mib(pid: int) -> float:
    """The process's own pages (USS: Private_Clean + Private_Dirty of smaps_rollup), MiB: its
    RSS without the shared libraries' clean pages, which other processes map too."""
    kib = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kib += int(line.split()[1])
    return round(kib / 1024, 2)


if __name__ == "__main__":  # `python -m bench.installed`: build (or reuse) the venv, print it
    print(installed_venv())
    print(" ".join(f"{k}={v}" for k, v in unit_environ().items()))

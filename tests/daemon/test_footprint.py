"""What the daemon's process holds: no TLS, asyncio, requests, cryptography or Pillow (issue 16's
"the daemon stays small"), checked on a real `posagent run` with the channel on after it ran a
signed command, by the shared objects mapped into it; and the asyncio stand-in structlog is
imported with (agent/core/log.py) still gives a working asyncio to those who use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from collector.channel.signing import keygen
from simulator.stack import Stack
from tests.channel.operator import Operator
from tests.conftest import wait_until

# extension modules (and the libraries behind them) the daemon must not map: each is loaded
# only by the children (upload worker, screenshot worker) or by the collector
HEAVY = (
    "/_ssl.",  # ssl (libssl), which asyncio imports
    "/libssl.",
    "/_asyncio.",
    "/PIL/",  # Pillow: the screenshot child
    "/cryptography/",  # the signature checks: the channel's worker child
    "/_cffi_backend",
    "/charset_normalizer/",  # requests: the upload worker child
)


def _mapped(pid: int) -> set[str]:
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            paths.add(parts[5])
    return paths


def test_a_daemon_with_the_channel_maps_no_tls_async_crypto_or_imaging_library(
    tmp_path: Path,
) -> None:
    """A real daemon checks in, runs a signed capture command: none of HEAVY is in its maps."""
    key, pub = tmp_path / "command.key", tmp_path / "command.pub"
    pub.write_text(keygen(key))
    agent = {
        "upload": {"longpoll": True, "collector_public_key_file": str(pub)},
        "capture": {"manual_per_hour": 3600.0, "manual_burst": 100},
    }
    with Stack(
        tmp_path / "stack", agent_config=agent, collector_config={"signing_key_file": str(key)}
    ) as stack:
        assert stack.agent_proc is not None
        op = Operator(stack.collector_url, stack.http, stack.term.device_id)
        assert wait_until(op.device, 120.0, 0.5), "the terminal never checked in"
        cid = op.command("capture", {"note": "footprint"})
        done = op.answered(cid)
        assert done["status"] == "done", done
        heavy = sorted(p for p in _mapped(stack.agent_proc.pid) if any(h in p for h in HEAVY))
        assert heavy == []
        assert stack.agent_proc.poll() is None


_ASYNC_CHILD = r"""
import sys
import agent.core.log as log
import structlog
assert "asyncio" not in sys.modules, "structlog's import loaded asyncio"
log.configure("info", "json")
import asyncio
assert type(asyncio).__name__ == "module" and asyncio.__file__, asyncio
async def main():
    await structlog.get_logger().ainfo("async_event", n=1)  # structlog's own asyncio use
    await asyncio.sleep(0)
    return 7
print(asyncio.run(main()))
assert sys.modules["asyncio"] is asyncio
"""


def test_structlog_async_logging_and_asyncio_work_after_the_stand_in() -> None:
    """In a fresh process: structlog comes without asyncio, and asyncio still works when used."""
    root = str(Path(__file__).resolve().parents[2])
    r = subprocess.run(
        [sys.executable, "-c", _ASYNC_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "7"
    assert any('"event": "async_event"' in line for line in lines), r.stdout

"""The collector on the host for the booted terminals of tests/field: `posagent collector`
commands run against its config, and `serve` started in the background (stopped with the
test's ExitStack) once it answers /healthz."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import requests

from tests.conftest import VENV_BIN
from tests.field.nspawn import wait_until

POSAGENT_HOST = str(VENV_BIN / "posagent")


def collector_cli(conf: Path, *args: str, stdin: str | None = None) -> str:
    """`posagent collector ARGS --config conf`, which must succeed: its stdout, stripped."""
    r = subprocess.run(
        [POSAGENT_HOST, "collector", *args, "--config", str(conf)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"collector {' '.join(args)}: {r.stderr}"
    return r.stdout.strip()


def admin_auth(conf: Path, name: str) -> dict[str, str]:
    """An admin user made for the test and the Authorization header of their API token (the
    read side is closed)."""
    collector_cli(conf, "user", "add", name, "--role", "admin", "--password-stdin",
                  stdin=f"{name} password\n")  # fmt: skip
    return {"Authorization": f"Bearer {collector_cli(conf, 'token', 'create', name)}"}


def serve(stack: contextlib.ExitStack, conf: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    """`posagent collector serve` writing to log, stopped (SIGTERM, then kill) when the
    stack closes; returned once url answers /healthz."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [POSAGENT_HOST, "collector", "serve", "--config", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    stack.callback(stop)

    def healthy() -> bool | None:
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(url + "/healthz", timeout=2).status_code == 200 or None
        except requests.RequestException:
            return None

    wait_until(healthy, 60, "the collector's /healthz", poll_s=0.5)
    return proc

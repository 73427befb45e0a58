"""The signing key rotated on command under the real unit (issue 17 item 4): a terminal
installed before the key had its home in the state dir (its key at
/etc/posagent/device.ed25519, read-only to the daemon under ProtectSystem=strict) is
upgraded with systemd/install.sh, enrolls with that key at a collector on the host, and a
`rotate-signing-key` command queued by an operator is done by the daemon, as user
posagent, inside its sandbox: the new key lands in /var/lib/posagent/keys (0600 posagent),
the old file stays as it was, and the bundles signed before and after both verify on the
collector.

A booted Debian 12 (systemd-nspawn on the cached tree of tests/field/debian.py); root only,
skipped elsewhere with the reason (as tests/field/test_systemd_unit.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from agent.bundle.sealed import generate_signing_key, key_id, load_signing_key
from tests.conftest import ROOT
from tests.field.debian import build_tree, build_wheelhouse
from tests.field.host import admin_auth, collector_cli, serve
from tests.field.nspawn import Container, booted, wait_until
from tests.field.test_systemd_unit import (
    CONFIG,
    INCLUDE,
    POSAGENT,
    SKIP,
    TREE,
    _free_port,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(SKIP is not None, reason=SKIP or ""),
]

DEVICE = "T-KEYS"
LEGACY = "/etc/posagent/device.ed25519"
HOME = "/var/lib/posagent/keys/device.ed25519"


@dataclass
class Fleet:
    url: str
    auth: dict[str, str]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        r = requests.get(f"{self.url}{path}", params=params, headers=self.auth, timeout=10)
        r.raise_for_status()
        return r.json()

    def command(self, kind: str, args: dict[str, Any] | None = None) -> str:
        r = requests.post(
            f"{self.url}/v1/devices/{DEVICE}/commands",
            json={"kind": kind, "args": args or {}, "expires_in_s": 900},
            headers=self.auth,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["command"]["command_id"])

    def answered(self, cid: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            for c in self.get(f"/v1/devices/{DEVICE}/commands")["commands"]:
                if c["command_id"] == cid and c["status"] in ("done", "refused", "failed"):
                    return dict(c)
            return None

        return wait_until(probe, 120, f"the result of command {cid}", poll_s=0.5)


def _collector(stack: contextlib.ExitStack, work: Path) -> tuple[Fleet, str]:
    port = _free_port()
    conf = work / "collector.toml"
    conf.write_text(
        "[collector]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'data_dir = "{work / "data"}"\n'
        f'tokens_file = "{work / "tokens"}"\n'
        f'signing_key_file = "{work / "command.key"}"\n'
    )
    collector_cli(conf, "keygen")
    enrollment = collector_cli(conf, "enroll-token", "create", "--site", "nspawn")
    auth = admin_auth(conf, "keys-admin")
    url = f"http://127.0.0.1:{port}"
    serve(stack, conf, url, work / "collector.log")
    return Fleet(url, auth, work / "collector.log"), enrollment


def agent_config(port: str) -> str:
    """Enrolls with the token install put in /etc; its device token goes to the state dir
    (the daemon writes it at enrollment, and /etc is read-only under the unit)."""
    return f"""
[agent]
device_id = "{DEVICE}"
site = "nspawn"
log_format = "json"

[upload]
endpoint = "http://127.0.0.1:{port}"
token_file = "/var/lib/posagent/token"
enrollment_token_file = "/etc/posagent/enrollment"
checkin_interval_s = 30
longpoll = true

[network]
interfaces = ["lo"]

[screen]
backend = "none"
"""


@dataclass
class World:
    c: Container
    fleet: Fleet
    legacy_id: str
    legacy_sha: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("nspawn-keys")
    tree = build_tree(TREE, INCLUDE)
    wheels = work / "wheels"
    wheel = build_wheelhouse(wheels)
    legacy = work / "legacy.ed25519"  # what an install before this issue made in /etc
    legacy_id = key_id(generate_signing_key(legacy).public_key())
    legacy_sha = hashlib.sha256(legacy.read_bytes()).hexdigest()

    def prepare(root: Path) -> None:
        shutil.copytree(wheels, root / "root" / "wheels")
        shutil.copytree(ROOT / "systemd", root / "root" / "posagent-src" / "systemd")
        etc = root / "etc" / "posagent"
        etc.mkdir(parents=True, exist_ok=True)
        shutil.copy(legacy, etc / "device.ed25519")

    with contextlib.ExitStack() as stack:
        fleet, enrollment = _collector(stack, work)
        port = fleet.url.rsplit(":", 1)[1]
        c = stack.enter_context(booted(tree, f"pa-keys-{os.getpid()}", prepare=prepare))
        c.run(
            ["sh", "/root/posagent-src/systemd/install.sh", f"/root/wheels/{wheel.name}"],
            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/root/wheels", "HOME": "/root"},
            timeout=300,
        )
        install = ["install", "-m", "0640", "-g", "posagent", "/dev/stdin"]
        c.run([*install, CONFIG], input=agent_config(port))
        c.run([*install, "/etc/posagent/enrollment"], input=enrollment + "\n")
        c.run([POSAGENT, "check-config", "--config", CONFIG])
        start = c.run(["systemctl", "enable", "--now", "posagent"], timeout=90, check=False)
        if start.returncode != 0:
            journal = c.run(["journalctl", "-u", "posagent", "--no-pager", "-n", "40"], check=False)
            raise AssertionError(f"posagent did not start: {start.stderr}\n{journal.stdout}")
        yield World(c, fleet, legacy_id, legacy_sha)


def _file(c: Container, path: str) -> str:
    """owner:group mode of a file in the container ("" when absent)."""
    r = c.run(["stat", "-c", "%U:%G %a", path], check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def test_install_kept_the_old_key_and_the_daemon_enrolled_with_it(world: World) -> None:
    c, fleet = world.c, world.fleet
    shown = c.run([POSAGENT, "check-config", "--config", CONFIG]).stdout
    assert (
        f"# signing key: {LEGACY} (an older install's: the first rotation writes {HOME})" in shown
    )
    assert _file(c, LEGACY) == "root:posagent 640"
    assert _file(c, "/var/lib/posagent/keys") == "posagent:posagent 700"

    def enrolled() -> dict[str, Any] | None:
        found = [d for d in fleet.get("/v1/devices")["devices"] if d["device_id"] == DEVICE]
        return found[0] if found and found[0]["last_seen"] else None

    d = wait_until(enrolled, 120, "the terminal's enrollment", poll_s=0.5)
    assert d["key_ids"] == [world.legacy_id]


def test_rotated_on_command_inside_the_sandbox(world: World, tmp_path: Path) -> None:
    c, fleet = world.c, world.fleet
    before = fleet.answered(fleet.command("capture", {"note": "before"}))
    assert before["status"] == "done", before
    t0 = time.monotonic()
    cid = fleet.command("rotate-signing-key")
    done = fleet.answered(cid)
    assert done["status"] == "done", (done, c.run(["journalctl", "-u", "posagent", "-n", "30"]))
    old_id, new_id = done["detail"].removeprefix("signing key ").split(" -> ")
    assert old_id == world.legacy_id
    wait_until(lambda: _file(c, HOME) or None, 60, "the new key in its home", poll_s=0.5)
    print(f"\nrotate-signing-key under the unit: new key in force {time.monotonic() - t0:.1f} s")
    # written by the daemon (user posagent) in its state dir; /etc untouched
    assert _file(c, HOME) == "posagent:posagent 600"
    legacy_now = c.run(["sha256sum", LEGACY]).stdout.split()[0]
    assert legacy_now == world.legacy_sha
    assert c.run(["systemctl", "is-active", "posagent"], check=False).stdout.strip() == "active"
    pem = c.run(["cat", HOME]).stdout
    (tmp_path / "new.ed25519").write_text(pem)
    (tmp_path / "new.ed25519").chmod(0o600)
    assert key_id(load_signing_key(tmp_path / "new.ed25519").public_key()) == new_id
    after = fleet.answered(fleet.command("capture", {"note": "after"}))
    assert after["status"] == "done", after
    ids = {x["detail"].split("bundle ", 1)[1] for x in (before, after)}
    listed = [
        b for b in fleet.get("/v1/bundles", device=DEVICE)["bundles"] if b["bundle_id"] in ids
    ]
    assert len(listed) == 2 and all(b["signature_checked"] for b in listed), listed
    assert fleet.get(f"/v1/devices/{DEVICE}")["key_ids"] == [old_id, new_id]

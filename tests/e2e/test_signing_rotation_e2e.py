"""A terminal's signing key rotated on command, end to end (issue 17 item 4, docs/CHANNEL.md
§3 ``rotate-signing-key``): the REAL collector (sealed bundles: its age identity, the
command key and the enrollment token made by the `posagent collector` CLI) and a REAL
`posagent run` upgraded from an install whose key sits beside hmac_key_file (read-only
/etc under the unit): it enrolls with that key, a capture is signed with it, the operator
rotates the key, the terminal stages a new key in its state dir, vouches for it with the
old one in the command's result and signs with it once the collector has acknowledged;
the next capture is signed with the new key. Both bundles verify on the collector and
offline with `posagent bundle verify` and the keys the collector serves; the result shows
on the device page and in the audit log; a forged rotation is refused.

The terminal, its config and helpers are those of tests/e2e/test_channel_e2e.py (only a
key made before the upgrade is added)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyrage import x25519

from agent.bundle.format import BundleReader, key_id, sign_ed25519
from agent.bundle.sealed import (
    generate_signing_key,
    load_signing_key,
    public_pem,
    rotation_statement,
)
from agent.core.timefmt import rfc3339
from tests.channel.test_channel_daemon import Terminal
from tests.conftest import posagent_argv, wait_until
from tests.e2e.test_channel_e2e import DEVICE, SITE, TIMEOUT_S, Fleet, _cli, running

pytestmark = pytest.mark.slow


@dataclass
class World:
    fleet: Fleet
    terminal: Terminal
    conf: Path
    legacy_key: Path
    home_key: Path
    pubkeys: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("signing_rotation_e2e")
    identity = tmp / "collector.age"
    identity.write_text(f"{x25519.Identity.generate()}\n")
    identity.chmod(0o600)
    (tmp / "pubkeys").mkdir()
    lines = f'age_identity_file = "{identity}"\ndevice_pubkeys_dir = "{tmp / "pubkeys"}"\n'
    legacy = tmp / "terminal" / "device.ed25519"  # where install.sh made it (beside device.key)
    with running(tmp, lines, lambda _: generate_signing_key(legacy)) as (fleet, terminal, conf):
        assert wait_until(lambda: (d := fleet.device()) and d["last_seen"], TIMEOUT_S, 0.2), (
            terminal.log.read_text()[-3000:]
        )
        # the fleet's recipient from the enrollment applies from the reload it causes
        reloaded = wait_until(lambda: terminal.events("config_reloaded"), TIMEOUT_S, 0.2)
        assert reloaded, terminal.log.read_text()[-3000:]
        home = terminal.state / "keys" / "device.ed25519"
        yield World(fleet, terminal, conf, legacy, home, tmp / "pubkeys")


def capture(fleet: Fleet, note: str) -> str:
    """A capture command answered with a bundle; the bundle's id."""
    c = fleet.answered(fleet.command("capture", {"note": note}))
    assert c["status"] == "done", c
    return str(c["detail"].split("bundle ", 1)[1])


def download(fleet: Fleet, bundle_id: str) -> bytes:
    r = fleet.http.get(f"{fleet.url}/v1/bundles/{bundle_id}/download", timeout=30)
    assert r.status_code == 200, r.text[:300]
    return r.content


def signer(data: bytes) -> str:
    """The key id a sealed bundle's signed envelope names."""
    with BundleReader(data) as r:
        assert r.sealed
        return str(r.verify(None).manifest["signer"])


def verify_offline(path: Path, keys: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        posagent_argv("bundle", "verify", str(path), "--public-key", str(keys)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rotated_on_command_old_and_new_bundles_verify_everywhere(
    world: World, tmp_path: Path
) -> None:
    fleet, t = world.fleet, world.terminal
    legacy_bytes = world.legacy_key.read_bytes()
    (enrolled_id,) = fleet.device()["key_ids"]  # type: ignore[index]
    assert not world.home_key.exists()  # the key made before the upgrade is its identity

    before = capture(fleet, "before the rotation")
    t0 = time.monotonic()
    cid = fleet.command("rotate-signing-key")
    c = fleet.answered(cid)
    answered_s = time.monotonic() - t0
    assert c["status"] == "done", c
    old_id, new_id = c["detail"].removeprefix("signing key ").split(" -> ")
    assert old_id == enrolled_id and new_id != old_id
    promoted = wait_until(lambda: t.events("channel_signing_key_rotated"), TIMEOUT_S, 0.2)
    assert promoted, t.log.read_text()[-3000:]
    print(
        f"\nrotate-signing-key queued -> result on the collector {answered_s:.2f} s, "
        f"new key in force on the terminal {time.monotonic() - t0:.2f} s (long-poll)"
    )
    assert (promoted[0]["command_id"], promoted[0]["key_id"]) == (cid, new_id)
    assert len(t.events("channel_signing_key_staged")) == 1  # it ran once
    # the new key in the state dir (0600), the old one untouched where it was
    assert world.home_key.stat().st_mode & 0o777 == 0o600
    assert world.legacy_key.read_bytes() == legacy_bytes
    after = capture(fleet, "after the rotation")

    # on the collector: both stored with their signature checked, each by its own key
    listed = {
        b["bundle_id"]: b for b in fleet.get("/v1/bundles", device=DEVICE, limit="500")["bundles"]
    }
    assert listed[before]["signature_checked"] and listed[after]["signature_checked"]
    old_data, new_data = download(fleet, before), download(fleet, after)
    assert (signer(old_data), signer(new_data)) == (old_id, new_id)
    d = fleet.get(f"/v1/devices/{DEVICE}")
    assert d["key_ids"] == [old_id, new_id]
    assert d["keys"][0]["until"] and d["keys"][1]["until"] is None

    # offline: the keys the collector serves verify both; the old key alone only the first
    keys = fleet.http.get(f"{fleet.url}/v1/devices/{DEVICE}/keys", timeout=30)
    assert keys.status_code == 200
    (tmp_path / "keys.pem").write_text(keys.text)
    (tmp_path / "old.pem").write_text(public_pem_of(world.legacy_key))
    for name, data, kid in (("before.zip", old_data, old_id), ("after.zip", new_data, new_id)):
        (tmp_path / name).write_bytes(data)
        v = verify_offline(tmp_path / name, tmp_path / "keys.pem")
        assert v.returncode == 0, v.stdout + v.stderr
        assert f"envelope Ed25519 verified (key {kid})" in v.stdout, v.stdout
    assert verify_offline(tmp_path / "before.zip", tmp_path / "old.pem").returncode == 0
    assert verify_offline(tmp_path / "after.zip", tmp_path / "old.pem").returncode != 0
    # and on the terminal, what it sent with the keys `posagent key show-public --all` prints
    shown = subprocess.run(
        posagent_argv("key", "show-public", "--all", "--config", str(t.cfg)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and f"# key {old_id} retired" in shown.stdout, shown.stderr
    (tmp_path / "terminal.pem").write_text(shown.stdout)
    for name in ("before.zip", "after.zip"):
        assert verify_offline(tmp_path / name, tmp_path / "terminal.pem").returncode == 0

    # the result on the device page and in the audit log
    page = fleet.http.get(f"{fleet.url}/devices/{DEVICE}", timeout=30)
    assert page.status_code == 200 and f"signing key {old_id} -&gt; {new_id}" in page.text
    audit = fleet.http.get(f"{fleet.url}/v1/audit", params={"action": "command.result"}, timeout=30)
    assert audit.status_code == 200
    assert cid in audit.text and new_id in audit.text


def public_pem_of(private_key_file: Path) -> str:
    return public_pem(load_signing_key(private_key_file).public_key())


def test_a_forged_rotation_is_refused(world: World) -> None:
    """A device's token in other hands, its key not: the rotation's proof is signed by a
    key that is not the device's current one, and the collector refuses it."""
    fleet = world.fleet
    enrollment = _cli(world.conf, "enroll-token", "create", "--site", SITE).strip()
    real = Ed25519PrivateKey.generate()
    r = requests.post(
        f"{fleet.url}/v1/enroll",
        json={
            "enrollment_token": enrollment,
            "device_id": "T-FORGE",
            "ed25519_public_key": public_pem(real.public_key()),
            "agent_version": "0.1.0",
            "boot_id": "b",
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    h = {"Authorization": f"Bearer {r.json()['device_token']}", "X-Posagent-Device": "T-FORGE"}
    q = fleet.http.post(
        f"{fleet.url}/v1/devices/T-FORGE/commands",
        json={"kind": "rotate-signing-key", "expires_in_s": 900},
        timeout=30,
    )
    assert q.status_code == 201, q.text
    cid = q.json()["command"]["command_id"]
    got = requests.post(
        f"{fleet.url}/v1/checkins", json={"interval_s": 60}, headers=h, timeout=30
    ).json()
    assert len(got["commands"]) == 1
    forger, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem, prev = public_pem(new.public_key()), key_id(real.public_key())
    key = {
        "public_key": pem,
        "previous": prev,
        "signature": sign_ed25519(forger, rotation_statement(cid, "T-FORGE", pem, prev)).decode(),
    }
    result: dict[str, Any] = {"command_id": cid, "status": "done", "at": rfc3339(time.time())}
    body = {"interval_s": 60, "results": [{**result, "detail": "", "key": key}]}
    assert requests.post(f"{fleet.url}/v1/checkins", json=body, headers=h, timeout=30).ok
    d = fleet.get("/v1/devices/T-FORGE")
    (c,) = d["commands"]
    assert c["status"] == "failed" and "key rotation refused" in c["detail"], c
    assert d["key_ids"] == [prev]


def test_a_rotation_the_collector_refuses_leaves_the_old_key_in_force(world: World) -> None:
    """The terminal's current key revoked on the collector (a stolen terminal): it cannot
    vouch for a new one; the collector records the command failed and says so in its
    reply, and the terminal drops the staged key, keeping the one in force. (Last: the
    device's bundles are refused from the revocation on.)"""
    fleet, t = world.fleet, world.terminal
    current = world.home_key.read_bytes()
    kid = key_id(load_signing_key(world.home_key).public_key())
    (world.pubkeys / f"{DEVICE}.revoked").write_text(
        f"# key {kid} revoked {rfc3339(time.time())}\n{public_pem_of(world.home_key)}"
    )
    cid = fleet.command("rotate-signing-key")
    c = fleet.answered(cid)
    assert c["status"] == "failed", c
    assert f"key rotation refused: signed by revoked key {kid}" in c["detail"], c
    refused = wait_until(lambda: t.events("channel_signing_key_refused"), TIMEOUT_S, 0.2)
    assert refused, t.log.read_text()[-3000:]
    assert (refused[0]["command_id"], refused[0]["kept"]) == (cid, kid)
    assert world.home_key.read_bytes() == current
    assert not (world.home_key.parent / "device.ed25519.new").exists()
    assert not (world.home_key.parent / "device.ed25519.rotation.json").exists()
    assert cid not in [e["command_id"] for e in t.events("channel_signing_key_rotated")]

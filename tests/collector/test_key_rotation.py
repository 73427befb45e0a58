"""A terminal's signing key rotated on command, on the collector (issue 17 item 4,
docs/CHANNEL.md §3 ``rotate-signing-key``), on a real uvicorn with SQLite and PostgreSQL:
the result's new key is trusted only when the device's current key signed it; the old key
stays, marked until, so bundles signed before and after both verify, on the collector and
offline with the keys it serves; a forged or revoked rotation is refused and changes
nothing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.format import key_id, sign_ed25519
from agent.bundle.sealed import add_ed25519, public_pem, rotation_statement
from agent.core.timefmt import rfc3339
from tests.bundle.kit import make_bundle
from tests.collector.kit import upload_headers
from tests.collector.test_channel import Fleet, Terminal, verify
from tests.conftest import posagent_argv

DEV = "T-0001"


@pytest.fixture(params=["sqlite", "postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    over: dict[str, Any] = {"device_pubkeys_dir": str(tmp_path / "pubkeys")}
    (tmp_path / "pubkeys").mkdir()
    if request.param == "postgres":
        from collector.storage.postgres import migrate  # lazy: only the PostgreSQL run

        over["index_url"] = request.getfixturevalue("pg_url")
        migrate(over["index_url"])
    f = Fleet(tmp_path / "a", **over)
    yield f
    f.close()


def rotate(fleet: Fleet, t: Terminal) -> str:
    """Queue rotate-signing-key and take it in a check-in, as the terminal does; its id."""
    r = fleet.command(t.device, "rotate-signing-key")
    assert r.status_code == 201, r.text
    cid = str(r.json()["command"]["command_id"])
    got = fleet.checkin(t)
    assert got.status_code == 200, got.text
    (env,) = [verify(t, w) for w in got.json()["commands"]]
    assert (env["id"], env["kind"], env["args"]) == (cid, "rotate-signing-key", {})
    return cid


def proof(cid: str, device: str, new: Ed25519PrivateKey, signer: Ed25519PrivateKey, prev: str):
    pem = public_pem(new.public_key())
    sig = sign_ed25519(signer, rotation_statement(cid, device, pem, prev)).decode()
    return {"public_key": pem, "previous": prev, "signature": sig}


def answer(fleet: Fleet, t: Terminal, cid: str, key: dict[str, str] | None) -> dict[str, Any]:
    """Send the command's result; the check-in's reply."""
    result: dict[str, Any] = {
        "command_id": cid,
        "status": "done",
        "detail": "signing key rotated",
        "at": rfc3339(time.time()),
    }
    if key is not None:
        result["key"] = key
    r = fleet.checkin(t, results=[result])
    assert r.status_code == 200, r.text
    return dict(r.json())


def upload(fleet: Fleet, t: Terminal, key: Ed25519PrivateKey, seed: int) -> tuple[int, bytes, str]:
    b = make_bundle(device=t.device, seed=seed)
    data = add_ed25519(b.data, key)
    h = upload_headers(b.bundle_id, data, t.token, t.device)
    r = fleet.wire.put(f"{fleet.url}/v1/bundles/{b.bundle_id}", data=data, headers=h, timeout=10)
    return r.status_code, data, r.text


def device(fleet: Fleet, dev: str = DEV) -> dict[str, Any]:
    r = fleet.http.get(f"{fleet.url}/v1/devices/{dev}", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def offline(tmp: Path, name: str, data: bytes, keys: str) -> subprocess.CompletedProcess[str]:
    (tmp / name).write_bytes(data)
    (tmp / "keys.pem").write_text(keys)
    return subprocess.run(
        posagent_argv("bundle", "verify", str(tmp / name), "--public-key", str(tmp / "keys.pem")),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rotation_vouched_by_the_current_key_adds_the_new_one_and_both_verify(
    fleet: Fleet, tmp_path: Path
) -> None:
    t = fleet.terminal(DEV)
    old_id = key_id(t.key.public_key())
    status, before, text = upload(fleet, t, t.key, 1)
    assert status == 201, text
    cid = rotate(fleet, t)
    new = Ed25519PrivateKey.generate()
    new_id = key_id(new.public_key())
    reply = answer(fleet, t, cid, proof(cid, DEV, new, t.key, old_id))
    # the reply says the new key is trusted: the terminal puts it in force
    detail = f"signing key {old_id} -> {new_id}"
    assert reply["key_rotations"] == [{"command_id": cid, "status": "done", "detail": detail}]

    d = device(fleet)
    (c,) = [c for c in d["commands"] if c["command_id"] == cid]
    assert (c["status"], c["detail"]) == ("done", f"signing key {old_id} -> {new_id}")
    assert d["key_ids"] == [old_id, new_id]
    first, second = d["keys"]
    assert (first["key_id"], second["key_id"]) == (old_id, new_id)
    assert first["from"] and first["until"] and second["from"] == first["until"]
    assert second["until"] is None
    (audited,) = [e for e in fleet.audit("command.result") if e["detail"]["command"] == cid]
    assert audited["actor"] == f"device:{DEV}" and audited["detail"]["key_id"] == new_id

    # bundles signed before (and still queued) and after the rotation both verify
    status, queued, text = upload(fleet, t, t.key, 2)
    assert status == 201, text
    status, after, text = upload(fleet, t, new, 3)
    assert status == 201, text
    listed = fleet.http.get(f"{fleet.url}/v1/bundles", timeout=10).json()["bundles"]
    assert len(listed) == 3 and all(b["signature_checked"] for b in listed)
    status, _, text = upload(fleet, t, Ed25519PrivateKey.generate(), 4)
    assert status == 422 and "does not verify" in text

    # offline, with the keys the collector serves for the device
    r = fleet.http.get(f"{fleet.url}/v1/devices/{DEV}/keys", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-pem")
    assert f"# key {old_id} until" in r.text and f"# key {new_id} from" in r.text
    for name, data in (("before.zip", before), ("queued.zip", queued), ("after.zip", after)):
        v = offline(tmp_path, name, data, r.text)
        assert v.returncode == 0, v.stdout + v.stderr
    v = offline(tmp_path, "after.zip", after, public_pem(t.key.public_key()))
    assert v.returncode != 0 and "does not verify" in (v.stdout + v.stderr)

    # the device page shows the keys and the command's result
    page = fleet.http.get(f"{fleet.url}/devices/{DEV}", timeout=10)
    assert page.status_code == 200
    assert "Signing keys" in page.text and old_id in page.text and new_id in page.text
    assert f"signing key {old_id} -&gt; {new_id}" in page.text

    # the same result again (a lost reply) changes nothing
    again = answer(fleet, t, cid, proof(cid, DEV, new, t.key, old_id))
    assert device(fleet)["key_ids"] == [old_id, new_id] and "key_rotations" not in again


def test_forged_rotations_are_refused_and_change_nothing(fleet: Fleet) -> None:
    t = fleet.terminal(DEV)
    old_id = key_id(t.key.public_key())
    stranger = Ed25519PrivateKey.generate()
    new = Ed25519PrivateKey.generate()
    cases: list[tuple[str | None, str]] = [
        # the new key signed by a key that is not the device's, claiming to be its key
        (old_id, "is not signed by the device's current key"),
        # signed by a key the device never had, naming it
        (key_id(stranger.public_key()), "is not a current key"),
        # no proof at all
        (None, "carries no new public key"),
    ]
    for prev, reason in cases:
        cid = rotate(fleet, t)
        reply = answer(
            fleet, t, cid, None if prev is None else proof(cid, DEV, new, stranger, prev)
        )
        (said,) = reply["key_rotations"]  # the terminal drops the staged key
        assert (said["command_id"], said["status"]) == (cid, "failed")
        (c,) = [c for c in device(fleet)["commands"] if c["command_id"] == cid]
        assert said["detail"] == c["detail"]
        assert c["status"] == "failed" and c["detail"].startswith("key rotation refused: ")
        assert reason in c["detail"], c
    # the old key's signature over another command's statement (a replayed proof)
    cid = rotate(fleet, t)
    answer(fleet, t, cid, proof("another-command", DEV, new, t.key, old_id))
    (c,) = [c for c in device(fleet)["commands"] if c["command_id"] == cid]
    assert c["status"] == "failed" and "is not signed by" in c["detail"], c
    d = device(fleet)
    assert d["key_ids"] == [old_id] and d["keys"][0]["until"] is None
    status, _, text = upload(fleet, t, new, 5)
    assert status == 422 and "does not verify" in text
    refused = [e for e in fleet.audit("command.result") if e["detail"].get("refused")]
    assert len(refused) == 4


def test_a_revoked_key_cannot_vouch_for_a_new_one(fleet: Fleet) -> None:
    t = fleet.terminal(DEV)
    old_id = key_id(t.key.public_key())
    pubkeys = Path(fleet.cfg.device_pubkeys_dir)
    (pubkeys / f"{DEV}.revoked").write_text(
        f"# key {old_id} revoked {rfc3339(time.time() - 60)}\n{public_pem(t.key.public_key())}"
    )
    cid = rotate(fleet, t)
    new = Ed25519PrivateKey.generate()
    answer(fleet, t, cid, proof(cid, DEV, new, t.key, old_id))
    (c,) = [c for c in device(fleet)["commands"] if c["command_id"] == cid]
    assert c["status"] == "failed" and f"signed by revoked key {old_id}" in c["detail"], c
    assert device(fleet)["key_ids"] == [old_id]
    status, _, text = upload(fleet, t, t.key, 6)
    assert status == 422 and "revoked" in text


def test_a_key_learnt_from_a_rotation_is_revoked_like_any_other(
    fleet: Fleet, tmp_path: Path
) -> None:
    """`posagent collector revoke-key` finds a key the device enrolled with or rotated
    to (not in any .pub file): bundles it signs are refused from then on, the device's
    other key still signs."""
    t = fleet.terminal(DEV)
    old_id = key_id(t.key.public_key())
    cid = rotate(fleet, t)
    new = Ed25519PrivateKey.generate()
    new_id = key_id(new.public_key())
    answer(fleet, t, cid, proof(cid, DEV, new, t.key, old_id))
    c = fleet.cfg
    conf = tmp_path / "cli.toml"
    conf.write_text(
        f'[collector]\ndata_dir = "{c.data_dir}"\ntokens_file = "{c.tokens_file}"\n'
        f'device_pubkeys_dir = "{c.device_pubkeys_dir}"\n'
        + (f'index_url = "{c.index_url}"\n' if c.index_url else "")
    )

    def revoke(kid: str) -> subprocess.CompletedProcess[str]:
        argv = posagent_argv("collector", "revoke-key", DEV, kid, "--config", str(conf))
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    r = revoke("0123456789abcdef")
    assert r.returncode == 66 and old_id in r.stderr and new_id in r.stderr, r.stderr
    r = revoke(new_id)
    assert r.returncode == 0 and new_id in r.stdout, r.stderr
    status, _, text = upload(fleet, t, new, 7)
    assert status == 422 and f"signed by revoked key {new_id} of device {DEV}" in text
    status, _, text = upload(fleet, t, t.key, 8)
    assert status == 201, text

"""The collector's side of the two-way channel (issue 16, docs/CHANNEL.md) on a real
uvicorn, on SQLite and on a real PostgreSQL: enrollment and its refusals, check-ins,
signed commands and their results, expiry, the long-poll across two instances, silent
devices, remote config, rotation, scoping by principal, the CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import add_ed25519, load_public_key, public_pem
from agent.channel.delta import acked_after, checkin_body
from collector.access import Role
from collector.accounts import tokens, users
from collector.channel import checkin, commands, devices, enroll, remote_config, silent
from collector.channel.api import device_view, queue_command
from collector.channel.errors import ChannelError
from collector.channel.signing import Signer, canonical, keygen
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import BundleStore, open_store
from collector.storage.sql import Database, database
from tests.bundle.kit import make_bundle
from tests.collector.kit import (
    ADMIN,
    ADMIN_PASSWORD,
    admin_token,
    bearer,
    form_csrf,
    login,
    upload_headers,
)
from tests.conftest import posagent_argv, wait_until

SITE = "Store 12"


@dataclass
class Terminal:
    """An enrolled terminal as the collector's tests see it."""

    device: str
    token: str
    key: Ed25519PrivateKey
    collector_key: str


class Fleet:
    """A collector (one instance) with a command key and a store opened beside it; an
    admin reads and commands through `http` (the read side is closed), the terminals
    talk through `wire` (no operator credentials: only their own device tokens)."""

    def __init__(self, tmp: Path, **over: Any):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.cfg = replace(
            CollectorConfig(
                data_dir=str(tmp / "store"),
                tokens_file=str(tmp / "tokens"),
                signing_key_file=str(tmp / "command.key"),
                rate_per_minute=10_000,
                enroll_per_minute=10_000,
            ),
            **over,
        )
        if not Path(self.cfg.signing_key_file).exists():
            keygen(self.cfg.signing_key_file)
        self.admin_token = admin_token(self.cfg)
        self.server = CollectorThread(self.cfg).start()
        self.url = self.server.url
        self.http = requests.Session()  # the admin's
        self.http.headers.update(bearer(self.admin_token))
        self.wire = requests.Session()  # the terminals'
        self.store: BundleStore = open_store(self.cfg)
        self.db: Database = database(self.store)

    def token(self, site: str = SITE, **kw: Any) -> str:
        now = kw.pop("now", time.time())
        tok, _ = enroll.create_token(self.db, site=site, by="test", now=now, **kw)
        return tok

    def enroll(self, token: str, device: str, key: Ed25519PrivateKey | None = None, **extra: Any):
        key = key or Ed25519PrivateKey.generate()
        body = {
            "enrollment_token": token,
            "device_id": device,
            "ed25519_public_key": public_pem(key.public_key()),
            "agent_version": "0.1.0",
            "boot_id": "boot-1",
            **extra,
        }
        return self.wire.post(f"{self.url}/v1/enroll", json=body, timeout=10), key

    def terminal(self, device: str, site: str = SITE) -> Terminal:
        r, key = self.enroll(self.token(site), device)
        assert r.status_code == 201, r.text
        j = r.json()
        return Terminal(device, j["device_token"], key, j["collector_public_key"])

    def checkin(self, t: Terminal, *, wait: int = 0, timeout: float = 10, **body: Any):
        payload: dict[str, Any] = {
            "device_id": t.device,
            "sent_at": "2026-12-06T08:00:00Z",
            "boot_id": "boot-1",
            "agent_version": "0.1.0",
            "config_digest": "",
            "interval_s": 60,
            "summary": {"battery_pct": 54, "ac_online": True, "link": "up", "queue_depth": 2},
            "results": [],
        }
        payload.update(body)
        url = f"{self.url}/v1/checkins" + (f"?wait={wait}" if wait else "")
        return self.wire.post(
            url,
            json=payload,
            headers={"Authorization": f"Bearer {t.token}", "X-Posagent-Device": t.device},
            timeout=timeout,
        )

    def command(self, device: str, kind: str = "capture", args: Any = None, **kw: Any):
        body = {"kind": kind, "args": args or {}, **kw}
        return self.http.post(f"{self.url}/v1/devices/{device}/commands", json=body, timeout=10)

    def as_user(self, name: str) -> requests.Session:
        """A session reading with a new API token of the user `name`."""
        s = requests.Session()
        s.headers.update(
            bearer(tokens.create(self.db, name, "t", actor="test", address="local")[1])
        )
        return s

    def audit(self, action: str) -> list[dict[str, Any]]:
        """The audit log's entries of one action (``GET /v1/audit``, as the admin)."""
        r = self.http.get(f"{self.url}/v1/audit", params={"action": action}, timeout=10)
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.text.splitlines()]

    def incidents(self, **params: str) -> list[dict[str, Any]]:
        """``GET /v1/incidents`` as the admin."""
        r = self.http.get(f"{self.url}/v1/incidents", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return list(r.json()["incidents"])

    def close(self) -> None:
        self.http.close()
        self.wire.close()
        self.server.stop()
        self.store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    over: dict[str, Any] = {}
    if request.param == "postgres":
        from collector.storage.postgres import migrate

        over["index_url"] = request.getfixturevalue("pg_url")
        migrate(over["index_url"])
    f = Fleet(tmp_path / "a", **over)
    yield f
    f.close()


def verify(t: Terminal, wire: dict[str, str]) -> dict[str, Any]:
    """What the terminal does first with a delivered command: the signature, then the JSON."""
    data = base64.b64decode(wire["envelope"])
    load_public_key(t.collector_key.encode()).verify(base64.b64decode(wire["signature"]), data)
    env = json.loads(data)
    assert canonical(env) == data
    return dict(env)


# --------------------------------------------------------------------------- enrollment


def test_enrollment_and_its_refusals(fleet: Fleet) -> None:
    tok = fleet.token(uses=2)
    r, _ = fleet.enroll(tok, "T-0001")
    assert r.status_code == 201, r.text
    j = r.json()
    assert j["status"] == "enrolled" and j["device_id"] == "T-0001" and j["site"] == SITE
    assert j["device_token"] and j["checkin_interval_s"] == 300 and j["encrypt_to"] == []
    assert load_public_key(j["collector_public_key"].encode()) is not None
    assert fleet.enroll(tok, "T-0002")[0].status_code == 201
    r, _ = fleet.enroll(tok, "T-0003")  # the third use of a token good for two
    assert (r.status_code, r.json()["status"]) == (410, "token_used_up")
    assert "used 2 time(s) of 2" in r.json()["error"]

    old = fleet.token(expires_s=60, now=time.time() - 120)
    r, _ = fleet.enroll(old, "T-0004")
    assert (r.status_code, r.json()["status"]) == (410, "token_expired")
    r, _ = fleet.enroll("no-such-token", "T-0004")
    assert (r.status_code, r.json()["status"]) == (401, "bad_token")
    other = fleet.token(site="Store 99")
    r, _ = fleet.enroll(other, "T-0001")  # enrolled at Store 12
    assert (r.status_code, r.json()["status"]) == (409, "device_elsewhere")
    revoked = fleet.token()
    enroll.revoke_token(fleet.db, revoked, by="test", now=time.time())
    r, _ = fleet.enroll(revoked, "T-0005")
    assert (r.status_code, r.json()["error"]) == (401, "enrollment token revoked")
    for bad in ({"device_id": "../x"}, {"ed25519_public_key": "not a key"}):
        r, _ = fleet.enroll(fleet.token(), "T-0006", **bad)
        assert r.status_code == 400 and "\n" not in r.json()["error"], r.text
    r = fleet.wire.post(f"{fleet.url}/v1/enroll", data=b"{", timeout=10)
    assert r.status_code == 400
    # nothing of the refused attempts was stored; the refused token kept its last use
    with fleet.db.transaction(write=False) as tx:
        ids = [d.id for d in devices.listing(tx, None)[0]]
    uses = {t.id: t.uses for t in enroll.list_tokens(fleet.db)}
    assert ids == ["T-0001", "T-0002"]
    assert sorted(uses.values()) == [0, 0, 0, 0, 0, 2]


def test_device_token_for_another_device_is_403_and_unknown_is_401(fleet: Fleet) -> None:
    a = fleet.terminal("T-0001")
    b = fleet.terminal("T-0002")
    r = fleet.checkin(replace(a, device=b.device))  # a's token, b's id
    assert (r.status_code, r.json()["status"]) == (403, "forbidden")
    r = fleet.checkin(replace(a, token="nope"))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert fleet.checkin(a).status_code == 200


def test_enrollment_is_throttled_per_address(tmp_path: Path) -> None:
    f = Fleet(tmp_path, enroll_per_minute=3)
    try:
        codes = [f.enroll("wrong", f"T-{i}")[0].status_code for i in range(5)]
        assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
        r, _ = f.enroll(f.token(), "T-9")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        f.close()


def test_reenrollment_keeps_history_and_verifies_bundles_with_enrolled_keys(fleet: Fleet) -> None:
    t = fleet.terminal("T-0001")
    assert fleet.checkin(t).status_code == 200
    assert fleet.command("T-0001", "selftest").status_code == 201
    signed = add_ed25519(make_bundle(device="T-0001").data, t.key)
    bid = json.loads(_manifest(signed))["bundle_id"]
    h = upload_headers(bid, signed, t.token, "T-0001")
    r = fleet.wire.put(f"{fleet.url}/v1/bundles/{bid}", data=signed, headers=h, timeout=10)
    assert r.status_code == 201, r.text
    got = fleet.http.get(f"{fleet.url}/v1/bundles/{bid}", timeout=10)
    assert got.status_code == 200
    listed = fleet.http.get(f"{fleet.url}/v1/bundles", timeout=10).json()["bundles"]
    assert listed[0]["signature_checked"] is True and listed[0]["site"] == SITE

    # the terminal is re-imaged: a new key, a new token for the same site
    r, new_key = fleet.enroll(fleet.token(), "T-0001")
    assert r.status_code == 201
    t2 = Terminal("T-0001", r.json()["device_token"], new_key, t.collector_key)
    assert fleet.checkin(t).status_code == 401  # the old token is replaced
    assert fleet.checkin(t2).status_code == 200
    d = fleet.http.get(f"{fleet.url}/v1/devices/T-0001", timeout=10).json()
    assert d["enrollments"] == 2 and len(d["key_ids"]) == 2
    assert [c["kind"] for c in d["commands"]] == ["selftest"]  # its history stays
    # both enrollments and the queued command are in the audit log, with who did them
    for action in ("device.enroll", "device.reenroll"):
        (e,) = fleet.audit(action)
        assert (e["actor"], e["target"], e["detail"]["site"]) == ("device:T-0001", "T-0001", SITE)
    (q,) = fleet.audit("command.queue")
    assert (q["actor"], q["target"], q["detail"]["kind"]) == (ADMIN, "T-0001", "selftest")
    assert q["detail"]["command"] == d["commands"][0]["command_id"]
    # bundles signed by either key verify; one signed by a stranger's key is refused
    for key, expect in ((t.key, 201), (new_key, 201), (Ed25519PrivateKey.generate(), 422)):
        b = make_bundle(device="T-0001", seed=int.from_bytes(uuid.uuid4().bytes[:2], "big"))
        data = add_ed25519(b.data, key)
        h = upload_headers(b.bundle_id, data, t2.token, "T-0001")
        r = fleet.wire.put(
            f"{fleet.url}/v1/bundles/{b.bundle_id}", data=data, headers=h, timeout=10
        )
        assert r.status_code == expect, r.text
    assert "does not verify" in r.json()["error"]


def _manifest(data: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read("manifest.json")


# --------------------------------------------------------------------------- check-ins, commands


def test_checkin_stores_state_and_delivers_signed_commands_until_answered(fleet: Fleet) -> None:
    t = fleet.terminal("T-0001")
    r = fleet.checkin(
        t, summary={"battery_pct": 4, "ac_online": False, "active_faults": ["power.ac_lost"]}
    )
    assert r.status_code == 200 and r.json() == {
        "status": "ok",
        "commands": [],
        "next_checkin_s": 60,
        "state": r.json()["state"],  # the next check-in's base (the delta test)
    }
    assert len(r.json()["state"]) == 16
    # a metered link pays every byte: none of the browser headers of the pages, and on a
    # 200 (JSON of the collector's own making) not even nosniff, which errors still carry
    assert "x-content-type-options" not in r.headers
    assert "content-security-policy" not in r.headers
    bad = fleet.http.post(f"{fleet.url}/v1/checkins", data=b"{", timeout=10)
    assert bad.status_code >= 400 and bad.headers["x-content-type-options"] == "nosniff"
    d = fleet.http.get(f"{fleet.url}/v1/devices/T-0001", timeout=10).json()
    assert d["state"] == "ok" and d["summary"]["battery_pct"] == 4 and d["last_seen"]
    assert d["summary"]["active_faults"] == ["power.ac_lost"] and d["interval_s"] == 60

    q = fleet.command("T-0001", "capture", {"note": "merchant on the phone"}, expires_in_s=600)
    assert q.status_code == 201, q.text
    cid = q.json()["command"]["command_id"]
    for _ in range(2):  # delivered again until the terminal answers
        cmds = fleet.checkin(t).json()["commands"]
        assert len(cmds) == 1
        env = verify(t, cmds[0])
        assert env["id"] == cid and env["device"] == "T-0001" and env["kind"] == "capture"
        assert env["v"] == 1 and env["args"] == {"note": "merchant on the phone"}
    # a tampered envelope does not verify
    bad = dict(
        cmds[0], envelope=base64.b64encode(base64.b64decode(cmds[0]["envelope"]) + b" ").decode()
    )
    with pytest.raises(Exception, match="InvalidSignature|"):
        verify(t, bad)

    done = {"command_id": cid, "status": "done", "detail": "bundle 0190\nmade", "at": "x"}
    assert fleet.checkin(t, results=[done]).json()["commands"] == []
    listed = fleet.http.get(f"{fleet.url}/v1/devices/T-0001/commands", timeout=10).json()
    c = listed["commands"][0]
    assert (c["status"], c["detail"], c["deliveries"]) == ("done", "bundle 0190 made", 2)
    (res,) = fleet.audit("command.result")  # the terminal's answer, audited once
    assert (res["actor"], res["target"]) == ("device:T-0001", "T-0001")
    assert (res["detail"]["command"], res["detail"]["status"]) == (cid, "done")
    # the same result again (a reply lost on the way), or a result for another device's
    # command, changes nothing
    other = fleet.terminal("T-0002")
    oc = fleet.command("T-0002", "selftest").json()["command"]["command_id"]
    refused = {"command_id": cid, "status": "refused", "detail": "late"}
    stolen = {"command_id": oc, "status": "failed", "detail": "not mine"}
    assert fleet.checkin(t, results=[refused, stolen]).status_code == 200
    assert (
        fleet.http.get(f"{fleet.url}/v1/devices/T-0001/commands", timeout=10).json()["commands"][0][
            "status"
        ]
        == "done"
    )
    assert [verify(other, w)["id"] for w in fleet.checkin(other).json()["commands"]] == [oc]
    r = fleet.checkin(
        other, results=[{"command_id": oc, "status": "refused", "detail": "sensitive window"}]
    )
    assert r.json()["commands"] == []
    c = fleet.http.get(f"{fleet.url}/v1/devices/T-0002", timeout=10).json()["commands"][0]
    assert (c["status"], c["detail"]) == ("refused", "sensitive window")


def test_commands_are_checked_and_bounded(fleet: Fleet) -> None:
    fleet.terminal("T-0001")
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    far = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 8 * 86400))
    good = [
        ("capture", {}),
        ("selftest", {}),
        ("logs", {"name": "pos-app"}),
        ("set-level", {"faults": {"printer.paper_end": {"severity": "warning"}}, "until": until}),
        ("set-level", {"capture": {"cooldown_s": 30}, "until": until}),
        ("checkin-interval", {"seconds": 120}),
        ("rotate-token", {}),
    ]
    for kind, args in good:
        r = fleet.command("T-0001", kind, args)
        assert r.status_code == 201, (kind, r.text)
    bad: list[tuple[str, Any, dict[str, Any]]] = [
        ("shell", {"cmd": "rm -rf /"}, {}),
        ("capture", {"cmd": "x"}, {}),
        ("logs", {"name": "../../etc/shadow"}, {}),
        ("set-level", {"faults": {"no.such": {"severity": "warning"}}, "until": until}, {}),
        ("set-level", {"faults": {"printer.paper_end": {"severity": "loud"}}, "until": until}, {}),
        ("set-level", {"capture": {"cooldown_s": 30}, "until": far}, {}),
        ("checkin-interval", {"seconds": 5}, {}),
        ("selftest", {}, {"expires_in_s": 10**9}),
        ("selftest", {}, {"expires_in_s": "soon"}),
    ]
    for kind, args, extra in bad:
        r = fleet.command("T-0001", kind, args, **extra)
        assert r.status_code == 400 and "\n" not in r.json()["error"], (kind, r.text)
    assert fleet.command("T-9999", "selftest").status_code == 404


def test_expired_commands_are_never_delivered(fleet: Fleet) -> None:
    t = fleet.terminal("T-0001")
    signer = Signer(fleet.cfg.signing_key_file)
    with fleet.db.transaction() as tx:
        old = commands.queue(
            tx,
            signer,
            "T-0001",
            "selftest",
            {},
            expires_in_s=60,
            by="test",
            address="-",
            now=time.time() - 120,
        )
    assert fleet.checkin(t).json()["commands"] == []
    c = fleet.http.get(f"{fleet.url}/v1/devices/T-0001/commands", timeout=10).json()["commands"]
    assert [(x["command_id"], x["status"], x["deliveries"]) for x in c] == [(old.id, "expired", 0)]


def test_longpoll_returns_when_a_command_is_queued_on_this_instance(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    try:
        _longpoll_then_queue(f, f)
    finally:
        f.close()


def test_longpoll_wakes_on_a_command_queued_by_another_instance(
    tmp_path: Path, pg_url: str
) -> None:
    from collector.storage.postgres import migrate

    migrate(pg_url)
    a = Fleet(tmp_path / "a", index_url=pg_url)
    b = Fleet(tmp_path / "b", index_url=pg_url, signing_key_file=a.cfg.signing_key_file)
    try:
        _longpoll_then_queue(a, b)
    finally:
        a.close()
        b.close()


def _longpoll_then_queue(waits_on: Fleet, queues_on: Fleet) -> None:
    t = waits_on.terminal("T-0001")
    got: dict[str, Any] = {}

    def poll() -> None:
        r = waits_on.checkin(t, wait=50, timeout=120)
        got["reply"] = r.json()
        got["at"] = time.monotonic()

    th = threading.Thread(target=poll)
    th.start()
    col = waits_on.server.server.config.app.state.collector  # type: ignore[attr-defined]
    assert wait_until(lambda: col.channel.waiters.waiting == 1, timeout_s=30)
    queued_at = time.monotonic()
    r = queues_on.command("T-0001", "capture")
    assert r.status_code == 201
    th.join(timeout=120)
    cmds = got["reply"]["commands"]
    assert [verify(t, w)["id"] for w in cmds] == [r.json()["command"]["command_id"]]
    assert got["at"] - queued_at < 45  # woken, not the end of its 50 s wait


# --------------------------------------------------------------------------- silent devices


def test_silent_then_back_with_the_outage_duration(fleet: Fleet) -> None:
    fleet.terminal("T-0001")
    ci = checkin.CheckIn(
        "T-0001", "boot-1", "0.1.0", "", 60, {"battery_pct": 4, "ac_online": False}
    )
    t0 = 1_900_000_000.0
    checkin.process(fleet.db, ci, site=SITE, address="test", now=t0, silent_after=3)
    assert silent.sweep(fleet.db, t0 + 3 * 60 - 1) == []  # not yet: 3 intervals
    with structlog.testing.capture_logs() as logs:
        assert silent.sweep(fleet.db, t0 + 3 * 60 + 1) == ["T-0001"]
        assert silent.sweep(fleet.db, t0 + 3 * 60 + 2) == []  # once
    event = [e for e in logs if e["event"] == "device_silent"]
    assert len(event) == 1 and event[0]["device"] == "T-0001" and event[0]["site"] == SITE
    assert event[0]["last_seen"] == t0
    # the fleet-side incident: one, open, critical, its summary the last summary in words
    (inc,) = fleet.incidents(fault="device.silent")
    assert (inc["device"], inc["site"], inc["source"]) == ("T-0001", SITE, "fleet")
    assert (inc["status"], inc["active"], inc["severity"]) == ("open", True, "critical")
    assert inc["bundles"] == 0
    assert inc["summary"] == "T-0001 stopped checking in (last: battery 4 %, AC lost)"
    with fleet.db.transaction(write=False) as tx:
        d = devices.get(tx, "T-0001")
        assert d is not None and d.state(t0 + 400) == "silent"
    # (its page's "Silent since": test_device_pages_show_state_and_queue_a_capture)
    d_json = fleet.http.get(f"{fleet.url}/v1/devices/T-0001", timeout=10).json()
    assert d_json["state"] == "silent" and d_json["silent_since"]

    back = replace(ci, boot_id="boot-2", summary={"battery_pct": 80, "ac_online": True})
    with structlog.testing.capture_logs() as logs:
        reply = checkin.process(
            fleet.db, back, site=SITE, address="t", now=t0 + 1000, silent_after=3
        )
    assert reply.came_back
    ev = [e for e in logs if e["event"] == "device_back"]
    assert len(ev) == 1 and ev[0]["outage_s"] == 1000.0 and ev[0]["rebooted"] is True
    with fleet.db.transaction(write=False) as tx:
        (o,) = silent.outages(tx, "T-0001")
        d = devices.get(tx, "T-0001")
    assert (o.last_seen, o.silent_at, o.back_at, o.outage_s) == (t0, t0 + 181, t0 + 1000, 1000.0)
    assert o.last_summary == {"battery_pct": 4, "ac_online": False} and o.rebooted is True
    assert d is not None and d.silent_since is None and d.state(t0 + 1001) == "ok"
    # its return cleared the incident, which lasted the outage
    assert fleet.incidents(fault="device.silent", status="unresolved")[0]["id"] == inc["id"]
    (cleared,) = fleet.incidents(fault="device.silent")
    assert cleared["id"] == inc["id"] and cleared["active"] is False
    assert cleared["duration_s"] == 1000.0 and cleared["cleared_at"] is not None
    events = fleet.http.get(f"{fleet.url}/v1/incidents/{inc['id']}", timeout=10).json()["events"]
    assert sorted(e["kind"] for e in events) == ["cleared", "opened"]
    # the next silence waits for the interval the terminal now reports
    checkin.process(
        fleet.db,
        replace(back, interval_s=600),
        site=SITE,
        address="t",
        now=t0 + 2000,
        silent_after=3,
    )
    assert silent.sweep(fleet.db, t0 + 2000 + 1000) == []
    assert silent.sweep(fleet.db, t0 + 2000 + 1801) == ["T-0001"]


def test_silent_worker_sweeps_on_its_clock(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    try:
        t = f.terminal("T-0001")
        assert f.checkin(t).status_code == 200
        clock = {"now": time.time()}
        worker = silent.SilentWorker(f.db, 0.05, clock=lambda: clock["now"]).start()
        try:
            clock["now"] += 3 * 60 + 5
            assert wait_until(
                lambda: (
                    f.http.get(f"{f.url}/v1/devices/T-0001", timeout=10).json()["state"] == "silent"
                ),
                timeout_s=30,
            )
        finally:
            worker.stop()
        (inc,) = f.incidents(fault="device.silent")
        assert (inc["device"], inc["status"], inc["active"]) == ("T-0001", "open", True)
        assert inc["summary"] == (
            "T-0001 stopped checking in (last: battery 54 %, link up, 2 bundles queued)"
        )
        assert f.checkin(t).status_code == 200
        d = f.http.get(f"{f.url}/v1/devices/T-0001", timeout=10).json()
        assert d["state"] == "ok" and d["outages"][0]["outage_s"] >= 0
        (cleared,) = f.incidents(fault="device.silent")
        assert cleared["id"] == inc["id"] and cleared["active"] is False
        assert cleared["duration_s"] == pytest.approx(d["outages"][0]["outage_s"], abs=0.01)
    finally:
        f.close()


# --------------------------------------------------------------------------- remote config


def test_remote_config_set_show_and_delivery_by_digest(fleet: Fleet) -> None:
    t = fleet.terminal("T-0001")
    now = time.time()
    remote_config.set_value(fleet.db, "", "capture.cooldown_s", 60, by="test", now=now)
    remote_config.set_value(fleet.db, "", "upload.checkin_interval_s", 600, by="test", now=now)
    remote_config.set_value(fleet.db, SITE, "capture.cooldown_s", 30, by="test", now=now)
    remote_config.set_value(
        fleet.db, "", "faults.printer.paper_end.severity", "warning", by="test", now=now
    )
    cfg = fleet.checkin(t).json()["config"]
    assert cfg["values"] == {
        "capture.cooldown_s": 30,  # the site's value over the fleet's
        "faults.printer.paper_end.severity": "warning",
        "upload.checkin_interval_s": 600,
    }
    assert cfg["digest"].startswith("sha256:") and cfg["digest"] == remote_config.digest(
        cfg["values"]
    )
    assert "config" not in fleet.checkin(t, config_digest=cfg["digest"]).json()
    remote_config.unset_value(fleet.db, SITE, "capture.cooldown_s", by="test")
    again = fleet.checkin(t, config_digest=cfg["digest"]).json()["config"]
    assert again["values"]["capture.cooldown_s"] == 60 and again["digest"] != cfg["digest"]
    # a new terminal learns the interval at enrollment
    r, _ = fleet.enroll(fleet.token(), "T-0002")
    assert r.json()["checkin_interval_s"] == 600
    for key, value in (
        ("agent.device_id", "x"),
        ("upload.endpoint", "http://evil"),
        ("capture.cooldown_s", -1),
        ("capture.burst", "many"),
        ("upload.checkin_interval_s", 5),
        ("faults.no.such.severity", "warning"),
        ("faults.printer.paper_end.command", "x"),
        ("screen.sensitive_windows", ["("]),
        ("screen.sensitive_windows", []),
    ):
        with pytest.raises(remote_config.RemoteConfigError) as e:
            remote_config.set_value(fleet.db, "", key, value, by="test", now=now)
        assert "\n" not in str(e.value)


def _cli(cfg_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        posagent_argv("collector", *args, "--config", str(cfg_file)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_keygen_enroll_tokens_and_remote_config(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text(
        f'[collector]\ndata_dir = "{tmp_path / "store"}"\ntokens_file = "{tmp_path / "tokens"}"\n'
        f'signing_key_file = "{tmp_path / "command.key"}"\n'
    )
    r = _cli(conf, "keygen")
    assert r.returncode == 0 and r.stdout.startswith("-----BEGIN PUBLIC KEY-----"), r.stderr
    assert (tmp_path / "command.key").stat().st_mode & 0o777 == 0o600
    again = _cli(conf, "keygen")
    assert again.returncode == 73 and "exists" in again.stderr

    r = _cli(conf, "enroll-token", "create", "--site", SITE, "--uses", "3", "--expires", "2h")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert len(token) >= 40 and "shown once" in r.stderr
    listed = json.loads(_cli(conf, "enroll-token", "list", "--json").stdout)
    assert [(x["site"], x["uses_max"], x["state"]) for x in listed] == [(SITE, 3, "usable")]
    store_text = b"".join(p.read_bytes() for p in (tmp_path / "store").glob("index.sqlite3*"))
    assert token.encode() not in store_text  # stored hashed
    bad = _cli(conf, "enroll-token", "create", "--site", SITE, "--expires", "forever")
    assert bad.returncode == 64 and bad.stderr.count("\n") == 1
    r = _cli(conf, "enroll-token", "revoke", listed[0]["id"])
    assert r.returncode == 0 and "revoked" in r.stdout
    assert json.loads(_cli(conf, "enroll-token", "list", "--json").stdout)[0]["state"] == "revoked"
    assert _cli(conf, "enroll-token", "revoke", "0123456789ab").returncode == 66

    assert _cli(conf, "remote-config", "set", "capture.cooldown_s", "45").returncode == 0
    r = _cli(conf, "remote-config", "set", "--site", SITE, "screen.sensitive_windows", '["PIN.*"]')
    assert r.returncode == 0, r.stderr
    bad = _cli(conf, "remote-config", "set", "upload.endpoint", "http://x")
    assert bad.returncode == 64 and "not a remote config key" in bad.stderr
    shown = json.loads(_cli(conf, "remote-config", "show", "--site", SITE, "--json").stdout)
    assert shown["values"] == {"capture.cooldown_s": 45, "screen.sensitive_windows": ["PIN.*"]}
    assert shown["digest"] == remote_config.digest(shown["values"])
    assert _cli(conf, "remote-config", "unset", "capture.cooldown_s").returncode == 0
    assert _cli(conf, "remote-config", "unset", "capture.cooldown_s").returncode == 1
    text = _cli(conf, "remote-config", "show").stdout
    assert f"{SITE}\tscreen.sensitive_windows" in text and "capture.cooldown_s" not in text


# --------------------------------------------------------------------------- rotation, scope


def test_rotate_token_old_works_until_the_new_is_used(fleet: Fleet) -> None:
    t = fleet.terminal("T-0001")
    h = {"Authorization": f"Bearer {t.token}", "X-Posagent-Device": t.device}
    r = fleet.wire.post(f"{fleet.url}/v1/devices/self/token", headers=h, timeout=10)
    assert r.status_code == 200, r.text
    new = replace(t, token=r.json()["device_token"])
    assert fleet.checkin(t).status_code == 200  # the reply may have been lost: old still works
    assert fleet.checkin(new).status_code == 200
    assert fleet.checkin(t).status_code == 401  # first use of the new one retired the old
    assert fleet.checkin(new).status_code == 200


def test_a_new_token_refused_for_its_body_still_retires_the_old(fleet: Fleet) -> None:
    """The token is resolved in the check-in's transaction: a check-in with the new token
    that is then refused (its body) keeps the promotion, as a separate lookup did; the
    remote config reaches the terminal merged (the fleet's, its site's on top)."""
    t = fleet.terminal("T-0001")
    h = {"Authorization": f"Bearer {t.token}", "X-Posagent-Device": t.device}
    r = fleet.wire.post(f"{fleet.url}/v1/devices/self/token", headers=h, timeout=10)
    assert r.status_code == 200, r.text
    new = replace(t, token=r.json()["device_token"])
    bad = fleet.checkin(new, interval_s="soon")
    assert bad.status_code == 400 and "interval_s" in bad.json()["error"]
    assert fleet.checkin(t).status_code == 401  # retired by the refused check-in
    now = time.time()
    remote_config.set_value(fleet.db, "", "upload.checkin_interval_s", 600, by="test", now=now)
    remote_config.set_value(fleet.db, SITE, "upload.checkin_interval_s", 900, by="test", now=now)
    remote_config.set_value(fleet.db, "", "capture.cooldown_s", 60, by="test", now=now)
    remote_config.set_value(fleet.db, "Elsewhere", "capture.cooldown_s", 5, by="test", now=now)
    r = fleet.checkin(new)
    assert r.status_code == 200, r.text
    with fleet.db.transaction(write=False) as tx:
        assert r.json()["config"]["values"] == remote_config.values_for(tx, SITE)
    assert r.json()["config"]["values"] == {
        "capture.cooldown_s": 60,
        "upload.checkin_interval_s": 900,
    }


def test_devices_and_commands_are_scoped_by_principal(fleet: Fleet) -> None:
    """Users of tenant Acme (which owns Store A) reach Store A's devices only, through the
    functions and over HTTP: support queues commands there, a merchant only reads, a
    device out of reach answers 404 as one that does not exist."""
    fleet.terminal("T-A1", site="Store A")
    fleet.terminal("T-A2", site="Store A")
    fleet.terminal("T-B1", site="Store B")
    with fleet.db.transaction() as tx:
        users.place_site(tx, "Store A", "Acme")
        users.place_site(tx, "Store B", "Beta")
    for name, role, tenant in (
        ("sam", Role.SUPPORT, "Acme"),
        ("mo", Role.MERCHANT, "Acme"),
        ("x", Role.SUPPORT, "Empty"),  # a tenant with no sites
    ):
        users.add_user(
            fleet.db, name, role, password="a long password 1", tenants_=[tenant],
            actor="test", address="local",
        )  # fmt: skip
    accounts = [users.get_user(fleet.db, n) for n in ("sam", "mo", "x")]
    with fleet.db.transaction(write=False) as tx:
        a_support, a_merchant, nobody = (users.principal(tx, u, "token") for u in accounts)
        assert a_support.sites == a_merchant.sites == frozenset({"Store A"})
        assert nobody.sites == frozenset()
        assert [d.id for d in devices.listing(tx, a_support.sites)[0]] == ["T-A1", "T-A2"]
        assert devices.listing(tx, a_support.sites, site="Store B") == ([], 0)
        assert devices.listing(tx, nobody.sites) == ([], 0)
        assert devices.listing(tx, None)[1] == 3
    assert device_view(fleet.db, "T-A1", a_support.sites).device.site == "Store A"
    with pytest.raises(ChannelError) as e:
        device_view(fleet.db, "T-B1", a_support.sites)
    assert e.value.code == 404
    ch = fleet.server.server.config.app.state.collector.channel  # type: ignore[attr-defined]
    now = time.time()
    with pytest.raises(ChannelError) as e:
        queue_command(ch, "T-B1", {"kind": "selftest"}, who=a_support, address="t", now=now)
    assert e.value.code == 404  # out of reach reads as absent
    with pytest.raises(ChannelError) as e:
        queue_command(ch, "T-A1", {"kind": "selftest"}, who=a_merchant, address="t", now=now)
    assert e.value.code == 403
    cmd = queue_command(ch, "T-A1", {"kind": "selftest"}, who=a_support, address="t", now=now)
    assert cmd.issued_by == "sam"

    # the same over HTTP, with each user's own API token
    url = fleet.url
    sam, mo, x = (fleet.as_user(n) for n in ("sam", "mo", "x"))
    listing = sam.get(f"{url}/v1/devices?site=Store+A&limit=1", timeout=10).json()
    assert listing["total"] == 2 and [d["device_id"] for d in listing["devices"]] == ["T-A1"]
    mine = sam.get(f"{url}/v1/devices", timeout=10).json()
    assert [d["device_id"] for d in mine["devices"]] == ["T-A1", "T-A2"]
    assert sam.get(f"{url}/v1/devices?site=Store+B", timeout=10).json()["total"] == 0
    assert x.get(f"{url}/v1/devices", timeout=10).json()["total"] == 0
    assert fleet.http.get(f"{url}/v1/devices", timeout=10).json()["total"] == 3  # the admin
    for path in ("/v1/devices/T-B1", "/v1/devices/T-B1/commands"):
        denied, absent = (
            sam.get(url + path, timeout=10),
            sam.get(url + path.replace("B1", "Z9"), timeout=10),
        )
        assert denied.status_code == absent.status_code == 404, path
        assert denied.json()["error"].replace("B1", "Z9") == absent.json()["error"]
    body = {"kind": "selftest"}
    assert sam.post(f"{url}/v1/devices/T-B1/commands", json=body, timeout=10).status_code == 404
    assert mo.post(f"{url}/v1/devices/T-A1/commands", json=body, timeout=10).status_code == 403
    assert mo.get(f"{url}/v1/devices/T-A1", timeout=10).status_code == 200  # merchants read
    r = sam.post(f"{url}/v1/devices/T-A1/commands", json=body, timeout=10)
    assert r.status_code == 201 and r.json()["command"]["issued_by"] == "sam"
    issued = sam.get(f"{url}/v1/devices/T-A1/commands", timeout=10).json()["commands"]
    assert [c["issued_by"] for c in issued] == ["sam", "sam"]
    assert [
        c["kind"] for c in mo.get(f"{url}/v1/devices/T-A1/commands", timeout=10).json()["commands"]
    ] == ["selftest", "selftest"]
    for s in (sam, mo, x):
        s.close()


def test_device_pages_show_state_and_queue_a_capture(fleet: Fleet) -> None:
    """The pages as a browser uses them: a logged-in admin's session, its CSRF token."""
    t = fleet.terminal("T-0001")
    assert (
        fleet.checkin(t, summary={"battery_pct": 7, "printer": "<b>paper</b>"}).status_code == 200
    )
    browser = requests.Session()
    assert login(browser, fleet.url, ADMIN, ADMIN_PASSWORD, "/devices").status_code == 303
    lst = browser.get(f"{fleet.url}/devices", timeout=10)
    assert lst.status_code == 200 and "T-0001" in lst.text
    assert "default-src 'none'" in lst.headers["content-security-policy"]
    page = browser.get(f"{fleet.url}/devices/T-0001", timeout=10)
    assert page.status_code == 200 and "&lt;b&gt;paper&lt;/b&gt;" in page.text
    assert "<b>paper" not in page.text
    form = {"kind": "capture", "note": "from the page"}
    forged = browser.post(f"{fleet.url}/devices/T-0001/commands", data=form, timeout=10)
    assert forged.status_code == 403 and "CSRF" in forged.text  # no token: nothing queued
    r = browser.post(
        f"{fleet.url}/devices/T-0001/commands",
        data={**form, "csrf": form_csrf(page.text)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303 and r.headers["location"] == "/devices/T-0001"
    page = browser.get(f"{fleet.url}/devices/T-0001", timeout=10)
    assert "capture" in page.text and "queued" in page.text
    (wire,) = fleet.checkin(t).json()["commands"]  # the forged post queued nothing
    env = verify(t, wire)
    assert env["args"] == {"note": "from the page"}
    bad = browser.post(
        f"{fleet.url}/devices/T-0001/commands",
        data={"kind": "shell", "csrf": form_csrf(page.text)},
        timeout=10,
    )
    assert bad.status_code == 400 and "kind must be one of" in bad.text
    assert browser.get(f"{fleet.url}/devices/T-9", timeout=10).status_code == 404
    # a silent device's page says since when
    assert silent.sweep(fleet.db, time.time() + 3 * 60 + 5) == ["T-0001"]
    assert "Silent since" in browser.get(f"{fleet.url}/devices/T-0001", timeout=10).text
    browser.close()


def test_a_tokens_file_device_checks_in_and_gets_commands(tmp_path: Path) -> None:
    from collector.auth import add_device

    f = Fleet(tmp_path)
    try:
        token = add_device(f.cfg.tokens_file, "T-FILE", site="Store 7")
        t = Terminal("T-FILE", token, Ed25519PrivateKey.generate(), "")
        assert f.checkin(t).status_code == 200
        d = f.http.get(f"{f.url}/v1/devices/T-FILE", timeout=10).json()
        assert d["site"] == "Store 7" and d["state"] == "ok"
        # an enrollment of that id at another site is refused; at its own site accepted
        r, _ = f.enroll(f.token(site="Store 9"), "T-FILE")
        assert r.status_code == 409
        h = {"Authorization": f"Bearer {token}", "X-Posagent-Device": "T-FILE"}
        r = f.wire.post(f"{f.url}/v1/devices/self/token", headers=h, timeout=10)
        assert r.status_code == 409 and "add-device --rotate" in r.json()["error"]
    finally:
        f.close()


def test_an_enrollment_token_with_a_tenant_places_its_site(fleet: Fleet) -> None:
    """`enroll-token create --site S --tenant T` gives S to T (its people then see what
    enrolls there); a site another tenant holds is refused in one line."""
    db = database(fleet.store)
    enroll.create_token(db, site="Store 7", tenant="Acme", by="test", now=time.time())
    assert users.site_tenants(db)["Store 7"] == "Acme"
    with pytest.raises(ValueError, match="belongs to tenant 'Acme'"):
        enroll.create_token(db, site="Store 7", tenant="Beta", by="test", now=time.time())


def test_a_checkin_sends_only_what_changed_since_the_collectors_state(fleet: Fleet) -> None:
    """docs/CHANNEL.md §2, both ends: the agent's bodies (agent.channel.delta) against the
    real collector. Whole first; then on the reply's state token only what changed; a
    base the collector no longer holds changes nothing and is answered 409 resend."""
    t = fleet.terminal("T-0001")
    h = {"Authorization": f"Bearer {t.token}", "X-Posagent-Device": t.device}

    def post(body: dict[str, Any]) -> requests.Response:
        return fleet.wire.post(f"{fleet.url}/v1/checkins", json=body, headers=h, timeout=10)

    def stored() -> dict[str, Any]:
        return dict(fleet.http.get(f"{fleet.url}/v1/devices/{t.device}", timeout=10).json())

    first: dict[str, Any] = {
        "device_id": t.device,
        "sent_at": "2026-12-06T08:00:00Z",
        "boot_id": "boot-1",
        "agent_version": "0.1.0",
        "config_digest": "",
        "interval_s": 60,
        "summary": {"battery_pct": 54, "ac_online": True, "link": "up", "active_faults": []},
    }
    r = post(checkin_body(first, [], None))
    assert r.status_code == 200, r.text
    acked = acked_after(r.json(), first)
    assert acked is not None
    later = {
        **first,
        "sent_at": "2026-12-06T08:05:00Z",
        "summary": {**first["summary"], "battery_pct": 12, "active_faults": ["power.low"]},
    }
    body = checkin_body(later, [], acked)
    assert body == {
        "base": acked.token,
        "summary": {"battery_pct": 12, "active_faults": ["power.low"]},
    }
    r = post(body)
    assert r.status_code == 200, r.text
    d = stored()
    assert d["summary"] == later["summary"]
    assert (d["boot_id"], d["agent_version"], d["interval_s"]) == ("boot-1", "0.1.0", 60)
    acked2 = acked_after(r.json(), later)
    assert acked2 is not None and acked2.token != acked.token
    # the first token again: the collector's state has moved on since
    seen = d["last_seen"]
    r = post(checkin_body({**later, "summary": {"battery_pct": 1}}, [], acked))
    assert (r.status_code, r.json()["status"]) == (409, "resend"), r.text
    assert stored()["summary"] == later["summary"] and stored()["last_seen"] == seen
    assert post({"base": 5}).status_code == 400
    # a reboot: only the boot id goes, the summary stays
    rebooted = {**later, "boot_id": "boot-2"}
    body = checkin_body(rebooted, [], acked2)
    assert body == {"base": acked2.token, "boot_id": "boot-2"}
    assert post(body).status_code == 200
    d = stored()
    assert d["boot_id"] == "boot-2" and d["summary"] == later["summary"]
    # a device the collector holds nothing of: resend
    other = fleet.terminal("T-0002")
    r = fleet.wire.post(
        f"{fleet.url}/v1/checkins",
        json={"base": acked2.token},
        headers={"Authorization": f"Bearer {other.token}", "X-Posagent-Device": other.device},
        timeout=10,
    )
    assert (r.status_code, r.json()["status"]) == (409, "resend"), r.text

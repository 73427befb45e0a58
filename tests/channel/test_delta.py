"""agent/channel/delta.py: the check-in body, whole or only what changed (docs/CHANNEL.md §2),
and the daemon's channel sending it whole again on `409 resend`. Both ends' bodies against
each other: tests/collector/test_channel.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from agent.channel.client import Channel
from agent.channel.delta import Acked, acked_after, checkin_body
from agent.core.config import load_config
from collector.channel import enroll
from collector.channel.signing import keygen
from collector.config import CollectorConfig
from collector.server import CollectorThread
from collector.storage import open_store
from collector.storage.sql import database
from tests.conftest import write_config

FIELDS = {
    "device_id": "T-1",
    "sent_at": "2026-12-06T08:00:00Z",
    "boot_id": "b1",
    "agent_version": "0.1.0",
    "config_digest": "sha256:aa",
    "interval_s": 300,
    "summary": {"battery_pct": 54, "payment_latency_ms": 41.5, "active_faults": []},
}


def test_whole_without_a_token() -> None:
    assert checkin_body(FIELDS, [], None) == {**FIELDS, "results": []}


def test_only_changes_on_a_token_results_when_any_and_a_dropped_field_as_null() -> None:
    acked = Acked("t1", FIELDS)
    assert checkin_body({**FIELDS, "sent_at": "later"}, [], acked) == {"base": "t1"}
    now = {
        **FIELDS,
        "interval_s": 60,
        "summary": {"battery_pct": 54, "payment_latency_ms": 39.0, "printer": "ok"},
    }
    result = {"command_id": "c", "status": "done", "detail": "", "at": "x"}
    assert checkin_body(now, [result], acked) == {
        "base": "t1",
        "interval_s": 60,
        "summary": {"payment_latency_ms": 39.0, "printer": "ok", "active_faults": None},
        "results": [result],
    }


def test_a_reply_without_a_usable_state_means_whole_next_time() -> None:
    assert acked_after({"status": "ok"}, FIELDS) is None
    assert acked_after({"state": 5}, FIELDS) is None
    assert acked_after({"state": "x" * 65}, FIELDS) is None
    assert acked_after({"state": "abc"}, FIELDS) == Acked("abc", FIELDS)


def test_the_daemons_channel_answers_resend_with_the_whole_checkin(tmp_path: Path) -> None:
    """A real collector and the daemon's Channel (its upload child, a real subprocess):
    the collector's state moved on behind the terminal's back (another check-in with its
    token), so the terminal's next check-in, a delta on a stale base, is answered 409
    resend, and the whole check-in it sends at once is what the collector then holds."""
    ccfg = CollectorConfig(
        data_dir=str(tmp_path / "store"),
        tokens_file=str(tmp_path / "tokens"),
        signing_key_file=str(tmp_path / "command.key"),
    )
    keygen(ccfg.signing_key_file)
    store = open_store(ccfg)
    try:
        db = database(store)
        token, _ = enroll.create_token(db, site="S", uses=1, by="test", now=time.time())
        req = enroll.parse_request(
            {
                "enrollment_token": token,
                "device_id": "T-TEST",
                "ed25519_public_key": public_pem(Ed25519PrivateKey.generate().public_key()),
            }
        )
        device_token = enroll.enroll(db, req, address="test", now=time.time()).device_token
    finally:
        store.close()
    summary = {"battery_pct": 54, "link": "up", "active_faults": []}
    with CollectorThread(ccfg) as server:
        agent_dir = tmp_path / "agent"
        path = write_config(agent_dir)
        path.write_text(
            path.read_text().replace("[upload]\n", f'[upload]\nendpoint = "{server.url}"\n')
        )
        (agent_dir / "token").write_text(device_token + "\n")
        channel = Channel(
            load_config(path),
            summary=lambda: dict(summary),
            run_command=lambda _c: ("failed", "no commands here"),
            on_layers_changed=lambda: None,
        )
        try:
            channel._checkin()
            first = channel._acked
            assert first is not None and channel.state["checkins"] == 1
            # the state moves on without the terminal
            h = {"Authorization": f"Bearer {device_token}", "X-Posagent-Device": "T-TEST"}
            r = requests.post(
                f"{server.url}/v1/checkins",
                json={"interval_s": 300, "summary": {"battery_pct": 1}},
                headers=h,
                timeout=30,
            )
            assert r.status_code == 200, r.text
            channel._checkin()  # nothing changed on the terminal: a bare base, refused
            assert channel.state["checkins"] == 2 and channel.state["last_error"] is None
            # the whole check-in again: the state it names is the first one's
            assert channel._acked is not None and channel._acked.token == first.token
        finally:
            channel.stop()
    store = open_store(ccfg)
    try:
        with database(store).transaction(write=False) as tx:
            row = tx.one("SELECT summary FROM devices WHERE id = ?", ("T-TEST",))
    finally:
        store.close()
    assert row is not None and json.loads(row[0]) == summary

"""The operators' pieces together on a real collector: a fault uploaded by a terminal
becomes an incident, the incident's opening reaches a webhook receiver (signed, with a
link to the incident's page under public_url), the support's note and status change are
in the audit log, and resolving it sends the resolution."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from collector.config import NotifyConfig, WebhookConfig
from tests.collector.hookserver import Receiver
from tests.collector.test_incidents_api import Fleet
from tests.conftest import wait_until

SECRET = b"s" * 40


def test_fault_to_incident_to_webhook_and_audit(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET + b"\n")
    os.chmod(secret, 0o600)
    r = Receiver(SECRET).up()
    hooks = [WebhookConfig(name="helpdesk", url=r.url, secret_file=str(secret), timeout_s=5)]
    f = Fleet(
        tmp_path,
        webhooks=hooks,
        notify=NotifyConfig(interval_s=0.05, backoff_base_s=0.1, backoff_max_s=0.5),
        public_url="https://collector.example",
    )
    try:
        f.upload("T-0001")
        assert wait_until(lambda: len(r.log) >= 1, timeout_s=60)
        opened = r.log[0]
        assert opened.signature_ok
        assert opened.body["event"] == "incident.opened"
        inc: dict[str, Any] = opened.body["incident"]
        assert inc["device"] == "T-0001" and inc["site"] == "Store 12"
        assert inc["url"] == f"https://collector.example/incidents/{inc['id']}"

        iid = inc["id"]
        note = {"channel": "phone", "text": "Merchant loaded a new roll", "contact": "Ana"}
        assert f.post(f"/v1/incidents/{iid}/notes", json=note).status_code == 201
        assert f.post(f"/v1/incidents/{iid}/status", json={"status": "resolved"}).status_code == 200
        assert wait_until(
            lambda: [d.body["event"] for d in r.log] == ["incident.opened", "incident.resolved"],
            timeout_s=60,
        )
        assert len({d.body["delivery_id"] for d in r.log}) == 2

        audit = f.get("/v1/audit", params={"action": "incident.note"})
        assert audit.status_code == 200, audit.text
        assert f'"target":"{iid}"' in audit.text.replace(" ", "")
        status = f.get("/v1/audit", params={"action": "incident.status"}).text
        assert "resolved" in status
    finally:
        f.close()
        r.down()


def test_no_webhook_configured_writes_no_outbox_rows(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    try:
        f.upload("T-0002")
        assert wait_until(lambda: len(f.incidents()) == 1, timeout_s=30)
        db = f.app.state.collector.store.index
        with db.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM notify_outbox") == (0,)
    finally:
        f.close()

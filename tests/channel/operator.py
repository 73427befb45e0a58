"""An operator of a REAL collector, through its JSON API (docs/CHANNEL.md §3, §5).

`Operator(url, http, device_id)`: `http` is a requests.Session already carrying an
admin's API token (the e2e test's, or `simulator.stack.Stack.http`). It queues
commands for one terminal, reads their status, the terminal's manual bundles and
its `device.silent` incidents, and waits for a command's result. Shared by
tests/e2e/test_channel_e2e.py and bench/bench_channel_live.py, so the test and the
figures read the collector the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from tests.conftest import wait_until

ANSWER_TIMEOUT_S = 90.0
FINAL = ("done", "refused", "failed")


@dataclass
class Operator:
    """The operator's reads and writes for one terminal."""

    url: str
    http: requests.Session
    device_id: str

    def get(self, path: str, **params: str) -> Any:
        r = self.http.get(f"{self.url}{path}", params=params, timeout=30)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
        return r.json()

    def device(self, device: str = "") -> dict[str, Any] | None:
        """The device's row in GET /v1/devices (None before its first check-in)."""
        want = device or self.device_id
        found = [d for d in self.get("/v1/devices")["devices"] if d["device_id"] == want]
        return dict(found[0]) if found else None

    def command(self, kind: str, args: dict[str, Any] | None = None) -> str:
        """Queue a command as the admin (POST /v1/devices/{id}/commands); its id."""
        r = self.http.post(
            f"{self.url}/v1/devices/{self.device_id}/commands",
            json={"kind": kind, "args": args or {}, "expires_in_s": 900},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["command"]["command_id"])

    def command_status(self, command_id: str) -> dict[str, Any] | None:
        for c in self.get(f"/v1/devices/{self.device_id}/commands")["commands"]:
            if c["command_id"] == command_id:
                return dict(c)
        return None

    def answered(self, command_id: str, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """The command once the terminal's result reached the collector."""
        c = wait_until(
            lambda: (s := self.command_status(command_id)) and s["status"] in FINAL and s,
            timeout_s,
            0.2,
        )
        assert c, f"no result for {command_id}: {self.command_status(command_id)}"
        return dict(c)

    def manual_bundles(self) -> set[str]:
        """The ids of the terminal's manual bundles listed (GET /v1/bundles?device=): the
        capture commands make them (its faults may send others meanwhile)."""
        listed = self.get("/v1/bundles", device=self.device_id, limit="500")["bundles"]
        return {b["bundle_id"] for b in listed if b["trigger_kind"] == "manual"}

    def silent_incidents(self) -> list[dict[str, Any]]:
        """The `device.silent` incidents of every device (newest first)."""
        return list(self.get("/v1/incidents", fault="device.silent")["incidents"])

    def active_silent(self) -> list[dict[str, Any]]:
        """This terminal's open `device.silent` incidents."""
        return [i for i in self.silent_incidents() if i["active"] and i["device"] == self.device_id]

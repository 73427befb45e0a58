"""A TEST DOUBLE of the collector's side of the two-way channel, protocol v1 (docs/CHANNEL.md).

Not the collector: a small loopback HTTP server written from the protocol
document alone, so the terminal's side can be proven before both sides merge.
It speaks exactly the wire format of §1-§3 (enrollment, check-ins with
long-poll, signed command envelopes, remote config, token rotation) and takes
bundle uploads (`PUT /v1/bundles/{id}`) so a `capture` command's bundle can be
seen arriving. Tests talk to it through the `ChannelCollector` methods below
(make an enrollment token, queue a command, read check-ins, results and
bundles); a fixture built on the real collector that offers the same methods
can replace it without touching the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.timefmt import rfc3339
from agent.upload.protocol import canonical_json

MAX_WAIT_S = 55


@dataclass
class Device:
    """What the double knows of one enrolled terminal."""

    device_id: str
    token: str
    public_keys: list[str]
    queue: list[dict[str, str]] = field(default_factory=list)  # signed, not yet delivered
    checkins: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


class ChannelCollector:
    """The double: start(), url, and the operator's side as methods."""

    def __init__(self) -> None:
        self.signing_key = Ed25519PrivateKey.generate()
        self.public_pem = (
            self.signing_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.enrollment_tokens: dict[str, int] = {}  # token → uses left
        self.devices: dict[str, Device] = {}
        self.bundles: dict[str, bytes] = {}
        self.config_values: dict[str, Any] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ the operator's side

    def make_enrollment_token(self, uses: int = 1) -> str:
        token = "enr-" + secrets.token_urlsafe(16)
        self.enrollment_tokens[token] = uses
        return token

    def config_digest(self) -> str:
        if not self.config_values:
            return ""
        return "sha256:" + hashlib.sha256(canonical_json(self.config_values)).hexdigest()[:16]

    def set_config(self, values: dict[str, Any]) -> None:
        """Fleet defaults delivered in check-in replies (§4)."""
        with self._cond:
            self.config_values = dict(values)

    def envelope(
        self,
        device_id: str,
        kind: str,
        args: dict[str, Any] | None = None,
        expires_in_s: float = 900,
        command_id: str = "",
    ) -> dict[str, Any]:
        now = time.time()
        return {
            "v": 1,
            "id": command_id or str(uuid.uuid4()),
            "device": device_id,
            "kind": kind,
            "args": args or {},
            "issued_at": rfc3339(now),
            "expires_at": rfc3339(now + expires_in_s),
        }

    def sign(
        self, envelope: dict[str, Any], key: Ed25519PrivateKey | None = None
    ) -> dict[str, str]:
        raw = canonical_json(envelope)
        sig = (key or self.signing_key).sign(raw)
        return {
            "envelope": base64.b64encode(raw).decode(),
            "signature": base64.b64encode(sig).decode(),
        }

    def queue(self, to_device: str, item: dict[str, str]) -> None:
        """Deliver a (signed) command item in `to_device`'s next check-in reply."""
        with self._cond:
            self.devices[to_device].queue.append(item)
            self._cond.notify_all()

    def queue_command(
        self,
        device_id: str,
        kind: str,
        args: dict[str, Any] | None = None,
        expires_in_s: float = 900,
    ) -> str:
        """Queue a properly signed command; returns its id."""
        env = self.envelope(device_id, kind, args, expires_in_s)
        self.queue(device_id, self.sign(env))
        return str(env["id"])

    def result(self, device_id: str, command_id: str) -> dict[str, Any] | None:
        with self._cond:
            dev = self.devices.get(device_id)
            return dict(dev.results[command_id]) if dev and command_id in dev.results else None

    def checkins(self, device_id: str) -> list[dict[str, Any]]:
        with self._cond:
            dev = self.devices.get(device_id)
            return list(dev.checkins) if dev else []

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ChannelCollector:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                double._handle(self, "POST")

            def do_PUT(self) -> None:
                double._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _reply(self, h: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self.requests.append((h.command, h.path, status))

    def _device_of(self, h: BaseHTTPRequestHandler) -> Device | None:
        auth = h.headers.get("Authorization", "")
        claimed = h.headers.get("X-Posagent-Device", "")
        for dev in self.devices.values():
            if auth == f"Bearer {dev.token}":
                return dev if dev.device_id == claimed else None
        return None

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length", "0"))
        raw = h.rfile.read(length)
        parts = urlsplit(h.path)
        path = parts.path
        if method == "PUT" and path.startswith("/v1/bundles/"):
            dev = self._device_of(h)
            if dev is None:
                return self._reply(h, 401, {"status": "unauthorized", "error": "bad token"})
            self.bundles[path.rsplit("/", 1)[1]] = raw
            return self._reply(h, 201, {"status": "created"})
        try:
            doc = json.loads(raw)
        except ValueError:
            return self._reply(h, 400, {"status": "malformed", "error": "body is not JSON"})
        if path == "/v1/enroll":
            return self._enroll(h, doc)
        if path == "/v1/checkins":
            wait = int(parse_qs(parts.query).get("wait", ["0"])[0])
            return self._checkin(h, doc, min(wait, MAX_WAIT_S))
        if path == "/v1/devices/self/token":
            dev = self._device_of(h)
            if dev is None:
                return self._reply(h, 401, {"status": "unauthorized", "error": "bad token"})
            dev.token = "dev-" + secrets.token_urlsafe(24)
            return self._reply(h, 200, {"status": "ok", "device_token": dev.token})
        return self._reply(h, 404, {"status": "not_found", "error": path})

    def _enroll(self, h: BaseHTTPRequestHandler, doc: dict[str, Any]) -> None:
        token = doc.get("enrollment_token")
        device_id = doc.get("device_id")
        pub = doc.get("ed25519_public_key")
        if (
            not isinstance(device_id, str)
            or not isinstance(pub, str)
            or "BEGIN PUBLIC KEY" not in pub
        ):
            return self._reply(h, 400, {"status": "malformed", "error": "device_id and key needed"})
        left = self.enrollment_tokens.get(str(token))
        if left is None:
            return self._reply(h, 401, {"status": "bad_token", "error": "unknown enrollment token"})
        if left <= 0:
            return self._reply(h, 410, {"status": "token_used_up", "error": "token used up"})
        self.enrollment_tokens[str(token)] = left - 1
        with self._cond:
            dev = self.devices.get(device_id)
            new_token = "dev-" + secrets.token_urlsafe(24)
            if dev is None:
                self.devices[device_id] = Device(device_id, new_token, [pub])
            else:
                dev.token = new_token
                dev.public_keys.append(pub)
        return self._reply(
            h,
            201,
            {
                "status": "enrolled",
                "device_id": device_id,
                "device_token": new_token,
                "site": "S1",
                "tenant": "T1",
                "encrypt_to": [],
                "collector_public_key": self.public_pem,
                "checkin_interval_s": 300,
            },
        )

    def _checkin(self, h: BaseHTTPRequestHandler, doc: dict[str, Any], wait: int) -> None:
        dev = self._device_of(h)
        if dev is None:
            return self._reply(h, 403, {"status": "forbidden", "error": "token/device mismatch"})
        with self._cond:
            dev.checkins.append(doc)
            for r in doc.get("results", []):
                dev.results[r["command_id"]] = r
            self._cond.notify_all()
            end = time.monotonic() + wait
            while not dev.queue and time.monotonic() < end and self._server is not None:
                self._cond.wait(min(0.5, max(0.0, end - time.monotonic())))
            commands, dev.queue = dev.queue, []
            digest = self.config_digest()
        reply: dict[str, Any] = {"status": "ok", "commands": commands, "next_checkin_s": 300}
        if digest and doc.get("config_digest") != digest:
            reply["config"] = {"digest": digest, "values": self.config_values}
        self._reply(h, 200, reply)

"""Receivers the notification tests run: a webhook receiver on loopback HTTP that checks
every signature and records every delivery, and an SMTP server (aiosmtpd) that keeps
every message.

`Receiver` can be taken down (its port then refuses connections) and brought up again
on the same port, answer another status code, or hold requests until released.
"""

from __future__ import annotations

import contextlib
import datetime
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector.notify.webhook import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Delivery:
    """One request the receiver took (a repeated delivery id is a second one)."""

    delivery_id: str
    event: str
    body: dict[str, Any]
    signature_ok: bool
    status: int  # what the receiver answered


class Receiver:
    """A webhook receiver on 127.0.0.1 (see the module docstring)."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = 200
        self.delay_s = 0.0  # each request takes this long to answer
        self.hold = threading.Event()  # cleared: requests wait until it is set again
        self.hold.set()
        self.held = 0  # requests waiting now
        self.log: list[Delivery] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def up(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.held += 1
                receiver.hold.wait(60)
                time.sleep(receiver.delay_s)
                with receiver._lock:
                    receiver.held -= 1
                    status = receiver.status
                    receiver.log.append(
                        Delivery(
                            self.headers.get(DELIVERY_HEADER, ""),
                            self.headers.get(EVENT_HEADER, ""),
                            json.loads(raw),
                            verify(receiver.secret, raw, self.headers.get(SIGNATURE_HEADER, "")),
                            status,
                        )
                    )
                body = b"ok" if status < 300 else b"receiver says no\r\nsecond line"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self.hold.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Delivery]:
        """The deliveries answered with a 2xx."""
        with self._lock:
            return [d for d in self.log if 200 <= d.status < 300]

    def ids(self) -> list[str]:
        return [d.delivery_id for d in self.accepted()]


@dataclass
class SmtpSink:
    """Messages an aiosmtpd server took, with their envelopes."""

    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                message_from_bytes(envelope.original_content, policy=email.policy.default),
            )
        )
        return "250 Message accepted for delivery"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in tmp)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "smtp.crt", tmp / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def smtp_server(
    sink: SmtpSink,
    *,
    port: int = 0,
    tls: tuple[Path, Path] | None = None,
    login: tuple[str, str] | None = None,
) -> Iterator[int]:
    """aiosmtpd on loopback (a free port unless given) while the block runs, STARTTLS
    required with tls, AUTH with login; yields the port."""
    kwargs: dict[str, Any] = {}
    if tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        kwargs.update(tls_context=ctx, require_starttls=True)
    if login is not None:

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (data.login.decode(), data.password.decode()) == login
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticator, auth_require_tls=tls is not None)
    port = port or free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()

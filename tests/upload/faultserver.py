"""A loopback HTTP(S) server with scripted faults, standing in for the collector in tests.

Each request takes the next behaviour from a script (default: `Store()`, an
idempotent bundle store: 201 the first time, 200 for the same digest, 409 for
another). Behaviours cover the whole upload response matrix: plain replies,
a reset in the middle of the body, a hang, a trickled reply, a non-HTTP reply,
and a body committed to the store whose reply is then lost.

Every request is recorded (method, path, headers, body length and sha256,
whether the body arrived whole, arrival time, client certificate).

Also runnable as a process (`python -m tests.upload.faultserver --port-file F`) for
tests that SIGKILL their clients: `GET /_state` returns the store as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.upload.protocol import content_digest

HEAD_LIMIT_BYTES = 64 * 1024
REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


# --------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class Store:
    """Idempotent store: 201 created, 200 same digest again, 409 other digest, 400 digest mismatch."""


@dataclass(frozen=True)
class Reply:
    """Read the whole body, then answer with this status, headers and body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class ResetMidBody:
    """Read part of the body, then close with a TCP RST (SO_LINGER 0)."""

    fraction: float = 0.5


@dataclass(frozen=True)
class Hang:
    """Read the whole body and never answer (until the client gives up)."""


@dataclass(frozen=True)
class Trickle:
    """Answer one byte every delay_s; with endless_body the body never ends."""

    status: int = 201
    delay_s: float = 0.01
    endless_body: bool = True


@dataclass(frozen=True)
class Garbage:
    """Read the whole body, then answer bytes that are not HTTP and close."""

    data: bytes = b"\x00\xffTHIS IS NOT HTTP\r\n\r\n"


@dataclass(frozen=True)
class CommitThenDrop:
    """Store the body like Store, then close the connection without answering."""


Behaviour = Store | Reply | ResetMidBody | Hang | Trickle | Garbage | CommitThenDrop


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    target: str
    path: str
    headers: dict[str, str]
    behaviour: str
    arrived_mono: float
    body_len: int = 0
    body_sha256: str = ""
    complete: bool = False
    status: int | None = None
    peer_cert: dict[str, Any] | None = None

    @property
    def bundle_id(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Stored:
    """One bundle in the store."""

    digest_hex: str
    size: int
    creations: int = 1
    body: bytes = b""


# --------------------------------------------------------------------------- server


class _Closed(Exception):
    """The peer went away."""


class FaultServer:
    """Threaded loopback server; `script(...)` queues behaviours, `default` serves the rest."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        default: Behaviour | None = None,
        read_delay_s: float = 0.0,
        keep_bodies: bool = False,
        hash_bodies: bool = True,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.tls = tls
        self.default: Behaviour = default or Store()
        self.read_delay_s = read_delay_s
        self.keep_bodies = keep_bodies
        self.hash_bodies = hash_bodies
        self.requests: list[Recorded] = []
        self.store: dict[str, Stored] = {}
        self.tls_errors: list[str] = []
        self.truncated_bodies = 0
        self._script: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._srv: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> FaultServer:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        class Srv(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 64

        self._stopping.clear()
        self._srv = Srv((self.host, self.requested_port), Handler)
        self._thread = threading.Thread(
            target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        if self._thread is not None:
            self._thread.join(5)
        self._srv = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._srv is not None
        return int(self._srv.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # ------------------------------------------------------------------ test API

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self._script.extend(behaviours)

    def wait_requests(self, n: int, timeout_s: float = 10.0) -> bool:
        """Wait until at least n requests have arrived."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while len(self.requests) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def state(self) -> dict[str, Any]:
        """The store and counters as JSON-able data."""
        with self._lock:
            return {
                "store": {
                    k: {"digest": v.digest_hex, "size": v.size, "creations": v.creations}
                    for k, v in self.store.items()
                },
                "requests": len(self.requests),
                "truncated_bodies": self.truncated_bodies,
            }

    # ------------------------------------------------------------------ connection

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _serve_connection(self, raw: socket.socket) -> None:
        sock = raw
        with self._lock:
            self._conns.add(raw)
        try:
            peer_cert: dict[str, Any] | None = None
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    with self._lock:
                        self.tls_errors.append(str(e))
                    return
                peer_cert = sock.getpeercert() or None
            buf = bytearray()
            while not self._stopping.is_set():
                if not self._one_request(sock, buf, peer_cert):
                    break
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(raw)
            with contextlib.suppress(OSError):
                sock.close()

    def _recv(self, sock: socket.socket, n: int) -> bytes:
        while True:
            if self._stopping.is_set():
                raise _Closed()
            r, _, _ = select.select([sock], [], [], 0.2)
            if r or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                data = sock.recv(n)
                if not data:
                    raise _Closed()
                return data

    def _read_head(self, sock: socket.socket, buf: bytearray) -> bytes | None:
        while b"\r\n\r\n" not in buf:
            if len(buf) > HEAD_LIMIT_BYTES:
                raise _Closed()
            try:
                buf += self._recv(sock, 65536)
            except _Closed:
                return None
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf[:] = rest
        return head

    def _read_body(self, sock: socket.socket, buf: bytearray, length: int) -> tuple[bytes, bool]:
        """(body, complete): reads length bytes, slowly when read_delay_s is set."""
        chunks = [bytes(buf[:length])]
        got = len(chunks[0])
        del buf[:length]
        while got < length:
            try:
                data = self._recv(
                    sock, min(65536 if not self.read_delay_s else 16384, length - got)
                )
            except (_Closed, OSError):
                return b"".join(chunks), False
            chunks.append(data)
            got += len(data)
            if self.read_delay_s:
                time.sleep(self.read_delay_s)
        return b"".join(chunks), True

    def _one_request(
        self, sock: socket.socket, buf: bytearray, peer_cert: dict[str, Any] | None
    ) -> bool:
        """Serve one request; False when the connection must end."""
        head = self._read_head(sock, buf)
        if head is None:
            return False
        arrived = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        path = urlsplit(target).path if "://" in target else target.split("?", 1)[0]
        beh = self._next_behaviour()
        rec = Recorded(
            method, target, path, headers, type(beh).__name__, arrived, peer_cert=peer_cert
        )
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        keep_alive = headers.get("connection", "").lower() != "close"

        if method == "GET" and path == "/_state":
            self._send(
                sock, 200, json.dumps(self.state()).encode(), {"Content-Type": "application/json"}
            )
            rec.status = 200
            rec.complete = True
            return keep_alive
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._send(sock, 411, b"chunked bodies not accepted", {"Connection": "close"})
            rec.status = 411
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._send(sock, 400, b"bad content-length", {"Connection": "close"})
            rec.status = 400
            return False

        if isinstance(beh, ResetMidBody):
            part = int(length * beh.fraction)
            self._read_body(sock, buf, part)
            rec.body_len = part
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False

        body, complete = self._read_body(sock, buf, length)
        rec.body_len = len(body)
        rec.complete = complete
        if self.hash_bodies:
            rec.body_sha256 = hashlib.sha256(body).hexdigest()
        if not complete:
            with self._lock:
                self.truncated_bodies += 1
            return False

        if isinstance(beh, Store | CommitThenDrop):
            status, answer = self._store(path, headers, body)
            if isinstance(beh, CommitThenDrop):
                return False
            rec.status = status
            self._send(sock, status, answer, {"Content-Type": "application/json"})
            return keep_alive
        if isinstance(beh, Reply):
            rec.status = beh.status
            self._send(sock, beh.status, beh.body, beh.headers)
            return keep_alive
        if isinstance(beh, Hang):
            self._wait_for_close(sock)
            return False
        if isinstance(beh, Garbage):
            sock.sendall(beh.data)
            return False
        if isinstance(beh, Trickle):
            rec.status = beh.status
            reason = REASONS.get(beh.status, "Whatever")
            length_hdr = (
                "Content-Length: 100000\r\n" if beh.endless_body else "Content-Length: 2\r\n"
            )
            head_out = f"HTTP/1.1 {beh.status} {reason}\r\n{length_hdr}\r\n".encode()
            for i in range(len(head_out)):
                sock.sendall(head_out[i : i + 1])
                if self._stopping.wait(beh.delay_s):
                    return False
            n = 100000 if beh.endless_body else 2
            for _ in range(n):
                sock.sendall(b"x")
                if self._stopping.wait(beh.delay_s):
                    return False
            return False
        return False

    def _wait_for_close(self, sock: socket.socket) -> None:
        with contextlib.suppress(_Closed, OSError):
            while True:
                self._recv(sock, 4096)

    def _store(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        bid = path.rstrip("/").rsplit("/", 1)[-1]
        if headers.get("content-digest") != content_digest(body):
            return 400, b'{"error": "content-digest does not match the body"}'
        hexd = hashlib.sha256(body).hexdigest()
        with self._lock:
            cur = self.store.get(bid)
            if cur is None:
                self.store[bid] = Stored(hexd, len(body), 1, body if self.keep_bodies else b"")
                return 201, json.dumps({"bundle_id": bid, "stored": "created"}).encode()
            if cur.digest_hex == hexd:
                return 200, json.dumps({"bundle_id": bid, "stored": "already"}).encode()
            return 409, b'{"error": "same id, other digest"}'

    def _send(
        self, sock: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        hdrs = {"Content-Length": str(len(body)), **(headers or {})}
        head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        sock.sendall(head.encode("latin-1") + body)


# --------------------------------------------------------------------------- TLS helpers


def make_pki(directory: Path) -> dict[str, Path]:
    """A throw-away CA, a server cert for 127.0.0.1/localhost, a client cert, and a foreign CA.

    Uses the openssl CLI; returns the file paths by name.
    """
    import subprocess

    d = directory
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    for ca in ("ca", "other_ca"):
        run(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.crt"),
            "-subj", f"/CN=posagent test {ca}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    ext = d / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\n"
    )
    cext = d / "client.ext"
    cext.write_text("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    for name, extfile, subj in (
        ("server", ext, "/CN=127.0.0.1"),
        ("client", cext, "/CN=T-TEST"),
    ):
        run(
            "req", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"), "-subj", subj,
        )  # fmt: skip
        run(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-out", str(d / f"{name}.crt"), "-extfile", str(extfile),
        )  # fmt: skip
    return {
        "ca": d / "ca.crt",
        "other_ca": d / "other_ca.crt",
        "server_crt": d / "server.crt",
        "server_key": d / "server.key",
        "client_crt": d / "client.crt",
        "client_key": d / "client.key",
    }


def server_tls_context(
    pki: dict[str, Path], *, require_client_cert: bool = False
) -> ssl.SSLContext:
    """A server-side TLS context from make_pki's files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_crt"], pki["server_key"])
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca"])
    return ctx


# --------------------------------------------------------------------------- as a process


@contextlib.contextmanager
def store_process(work: Path, read_delay_s: float = 0.001) -> Iterator[str]:
    """The idempotent store in its own process (a slow reader, so kills land mid-body); yields its URL."""
    import subprocess

    port_file = work / "store.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upload.faultserver", "--port-file", str(port_file),
         "--read-delay-s", str(read_delay_s)],
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        end = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("store server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        proc.terminate()
        proc.wait(10)


def store_state(endpoint: str) -> dict[str, Any]:
    """The store's `/_state`: stored ids with digests and creations, request counts."""
    import urllib.request

    with urllib.request.urlopen(endpoint + "/_state", timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run a Store server until killed; writes the port to --port-file."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--read-delay-s", type=float, default=0.0)
    ap.add_argument(
        "--accept-all",
        action="store_true",
        help="answer 201 to every body without hashing or storing (benchmarks)",
    )
    args = ap.parse_args(argv)
    if args.accept_all:
        srv = FaultServer(default=Reply(201), hash_bodies=False).start()
    else:
        srv = FaultServer(read_delay_s=args.read_delay_s).start()
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(str(srv.port))
    tmp.rename(args.port_file)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- bundles

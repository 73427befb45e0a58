"""The daemon's control socket: `posagent report` hands its request to the running daemon.

`<roots.run>/control.sock`, a unix stream socket the daemon binds at start
(mode 0660: the daemon's user and group; root always). One request per
connection: the client sends one JSON line and shuts its side down; the daemon
answers one JSON line once the bundle is in the spool (or says why not).

Why a socket rather than a request directory the CLI writes into:
- "is a daemon there?" is answered by `connect()` itself: no socket or
  ECONNREFUSED (a stale one left by kill -9) means no daemon, at once, without
  a pid file to trust or a deadline to wait out;
- nothing is left behind: a request never outlives its connection, so a daemon
  started later cannot pick up a report the CLI already captured standalone
  (a directory would need a claim protocol to avoid that duplicate);
- no file to read from a directory others can write: no symlink, FIFO or
  swapped file to guard against, only bytes from a connected peer whose
  uid the kernel vouches for (SO_PEERCRED, logged with every request);
- the answer (the bundle id) comes back on the same connection.

A bad or hostile client cannot hurt the daemon: the request must arrive
within READ_TIMEOUT_S and fit in MAX_REQUEST_BYTES, it must be a JSON object
with exactly the known fields of the right types and lengths (an unknown field
is refused by name), and connections are served one at a time by one
supervised thread (`Agent` runs `ControlServer.serve` as the part "control").
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.core.model import Severity

log = structlog.get_logger(__name__)

SOCKET_NAME = "control.sock"
PROTOCOL = 1
MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 16 * 1024
READ_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 2.0
SOCKET_MODE = 0o660
NOTE_MAX = 10_000  # the trigger's limits (agent/bundle/trigger.py)
CONTACT_MAX = 500
_FIELDS = {"v": int, "op": str, "note": str, "contact": str, "severity": str}
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; longer paths go through /proc/self/fd


def socket_path(run_dir: str | Path) -> Path:
    """The control socket of a daemon whose runtime dir is run_dir (`cfg.roots.run`)."""
    return Path(run_dir) / SOCKET_NAME


class RequestError(ValueError):
    """A request the daemon refuses; the message names what is wrong."""


class NoDaemon(OSError):
    """Nothing accepted the connection: no daemon runs (or the socket is not ours to use)."""


class NoAnswer(OSError):
    """The daemon took the request but gave no answer in time."""


@dataclass(frozen=True)
class ReportRequest:
    """`posagent report`'s request: the merchant's note, contact and severity."""

    note: str
    contact: str = ""
    severity: Severity = Severity.ERROR

    def encode(self) -> bytes:
        doc = {
            "v": PROTOCOL,
            "op": "report",
            "note": self.note,
            "contact": self.contact,
            "severity": self.severity.value,
        }
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> ReportRequest:
        """Validate one request line; RequestError names the first thing that is off."""
        if len(raw) > MAX_REQUEST_BYTES:
            raise RequestError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise RequestError(f"request is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise RequestError("request is not a JSON object")
        unknown = sorted(set(doc) - set(_FIELDS))
        if unknown:
            raise RequestError(f"unknown field(s): {', '.join(unknown)[:200]}")
        missing = sorted({"v", "op", "note"} - set(doc))
        if missing:
            raise RequestError(f"missing field(s): {', '.join(missing)}")
        for name, typ in _FIELDS.items():
            if name in doc and (not isinstance(doc[name], typ) or isinstance(doc[name], bool)):
                raise RequestError(f"{name}: not a {typ.__name__}")
        if doc["v"] != PROTOCOL:
            raise RequestError(f"v: protocol {doc['v']} not supported (this daemon speaks 1)")
        if doc["op"] != "report":
            raise RequestError(f"op: {doc['op'][:40]!r} is not an operation (report)")
        note, contact = doc["note"], doc.get("contact", "")
        if len(note) > NOTE_MAX:
            raise RequestError(f"note: longer than {NOTE_MAX} characters")
        if len(contact) > CONTACT_MAX:
            raise RequestError(f"contact: longer than {CONTACT_MAX} characters")
        try:
            severity = Severity(doc.get("severity", Severity.ERROR.value))
        except ValueError:
            raise RequestError("severity: not one of warning, error, critical") from None
        return cls(note, contact, severity)


@dataclass(frozen=True)
class Reply:
    """The daemon's answer: the bundle it captured, or why it did not."""

    ok: bool
    bundle_id: str = ""
    path: str = ""
    error: str = ""

    def encode(self) -> bytes:
        return json.dumps(vars(self), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> Reply:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
                raise ValueError("not a reply")
            return cls(
                doc["ok"],
                str(doc.get("bundle_id", "")),
                str(doc.get("path", "")),
                str(doc.get("error", "")),
            )
        except ValueError as e:
            raise NoAnswer(f"unreadable answer from the daemon: {e}") from None


@dataclass(frozen=True)
class Peer:
    """Who is on the other end (SO_PEERCRED): pid, uid, gid; -1 when unknown."""

    pid: int = -1
    uid: int = -1
    gid: int = -1


Handler = Callable[[ReportRequest, Peer], Reply]


@contextlib.contextmanager
def _address(path: Path) -> Any:
    """A sun_path for path: itself, or /proc/self/fd/N/name when too long for sun_path."""
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer(conn: socket.socket) -> Peer:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return Peer(pid, uid, gid)
    except (OSError, struct.error):
        return Peer()


def _read_line(conn: socket.socket, limit: int, deadline: float) -> bytes:
    """Up to the first newline (or EOF); RequestError past `limit`, TimeoutError past deadline."""
    buf = bytearray()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit and b"\n" not in buf[:limit]:
            raise RequestError(f"request larger than {limit} bytes")
    return bytes(buf.split(b"\n", 1)[0])


class ControlServer:
    """The listening socket; `serve` handles one connection at a time until `close`."""

    def __init__(self, path: Path, handler: Handler, mode: int = SOCKET_MODE):
        self.path = path
        self.handler = handler
        self.mode = mode
        self.sock: socket.socket | None = None
        self.served = 0
        self.refused = 0
        self._closed = threading.Event()

    def open(self) -> ControlServer:
        """Bind (replacing a stale socket left by a killed daemon) and listen."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # never follows a link: removes only the name
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _address(self.path) as addr:
                sock.bind(addr)
            os.chmod(self.path, self.mode, follow_symlinks=False)
            sock.listen(8)
            sock.settimeout(1.0)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        log.info("control_socket_listening", path=str(self.path))
        return self

    def serve(self, beat: Callable[[], None] = lambda: None) -> None:
        """Accept and answer until closed (a supervised part's body)."""
        while not self._closed.is_set() and self.sock is not None:
            beat()
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                raise
            with conn:
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        """Read one request, hand it to the handler, answer; never raises for the client's sake."""
        peer = _peer(conn)
        try:
            line = _read_line(conn, MAX_REQUEST_BYTES, time.monotonic() + READ_TIMEOUT_S)
            req = ReportRequest.parse(line)
        except (RequestError, TimeoutError, OSError) as e:
            why = str(e) if isinstance(e, RequestError) else "no request in time"
            if isinstance(e, OSError) and not isinstance(e, TimeoutError):
                why = f"connection failed: {e}"
            self.refused += 1
            log.warning("control_request_refused", uid=peer.uid, pid=peer.pid, reason=why)
            self._answer(conn, Reply(False, error=why))
            return
        log.info("control_report_requested", uid=peer.uid, pid=peer.pid)
        try:
            reply = self.handler(req, peer)
        except Exception as e:  # the daemon answers; a failing handler is its error to report
            log.error("control_request_failed", error=f"{type(e).__name__}: {e}")
            reply = Reply(False, error=f"daemon failed: {type(e).__name__}: {e}")
        self.served += 1
        self._answer(conn, reply)

    @staticmethod
    def _answer(conn: socket.socket, reply: Reply) -> None:
        try:
            conn.settimeout(READ_TIMEOUT_S)
            conn.sendall(reply.encode())
        except OSError:
            pass  # the client is gone: the bundle (if any) is in the spool all the same

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._closed.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def send_report(path: Path, req: ReportRequest, timeout_s: float) -> Reply:
    """Hand a report to the daemon at path and wait for its answer.

    NoDaemon: nothing accepted the connection (no daemon: capture standalone).
    NoAnswer: the daemon took the request and did not answer within timeout_s.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            with _address(path) as addr:
                sock.connect(addr)
        except OSError as e:
            raise NoDaemon(e.errno, e.strerror or str(e)) from None
        try:
            sock.sendall(req.encode())
            sock.shutdown(socket.SHUT_WR)
            line = _read_line(sock, MAX_REPLY_BYTES, time.monotonic() + timeout_s)
        except TimeoutError:
            raise NoAnswer(f"no answer within {timeout_s:.0f} s") from None
        except (OSError, RequestError) as e:
            raise NoAnswer(f"connection to the daemon failed: {e}") from None
    if not line:
        raise NoAnswer("the daemon closed the connection without an answer")
    return Reply.parse(line)

"""HTTP uploads in a child process, so the daemon never holds requests and its TLS stack.

requests, urllib3, idna, charset_normalizer and a loaded CA store cost about
6 MB of RSS that a daemon would keep for months after its first upload. The
uploader (agent/upload/uploader.py) keeps every decision — claims, the response
table, backoff, auth pause — and hands each PUT to `WorkerTransport`, which
runs `python -m agent.upload.worker`: a child that holds one requests.Session
(connection reuse across a drain) and exits when the parent closes its stdin,
when the parent dies (PR_SET_PDEATHSIG) or after the parent leaves it idle.

Protocol, one JSON object per line, parent → child, each answered by one
`{"reply": {...}}` (`PutReply`) line:
- a `PutRequest` (no `kind`, or `"kind": "put"`): the child streams the body
  from the bundle's spool file itself, paced to the bandwidth cap, and writes
  `{"sent": N}` lines while the body goes out (at most every PROGRESS_EVERY_S);
- a `PostJsonRequest` (`"kind": "post_json"`): one small JSON POST of the
  two-way channel (docs/CHANNEL.md: enrollment, check-in, token rotation);
  the reply carries up to JSON_BODY_LIMIT_BYTES of the answer's body. One marked
  `resend_safe` (a check-in) that fails on a connection kept from an earlier
  request, before its answer's head (the server or a NAT dropped the idle
  connection), is sent once more on a new connection, after a `{"sent": 0}` line
  (the parent's wait starts again); a kept connection that swallowed one (no answer
  in the read timeout) teaches the idle a connection does not survive on this path,
  and for SWALLOWED_MEMORY_S one idle that long is replaced before a request goes;
- a `VerifyRequest` (`"kind": "verify_ed25519"`): checks collector command
  signatures against a public key file; the reply's `body` is a JSON list,
  per item "" (verified) or why not;
- a `PublicKeyRequest` (`"kind": "public_key"`): the reply's `body` is the PEM
  public key of the terminal's Ed25519 signing key (sent at enrollment);
- a `RotateKeyRequest` (`"kind": "rotate_key"`): a new signing key staged for a
  `rotate-signing-key` command; the reply's `body` is its public key and the
  old key's signature vouching for it (JSON).
The last three keep `cryptography` out of the daemon as requests is kept out.

The child keeps its connection between requests (the channel's child lives as long
as the channel: a check-in every few minutes reuses it, no TCP or TLS handshake),
and a request leaves in one write: its head is held for the body's first chunk
(one TCP segment, one TLS record for a check-in, instead of two).

The parent never waits unbounded: no line for connect + read timeout +
STALL_GRACE_S kills the child (a retriable failure); the uploader stopping
kills it too (the bundle is released, as with any abandoned upload).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests  # lazy: requests and its TLS stack load in the upload child only

RESPONSE_BODY_LIMIT_BYTES = 4096
RESPONSE_BODY_DEADLINE_S = 2.0
READ_CHUNK_BYTES = 64 * 1024
SEND_BLOCK_BYTES = 256 * 1024
PROGRESS_EVERY_S = 0.05
STALL_GRACE_S = 10.0
IDLE_EXIT_S = 60.0  # the parent ends a child left unused this long
START_TIMEOUT_S = 20.0  # first line from a fresh child (python + requests import)
JSON_BODY_LIMIT_BYTES = 64 * 1024  # docs/CHANNEL.md: bodies are at most 64 KiB each way
MAX_LINE_BYTES = 8 * JSON_BODY_LIMIT_BYTES  # a reply line: the body JSON-escaped
LOCAL_TIMEOUT_S = 10.0  # a request that touches no network (verify, public key)
SWALLOWED_MEMORY_S = 6 * 3600.0  # how long a swallowing path is remembered (RequestsPutter)


class Aborted(Exception):
    """The upload was abandoned because the uploader is stopping."""


@dataclass(frozen=True)
class TlsSettings:
    """What the child's requests.Session is built from (a change builds a new one)."""

    verify_tls: bool = True
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    proxy: str = ""


@dataclass(frozen=True)
class PutRequest:
    """One PUT of one spool file."""

    url: str
    path: str
    size_bytes: int
    headers: dict[str, str]
    connect_timeout_s: float
    read_timeout_s: float
    rate_bytes_per_s: int = 0
    tls: TlsSettings = field(default_factory=TlsSettings)
    fresh_session: bool = False  # drop pooled connections first (the network changed)

    def to_json(self) -> bytes:
        """One protocol line (vars, not dataclasses.asdict: this runs per bundle)."""
        d = dict(vars(self))
        d["tls"] = vars(self.tls)
        return json.dumps(d).encode() + b"\n"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PutRequest:
        """Build from the parent's JSON line; KeyError/TypeError/ValueError when malformed."""
        tls = TlsSettings(**d.pop("tls"))
        req = cls(tls=tls, **d)
        if not isinstance(req.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in req.headers.items()
        ):
            raise ValueError("headers must map strings to strings")
        return req


@dataclass(frozen=True)
class PostJsonRequest:
    """One JSON POST (the channel's enrollment, check-in, token rotation)."""

    url: str
    body: str  # the JSON text sent
    headers: dict[str, str]
    connect_timeout_s: float
    read_timeout_s: float
    tls: TlsSettings = field(default_factory=TlsSettings)
    resend_safe: bool = False  # sent again after a kept connection broke (a check-in)
    kind: str = "post_json"

    def to_json(self) -> bytes:
        d = dict(vars(self))
        d["tls"] = vars(self.tls)
        return json.dumps(d).encode() + b"\n"


@dataclass(frozen=True)
class VerifyRequest:
    """Ed25519 signatures to check: items are [data_b64, signature_b64] pairs."""

    public_key_file: str
    items: list[list[str]]
    kind: str = "verify_ed25519"
    connect_timeout_s: float = 0.0
    read_timeout_s: float = LOCAL_TIMEOUT_S

    def to_json(self) -> bytes:
        return json.dumps(vars(self)).encode() + b"\n"


@dataclass(frozen=True)
class PublicKeyRequest:
    """The public half of the terminal's signing key, as PEM."""

    signing_key_file: str
    kind: str = "public_key"
    connect_timeout_s: float = 0.0
    read_timeout_s: float = LOCAL_TIMEOUT_S

    def to_json(self) -> bytes:
        return json.dumps(vars(self)).encode() + b"\n"


@dataclass(frozen=True)
class RotateKeyRequest:
    """Stage a new signing key at home for a `rotate-signing-key` command and vouch for
    it with the current key (agent.bundle.sealed.begin_rotation)."""

    current_key_file: str
    home_key_file: str
    command_id: str
    device: str
    kind: str = "rotate_key"
    connect_timeout_s: float = 0.0
    read_timeout_s: float = LOCAL_TIMEOUT_S

    def to_json(self) -> bytes:
        return json.dumps(vars(self)).encode() + b"\n"


WorkerRequest = PutRequest | PostJsonRequest | VerifyRequest | PublicKeyRequest | RotateKeyRequest


@dataclass(frozen=True)
class PutReply:
    """What happened: an HTTP status (with Retry-After and a body snippet) or a transport error."""

    status: int | None = None
    retry_after: str | None = None
    body: str = ""  # the start of the response body (errors, and short success bodies)
    bytes_sent: int = 0
    error: str = ""  # "<kind>: <detail>" when no HTTP status came back


# --------------------------------------------------------------------------- parent side


class WorkerTransport:
    """Runs PUTs in one reusable child process; one request at a time (the uploader's lock)."""

    def __init__(self, argv: list[str] | None = None, idle_exit_s: float = IDLE_EXIT_S) -> None:
        self.argv = argv or [sys.executable, "-m", "agent.upload.worker"]
        self.idle_exit_s = idle_exit_s
        self.spawned = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._last_used = 0.0
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """True while a child process is up."""
        return self._proc is not None and self._proc.poll() is None

    def put(
        self,
        req: WorkerRequest,
        on_progress: Callable[[int], None],
        stop: threading.Event,
        meanwhile: Callable[[], None] | None = None,
    ) -> PutReply:
        """Send one request through the child; raises Aborted when `stop` is set meanwhile.

        `meanwhile` runs once while the child works (the uploader claims and
        checks the next bundle then, so the two processes overlap).
        """
        with self._lock:
            may_retry = True  # once, when a child kept from earlier turns out to be gone
            while True:
                fresh = not self.running
                try:
                    proc = self._ensure()
                except OSError as e:
                    return PutReply(error=f"upload worker: cannot start: {e}")
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(req.to_json())
                    proc.stdin.flush()
                except (BrokenPipeError, ValueError, OSError):
                    self._kill()
                    if may_retry and not fresh:
                        may_retry = False
                        continue  # an idle child that was gone: start one and send again
                    return PutReply(error="upload worker: exited before the request")
                if meanwhile is not None:
                    meanwhile()
                    meanwhile = None
                reply, sent_any = self._await_reply(req, on_progress, stop, fresh)
                if reply is None and may_retry and not fresh and not sent_any:
                    may_retry = False
                    continue  # died between requests; nothing was sent
                self._last_used = time.monotonic()
                return reply or PutReply(error=self._exit_reason())

    def close_if_idle(self) -> None:
        """End the child when it has not been used for idle_exit_s."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self.running and time.monotonic() - self._last_used >= self.idle_exit_s:
                self._close_gently()
        finally:
            self._lock.release()

    def close(self) -> None:
        """End the child (stdin closed; killed if it does not leave at once)."""
        self._close_gently()

    # ------------------------------------------------------------------ internals

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._kill()  # a child that exited (also clears the line buffer)
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self.spawned += 1
        return self._proc

    def _await_reply(
        self,
        req: WorkerRequest,
        on_progress: Callable[[int], None],
        stop: threading.Event,
        fresh: bool,
    ) -> tuple[PutReply | None, bool]:
        """(reply, whether any progress came) — reply None when the child died or stalled."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        quiet_limit_s = req.connect_timeout_s + req.read_timeout_s + STALL_GRACE_S
        if fresh:
            quiet_limit_s += START_TIMEOUT_S
        last_line = time.monotonic()
        sent_any = False
        while True:
            if stop.is_set():
                self._kill()
                raise Aborted("uploader stopping")
            while b"\n" in self._buf:
                line, _, self._buf = self._buf.partition(b"\n")
                msg = _parse_line(line)
                last_line = time.monotonic()
                if msg is None:
                    self._kill()
                    return PutReply(error="upload worker: unreadable reply"), sent_any
                if "sent" in msg and isinstance(msg["sent"], int):
                    sent_any = True
                    on_progress(msg["sent"])
                elif isinstance(msg.get("reply"), dict):
                    try:
                        return PutReply(**msg["reply"]), sent_any
                    except TypeError:
                        self._kill()
                        return PutReply(error="upload worker: malformed reply"), sent_any
            if len(self._buf) > MAX_LINE_BYTES:
                self._kill()
                return PutReply(error="upload worker: reply line too long"), sent_any
            if time.monotonic() - last_line > quiet_limit_s:
                self._kill()
                return PutReply(error=f"upload worker: no reply in {quiet_limit_s:.0f} s"), sent_any
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None, sent_any
            self._buf += chunk

    def _exit_reason(self) -> str:
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=2)
        self._kill()
        return f"upload worker: exited ({code})"

    def _close_gently(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self._buf = b""
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


# --------------------------------------------------------------------------- child side


class _Body:
    """A file-like request body: streams a file, paced to a byte rate.

    `__len__` gives requests the Content-Length; `read(n)` is what urllib3 calls.
    """

    def __init__(
        self, path: str, size: int, rate_bytes_per_s: int, on_chunk: Callable[[int], None]
    ) -> None:
        """on_chunk gets the cumulative bytes handed to the socket after each read."""
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._size = size
        self._rate = rate_bytes_per_s
        self._on_chunk = on_chunk
        self._sent = 0
        self._t0 = time.monotonic()
        # small chunks when paced, so the rate is smooth (≈ 20 chunks per second)
        self._chunk_max = max(1024, rate_bytes_per_s // 20) if rate_bytes_per_s > 0 else 1 << 20

    def __len__(self) -> int:
        return self._size - self._sent

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(READ_CHUNK_BYTES):
            yield chunk

    @property
    def sent(self) -> int:
        return self._sent

    def read(self, n: int = -1) -> bytes:
        want = self._chunk_max if n is None or n < 0 else min(n, self._chunk_max)
        if self._rate > 0 and self._sent:
            delay = self._t0 + self._sent / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        chunk = self._f.read(want)
        self._sent += len(chunk)
        if chunk:
            self._on_chunk(self._sent)
        return chunk

    def close(self) -> None:
        self._f.close()


@dataclass
class _Wire:
    """What the session's connections say about the last request."""

    reused: bool = False  # it went out on a connection an earlier request used


def _one_write(base: type[Any], wire: _Wire) -> type[Any]:
    """urllib3's connection class `base`, holding a request's head until the body's first
    chunk (or the response is awaited), so both leave in one send, and telling `wire`
    whether each request reused the connection."""

    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        wire.reused = self.sock is not None and self.sock is self._posagent_sock
        try:
            return base.request(self, *args, **kwargs)
        finally:
            self._posagent_sock = self.sock

    def endheaders(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._posagent_hold = True  # http.client sends the head in its next send()
        return base.endheaders(self, *args, **kwargs)

    def send(self: Any, data: Any) -> Any:
        held, self._posagent_held = self._posagent_held, b""
        if self._posagent_hold and isinstance(data, bytes | bytearray):
            self._posagent_hold = False
            self._posagent_held = bytes(data)
            return None
        self._posagent_hold = False
        if held and isinstance(data, bytes | bytearray | memoryview):
            return base.send(self, held + bytes(data))
        if held:
            base.send(self, held)
        return base.send(self, data)

    def getresponse(self: Any) -> Any:
        self._posagent_hold = False
        held, self._posagent_held = self._posagent_held, b""
        if held:
            base.send(self, held)
        return base.getresponse(self)

    def close(self: Any) -> Any:
        self._posagent_hold, self._posagent_held = False, b""
        return base.close(self)

    return type(
        f"OneWrite{base.__name__}",
        (base,),
        {
            "_posagent_sock": None,
            "_posagent_hold": False,
            "_posagent_held": b"",
            "request": request,
            "endheaders": endheaders,
            "send": send,
            "getresponse": getresponse,
            "close": close,
        },
    )


def _adapter(wire: _Wire) -> requests.adapters.HTTPAdapter:
    """requests' adapter, sending bodies in SEND_BLOCK_BYTES blocks (urllib3's default is
    16 KiB) and each request in one write (`_one_write`)."""
    # lazy: requests and its TLS stack load in the upload child only
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection  # lazy: as requests
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool  # lazy: as requests

    pools = {
        "http": type(
            "OneWriteHTTPPool",
            (HTTPConnectionPool,),
            {"ConnectionCls": _one_write(HTTPConnection, wire)},
        ),
        "https": type(
            "OneWriteHTTPSPool",
            (HTTPSConnectionPool,),
            {"ConnectionCls": _one_write(HTTPSConnection, wire)},
        ),
    }

    class _BigBlocks(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["blocksize"] = SEND_BLOCK_BYTES
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

    return _BigBlocks(max_retries=0)


def _read_capped(resp: requests.Response, limit: int, deadline_s: float) -> bytes:
    """Up to `limit` bytes of a streamed response body, giving up at the deadline or any error."""
    buf = bytearray()
    end = time.monotonic() + deadline_s
    try:
        while len(buf) < limit and time.monotonic() < end:
            chunk = resp.raw.read1(min(4096, limit - len(buf)))
            if not chunk:
                break
            buf += chunk
    except Exception:  # the status is what counts; a broken body only shortens the message
        pass
    return bytes(buf)


def describe_exception(e: BaseException) -> str:
    """A one-line, kind-prefixed reason for a transport failure."""
    import requests  # lazy: requests and its TLS stack load in the upload child only

    if isinstance(e, requests.exceptions.SSLError):
        kind = "tls"
    elif isinstance(e, requests.exceptions.ConnectTimeout):
        kind = "connect timeout"
    elif isinstance(e, requests.exceptions.ReadTimeout):
        kind = "read timeout"
    elif isinstance(e, requests.exceptions.ProxyError):
        kind = "proxy"
    elif isinstance(e, requests.exceptions.ConnectionError):
        kind = "connection"
    else:
        kind = type(e).__name__
    return f"{kind}: {e}"[:300]


class RequestsPutter:
    """The child's side: one requests.Session, rebuilt when the TLS settings change."""

    def __init__(self) -> None:
        self._session: requests.Session | None = None
        self._tls: TlsSettings | None = None
        self._wire = _Wire()
        self._failure: BaseException | None = None  # what the last POST's request raised
        self._answered_at = 0.0  # monotonic time of the last answer: idle since
        self._swallowed_idle_s = float("inf")  # an idle after which a kept one was swallowed
        self._swallowed_until = 0.0  # when that lesson is forgotten

    def session(self, tls: TlsSettings) -> requests.Session:
        """The pooled session for these settings."""
        import requests  # lazy: requests and its TLS stack load in the upload child only

        if self._session is not None and self._tls == tls:
            return self._session
        self.close()
        s = requests.Session()
        s.mount("https://", _adapter(self._wire))
        s.mount("http://", _adapter(self._wire))
        s.trust_env = False  # the config is the only source: no env proxies, no .netrc
        if not tls.verify_tls:
            s.verify = False
        elif tls.ca_file:
            s.verify = tls.ca_file
        if tls.client_cert_file:
            s.cert = (
                (tls.client_cert_file, tls.client_key_file)
                if tls.client_key_file
                else tls.client_cert_file
            )
        if tls.proxy:
            s.proxies = {"http": tls.proxy, "https": tls.proxy}
        self._session, self._tls = s, tls
        return s

    def close(self) -> None:
        """Close the pooled connections."""
        s, self._session = self._session, None
        if s is not None:
            with contextlib.suppress(Exception):
                s.close()

    def put(self, req: PutRequest, on_chunk: Callable[[int], None]) -> PutReply:
        """One PUT; transport trouble becomes PutReply.error, never an exception."""
        try:
            session = self.session(req.tls)
            body = _Body(req.path, req.size_bytes, req.rate_bytes_per_s, on_chunk)
        except OSError as e:
            return PutReply(error=f"cannot read bundle: {e.strerror or e}")
        except Exception as e:  # a CA or client-cert file requests cannot use
            return PutReply(error=describe_exception(e))
        try:
            resp = session.put(
                req.url,
                data=body,
                headers=req.headers,
                timeout=(req.connect_timeout_s, req.read_timeout_s),
                allow_redirects=False,
                stream=True,
            )
        except Exception as e:  # requests' and urllib3's errors, ssl, socket: all retriable
            self.close()
            return PutReply(error=describe_exception(e), bytes_sent=body.sent)
        finally:
            body.close()
        try:
            text = b""
            length = resp.headers.get("Content-Length", "")
            small = (length.isascii() and length.isdigit()) and int(
                length
            ) <= RESPONSE_BODY_LIMIT_BYTES
            if small or resp.status_code not in (200, 201):
                # errors: a snippet for the log; small success bodies: read so the
                # connection can be reused. A long or endless success body is dropped.
                text = _read_capped(resp, RESPONSE_BODY_LIMIT_BYTES, RESPONSE_BODY_DEADLINE_S)
            return PutReply(
                status=resp.status_code,
                retry_after=resp.headers.get("Retry-After"),
                body=text.decode("utf-8", "replace"),
                bytes_sent=body.sent,
            )
        finally:
            resp.close()

    def post_json(
        self, req: PostJsonRequest, on_resend: Callable[[], None] = lambda: None
    ) -> PutReply:
        """One JSON POST; transport trouble becomes PutReply.error, never an exception.

        A `resend_safe` one whose kept connection broke before the answer's head is
        sent once more on a new connection (`on_resend` first). A kept connection that
        swallowed a request (no answer within the read timeout: a NAT that forgot it)
        teaches how long an idle connection lives on this path: for SWALLOWED_MEMORY_S
        one idle that long is not used again, a new connection is opened instead (one
        slow answer each time, not at every check-in)."""
        import requests  # lazy: requests and its TLS stack load in the upload child only

        now = time.monotonic()
        idle = now - self._answered_at
        if now >= self._swallowed_until:
            self._swallowed_idle_s = float("inf")
        if self._session is not None and idle >= self._swallowed_idle_s:
            self.close()  # a connection idle this long was swallowed before
        reply = self._post_json(req)
        if (
            reply.status is None
            and req.resend_safe
            and self._wire.reused
            and isinstance(self._failure, requests.ConnectionError | requests.Timeout)
        ):
            if isinstance(self._failure, requests.ReadTimeout):
                self._swallowed_idle_s = min(self._swallowed_idle_s, idle)
                self._swallowed_until = time.monotonic() + SWALLOWED_MEMORY_S
            on_resend()
            again = self._post_json(req)
            if again.status is None:
                again = replace(again, error=f"{again.error} (resent after: {reply.error})"[:400])
            reply = again
        if reply.status is not None:
            self._answered_at = time.monotonic()
        return reply

    def _post_json(self, req: PostJsonRequest) -> PutReply:
        self._failure = None
        self._wire.reused = False
        try:
            session = self.session(req.tls)
        except Exception as e:  # a CA or client-cert file requests cannot use
            return PutReply(error=describe_exception(e))
        from urllib3.util import SKIP_HEADER  # lazy: urllib3 loads in the upload child only

        data = req.body.encode()
        # only what the collector reads (a check-in every few minutes on a metered link):
        # no User-Agent, Accept, Accept-Encoding or Connection (keep-alive is HTTP/1.1's
        # default); None drops requests' session header, SKIP_HEADER urllib3's own
        headers: dict[str, str | None] = {
            "User-Agent": SKIP_HEADER,
            "Accept-Encoding": SKIP_HEADER,
            "Accept": None,
            "Connection": None,
            "Content-Type": "application/json",
            **req.headers,
        }
        try:
            resp = session.post(
                req.url,
                data=data,
                headers=headers,
                timeout=(req.connect_timeout_s, req.read_timeout_s),
                allow_redirects=False,
                stream=True,
            )
        except Exception as e:  # requests' and urllib3's errors, ssl, socket: all retriable
            self._failure = e
            self.close()
            return PutReply(error=describe_exception(e))
        try:
            text = _read_capped(resp, JSON_BODY_LIMIT_BYTES, req.read_timeout_s)
            return PutReply(
                status=resp.status_code,
                retry_after=resp.headers.get("Retry-After"),
                body=text.decode("utf-8", "replace"),
                bytes_sent=len(data),
            )
        finally:
            resp.close()


def verify_signatures(req: VerifyRequest) -> PutReply:
    """Check each [data_b64, signature_b64] item with the public key file (in the child)."""
    from agent.bundle.format import BundleError  # lazy: the child's side only
    from agent.bundle.sealed import load_public_key  # lazy: cryptography, in the child only

    try:
        key = load_public_key(req.public_key_file)
    except (BundleError, OSError, ValueError) as e:
        return PutReply(error=f"collector public key {req.public_key_file}: {e}"[:300])
    results: list[str] = []
    for item in req.items:
        try:
            data = base64.b64decode(item[0], validate=True)
            sig = base64.b64decode(item[1], validate=True)
        except (binascii.Error, ValueError, IndexError, TypeError):
            results.append("not base64")
            continue
        try:
            key.verify(sig, data)
            results.append("")
        except Exception:  # cryptography's InvalidSignature, or a signature of the wrong size
            results.append("bad signature")
    return PutReply(body=json.dumps(results))


def public_key_pem(req: PublicKeyRequest) -> PutReply:
    """The PEM public key of the signing key file (in the child)."""
    from agent.bundle.format import BundleError  # lazy: the child's side only
    from agent.bundle.sealed import load_signing_key, public_pem  # lazy: cryptography, child only

    try:
        return PutReply(body=public_pem(load_signing_key(req.signing_key_file).public_key()))
    except (BundleError, OSError, ValueError) as e:
        return PutReply(error=f"signing key {req.signing_key_file}: {e}"[:300])


def rotate_key(req: RotateKeyRequest) -> PutReply:
    """A new key staged, the rotation recorded as pending; the reply's body is JSON:
    public_key (PEM), key_id, previous (the old key's id), signature (base64, the old
    key's over agent.bundle.sealed.rotation_statement). In the child."""
    from agent.bundle.format import BundleError  # lazy: the child's side only
    from agent.bundle.sealed import begin_rotation  # lazy: cryptography, child only

    try:
        pending, pem, signature = begin_rotation(
            req.current_key_file, req.home_key_file, command_id=req.command_id, device=req.device
        )
    except (BundleError, OSError, ValueError) as e:
        return PutReply(error=str(e)[:300])
    body = {
        "public_key": pem,
        "key_id": pending.key_id,
        "previous": pending.previous,
        "signature": signature,
    }
    return PutReply(body=json.dumps(body))


def _write(out: IO[bytes], msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg).encode() + b"\n")
    out.flush()


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGKILL when the parent goes (Linux; elsewhere stdin EOF suffices)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent left before prctl took effect
            os._exit(0)


def main() -> int:
    """Child entry point: serve PutRequests from stdin until EOF."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this ends
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    putter = RequestsPutter()
    for line in inp:
        try:
            d = json.loads(line)
            kind = d.pop("kind", "put")
            if kind == "post_json":
                d["tls"] = TlsSettings(**d.pop("tls"))
                reply = putter.post_json(PostJsonRequest(**d), lambda: _write(out, {"sent": 0}))
                _write(out, {"reply": vars(reply)})
                continue
            if kind == "verify_ed25519":
                _write(out, {"reply": vars(verify_signatures(VerifyRequest(**d)))})
                continue
            if kind == "public_key":
                _write(out, {"reply": vars(public_key_pem(PublicKeyRequest(**d)))})
                continue
            if kind == "rotate_key":
                _write(out, {"reply": vars(rotate_key(RotateKeyRequest(**d)))})
                continue
            if kind != "put":
                raise ValueError(f"unknown request kind {kind!r}")
            req = PutRequest.from_json(d)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            _write(out, {"reply": vars(PutReply(error=f"upload worker: bad request: {e}"))})
            continue
        if req.fresh_session:
            putter.close()
        last = 0.0

        def progress(sent: int, size: int = req.size_bytes) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S or sent >= size:
                last = now
                _write(out, {"sent": sent})

        reply = putter.put(req, progress)
        _write(out, {"reply": vars(reply)})
    putter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

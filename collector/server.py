"""Running the collector on uvicorn: in the foreground (`posagent collector serve`) or in a thread.

HTTP/1.1 is parsed by httptools (llhttp, C) through uvicorn's protocol for it, not h11
(pure Python): with the guards below, a request through the whole app to a 404 page took
some 250 us of the collector's CPU where it took some 410 (wrk, loopback, 2026-12-06). The
event loop is asyncio's: uvloop took some 10-15 % less CPU a check-in, but its TLS
read buffer (256 KiB, filled as data comes) made 1,500 idle TLS connections after a burst
of uploads hold some 45 MiB more than asyncio's with `small_tls_buffers`.
uvicorn closes a connection only between requests (``timeout_keep_alive``);
`GuardedHttpToolsProtocol` adds what it lacks against slow or idle clients:

- a header deadline: a request's headers must be complete within
  ``header_timeout_s`` of the connection's start or of their first byte (a socket
  that sends nothing, or trickles its headers, is closed);
- a head size limit: a request head over MAX_HEAD_BYTES (16 KiB, h11's limit) is
  answered ``431`` and the connection closed (llhttp has no limit of its own; an
  incomplete head is counted as it comes, so memory stays bounded);
- keep-alive: after an answer the connection is kept idle up to ``keepalive_s``
  (above the terminals' check-in interval: each check-in reuses its connection, no
  TCP or TLS handshake, docs/CHANNEL.md), then closed;
- ``limit_concurrency`` counts requests in progress, not open connections (uvicorn
  counts both; every terminal holds an idle connection between its check-ins);
- a body deadline: the body must be complete within ``body_timeout_s`` of the
  headers; past it the request is answered ``408`` (when no answer was started),
  the connection is closed, the handler sees a disconnect and nothing is stored;
- a cap per client address on idle connections (waiting for a request, or
  holding half-sent headers): past ``max_idle_per_client`` the oldest is closed,
  so one client cannot hold the ``limit_concurrency`` slots of everyone;
- one write per answer (`CoalescingTransport`): uvicorn writes a response's head and
  its body apart, two send() calls and two TCP segments (two TLS records) for a
  small JSON answer; the writes of one event-loop step go out together;
- refusals (400 unparsable, 408, 431) are answered with ``connection: close`` and the
  connection is cut LINGER_S later, and idle connections are cut at once: never a
  graceful TLS close, which waits on the peer.

TLS (`TlsContext`): one `ssl.SSLContext` for the listener whose certificate
chain `reload` loads again (SIGHUP in `serve`): new connections get the new
certificate, open ones and the listening socket are untouched.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import signal
import socket
import ssl
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from typing import Any, ClassVar

import structlog
import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from collector.app import create_app
from collector.config import CollectorConfig


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ValueError(f"listen must be host:port, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"port out of range in {listen!r}")
    return host, p


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv4 or IPv6 by the host); OSError when taken or not allowed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only disables Nagle on accepted sockets whose
    # proto says TCP, and a socket made with proto 0 answers every request 40 ms late
    # (Nagle against delayed ACK on the response's header and body writes).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class CoalescingTransport:
    """A transport whose writes within one event-loop step leave as one write.

    Every write is held and flushed by a `call_soon` (or at once by close/write_eof);
    abort drops what is held. Anything else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._flush_at: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._held.append(bytes(data))
        if self._flush_at is None:
            self._flush_at = self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


log = structlog.get_logger(__name__)
LINGER_S = 2.0  # after a refusal (400, 408, 431), how long the client has to read it
# A request head (request line and headers) longer than this is answered 431 (h11, the
# parser before httptools, refused past the same 16 KiB; llhttp itself has no limit)
MAX_HEAD_BYTES = 16 * 1024


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head past MAX_HEAD_BYTES."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines, a head size limit and
    an idle cap per client.

    `guarded_protocol` makes a subclass carrying one server's settings and registry.
    """

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 120.0
    max_idle_per_client: ClassVar[int] = 32
    # client host -> its idle connections, oldest first (one registry per server)
    idle: ClassVar[dict[str, OrderedDict[GuardedHttpToolsProtocol, None]]] = {}

    _header_timer: asyncio.TimerHandle | None = None  # the header deadline
    _body_timer: asyncio.TimerHandle | None = None
    _body_cycle: object = None
    _in_head: bool = False  # a request's head has begun and is not complete
    _reading: int = 0  # the length of the read being parsed
    _head_bytes: int = 0  # the reads since the head began, the first one whole
    _head_first: int = 0  # the first of them (it may hold the end of the previous request)
    _refused: bool = False  # answered with a refusal and closing: what comes is dropped

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn answers 503 once open connections reach limit_concurrency, idle ones
        # included: only requests in progress count here
        limit, self.limit_concurrency = self.limit_concurrency, None
        if limit is not None:
            self.app = _Limited(self.app, self.tasks, limit)

    # -- state
    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _host(self) -> str:
        return self.client[0] if self.client else "?"

    def _set_idle(self, idle: bool) -> None:
        conns = self.idle.setdefault(self._host(), OrderedDict())
        if not idle:
            conns.pop(self, None)
            if not conns:
                self.idle.pop(self._host(), None)
            return
        if self in conns:
            return
        conns[self] = None
        cap = self.max_idle_per_client
        while cap and len(conns) > cap:
            oldest, _ = conns.popitem(last=False)
            oldest._close("idle_cap")

    def _close(self, why: str) -> None:
        if not self.transport.is_closing():
            log.info("connection_closed", reason=why, client=self._host())
            self.transport.abort()  # no TLS close_notify exchange, which waits on the peer

    def _refuse(self, status: int, reason: str, error: str) -> None:
        """Answer `status` (JSON, the upload protocol's shape) and close: the answer is
        flushed, then the connection is cut LINGER_S later. Closing at once with the
        client's unread bytes in our buffer would send a reset that can overtake the
        answer; a graceful TLS close would wait on the peer (asyncio holds it up to 30 s)."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._cancel("_header_timer")
        self._cancel("_body_timer")
        self._set_idle(False)
        log.info("connection_closed", reason=reason, client=self._host())
        body = json.dumps({"status": reason, "bundle_id": None, "error": error}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s"
            % (status, HTTPStatus(status).phrase.encode(), len(body), body)
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # the handler's receive() now returns http.disconnect; its own answer is dropped
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # half-close after the answer (plain TCP)
        self.loop.call_later(LINGER_S, self.transport.abort)

    def _cancel(self, which: str) -> None:
        timer = getattr(self, which)
        if timer is not None:
            timer.cancel()
            setattr(self, which, None)

    def _arm_header_deadline(self) -> None:
        """The header deadline, unless one runs."""
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_expired)

    def _header_expired(self) -> None:
        self._header_timer = None
        if not self._busy():
            self._close("header_timeout")

    def _body_expired(self) -> None:
        self._body_timer = None
        if not (self._busy() and self.cycle.more_body):
            return
        if self.cycle.response_started:
            self._close("body_timeout")
            return
        self._refuse(408, "timeout", f"request body not complete within {self.body_timeout_s:g} s")

    def _after_events(self, data: bool) -> None:
        """After a read (`data`) or an answer: the idle registry and the deadlines."""
        if self._refused or self.transport.is_closing():
            return
        if not self._busy():
            self._set_idle(True)
            if data or self._in_head:
                self._arm_header_deadline()  # the rest of the next request's head, or close
            return
        self._set_idle(False)
        self._cancel("_header_timer")
        if self.cycle.more_body:
            if self._body_cycle is not self.cycle:
                self._cancel("_body_timer")
                self._body_cycle = self.cycle
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_expired)
        else:
            self._cancel("_body_timer")

    # -- uvicorn's protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        super().connection_made(coalescing)  # type: ignore[arg-type]
        self._arm_header_deadline()
        self._set_idle(True)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._reading = len(data)
        super().data_received(data)  # uvicorn stops its keep-alive timer
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes - self._head_first > MAX_HEAD_BYTES:
                self._head_too_large()  # an incomplete head past the limit, however it began
        self._after_events(data=True)

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes, self._head_first = True, 0, self._reading
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        # what was read since the head began bounds its size: the exact size only past that
        if self._head_bytes + self._reading > MAX_HEAD_BYTES and (
            len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > MAX_HEAD_BYTES
        ):
            self._head_too_large()
            raise _HeadTooLarge  # stops the parser; data_received drops the rest
        super().on_headers_complete()

    def _head_too_large(self) -> None:
        self._refuse(431, "head_too_large", f"request head over {MAX_HEAD_BYTES} bytes")

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", msg)

    def on_response_complete(self) -> None:
        self._cancel("_body_timer")
        super().on_response_complete()  # uvicorn starts its keep-alive timer when idle
        self._after_events(data=False)

    def timeout_keep_alive_handler(self) -> None:
        """uvicorn's keep-alive timer (``timeout_keep_alive``: started after each answer,
        stopped by the next read) ran out: the idle connection is cut."""
        if not self._busy() and not self._in_head:  # else the header deadline governs
            self._close("keepalive_timeout")

    def shutdown(self) -> None:
        """Server stop: an idle connection is dropped at once, a busy one finishes its answer."""
        if self._busy():
            super().shutdown()
        else:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("_header_timer")
        self._cancel("_body_timer")
        self._unset_keepalive_if_required()  # uvicorn's, which it leaves after an abort
        self._set_idle(False)
        super().connection_lost(exc)


class _Limited:
    """The app, or uvicorn's 503 when more than `limit` requests are in progress (`tasks`
    holds the one asking too)."""

    def __init__(self, app: Any, tasks: set[asyncio.Task[None]], limit: int) -> None:
        self.app, self.tasks, self.limit = app, tasks, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if len(self.tasks) > self.limit:
            log.warning("concurrency_limit", limit=self.limit)
            await service_unavailable(scope, receive, send)
            return
        await self.app(scope, receive, send)


def guarded_protocol(cfg: CollectorConfig) -> type[GuardedHttpToolsProtocol]:
    """A GuardedHttpToolsProtocol class with cfg's deadlines and cap, and its own registry."""
    return type(
        "CollectorHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": float(cfg.header_timeout_s),
            "body_timeout_s": float(cfg.body_timeout_s),
            "max_idle_per_client": cfg.max_idle_per_client,
            "idle": {},
        },
    )


# asyncio's TLS protocol gives every connection a 256 KiB read buffer, filled as it is
# made: some 280 KiB of RSS per open connection, idle ones included (each terminal holds
# one between its check-ins, keepalive_s). With 32 KiB (two TLS records) an idle TLS
# connection holds some 60 KiB; reading one connection on loopback went from some 250-400
# MiB/s to 210-235 MiB/s (16 KiB: 44 KiB, 125-290 MiB/s), far above any terminal's link.
TLS_READ_BUFFER_BYTES = 32 * 1024


def small_tls_buffers() -> None:
    """Make asyncio's TLS connections in this process use TLS_READ_BUFFER_BYTES buffers."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER_BYTES


class TlsContext:
    """The listener's server-side SSLContext; `reload` re-reads the certificate and key."""

    def __init__(self, cert_file: str, key_file: str):
        small_tls_buffers()
        self.cert_file, self.key_file = cert_file, key_file
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        # no TLS 1.3 session tickets: OpenSSL sends two after every handshake (some 500
        # bytes down), and the terminals never use one (urllib3 resumes no session; their
        # connection is kept between check-ins instead, keepalive_s)
        self.context.num_tickets = 0
        self.context.load_cert_chain(cert_file, key_file)  # OSError / ssl.SSLError

    def reload(self) -> bool:
        """Load the files again into the same context; on error keep the previous chain."""
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as e:
            log.error("tls_reload_failed", cert_file=self.cert_file, error=str(e))
            return False
        log.info("tls_reloaded", cert_file=self.cert_file)
        return True


def tls_context(cfg: CollectorConfig) -> TlsContext | None:
    """TlsContext when cfg names a certificate and key, None when neither; ValueError for one."""
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise ValueError("tls_cert_file and tls_key_file go together (set both or neither)")
    if not cfg.tls_cert_file:
        return None
    return TlsContext(cfg.tls_cert_file, cfg.tls_key_file)


def uvicorn_config(
    cfg: CollectorConfig, tls: TlsContext | None = None, **overrides: Any
) -> uvicorn.Config:
    """The uvicorn settings the collector uses (no server header, structlog for our events)."""
    kwargs: dict[str, Any] = {
        "http": guarded_protocol(cfg),
        "log_config": None,
        "access_log": False,
        "server_header": False,
        # the idle connection after an answer, cut by GuardedHttpToolsProtocol (at once,
        # not uvicorn's graceful TLS close, which can wait on the peer)
        "timeout_keep_alive": cfg.keepalive_s,
        "limit_concurrency": 512,
        "lifespan": "on",
        "timeout_graceful_shutdown": 30,  # answers in flight on stop, at most this long
        "proxy_headers": False,
        # the event loop and the WebSocket protocol named, never picked by what happens to
        # be installed ("auto"): small_tls_buffers is asyncio's; no request is upgraded to
        # a WebSocket protocol, which has none of the guards
        "loop": "asyncio",
        "ws": "none",
    }
    if tls is not None:
        kwargs["ssl_context_factory"] = lambda config, default: tls.context
    kwargs.update(overrides)
    return uvicorn.Config(create_app(cfg), **kwargs)


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server whose open connections the app's /metrics reports."""
    server = uvicorn.Server(config)
    app: Any = config.app
    app.state.collector.metrics.track_connections(lambda: len(server.server_state.connections))
    return server


def serve(cfg: CollectorConfig, sock: socket.socket, tls: TlsContext | None = None) -> None:
    """Serve on sock until SIGINT/SIGTERM (uvicorn handles the signals in the main thread);
    SIGHUP re-reads the TLS certificate and key, the listener stays open."""
    if tls is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: tls.reload())
    _server(uvicorn_config(cfg, tls)).run(sockets=[sock])


class CollectorThread:
    """A collector on uvicorn in a background thread, for tests, the demo and benchmarks.

    >>> with CollectorThread(cfg) as c:
    ...     requests.get(c.url + "/healthz")
    """

    def __init__(self, cfg: CollectorConfig, host: str = "127.0.0.1", port: int = 0):
        self.cfg = cfg
        self.tls = tls_context(cfg)
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://{host}:{self.port}"
        self.server = _server(uvicorn_config(cfg, self.tls))
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            daemon=True,
            name="posagent-collector",
        )

    def start(self, timeout_s: float = 10.0) -> CollectorThread:
        """Start serving; returns once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("collector did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> CollectorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

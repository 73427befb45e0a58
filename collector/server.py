"""Running the collector on uvicorn: in the foreground (`posagent collector serve`) or in a thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from collector.app import create_app
from collector.config import CollectorConfig


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
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


def uvicorn_config(cfg: CollectorConfig, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings the collector uses (no server header, structlog for our events)."""
    kwargs: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_keep_alive": 15,
        "limit_concurrency": 512,
        "lifespan": "on",
        "proxy_headers": False,
    }
    kwargs.update(overrides)
    return uvicorn.Config(create_app(cfg), **kwargs)


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server whose open connections the app's /metrics reports."""
    server = uvicorn.Server(config)
    app: Any = config.app
    app.state.collector.metrics.track_connections(lambda: len(server.server_state.connections))
    return server


def serve(cfg: CollectorConfig, sock: socket.socket) -> None:
    """Serve on sock until SIGINT/SIGTERM (uvicorn handles the signals in the main thread)."""
    _server(uvicorn_config(cfg)).run(sockets=[sock])


class CollectorThread:
    """A collector on uvicorn in a background thread, for tests, the demo and benchmarks.

    >>> with CollectorThread(cfg) as c:
    ...     requests.get(c.url + "/healthz")
    """

    def __init__(self, cfg: CollectorConfig, host: str = "127.0.0.1", port: int = 0):
        self.cfg = cfg
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = _server(uvicorn_config(cfg))
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

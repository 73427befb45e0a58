"""A loopback TCP proxy that slows or stalls the way to a real server (S3 here).

The collector is pointed at the proxy (``s3_endpoint_url``); `mode` decides what happens
to the bytes of every connection, open or new, from the next chunk on:

- ``pass``: forwarded as they come;
- ``delay``: each chunk held `delay_s` before it is forwarded (a slow link or server);
- ``stall``: nothing forwarded either way (a server that stopped answering);
- ``stall_replies``: requests reach the server, its replies are held (it stored the
  object, the acknowledgement never comes back).

Held bytes are forwarded when the mode changes back. Threads, one per direction of a
connection; `close` ends them all. `take()` says how many bytes went each way since the
last call, `accepted` how many connections came, `server_closed` how many the server
closed.

`cut(fate)` decides what becomes of the connections open now (new ones pass), the ways an
idle kept-alive connection dies between a terminal's check-ins:

- ``blackhole``: whatever either side sends from now on is swallowed, nothing is closed
  (a NAT that forgot the connection);
- ``reset``: both sides reset at once;
- ``reset_at_request``: the client's next bytes are not forwarded, both sides are reset
  (the server closed it just as the request came);
- ``drop_reply``: the client's next request reaches the server, the reply does not: the
  client is reset as it comes (the request was handled, its answer lost).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from typing import Literal

Mode = Literal["pass", "delay", "stall", "stall_replies"]
Fate = Literal["pass", "blackhole", "reset", "reset_at_request", "drop_reply"]


def _reset(s: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), not a FIN."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()


class TcpProxy:
    """127.0.0.1:<port> forwarding to 127.0.0.1:<target_port>."""

    def __init__(self, target_port: int, mode: Mode = "pass", delay_s: float = 0.0):
        self.target_port = target_port
        self.mode: Mode = mode
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # the accept loop sees `close`
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closing = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._fates: dict[socket.socket, Fate] = {}  # client socket -> its fate
        self._pumps: dict[socket.socket, list[threading.Thread]] = {}  # client socket -> its
        self._sent = [0, 0]  # bytes forwarded: to the server, to the client
        self.accepted = 0
        self.server_closed = 0  # connections whose server side closed (its FIN passed on)
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")]
        self._threads[0].start()

    def set(self, mode: Mode, delay_s: float | None = None) -> None:
        """Change what happens to the bytes (of open connections too)."""
        if delay_s is not None:
            self.delay_s = delay_s
        self.mode = mode

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
                self._fates[client] = "pass"
                self.accepted += 1
            for src, dst, replies in ((client, upstream, False), (upstream, client, True)):
                t = threading.Thread(
                    target=self._pump,
                    args=(src, dst, replies, client, upstream),
                    daemon=True,
                    name="tcp-proxy",
                )
                t.start()
                self._threads.append(t)
                self._pumps.setdefault(client, []).append(t)

    def _held(self, replies: bool) -> bool:
        return self.mode == "stall" or (self.mode == "stall_replies" and replies)

    def cut(self, fate: Fate) -> int:
        """Give the connections open now this fate; how many there were."""
        with self._lock:
            open_now = [c for c, f in self._fates.items() if f == "pass"]
            for c in open_now:
                self._fates[c] = fate
        if fate == "reset":
            with self._lock:
                pairs = [
                    (c, u)
                    for c, u in zip(self._socks[::2], self._socks[1::2], strict=True)
                    if c in open_now
                ]
            for c, u in pairs:
                _reset(c)
                _reset(u)
            # a socket closed while its pump waits in select() is released (and the reset
            # sent) only when that select returns: wait for the pumps to see it
            for c, _ in pairs:
                for t in self._pumps.get(c, []):
                    t.join(timeout=5)
        return len(open_now)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        replies: bool,
        client: socket.socket,
        upstream: socket.socket,
    ) -> None:
        try:
            while not self._closing:
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                if self._held(replies):  # leave the bytes in the kernel: the sender stalls
                    time.sleep(0.05)
                    continue
                data = src.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    if replies:
                        with self._lock:
                            self.server_closed += 1
                    return
                fate = self._fates.get(client, "pass")
                if fate == "blackhole":
                    continue
                if fate == "reset_at_request" or (fate == "drop_reply" and replies):
                    _reset(client)
                    _reset(upstream)
                    return
                if self.mode == "delay":
                    time.sleep(self.delay_s)
                while self._held(replies) and not self._closing:
                    time.sleep(0.05)
                dst.sendall(data)
                with self._lock:
                    self._sent[replies] += len(data)
        except (OSError, ValueError):
            _reset(src)
            _reset(dst)

    def take(self) -> tuple[int, int]:
        """(bytes to the server, bytes to the client) since the last call."""
        with self._lock:
            out = (self._sent[0], self._sent[1])
            self._sent = [0, 0]
        return out

    def close(self) -> None:
        """Stop accepting and cut every connection."""
        self._closing = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _reset(s)
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

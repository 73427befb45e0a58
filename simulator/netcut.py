"""A loopback TCP proxy that can be cut and restored: the WAN between agent and collector.

`NetCut(upstream_host, upstream_port).start()` listens on 127.0.0.1:<port>
(or `host`:<port>)
and relays every connection to the upstream. `cut()` closes the listener
(new connections are refused) and resets every relayed connection (what a
dead uplink looks like to the agent); `restore()` listens again on the same
port. Counters say how many connections were relayed and refused.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

from simulator.service import Service


class NetCut(Service):
    """A cuttable TCP relay on 127.0.0.1 in front of host:port."""

    def __init__(
        self, upstream_host: str, upstream_port: int, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.relayed = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._up = False
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT"."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (the agent's upload endpoint)."""
        return f"http://{self.address}"

    @property
    def is_up(self) -> bool:
        """True while connections are relayed."""
        return self._up

    def start(self) -> NetCut:
        """Listen and relay in background threads."""
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="netcut", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        self.port = s.getsockname()[1]
        with self._lock:
            self._listener = s
            self._up = True

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self._up = False
            listener, self._listener = self._listener, None
            conns = list(self._conns)
            self._conns.clear()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            _reset(c)

    def restore(self) -> None:
        """Listen again on the same port."""
        if not self._up:
            self._listen()

    def stop(self) -> None:
        """Cut for good and end the threads."""
        self._stop.set()
        self.cut()
        if self._thread is not None:
            self._thread.join(timeout=2)

    # ----------------------------------------------------------------- relay

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stop.wait(0.05)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by cut()
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        with self._lock:
            if not self._up:
                _reset(client)
                upstream.close()
                return
            self._conns.update((client, upstream))
            self.relayed += 1
        pair = {client: upstream, upstream: client}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns.discard(client)
                self._conns.discard(upstream)
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()


def _reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dropped link looks to the peer."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.close()

"""A simulated ESC/POS receipt printer: on a pty (serial) or on a loopback TCP port.

It answers DLE EOT 1..4 from its state (paper ok / near end / end, cover open,
cutter error, unrecoverable, overheat, offline, drawer), ignores everything
else (print data), and misbehaves on request: silent, garbage, late replies,
unplugged and plugged back. State and mode can be changed from any thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from simulator.peripherals import SysfsRegistered, UsbIdentity
from simulator.service import Service

log = structlog.get_logger(__name__)

DLE, EOT = 0x10, 0x04


@dataclass(frozen=True)
class PrinterState:
    """What the printer's sensors say."""

    paper: str = "ok"  # "ok" | "near_end" | "end"
    cover_open: bool = False
    cutter_error: bool = False
    unrecoverable: bool = False
    overheat: bool = False  # auto-recoverable error
    offline: bool = False  # forced offline (besides what the errors imply)
    drawer_high: bool = False  # drawer kick-out connector pin 3 level
    feed_button: bool = False

    def __post_init__(self) -> None:
        if self.paper not in ("ok", "near_end", "end"):
            raise ValueError(f"paper must be ok | near_end | end, not {self.paper!r}")

    @property
    def has_error(self) -> bool:
        """An error condition (DLE EOT 2 bit 6)."""
        return self.cutter_error or self.unrecoverable or self.overheat

    @property
    def is_offline(self) -> bool:
        """Offline as a real printer is: cover open, paper end and errors take it offline."""
        return self.offline or self.cover_open or self.paper == "end" or self.has_error


def status_byte(state: PrinterState, n: int) -> int:
    """The byte a real printer in this state sends for DLE EOT n."""
    b = 0x12  # fixed bits 1 and 4
    if n == 1:
        b |= 0x04 if state.drawer_high else 0
        b |= 0x08 if state.is_offline else 0
    elif n == 2:
        b |= 0x04 if state.cover_open else 0
        b |= 0x08 if state.feed_button else 0
        b |= 0x20 if state.paper == "end" else 0
        b |= 0x40 if state.has_error else 0
    elif n == 3:
        b |= 0x08 if state.cutter_error else 0
        b |= 0x20 if state.unrecoverable else 0
        b |= 0x40 if state.overheat else 0
    elif n == 4:
        b |= 0x0C if state.paper in ("near_end", "end") else 0
        b |= 0x60 if state.paper == "end" else 0
    else:
        raise ValueError(f"DLE EOT n must be 1..4, not {n}")
    return b


class DleEotParser:
    """Finds DLE EOT n requests in a byte stream split at arbitrary points."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[int]:
        """The n of each complete DLE EOT n in the stream so far (1..4 only)."""
        buf = self._tail + data
        out: list[int] = []
        i = 0
        while i < len(buf):
            if buf[i] == DLE:
                if i + 1 >= len(buf):
                    break
                if buf[i + 1] == EOT:
                    if i + 2 >= len(buf):
                        break
                    if buf[i + 2] in (1, 2, 3, 4):
                        out.append(buf[i + 2])
                        i += 3
                        continue
            i += 1
        self._tail = buf[i:]
        return out


class PrinterMode(StrEnum):
    """How the printer answers status requests."""

    NORMAL = "normal"
    SILENT = "silent"
    GARBAGE = "garbage"
    LATE = "late"


class PrinterBehavior:
    """State + answering mode, shared by the pty and TCP printers (thread-safe)."""

    def __init__(self, state: PrinterState | None = None) -> None:
        self._lock = threading.Lock()
        self._state = state or PrinterState()
        self._mode = PrinterMode.NORMAL
        self.late_delay_s = 1.0
        self.garbage = b"\x00"
        self.queries: list[int] = []

    @property
    def state(self) -> PrinterState:
        """The current sensor state."""
        with self._lock:
            return self._state

    def set_state(self, state: PrinterState | None = None, **changes: Any) -> PrinterState:
        """Replace the state, or change some of its fields."""
        with self._lock:
            base = state if state is not None else self._state
            self._state = dataclasses.replace(base, **changes)
            return self._state

    @property
    def mode(self) -> PrinterMode:
        """The current answering mode."""
        with self._lock:
            return self._mode

    def set_mode(
        self, mode: PrinterMode | str, *, delay_s: float | None = None, garbage: bytes | None = None
    ) -> None:
        """Switch mode; LATE answers after delay_s, GARBAGE sends the garbage bytes."""
        with self._lock:
            self._mode = PrinterMode(mode)
            if delay_s is not None:
                self.late_delay_s = delay_s
            if garbage is not None:
                self.garbage = garbage

    def answer(self, n: int) -> tuple[bytes, float] | None:
        """(reply, delay_s) for DLE EOT n, or None when silent."""
        with self._lock:
            self.queries.append(n)
            mode, state = self._mode, self._state
            delay = self.late_delay_s
            garbage = self.garbage
        if mode is PrinterMode.SILENT:
            return None
        if mode is PrinterMode.GARBAGE:
            return garbage, 0.0
        reply = bytes((status_byte(state, n),))
        return reply, delay if mode is PrinterMode.LATE else 0.0


class SimPrinter(SysfsRegistered):
    """An ESC/POS printer behind a pty whose slave is linked at ``link`` (e.g. tmp/dev/ttyS0)."""

    def __init__(
        self,
        link: str | Path,
        state: PrinterState | None = None,
        *,
        identity: UsbIdentity | None = None,
        sys_root: str | Path | None = None,
        usb_port: str = "1-4",
    ) -> None:
        super().__init__(link, identity=identity, sys_root=sys_root, usb_port=usb_port)
        self.behavior = PrinterBehavior(state)
        self._parser = DleEotParser()

    @property
    def state(self) -> PrinterState:
        """The current sensor state."""
        return self.behavior.state

    def set_state(self, state: PrinterState | None = None, **changes: Any) -> PrinterState:
        """Replace the state or change some fields (thread-safe)."""
        return self.behavior.set_state(state, **changes)

    def set_mode(
        self, mode: PrinterMode | str, *, delay_s: float | None = None, garbage: bytes | None = None
    ) -> None:
        """normal | silent | garbage | late (thread-safe)."""
        self.behavior.set_mode(mode, delay_s=delay_s, garbage=garbage)

    @property
    def queries(self) -> list[int]:
        """Every DLE EOT n received, in order."""
        return list(self.behavior.queries)

    def start(self) -> SimPrinter:
        """Create the port and serve it."""
        self._parser = DleEotParser()
        super().start()
        return self

    def on_data(self, data: bytes) -> None:
        """Answer status requests; other bytes are print data and ignored."""
        for n in self._parser.feed(data):
            answer = self.behavior.answer(n)
            if answer is not None:
                self.send(*answer)


class SimTcpPrinter(Service):
    """The same printer on 127.0.0.1:<port> (raw TCP, like a 9100 JetDirect port)."""

    def __init__(self, state: PrinterState | None = None, host: str = "127.0.0.1", port: int = 0):
        self.behavior = PrinterBehavior(state)
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._lock = threading.Lock()
        self._outbox: list[tuple[float, socket.socket, bytes]] = []
        self.connections = 0

    @property
    def address(self) -> str:
        """'host:port' as the printer config's device takes it."""
        return f"{self.host}:{self.port}"

    @property
    def state(self) -> PrinterState:
        """The current sensor state."""
        return self.behavior.state

    def set_state(self, state: PrinterState | None = None, **changes: Any) -> PrinterState:
        """Replace the state or change some fields (thread-safe)."""
        return self.behavior.set_state(state, **changes)

    def set_mode(
        self, mode: PrinterMode | str, *, delay_s: float | None = None, garbage: bytes | None = None
    ) -> None:
        """normal | silent | garbage | late (thread-safe)."""
        self.behavior.set_mode(mode, delay_s=delay_s, garbage=garbage)

    def start(self) -> SimTcpPrinter:
        """Listen (port 0 picks a free port, kept across unplug/replug) and serve."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(8)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sim-tcp-printer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (connect is refused afterwards)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join(timeout=5)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def unplug(self) -> None:
        """Power the printer off: connections reset, port closed."""
        self.stop()

    def replug(self) -> None:
        """Power it back on at the same port."""
        self.start()

    def _run(self) -> None:
        listener = self._listener
        assert listener is not None
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        conns: dict[int, tuple[socket.socket, DleEotParser]] = {}
        try:
            while not self._stop.is_set():
                with self._lock:
                    due = min((t for t, _, _ in self._outbox), default=None)
                timeout_ms = None if due is None else max(0.0, (due - time.monotonic()) * 1000)
                for fd, _ev in poller.poll(timeout_ms):
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    elif fd == listener.fileno():
                        with contextlib.suppress(BlockingIOError):
                            conn, _ = listener.accept()
                            conn.setblocking(False)
                            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            conns[conn.fileno()] = (conn, DleEotParser())
                            poller.register(conn, select.POLLIN)
                            self.connections += 1
                    elif fd in conns:
                        conn, parser = conns[fd]
                        try:
                            data = conn.recv(4096)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            poller.unregister(fd)
                            conns.pop(fd)
                            conn.close()
                            continue
                        for n in parser.feed(data):
                            answer = self.behavior.answer(n)
                            if answer is not None:
                                reply, delay = answer
                                with self._lock:
                                    self._outbox.append((time.monotonic() + delay, conn, reply))
                self._flush_due()
        finally:
            for conn, _ in conns.values():
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            listener.close()
            self._listener = None
            with self._lock:
                self._outbox.clear()

    def _flush_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [item for item in self._outbox if item[0] <= now]
            self._outbox = [item for item in self._outbox if item[0] > now]
        for _, conn, data in sorted(due, key=lambda item: item[0]):
            with contextlib.suppress(OSError):
                conn.sendall(data)

"""A device on a pseudo-terminal: the simulator's stand-in for a serial port.

``PtyLink`` opens a pty pair, puts the slave in raw mode and makes it reachable
at a path the test chooses (a symlink such as tmp/dev/ttyS0 -> /dev/pts/7),
the way udev gives a stable name to a real port. ``PtyDevice`` runs a
background thread that reads what the host writes to that port and sends
replies, possibly delayed; it can be unplugged (pty closed, symlink removed:
the host sees a hangup, then ENOENT) and plugged back (a new pty behind the
same path).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import select
import threading
import time
import tty
from pathlib import Path

import structlog

from simulator.service import Service

log = structlog.get_logger(__name__)


class PtyLink:
    """A raw-mode pty pair whose slave is reachable at ``link``."""

    def __init__(self, link: str | Path) -> None:
        self.link = Path(link)
        self.master_fd = -1
        self.slave_fd = -1
        self.slave_name = ""

    @property
    def is_open(self) -> bool:
        """True while the pty pair exists."""
        return self.master_fd >= 0

    def open(self) -> None:
        """Create the pty pair and point the link at the slave (atomically)."""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master_fd, self.slave_fd = master, slave
        self.slave_name = os.ttyname(slave)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.slave_name, tmp)
        os.replace(tmp, self.link)

    def close(self) -> None:
        """Remove the link (if still ours) and close both ends: the host sees a hangup."""
        try:
            if os.readlink(self.link) == self.slave_name:
                self.link.unlink()
        except OSError:
            pass
        for fd in (self.master_fd, self.slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self.slave_fd = -1


class PtyDevice(Service):
    """A simulated serial device: a thread serving one PtyLink.

    Subclasses implement ``on_data`` (called in the device thread with the bytes
    the host wrote) and answer with ``send``. ``start``/``stop`` run it;
    ``unplug``/``replug`` take the port away and bring it back at the same path.
    """

    def __init__(self, link: str | Path) -> None:
        self.link = Path(link)
        self._pty = PtyLink(self.link)
        self._lock = threading.Lock()
        self._outbox: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self.received = bytearray()

    # -- lifecycle -------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        """True while the port exists and the device thread serves it."""
        return self._thread is not None

    @property
    def slave_name(self) -> str:
        """The /dev/pts/N behind the link ('' while unplugged)."""
        return self._pty.slave_name if self._pty.is_open else ""

    def start(self) -> PtyDevice:
        """Create the port and start serving it."""
        if self._thread is not None:
            return self
        self._pty.open()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop.clear()
        with self._lock:
            self._outbox.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"sim-pty-{self.link.name}", daemon=True
        )
        self._thread.start()
        self.on_plug()
        return self

    def stop(self) -> None:
        """Stop serving and remove the port (same as unplug)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join(timeout=5)
        self._thread = None
        self._pty.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        with self._lock:
            self._outbox.clear()
        self.on_unplug()

    def unplug(self) -> None:
        """Pull the cable: the pty closes under an open host fd, the path disappears."""
        self.stop()

    def replug(self) -> None:
        """Plug back: a new pty at the same path."""
        self.start()

    def on_plug(self) -> None:
        """Hook run after the port appears (sysfs registration in subclasses)."""

    def on_unplug(self) -> None:
        """Hook run after the port disappears."""

    # -- I/O -----------------------------------------------------------------

    def send(self, data: bytes, delay_s: float = 0.0) -> None:
        """Queue data for the host, written after delay_s (thread-safe, order kept)."""
        if not data:
            return
        with self._lock:
            heapq.heappush(self._outbox, (time.monotonic() + delay_s, next(self._seq), data))
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def on_data(self, data: bytes) -> None:
        """Called in the device thread with bytes the host wrote."""

    def _run(self) -> None:
        master = self._pty.master_fd
        poller = select.poll()
        poller.register(master, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                due = self._outbox[0][0] if self._outbox else None
            timeout_ms = None if due is None else max(0.0, (due - time.monotonic()) * 1000)
            for fd, _ev in poller.poll(timeout_ms):
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                elif fd == master:
                    try:
                        data = os.read(master, 4096)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        log.warning("sim_pty_read_failed", link=str(self.link), error=str(e))
                        time.sleep(0.01)
                        continue
                    if data:
                        self.received.extend(data)
                        try:
                            self.on_data(data)
                        except Exception as e:  # a broken handler must not kill the device
                            log.error("sim_pty_handler_failed", link=str(self.link), error=repr(e))
            self._flush_due(master)

    def _flush_due(self, master: int) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._outbox or self._outbox[0][0] > now:
                    return
                _, _, data = heapq.heappop(self._outbox)
            try:
                os.write(master, data)
            except OSError as e:
                log.warning("sim_pty_write_failed", link=str(self.link), error=str(e))

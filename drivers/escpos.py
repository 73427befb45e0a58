"""ESC/POS receipt printer status over DLE EOT n (0x10 0x04 n), n = 1..4.

Transports implement only ``write(data)``, ``read(size, timeout_s)`` and
``close()`` (the python-escpos idea), so the protocol is testable with the
``RecordingTransport`` shipped here. Unlike python-escpos, silence is never a
status: the result keeps three things apart:

- the port is gone (``absent``: node missing, ENOENT/ENODEV/EIO, hangup,
  TCP refused),
- the port is there but the printer says nothing useful (``no_reply`` within
  the timeout, or ``invalid_reply``: anything but exactly one byte with bits 0
  and 7 clear and bits 1 and 4 set),
- the printer answers and reports a fault (``ok`` with fault bits set).

A reply that arrives after the timeout is drained (``late_drain_s``) and stale
input is flushed before every query, so it is never taken as the answer to
the next query. "No reply" is never "no paper".
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from drivers.roots import Roots
from drivers.serialports import (
    FdChannel,
    PortAbsent,
    PortError,
    PortIOError,
    PortOpenFailed,
    error_from_oserror,
    open_serial,
)

if TYPE_CHECKING:
    import serial

__all__ = [
    "ALL_STATUS_QUERIES",
    "Late",
    "PortAbsent",
    "PortError",
    "PortIOError",
    "PortOpenFailed",
    "PrinterLinkState",
    "PrinterStatus",
    "RecordingTransport",
    "SerialTransport",
    "Silence",
    "TcpTransport",
    "Transport",
    "UsbLpTransport",
    "UsbPrinter",
    "decode_status_byte",
    "dle_eot",
    "is_valid_status_byte",
    "list_usb_printers",
    "open_transport",
    "poll_printer",
    "query_status",
    "validate_reply",
]

DLE = 0x10
EOT = 0x04
ALL_STATUS_QUERIES: tuple[int, ...] = (1, 2, 3, 4)
DEFAULT_TCP_PORT = 9100


def dle_eot(n: int) -> bytes:
    """The real-time status request DLE EOT n for n in 1..4."""
    if n not in ALL_STATUS_QUERIES:
        raise ValueError(f"DLE EOT n must be 1..4, not {n}")
    return bytes((DLE, EOT, n))


def is_valid_status_byte(value: int) -> bool:
    """True for a status byte: bits 0 and 7 clear, bits 1 and 4 set."""
    return 0 <= value <= 0xFF and (value & 0x93) == 0x12


def validate_reply(reply: bytes) -> int | None:
    """The status byte if reply is exactly one valid status byte, else None."""
    if len(reply) == 1 and is_valid_status_byte(reply[0]):
        return reply[0]
    return None


def decode_status_byte(n: int, value: int) -> dict[str, bool]:
    """Decode the reply to DLE EOT n into named flags (the byte must be valid)."""
    if not is_valid_status_byte(value):
        raise ValueError(f"not a DLE EOT status byte: 0x{value:02x}")

    def bit(b: int) -> bool:
        return bool(value & (1 << b))

    if n == 1:
        return {"drawer_high": bit(2), "online": not bit(3)}
    if n == 2:
        return {
            "cover_open": bit(2),
            "feed_button": bit(3),
            "paper_end_stop": bit(5),
            "error": bit(6),
        }
    if n == 3:
        return {"cutter_error": bit(3), "unrecoverable": bit(5), "auto_recoverable": bit(6)}
    if n == 4:
        return {"paper_near_end": bit(2) or bit(3), "paper_end": bit(5) or bit(6)}
    raise ValueError(f"DLE EOT n must be 1..4, not {n}")


class PrinterLinkState(StrEnum):
    """How far a status poll got."""

    OK = "ok"  # every queried n answered with a valid byte (fault bits may be set)
    ABSENT = "absent"  # device node missing / gone, TCP refused or unreachable
    OPEN_FAILED = "open_failed"  # node present but cannot be opened (EACCES, EBUSY)
    NO_REPLY = "no_reply"  # port present, nothing within the timeout
    INVALID_REPLY = "invalid_reply"  # port present, garbage instead of a status byte
    IO_ERROR = "io_error"  # any other I/O error on an open port


@dataclass(frozen=True)
class PrinterStatus:
    """One status poll: link state, decoded flags (None = not queried), raw bytes, timings."""

    state: PrinterLinkState
    device: str = ""
    online: bool | None = None
    drawer_high: bool | None = None
    cover_open: bool | None = None
    feed_button: bool | None = None
    paper_end_stop: bool | None = None
    error: bool | None = None
    cutter_error: bool | None = None
    unrecoverable: bool | None = None
    auto_recoverable: bool | None = None
    paper_near_end: bool | None = None
    paper_end: bool | None = None
    raw: dict[int, int] = field(default_factory=dict)  # n -> status byte
    reply_latency_s: dict[int, float] = field(default_factory=dict)  # n -> seconds
    latency_s: float | None = None  # whole poll, first write to last reply
    failed_n: int | None = None  # the query that did not get a valid reply
    reply: bytes = b""  # the invalid reply, as received
    late_bytes: bytes = b""  # bytes that arrived after the timeout (drained)
    stale_bytes: bytes = b""  # input found waiting before a query (discarded)
    error_text: str = ""

    @property
    def reachable(self) -> bool:
        """True when the printer answered every query with a valid status byte."""
        return self.state is PrinterLinkState.OK

    @property
    def overheat(self) -> bool | None:
        """Auto-recoverable error (DLE EOT 3 bit 6): head overheat on thermal printers."""
        return self.auto_recoverable

    def conditions(self) -> list[str]:
        """Names of the fault flags that are set (empty unless state is ok)."""
        if self.state is not PrinterLinkState.OK:
            return []
        names = []
        if self.online is False:
            names.append("offline")
        for name in (
            "cover_open",
            "paper_end_stop",
            "error",
            "cutter_error",
            "unrecoverable",
            "auto_recoverable",
            "paper_near_end",
            "paper_end",
        ):
            if getattr(self, name) is True:
                names.append(name)
        return names

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (raw bytes as hex)."""
        return {
            "state": str(self.state),
            "device": self.device,
            "online": self.online,
            "drawer_high": self.drawer_high,
            "cover_open": self.cover_open,
            "feed_button": self.feed_button,
            "paper_end_stop": self.paper_end_stop,
            "error": self.error,
            "cutter_error": self.cutter_error,
            "unrecoverable": self.unrecoverable,
            "auto_recoverable": self.auto_recoverable,
            "paper_near_end": self.paper_near_end,
            "paper_end": self.paper_end,
            "raw": {str(n): f"{b:02x}" for n, b in sorted(self.raw.items())},
            "reply_latency_s": {str(n): t for n, t in sorted(self.reply_latency_s.items())},
            "latency_s": self.latency_s,
            "failed_n": self.failed_n,
            "reply": self.reply.hex(),
            "late_bytes": self.late_bytes.hex(),
            "stale_bytes": self.stale_bytes.hex(),
            "conditions": self.conditions(),
            "error_text": self.error_text,
        }


def status_from_raw(raw: Mapping[int, int], device: str = "") -> PrinterStatus:
    """An ok PrinterStatus decoded from valid status bytes per n (ValueError on invalid)."""
    flags: dict[str, bool] = {}
    for n, value in sorted(raw.items()):
        flags.update(decode_status_byte(n, value))
    return PrinterStatus(
        state=PrinterLinkState.OK,
        device=device,
        raw=dict(raw),
        online=flags.get("online"),
        drawer_high=flags.get("drawer_high"),
        cover_open=flags.get("cover_open"),
        feed_button=flags.get("feed_button"),
        paper_end_stop=flags.get("paper_end_stop"),
        error=flags.get("error"),
        cutter_error=flags.get("cutter_error"),
        unrecoverable=flags.get("unrecoverable"),
        auto_recoverable=flags.get("auto_recoverable"),
        paper_near_end=flags.get("paper_near_end"),
        paper_end=flags.get("paper_end"),
    )


# --------------------------------------------------------------------------- transports


class Transport(Protocol):
    """What a status poll needs from a link to the printer."""

    def write(self, data: bytes) -> None:
        """Send all of data or raise PortError."""

    def read(self, size: int, timeout_s: float) -> bytes:
        """Return 1..size bytes as soon as any arrive, b"" after timeout_s; PortError on failure."""

    def close(self) -> None:
        """Release the link; safe to call twice."""


class SerialTransport:
    """A printer on a serial port (RS-232, USB-serial, CDC-ACM), opened with pyserial.

    Opened per poll by poll_printer: the port is shared with the POS application,
    a fresh open is the presence check (a replugged adapter is a new device node),
    and no descriptor to a vanished device is kept between polls.
    """

    def __init__(self, device: str | Path, baudrate: int = 9600, write_timeout_s: float = 1.0):
        self.device = str(device)
        self.write_timeout_s = write_timeout_s
        self.port: serial.Serial
        self.port, self._chan = open_serial(self.device, baudrate)

    def write(self, data: bytes) -> None:
        """Send all of data within write_timeout_s."""
        self._chan.write(data, self.write_timeout_s)

    def read(self, size: int, timeout_s: float) -> bytes:
        """Up to size bytes as soon as any arrive, b"" after timeout_s."""
        return self._chan.read(size, timeout_s)

    def close(self) -> None:
        """Close the port."""
        self._chan.close()


@dataclass(frozen=True)
class UsbPrinter:
    """A USB printer class device (/dev/usb/lpN) and the USB identity behind it."""

    device: str  # the node under roots.dev, e.g. <dev>/usb/lp0
    name: str  # lp0
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None

    @property
    def usb_id(self) -> str:
        """'vid:pid[:serial]' in lower-case hex, '' when unknown."""
        if self.vid is None or self.pid is None:
            return ""
        base = f"{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial_number}" if self.serial_number else base


def _attr(directory: Path, name: str) -> str | None:
    try:
        return directory.joinpath(name).read_text("utf-8", "replace").strip() or None
    except OSError:
        return None


def list_usb_printers(roots: Roots) -> list[UsbPrinter]:
    """Every <dev>/usb/lp* node, with VID/PID/serial/names from <sys>/class/usbmisc/lpN.

    Reads only: nothing is sent to the printer. The identity is that of the USB
    device whose interface the usblp driver bound (the parent of the interface).
    """
    out: list[UsbPrinter] = []
    for node in sorted(roots.dev.glob("usb/lp*")):
        info = roots.sys_path("class", "usbmisc", node.name, "device")
        vid = pid = None
        fields: dict[str, str | None] = {}
        if info.exists():
            usb_dev = info.resolve().parent
            for key in ("idVendor", "idProduct", "serial", "manufacturer", "product"):
                fields[key] = _attr(usb_dev, key)
            try:
                vid = int(fields["idVendor"] or "", 16)
                pid = int(fields["idProduct"] or "", 16)
            except ValueError:
                vid = pid = None
        out.append(
            UsbPrinter(
                str(node),
                node.name,
                vid,
                pid,
                fields.get("serial"),
                fields.get("manufacturer"),
                fields.get("product"),
            )
        )
    return out


class UsbLpTransport:
    """A printer on the usblp class driver (/dev/usb/lp*): O_RDWR|O_NONBLOCK, poll to read."""

    def __init__(self, device: str | Path, write_timeout_s: float = 1.0):
        self.device = str(device)
        self.write_timeout_s = write_timeout_s
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise error_from_oserror(e, f"open {self.device}", opening=True) from e
        self._chan = FdChannel(fd, self.device)

    def write(self, data: bytes) -> None:
        """Send all of data within write_timeout_s."""
        self._chan.write(data, self.write_timeout_s)

    def read(self, size: int, timeout_s: float) -> bytes:
        """Up to size bytes as soon as any arrive, b"" after timeout_s."""
        return self._chan.read(size, timeout_s)

    def close(self) -> None:
        """Close the device file."""
        self._chan.close()


_TCP_ABSENT = (ConnectionRefusedError, ConnectionResetError, TimeoutError)
_TCP_ABSENT_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ECONNRESET, errno.EPIPE}
)


class TcpTransport:
    """A network printer on a raw TCP port (JetDirect, 9100 by default)."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_TCP_PORT,
        connect_timeout_s: float = 2.0,
        write_timeout_s: float = 1.0,
    ):
        self.device = f"{host}:{port}"
        self.write_timeout_s = write_timeout_s
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except _TCP_ABSENT as e:
            raise PortAbsent(f"connect {self.device}: {e}", getattr(e, "errno", None)) from e
        except OSError as e:
            if e.errno in _TCP_ABSENT_ERRNOS or isinstance(e, socket.gaierror):
                raise PortAbsent(f"connect {self.device}: {e}", e.errno) from e
            raise PortOpenFailed(f"connect {self.device}: {e}", e.errno) from e
        self._sock.setblocking(False)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._chan = FdChannel(self._sock.fileno(), self.device, closer=self._sock.close)

    @classmethod
    def from_address(cls, address: str, connect_timeout_s: float = 2.0) -> TcpTransport:
        """Connect to 'host:port' or 'host' (port 9100); IPv6 as '[::1]:9100'."""
        host, port = split_host_port(address)
        return cls(host, port, connect_timeout_s=connect_timeout_s)

    def write(self, data: bytes) -> None:
        """Send all of data within write_timeout_s."""
        self._guard(lambda: self._chan.write(data, self.write_timeout_s))

    def read(self, size: int, timeout_s: float) -> bytes:
        """Up to size bytes as soon as any arrive, b"" after timeout_s (peer close: PortAbsent)."""
        out: list[bytes] = []
        self._guard(lambda: out.append(self._chan.read(size, timeout_s)))
        return out[0]

    def _guard(self, op: Callable[[], None]) -> None:
        try:
            op()
        except PortIOError as e:
            if e.errno in _TCP_ABSENT_ERRNOS:
                raise PortAbsent(str(e), e.errno) from e
            raise

    def close(self) -> None:
        """Close the connection."""
        self._chan.close()


def split_host_port(address: str, default_port: int = DEFAULT_TCP_PORT) -> tuple[str, int]:
    """('host', port) from 'host:port', '[v6]:port' or a bare host."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port)
    return address, default_port


def open_transport(
    kind: str,
    device: str,
    *,
    baudrate: int = 9600,
    roots: Roots | None = None,
    connect_timeout_s: float = 2.0,
) -> Transport:
    """Open a transport by config name: 'serial' | 'tcp' | 'usblp' (PortError on failure)."""
    if kind == "tcp":
        return TcpTransport.from_address(device, connect_timeout_s=connect_timeout_s)
    path = roots.dev_path(device) if roots is not None else Path(device)
    if kind == "serial":
        return SerialTransport(path, baudrate)
    if kind == "usblp":
        return UsbLpTransport(path)
    raise ValueError(f"unknown printer transport {kind!r} (serial | tcp | usblp)")


# --------------------------------------------------------------------------- test double


@dataclass(frozen=True)
class Silence:
    """Script item: the printer does not answer this query."""


@dataclass(frozen=True)
class Late:
    """Script item: the answer arrives only after the reader has timed out."""

    data: bytes


ScriptItem = bytes | Silence | Late | PortError


class RecordingTransport:
    """In-memory transport: records every write and answers queries from a script.

    Each DLE EOT written consumes one script item: bytes (available at once),
    Silence(), Late(bytes) (appears only once a read has timed out, as a late
    reply would), or a PortError raised by the next read. With ``answers`` a
    fixed n -> byte map answers every query instead. No real time passes.
    """

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        answers: Mapping[int, int] | None = None,
        stale: bytes = b"",
    ) -> None:
        self.script: deque[ScriptItem] = deque(script)
        self.answers = dict(answers) if answers is not None else None
        self.written: list[bytes] = []
        self.pending = bytearray(stale)
        self.late: list[bytes] = []
        self.raise_next: PortError | None = None
        self.closed = False
        self.reads = 0

    def write(self, data: bytes) -> None:
        """Record data; a DLE EOT n consumes the next script item."""
        if self.closed:
            raise PortIOError("write on closed transport")
        self.written.append(bytes(data))
        i = 0
        while i + 2 < len(data):
            if data[i] == DLE and data[i + 1] == EOT and data[i + 2] in ALL_STATUS_QUERIES:
                self._answer(data[i + 2])
                i += 3
            else:
                i += 1

    def _answer(self, n: int) -> None:
        if self.answers is not None:
            if n in self.answers:
                self.pending.append(self.answers[n])
            return
        if not self.script:
            return
        item = self.script.popleft()
        if isinstance(item, bytes):
            self.pending.extend(item)
        elif isinstance(item, Late):
            self.late.append(item.data)
        elif isinstance(item, PortError):
            self.raise_next = item

    def read(self, size: int, timeout_s: float) -> bytes:
        """Pending bytes at once; otherwise release late replies and return b"" (timed out)."""
        self.reads += 1
        if self.raise_next is not None:
            err, self.raise_next = self.raise_next, None
            raise err
        if self.pending:
            out = bytes(self.pending[:size])
            del self.pending[:size]
            return out
        for data in self.late:
            self.pending.extend(data)
        self.late.clear()
        return b""

    def close(self) -> None:
        """Mark closed."""
        self.closed = True

    @property
    def queries(self) -> list[int]:
        """The n of every DLE EOT n written, in order."""
        out: list[int] = []
        for data in self.written:
            for i in range(len(data) - 2):
                if data[i] == DLE and data[i + 1] == EOT and data[i + 2] in ALL_STATUS_QUERIES:
                    out.append(data[i + 2])
        return out


# --------------------------------------------------------------------------- protocol


def _drain_for(transport: Transport, duration_s: float) -> bytes:
    """Read and discard everything arriving within duration_s."""
    out = b""
    deadline = time.monotonic() + duration_s
    while len(out) < 65536:
        remaining = deadline - time.monotonic()
        chunk = transport.read(4096, max(0.0, remaining))
        if not chunk:  # a read only comes back empty once its timeout has run out
            break
        out += chunk
    return out


def _drain_now(transport: Transport) -> bytes:
    out = b""
    while len(out) < 65536:
        chunk = transport.read(4096, 0.0)
        if not chunk:
            break
        out += chunk
    return out


def query_status(
    transport: Transport,
    *,
    ns: Sequence[int] = ALL_STATUS_QUERIES,
    timeout_s: float = 1.0,
    settle_s: float = 0.01,
    late_drain_s: float | None = None,
    device: str = "",
) -> PrinterStatus:
    """Send DLE EOT n for each n and decode the replies; never raises on link trouble.

    Before each query waiting input is drained; after the first reply byte the
    link is watched for settle_s more so a multi-byte reply is caught as
    invalid. On no reply the poll stops and reads for late_drain_s (default
    timeout_s) to swallow a late answer, which is reported in late_bytes.
    """
    late_drain = timeout_s if late_drain_s is None else late_drain_s
    raw: dict[int, int] = {}
    lat: dict[int, float] = {}
    stale = b""
    t0 = time.monotonic()

    def fail(
        state: PrinterLinkState,
        n: int | None,
        text: str,
        reply: bytes = b"",
        late_bytes: bytes = b"",
    ) -> PrinterStatus:
        return PrinterStatus(
            state=state,
            device=device,
            raw=raw,
            reply_latency_s=lat,
            latency_s=time.monotonic() - t0,
            failed_n=n,
            stale_bytes=stale[:64],
            error_text=text,
            reply=reply,
            late_bytes=late_bytes,
        )

    n: int | None = None
    try:
        for n in ns:
            request = dle_eot(n)
            stale += _drain_now(transport)
            transport.write(request)
            t_sent = time.monotonic()
            first = transport.read(1, timeout_s)
            if not first:
                late = _drain_for(transport, late_drain) if late_drain > 0 else b""
                text = f"no reply to DLE EOT {n} within {timeout_s} s"
                if late:
                    text += f"; {len(late)} late byte(s) discarded"
                return fail(PrinterLinkState.NO_REPLY, n, text, late_bytes=late[:64])
            lat[n] = time.monotonic() - t_sent
            reply = first + (_drain_for(transport, settle_s) if settle_s > 0 else b"")
            value = validate_reply(reply)
            if value is None:
                reply += _drain_now(transport)
                return fail(
                    PrinterLinkState.INVALID_REPLY,
                    n,
                    f"invalid reply to DLE EOT {n}: {reply[:16].hex()}",
                    reply=reply[:64],
                )
            raw[n] = value
    except PortAbsent as e:
        return fail(PrinterLinkState.ABSENT, n, str(e))
    except PortOpenFailed as e:
        return fail(PrinterLinkState.OPEN_FAILED, n, str(e))
    except PortError as e:
        return fail(PrinterLinkState.IO_ERROR, n, str(e))
    return dataclasses.replace(
        status_from_raw(raw, device),
        reply_latency_s=lat,
        latency_s=time.monotonic() - t0,
        stale_bytes=stale[:64],
    )


def poll_printer(
    transport: str,
    device: str,
    *,
    baudrate: int = 9600,
    timeout_s: float = 1.0,
    ns: Sequence[int] = ALL_STATUS_QUERIES,
    roots: Roots | None = None,
    settle_s: float = 0.01,
    late_drain_s: float | None = None,
    connect_timeout_s: float | None = None,
) -> PrinterStatus:
    """Open the configured transport, query status, close; every failure is a state."""
    t0 = time.monotonic()
    try:
        link = open_transport(
            transport,
            device,
            baudrate=baudrate,
            roots=roots,
            connect_timeout_s=timeout_s if connect_timeout_s is None else connect_timeout_s,
        )
    except PortAbsent as e:
        return PrinterStatus(
            PrinterLinkState.ABSENT, device, latency_s=time.monotonic() - t0, error_text=str(e)
        )
    except PortError as e:
        return PrinterStatus(
            PrinterLinkState.OPEN_FAILED,
            device,
            latency_s=time.monotonic() - t0,
            error_text=str(e),
        )
    try:
        return query_status(
            link,
            ns=ns,
            timeout_s=timeout_s,
            settle_s=settle_s,
            late_drain_s=late_drain_s,
            device=device,
        )
    finally:
        link.close()

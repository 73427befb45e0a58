"""Serial ports: inventory (list_ports + sysfs under Roots), VID:PID matching, diffs, probes.

Layers, from the bottom:

- ``FdChannel``: read/write on an open file descriptor with deadlines (poll),
  mapping errno values to typed errors: ``PortAbsent`` (node missing or device
  gone: ENOENT, ENODEV, ENXIO, EIO, hangup), ``PortOpenFailed`` (present but
  not openable: EACCES, EBUSY, ...), ``PortIOError`` (anything else).
- ``open_serial``: pyserial opens and configures the tty (baud rate, raw
  mode); I/O then goes through ``FdChannel`` so the errno is never lost
  (pyserial folds read errors into a message string).
- ``inventory``: pyserial's ``comports()`` on the real /sys and /dev, or the
  same walk done by ``read_port`` under any ``Roots`` (fake trees in tests),
  plus ports found by extra globs (ttyMSM*, ttyHS*, ...) that list_ports does
  not look at.
- ``MatchSpec``/``match``, ``diff_inventory`` and ``probe_port``.
"""

from __future__ import annotations

import errno
import os
import re
import select
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.roots import Roots

if TYPE_CHECKING:
    import serial

# errno values that mean "the device node or the device behind it is gone".
ABSENT_ERRNOS = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO})

# The globs pyserial's list_ports_linux.comports() uses (pyserial 3.5).
LIST_PORTS_GLOBS: tuple[str, ...] = (
    "ttyS*",
    "ttyUSB*",
    "ttyXRUSB*",
    "ttyACM*",
    "ttyAMA*",
    "rfcomm*",
    "ttyAP*",
)
# Names list_ports does not glob but POS terminals use (Qualcomm, HiSilicon/MTK).
DEFAULT_EXTRA_GLOBS: tuple[str, ...] = ("ttyMSM*", "ttyHS*")

_POLL_BAD = select.POLLHUP | select.POLLERR | select.POLLNVAL


class PortError(Exception):
    """A serial-type port could not be used; ``errno`` is kept when known."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class PortAbsent(PortError):
    """The device node is missing, or the device behind an open port went away."""


class PortOpenFailed(PortError):
    """The device node exists but could not be opened (permissions, busy, ...)."""


class PortIOError(PortError):
    """Any other I/O error on an open port."""


def error_from_oserror(e: OSError, what: str, opening: bool = False) -> PortError:
    """Map an OSError to the typed port error that says which state the port is in."""
    text = f"{what}: {e.strerror or e}"
    if e.errno in ABSENT_ERRNOS:
        return PortAbsent(text, e.errno)
    if opening:
        return PortOpenFailed(text, e.errno)
    return PortIOError(text, e.errno)


class FdChannel:
    """Deadline-bound read/write on a non-blocking file descriptor (tty, lp, pipe)."""

    def __init__(self, fd: int, name: str, closer: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.name = name
        self._closer = closer
        self._closed = False

    def write(self, data: bytes, timeout_s: float = 1.0) -> None:
        """Write all of data, or raise PortError (PortIOError on timeout)."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as e:
                raise error_from_oserror(e, f"write {self.name}") from e
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PortIOError(f"write {self.name}: timed out after {timeout_s} s")
            events = poller.poll(remaining * 1000)
            for _fd, ev in events:
                if ev & _POLL_BAD and not ev & select.POLLOUT:
                    raise PortAbsent(f"write {self.name}: hangup", errno.EIO)

    def read(self, size: int, timeout_s: float) -> bytes:
        """Return 1..size bytes as soon as any are there, or b"" after timeout_s of silence."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            events = poller.poll(remaining * 1000)
            if not events:
                if time.monotonic() >= deadline:
                    return b""
                continue
            try:
                data = os.read(self.fd, size)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return b""
                continue
            except OSError as e:
                raise error_from_oserror(e, f"read {self.name}") from e
            if data:
                return data
            # Readable (or hung up) yet no data: the device went away (tty hangup).
            raise PortAbsent(f"read {self.name}: hangup (device gone)", errno.EIO)

    def drain(self, max_bytes: int = 65536) -> bytes:
        """Read and return whatever input is already waiting (stale bytes), without waiting."""
        out = b""
        while len(out) < max_bytes:
            chunk = self.read(4096, 0.0)
            if not chunk:
                break
            out += chunk
        return out

    def close(self) -> None:
        """Close the descriptor once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._closer is not None:
            self._closer()
        else:
            os.close(self.fd)


def open_serial(path: str | Path, baudrate: int = 9600) -> tuple[serial.Serial, FdChannel]:
    """Open and configure a serial port with pyserial; I/O goes through the FdChannel."""
    import serial  # lazy: pyserial loads only on terminals with serial devices

    port = serial.Serial()
    port.port = str(path)
    port.baudrate = baudrate
    port.timeout = 0
    port.write_timeout = 0
    try:
        port.open()
    except serial.SerialException as e:
        code = e.errno if isinstance(e.errno, int) else None
        if code is None and not os.path.exists(str(path)):
            code = errno.ENOENT
        text = f"open {path}: {e}"
        if code in ABSENT_ERRNOS:
            raise PortAbsent(text, code) from e
        raise PortOpenFailed(text, code) from e
    except (OSError, ValueError) as e:  # termios refusing the settings
        raise PortOpenFailed(f"open {path}: {e}", getattr(e, "errno", None)) from e
    fd = port.fileno()
    return port, FdChannel(fd, str(path), closer=port.close)


# --------------------------------------------------------------------------- inventory


@dataclass(frozen=True)
class PortInfo:
    """One serial port and the USB identity behind it (fields as pyserial's ListPortInfo)."""

    device: str
    name: str
    subsystem: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    location: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    interface: str | None = None
    description: str = "n/a"
    hwid: str = "n/a"
    source: str = "sysfs"  # "list_ports" | "sysfs"

    @property
    def identity(self) -> tuple[int | None, int | None, str | None]:
        """What a swap changes: (VID, PID, serial number)."""
        return (self.vid, self.pid, self.serial_number)

    @property
    def usb_id(self) -> str:
        """'VID:PID[:SERIAL]' in lower-case hex, or '' for a port without USB identity."""
        if self.vid is None or self.pid is None:
            return ""
        base = f"{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial_number}" if self.serial_number else base


def _read_line(*parts: str) -> str | None:
    try:
        with open(os.path.join(*parts), encoding="utf-8", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return None


def _hex_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def read_port(roots: Roots, device: str | Path) -> PortInfo:
    """Identity of one tty from <roots.sys>/class/tty/<name>, as pyserial's SysFS reads /sys."""
    device = str(device)
    name = os.path.basename(device)
    tty_dir = os.path.join(str(roots.sys), "class", "tty", name)
    dev_link = os.path.join(tty_dir, "device")
    device_path: str | None = None
    subsystem: str | None = None
    if os.path.exists(dev_link):
        device_path = os.path.realpath(dev_link)
        subsystem = os.path.basename(os.path.realpath(os.path.join(device_path, "subsystem")))
    if subsystem == "usb-serial" and device_path is not None:
        usb_interface_path: str | None = os.path.dirname(device_path)
    elif subsystem == "usb":
        usb_interface_path = device_path
    else:
        usb_interface_path = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    location: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    interface: str | None = None
    description = "n/a"
    hwid = "n/a"
    if usb_interface_path is not None:
        usb_device_path = os.path.dirname(usb_interface_path)
        try:
            num_if = int(_read_line(usb_device_path, "bNumInterfaces") or "1")
        except ValueError:
            num_if = 1
        vid = _hex_or_none(_read_line(usb_device_path, "idVendor"))
        pid = _hex_or_none(_read_line(usb_device_path, "idProduct"))
        serial_number = _read_line(usb_device_path, "serial")
        location = os.path.basename(usb_interface_path if num_if > 1 else usb_device_path)
        manufacturer = _read_line(usb_device_path, "manufacturer")
        product = _read_line(usb_device_path, "product")
        interface = _read_line(usb_interface_path, "interface")
        if interface is not None:
            description = f"{product} - {interface}"
        elif product is not None:
            description = product
        else:
            description = name
        ser = f" SER={serial_number}" if serial_number is not None else ""
        hwid = f"USB VID:PID={vid or 0:04X}:{pid or 0:04X}{ser} LOCATION={location}"
    elif subsystem == "pnp" and device_path is not None:
        description = name
        hwid = _read_line(device_path, "id") or "n/a"
    elif subsystem == "amba" and device_path is not None:
        description = name
        hwid = os.path.basename(device_path)
    return PortInfo(
        device=device,
        name=name,
        subsystem=subsystem,
        vid=vid,
        pid=pid,
        serial_number=serial_number,
        location=location,
        manufacturer=manufacturer,
        product=product,
        interface=interface,
        description=description,
        hwid=hwid,
        source="sysfs",
    )


def _is_placeholder(roots: Roots, port: PortInfo) -> bool:
    """An 8250 ttyS slot with no UART behind it (sysfs 'type' 0 = PORT_UNKNOWN)."""
    if not re.fullmatch(r"ttyS\d+", port.name):
        return False
    uart_type = _read_line(str(roots.sys), "class", "tty", port.name, "type")
    if uart_type is not None:
        return uart_type == "0"
    return port.subsystem == "platform"


def _from_list_ports() -> list[PortInfo]:
    # lazy: pyserial loads only on terminals with serial devices
    from serial.tools import list_ports_linux

    out: list[PortInfo] = []
    for p in list_ports_linux.comports():
        out.append(
            PortInfo(
                device=p.device,
                name=p.name,
                subsystem=p.subsystem,
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
                location=p.location,
                manufacturer=p.manufacturer,
                product=p.product,
                interface=p.interface,
                description=p.description,
                hwid=p.hwid,
                source="list_ports",
            )
        )
    return out


def _glob_dev(roots: Roots, patterns: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found.extend(sorted(roots.dev.glob(pattern)))
    return found


def inventory(
    roots: Roots | None = None,
    extra_globs: Sequence[str] = DEFAULT_EXTRA_GLOBS,
    use_list_ports: bool | None = None,
) -> list[PortInfo]:
    """Every serial port under roots.dev with its identity, sorted by device path.

    With the real roots (/sys, /dev) pyserial's comports() is used; under any other
    roots the same walk is done by read_port (fake trees). extra_globs (relative
    to roots.dev) add ports list_ports does not glob; 8250 placeholders are dropped.
    """
    roots = roots or Roots()
    real = roots.sys == Path("/sys") and roots.dev == Path("/dev")
    if use_list_ports is None:
        use_list_ports = real
    ports: dict[str, PortInfo] = {}
    if use_list_ports:
        for p in _from_list_ports():
            ports[p.name] = p
    else:
        for path in _glob_dev(roots, LIST_PORTS_GLOBS):
            p = read_port(roots, path)
            if p.subsystem != "platform":  # what comports() drops
                ports.setdefault(p.name, p)
    for path in _glob_dev(roots, extra_globs):
        if path.name in ports:
            continue
        p = read_port(roots, path)
        if not _is_placeholder(roots, p):
            ports[p.name] = p
    return sorted(ports.values(), key=lambda p: p.device)


# --------------------------------------------------------------------------- matching


class MatchSpecError(ValueError):
    """A 'VID:PID[:SERIAL]' spec that does not parse."""


_SPEC = re.compile(r"^([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})(?::(.+))?$")


@dataclass(frozen=True)
class MatchSpec:
    """A peripheral named by USB identity: 'VID:PID' or 'VID:PID:SERIAL'."""

    vid: int
    pid: int
    serial_number: str | None = None

    @classmethod
    def parse(cls, spec: str) -> MatchSpec:
        """Parse 'VID:PID[:SERIAL]' (hex VID/PID; the serial is compared exactly)."""
        m = _SPEC.match(spec.strip())
        if not m:
            raise MatchSpecError(f"not a VID:PID[:SERIAL] spec: {spec!r}")
        return cls(int(m.group(1), 16), int(m.group(2), 16), m.group(3))

    def matches(self, port: PortInfo) -> bool:
        """True when the port carries this identity."""
        if port.vid != self.vid or port.pid != self.pid:
            return False
        return self.serial_number is None or port.serial_number == self.serial_number

    def __str__(self) -> str:
        base = f"{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial_number}" if self.serial_number else base


def match(ports: Iterable[PortInfo], spec: str | MatchSpec) -> list[PortInfo]:
    """The ports whose USB identity matches spec ('VID:PID[:SERIAL]')."""
    ms = spec if isinstance(spec, MatchSpec) else MatchSpec.parse(spec)
    return [p for p in ports if ms.matches(p)]


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class InventoryDiff:
    """What changed between two inventories, keyed by device path."""

    added: list[PortInfo] = field(default_factory=list)
    removed: list[PortInfo] = field(default_factory=list)
    changed: list[tuple[PortInfo, PortInfo]] = field(default_factory=list)  # (before, after)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_inventory(before: Iterable[PortInfo], after: Iterable[PortInfo]) -> InventoryDiff:
    """Ports added, removed, and those whose identity (VID, PID, serial) changed on a path."""
    old = {p.device: p for p in before}
    new = {p.device: p for p in after}
    added = [new[d] for d in sorted(new.keys() - old.keys())]
    removed = [old[d] for d in sorted(old.keys() - new.keys())]
    changed = [
        (old[d], new[d])
        for d in sorted(old.keys() & new.keys())
        if old[d].identity != new[d].identity
    ]
    return InventoryDiff(added=added, removed=removed, changed=changed)


# --------------------------------------------------------------------------- probe


class ProbeState(StrEnum):
    """Outcome of one probe of a peripheral."""

    OK = "ok"
    ABSENT = "absent"
    OPEN_FAILED = "open_failed"
    NO_REPLY = "no_reply"
    WRONG_REPLY = "wrong_reply"
    IO_ERROR = "io_error"


@dataclass(frozen=True)
class ProbeResult:
    """What a probe saw: state, the reply bytes, and the time to the first reply byte."""

    state: ProbeState
    device: str
    reply: bytes = b""
    latency_s: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the peripheral answered as expected."""
        return self.state is ProbeState.OK


def parse_hex(text: str) -> bytes:
    """Bytes from hex text such as '02 00 35' or '020035' (ValueError if malformed)."""
    return bytes.fromhex("".join(text.split()))


def probe_port(
    device: str | Path,
    *,
    request: bytes = b"",
    expect: str | bytes = "",
    baudrate: int = 9600,
    timeout_s: float = 1.0,
    max_reply_bytes: int = 4096,
) -> ProbeResult:
    """Open the port, send request, read until the expect regex matches or timeout_s.

    An empty expect accepts any non-empty reply; with neither request nor expect
    only the open is checked. The regex is applied to the raw bytes.
    """
    dev = str(device)
    pattern = re.compile(expect.encode() if isinstance(expect, str) else expect)
    try:
        _port, chan = open_serial(dev, baudrate)
    except PortAbsent as e:
        return ProbeResult(ProbeState.ABSENT, dev, error=str(e))
    except PortError as e:
        return ProbeResult(ProbeState.OPEN_FAILED, dev, error=str(e))
    try:
        if not request and not expect:
            return ProbeResult(ProbeState.OK, dev)
        chan.drain()
        t0 = time.monotonic()
        if request:
            chan.write(request, timeout_s)
        deadline = t0 + timeout_s
        buf = b""
        first_at: float | None = None
        while len(buf) < max_reply_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            chunk = chan.read(max_reply_bytes - len(buf), remaining)
            if not chunk:
                break
            if first_at is None:
                first_at = time.monotonic() - t0
            buf += chunk
            if pattern.search(buf):
                return ProbeResult(ProbeState.OK, dev, buf, first_at)
        if not buf:
            return ProbeResult(ProbeState.NO_REPLY, dev, error=f"no reply within {timeout_s} s")
        return ProbeResult(
            ProbeState.WRONG_REPLY, dev, buf, first_at, error="reply does not match expect"
        )
    except PortAbsent as e:
        return ProbeResult(ProbeState.ABSENT, dev, error=str(e))
    except PortError as e:
        return ProbeResult(ProbeState.IO_ERROR, dev, error=str(e))
    finally:
        chan.close()

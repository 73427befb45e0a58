"""Simulated serial peripherals (PIN pad, card reader, scanner) on ptys, with USB identity.

Each device sits behind a symlink under the fake dev root and, when given a
fake sys root, registers a sysfs entry laid out as Linux does for USB serial
ports, so drivers.serialports.read_port (and pyserial's SysFS walk) find its
VID/PID/serial:

    <sys>/class/tty/ttyUSB0 -> ../../devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/
                               ttyUSB0/tty/ttyUSB0
    .../1-1:1.0/ttyUSB0/tty/ttyUSB0/device -> ../../../ttyUSB0   (usb-serial: ftdi_sio, cp210x)
    .../1-1:1.0/tty/ttyACM0/device -> ../../../1-1:1.0           (cdc_acm)
    .../usb1/1-1/{idVendor,idProduct,serial,manufacturer,product,bNumInterfaces}
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from simulator.pty import PtyDevice

_PCI = ("devices", "pci0000:00", "0000:00:14.0")


@dataclass(frozen=True)
class UsbIdentity:
    """What a USB device tells the host about itself."""

    vid: int
    pid: int
    serial: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    interface: str | None = None
    driver: str = "usb-serial"  # "usb-serial" (ttyUSB*) | "acm" (ttyACM*)

    @property
    def usb_id(self) -> str:
        """'vid:pid[:serial]' as the match spec writes it."""
        base = f"{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial}" if self.serial else base


def _symlink(target: Path, link: Path) -> None:
    """A relative symlink, as sysfs has them (stays inside the fake tree)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def _write(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n", encoding="utf-8")


def usb_device_dir(sys_root: Path, usb_port: str) -> Path:
    """The USB device directory for a port path such as '1-1' or '1-1.4'."""
    bus = usb_port.split("-", 1)[0]
    return sys_root.joinpath(*_PCI, f"usb{bus}", usb_port)


def register_usb_tty(
    sys_root: str | Path, tty_name: str, identity: UsbIdentity, usb_port: str = "1-1"
) -> Path:
    """Write the sysfs entries of a USB serial tty; returns the USB device directory."""
    sys_root = Path(sys_root)
    unregister_usb_tty(sys_root, tty_name, usb_port)
    for bus in ("usb", "usb-serial"):
        (sys_root / "bus" / bus).mkdir(parents=True, exist_ok=True)
    (sys_root / "class" / "tty").mkdir(parents=True, exist_ok=True)
    dev_dir = usb_device_dir(sys_root, usb_port)
    iface = dev_dir / f"{usb_port}:1.0"
    iface.mkdir(parents=True, exist_ok=True)
    _write(dev_dir / "idVendor", f"{identity.vid:04x}")
    _write(dev_dir / "idProduct", f"{identity.pid:04x}")
    _write(dev_dir / "bNumInterfaces", " 1")
    for name, value in (
        ("serial", identity.serial),
        ("manufacturer", identity.manufacturer),
        ("product", identity.product),
    ):
        if value is not None:
            _write(dev_dir / name, value)
    _symlink(sys_root / "bus" / "usb", dev_dir / "subsystem")
    _symlink(sys_root / "bus" / "usb", iface / "subsystem")
    _write(iface / "bInterfaceNumber", "00")
    if identity.interface is not None:
        _write(iface / "interface", identity.interface)
    if identity.driver == "acm":
        tty_dir = iface / "tty" / tty_name
        tty_dir.mkdir(parents=True, exist_ok=True)
        _symlink(iface, tty_dir / "device")
    else:
        port_dir = iface / tty_name
        tty_dir = port_dir / "tty" / tty_name
        tty_dir.mkdir(parents=True, exist_ok=True)
        _symlink(sys_root / "bus" / "usb-serial", port_dir / "subsystem")
        _symlink(port_dir, tty_dir / "device")
    _write(tty_dir / "dev", "188:0")
    _symlink(sys_root / "class" / "tty", tty_dir / "subsystem")
    _symlink(tty_dir, sys_root / "class" / "tty" / tty_name)
    return dev_dir


def unregister_usb_tty(sys_root: str | Path, tty_name: str, usb_port: str = "1-1") -> None:
    """Remove a tty's sysfs entries, as the kernel does on unplug."""
    sys_root = Path(sys_root)
    with contextlib.suppress(FileNotFoundError):
        (sys_root / "class" / "tty" / tty_name).unlink()
    shutil.rmtree(usb_device_dir(sys_root, usb_port), ignore_errors=True)


class SysfsRegistered(PtyDevice):
    """A PtyDevice that shows its USB identity in a fake sysfs tree while plugged."""

    def __init__(
        self,
        link: str | Path,
        identity: UsbIdentity | None = None,
        sys_root: str | Path | None = None,
        usb_port: str = "1-1",
    ) -> None:
        super().__init__(link)
        self.identity = identity
        self.sys_root = Path(sys_root) if sys_root is not None else None
        self.usb_port = usb_port

    def on_plug(self) -> None:
        """Register the identity under the fake sys root."""
        if self.identity is not None and self.sys_root is not None:
            register_usb_tty(self.sys_root, self.link.name, self.identity, self.usb_port)

    def on_unplug(self) -> None:
        """Remove the sysfs entries."""
        if self.sys_root is not None:
            unregister_usb_tty(self.sys_root, self.link.name, self.usb_port)

    def swap(self, identity: UsbIdentity) -> None:
        """Unplug and plug another device (new identity) into the same port."""
        self.unplug()
        self.identity = identity
        self.replug()


class SimPeripheral(SysfsRegistered):
    """A PIN pad, card reader or scanner: answers ``request`` with ``reply``.

    Modes: "normal" (answers), "silent" (ignores requests), "wrong" (answers
    with ``wrong_reply``). ``emit`` pushes unsolicited data (a scanned barcode).
    """

    def __init__(
        self,
        link: str | Path,
        *,
        request: bytes = b"",
        reply: bytes = b"",
        identity: UsbIdentity | None = None,
        sys_root: str | Path | None = None,
        usb_port: str = "1-1",
        reply_delay_s: float = 0.0,
        wrong_reply: bytes = b"\x15",
    ) -> None:
        super().__init__(link, identity=identity, sys_root=sys_root, usb_port=usb_port)
        self.request = request
        self.reply = reply
        self.reply_delay_s = reply_delay_s
        self.wrong_reply = wrong_reply
        self._mode = "normal"
        self._buf = bytearray()
        self._mode_lock = threading.Lock()
        self.requests_seen = 0

    def set_mode(self, mode: str) -> None:
        """'normal' | 'silent' | 'wrong' (thread-safe)."""
        if mode not in ("normal", "silent", "wrong"):
            raise ValueError(f"unknown peripheral mode {mode!r}")
        with self._mode_lock:
            self._mode = mode

    @property
    def mode(self) -> str:
        """The current answering mode."""
        with self._mode_lock:
            return self._mode

    def emit(self, data: bytes) -> None:
        """Send unsolicited bytes to the host (a scan, a card swipe)."""
        self.send(data)

    def on_data(self, data: bytes) -> None:
        """Answer each complete request according to the mode."""
        if not self.request:
            return
        self._buf.extend(data)
        while True:
            idx = self._buf.find(self.request)
            if idx < 0:
                keep = len(self.request) - 1
                del self._buf[: max(0, len(self._buf) - keep)]
                return
            del self._buf[: idx + len(self.request)]
            self.requests_seen += 1
            mode = self.mode
            if mode == "normal":
                self.send(self.reply, self.reply_delay_s)
            elif mode == "wrong":
                self.send(self.wrong_reply, self.reply_delay_s)


def pinpad(
    link: str | Path, sys_root: str | Path | None = None, usb_port: str = "1-1"
) -> SimPeripheral:
    """A PIN pad on an FTDI adapter that ACKs an STX 'S' ETX status request."""
    return SimPeripheral(
        link,
        request=b"\x02S\x03",
        reply=b"\x06\x02S0OK\x03",
        identity=UsbIdentity(0x0403, 0x6001, "PP000123", "FTDI", "PINPad", driver="usb-serial"),
        sys_root=sys_root,
        usb_port=usb_port,
    )


def card_reader(
    link: str | Path, sys_root: str | Path | None = None, usb_port: str = "1-2"
) -> SimPeripheral:
    """A card reader on CDC-ACM that answers a version query."""
    return SimPeripheral(
        link,
        request=b"V\r",
        reply=b"MSR-1.2\r\n",
        identity=UsbIdentity(0x0801, 0x0003, "CR42", "MagTek", "Card Reader", driver="acm"),
        sys_root=sys_root,
        usb_port=usb_port,
    )


def scanner(
    link: str | Path, sys_root: str | Path | None = None, usb_port: str = "1-3"
) -> SimPeripheral:
    """A barcode scanner on CDC-ACM that answers a ping with its model."""
    return SimPeripheral(
        link,
        request=b"\x16M\r",
        reply=b"SCN-OK\r",
        identity=UsbIdentity(0x05E0, 0x1200, "S9", "Zebra", "Scanner", driver="acm"),
        sys_root=sys_root,
        usb_port=usb_port,
    )

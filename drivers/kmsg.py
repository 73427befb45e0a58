"""Kernel log lines about USB serial ports: attach, detach, new USB device, probe failure.

Parses plain ``dmesg`` (``[   96.517038] ...``), ``dmesg -T``
(``[Mon May 22 17:50:15 2023] ...``), syslog/kern.log
(``Nov  4 11:07:24 host kernel: [    7.06] ...``) and raw /dev/kmsg records
(``6,1234,5678901,-;...``). Lines that are not about USB serial are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from drivers.shell import Shell


class KmsgKind(StrEnum):
    """What a kernel line reports."""

    TTY_ATTACHED = (
        "tty_attached"  # "... converter now attached to ttyUSB0", "ttyACM0: USB ACM device"
    )
    TTY_DETACHED = "tty_detached"  # "... converter now disconnected from ttyUSB0"
    USB_FOUND = "usb_found"  # "New USB device found, idVendor=0403, idProduct=6001"
    USB_STRING = "usb_string"  # "Product: ...", "Manufacturer: ...", "SerialNumber: ..."
    USB_DISCONNECT = "usb_disconnect"  # "USB disconnect, device number 9"
    PROBE_FAILED = "probe_failed"  # "pl2303: probe of 5-1:1.0 failed with error -5"


@dataclass(frozen=True)
class KmsgEvent:
    """One parsed kernel line."""

    kind: KmsgKind
    line: str
    uptime_s: float | None = None  # seconds since boot, when the line carries them
    wall_time: datetime | None = None  # dmesg -T time (local, naive)
    syslog_time: str | None = None  # "Nov  4 11:07:24" (no year in syslog)
    host: str | None = None
    driver: str | None = None  # "cp210x", "ftdi_sio", "cdc_acm", "usb", ...
    usb_path: str | None = None  # "1-1.5", "1-6.1:1.0"
    tty: str | None = None
    vid: int | None = None
    pid: int | None = None
    attribute: str | None = None  # for USB_STRING: Product | Manufacturer | SerialNumber
    value: str | None = None
    error: int | None = None


_SYSLOG = re.compile(
    r"^(?P<stime>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) kernel: ?(?P<rest>.*)$"
)
_KMSG_RAW = re.compile(r"^\d+,\d+,(?P<usec>\d+),[^;]*;(?P<rest>.*)$")
_UPTIME = re.compile(r"^\[\s*(?P<up>\d+\.\d+)\]\s?(?P<rest>.*)$")
_WALL = re.compile(
    r"^\[(?P<wall>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d \d{4})\]\s?(?P<rest>.*)$"
)
# "<driver> <device>: <message>" (device: "1-1.5", "1-1:1.0", "ttyUSB0", "5-1")
_PREFIX = re.compile(r"^(?P<driver>[\w-]+) (?P<dev>[\w.:-]+): (?P<msg>.*)$")

_ATTACHED = re.compile(r"^(?P<what>.+?) converter now attached to (?P<tty>tty\w+)\s*$")
_DETACHED = re.compile(r"^(?P<what>.+?) converter now disconnected from (?P<tty>tty\w+)\s*$")
_ACM = re.compile(r"^(?P<tty>tty\w+): USB ACM device\s*$")
_FOUND = re.compile(
    r"^New USB device found, idVendor=(?P<vid>[0-9a-fA-F]{4}), idProduct=(?P<pid>[0-9a-fA-F]{4})"
)
_STRING = re.compile(r"^(?P<attr>Product|Manufacturer|SerialNumber): (?P<value>.*)$")
_DISCONNECT = re.compile(r"^USB disconnect, device number (?P<num>\d+)")
_PROBE_FAILED = re.compile(
    r"^(?P<driver>[\w-]+): probe of (?P<dev>[\w.:-]+) failed with error (?P<err>-?\d+)"
)


@dataclass(frozen=True)
class _Stamp:
    uptime_s: float | None = None
    wall_time: datetime | None = None
    syslog_time: str | None = None
    host: str | None = None


def _strip_timestamp(line: str) -> tuple[str, _Stamp]:
    syslog_time: str | None = None
    host: str | None = None
    m = _SYSLOG.match(line)
    if m:
        syslog_time, host, line = m.group("stime"), m.group("host"), m.group("rest")
    m = _KMSG_RAW.match(line)
    if m:
        return m.group("rest"), _Stamp(int(m.group("usec")) / 1e6, None, syslog_time, host)
    m = _UPTIME.match(line)
    if m:
        return m.group("rest"), _Stamp(float(m.group("up")), None, syslog_time, host)
    m = _WALL.match(line)
    if m:
        try:
            wall = datetime.strptime(" ".join(m.group("wall").split()), "%a %b %d %H:%M:%S %Y")
        except ValueError:
            wall = None
        return m.group("rest"), _Stamp(None, wall, syslog_time, host)
    return line, _Stamp(None, None, syslog_time, host)


def parse_kmsg_line(line: str) -> KmsgEvent | None:
    """The USB-serial event a kernel log line reports, or None for any other line."""
    raw = line.rstrip("\r\n")
    body, st = _strip_timestamp(raw)

    def event(
        kind: KmsgKind,
        *,
        driver: str | None = None,
        usb_path: str | None = None,
        tty: str | None = None,
        vid: int | None = None,
        pid: int | None = None,
        attribute: str | None = None,
        value: str | None = None,
        error: int | None = None,
    ) -> KmsgEvent:
        return KmsgEvent(
            kind=kind,
            line=raw,
            uptime_s=st.uptime_s,
            wall_time=st.wall_time,
            syslog_time=st.syslog_time,
            host=st.host,
            driver=driver,
            usb_path=usb_path,
            tty=tty,
            vid=vid,
            pid=pid,
            attribute=attribute,
            value=value,
            error=error,
        )

    m = _PROBE_FAILED.match(body)
    if m:
        return event(
            KmsgKind.PROBE_FAILED,
            driver=m.group("driver"),
            usb_path=m.group("dev"),
            error=int(m.group("err")),
        )
    p = _PREFIX.match(body)
    if p is None:
        return None
    driver, dev, msg = p.group("driver"), p.group("dev"), p.group("msg")
    dev_tty = dev if dev.startswith("tty") else None
    usb = None if dev_tty else dev
    if m := _ATTACHED.match(msg):
        return event(
            KmsgKind.TTY_ATTACHED, driver=driver, usb_path=usb, tty=m["tty"], value=m["what"]
        )
    if m := _DETACHED.match(msg):
        return event(
            KmsgKind.TTY_DETACHED, driver=driver, usb_path=usb, tty=m["tty"], value=m["what"]
        )
    if m := _ACM.match(msg):
        return event(
            KmsgKind.TTY_ATTACHED, driver=driver, usb_path=usb, tty=m["tty"], value="USB ACM device"
        )
    if m := _FOUND.match(msg):
        return event(
            KmsgKind.USB_FOUND,
            driver=driver,
            usb_path=usb,
            vid=int(m["vid"], 16),
            pid=int(m["pid"], 16),
        )
    if (m := _STRING.match(msg)) and driver == "usb":
        return event(
            KmsgKind.USB_STRING,
            driver=driver,
            usb_path=usb,
            attribute=m["attr"],
            value=m["value"].strip(),
        )
    if m := _DISCONNECT.match(msg):
        return event(KmsgKind.USB_DISCONNECT, driver=driver, usb_path=usb, value=m["num"])
    return None


def parse_kmsg(text: str | Iterable[str]) -> list[KmsgEvent]:
    """Every USB-serial event in kernel log text, in order."""
    lines = text.splitlines() if isinstance(text, str) else text
    out: list[KmsgEvent] = []
    for line in lines:
        ev = parse_kmsg_line(line)
        if ev is not None:
            out.append(ev)
    return out


def read_dmesg(shell: Shell, timeout_s: float = 5.0) -> list[KmsgEvent]:
    """USB-serial events from the kernel ring buffer (``dmesg``) through the shell."""
    out = shell.check("dmesg", timeout_s=timeout_s)
    return parse_kmsg(out.decode("utf-8", "replace"))

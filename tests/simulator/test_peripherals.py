"""Simulated PIN pad, card reader and scanner on ptys, with identity in a fake sysfs tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.roots import Roots
from drivers.serialports import (
    ProbeState,
    diff_inventory,
    inventory,
    match,
    open_serial,
    probe_port,
)
from simulator.peripherals import (
    SimPeripheral,
    UsbIdentity,
    card_reader,
    pinpad,
    register_usb_tty,
    scanner,
    unregister_usb_tty,
)
from simulator.pty import PtyLink

TIMEOUT_S = 0.3


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    return Roots(sys=tmp_path / "sys", dev=tmp_path / "dev")


@pytest.fixture
def terminal(roots: Roots) -> Iterator[dict[str, SimPeripheral]]:
    devices = {
        "pinpad": pinpad(roots.dev / "ttyUSB0", sys_root=roots.sys),
        "reader": card_reader(roots.dev / "ttyACM0", sys_root=roots.sys),
        "scanner": scanner(roots.dev / "ttyACM1", sys_root=roots.sys),
    }
    for d in devices.values():
        d.start()
    try:
        yield devices
    finally:
        for d in devices.values():
            d.stop()


def test_three_peripherals_inventory_with_identity(
    roots: Roots, terminal: dict[str, SimPeripheral]
) -> None:
    """The inventory of the fake tree lists the three peripherals with the identities they registered."""
    ports = {p.name: p for p in inventory(roots)}
    assert sorted(ports) == ["ttyACM0", "ttyACM1", "ttyUSB0"]
    for dev in terminal.values():
        port = ports[dev.link.name]
        assert dev.identity is not None
        assert port.usb_id == dev.identity.usb_id
        assert port.product == dev.identity.product
        assert os.path.realpath(port.device) == dev.slave_name
    assert [p.name for p in match(ports.values(), "0403:6001:PP000123")] == ["ttyUSB0"]


def test_each_peripheral_answers_its_probe(terminal: dict[str, SimPeripheral]) -> None:
    """Each device answers its own request with its reply through the probe driver."""
    for dev in terminal.values():
        r = probe_port(dev.link, request=dev.request, expect=dev.reply, timeout_s=TIMEOUT_S)
        assert r.state is ProbeState.OK, (dev.link.name, r)
        assert r.reply == dev.reply


def test_sysfs_layout_is_relative_and_linux_shaped(
    roots: Roots, terminal: dict[str, SimPeripheral]
) -> None:
    """sysfs links are relative, stay in the fake tree, and put idVendor two levels above a ttyUSB device."""
    cls = roots.sys / "class" / "tty" / "ttyUSB0"
    assert not os.readlink(cls).startswith("/")
    device = Path(os.path.realpath(cls / "device"))
    assert device.is_relative_to(roots.sys)
    assert device.name == "ttyUSB0"
    assert os.path.basename(os.path.realpath(device / "subsystem")) == "usb-serial"
    assert (device.parent.parent / "idVendor").read_text() == "0403\n"
    acm = Path(os.path.realpath(roots.sys / "class" / "tty" / "ttyACM0" / "device"))
    assert acm.name == "1-2:1.0"
    assert os.path.basename(os.path.realpath(acm / "subsystem")) == "usb"
    assert (acm.parent / "idProduct").read_text() == "0003\n"


def test_swap_same_path_different_identity(
    roots: Roots, terminal: dict[str, SimPeripheral]
) -> None:
    """Swapping the PIN pad for another device on the same port shows as a changed identity."""
    before = inventory(roots)
    pad = terminal["pinpad"]
    pad.swap(UsbIdentity(0x0403, 0x6001, "SKIMMER1", "FTDI", "PINPad"))
    after = inventory(roots)
    d = diff_inventory(before, after)
    assert not d.added and not d.removed
    assert [(a.usb_id, b.usb_id) for a, b in d.changed] == [
        ("0403:6001:PP000123", "0403:6001:SKIMMER1")
    ]
    assert probe_port(pad.link, request=pad.request, expect=pad.reply, timeout_s=TIMEOUT_S).ok


def test_unplug_and_replug(roots: Roots, terminal: dict[str, SimPeripheral]) -> None:
    """Unplug removes the dev link and sysfs entry (removed in the diff); replug brings both back."""
    reader = terminal["reader"]
    before = inventory(roots)
    reader.unplug()
    assert not reader.plugged and reader.slave_name == ""
    assert not os.path.lexists(reader.link)
    assert not os.path.lexists(roots.sys / "class" / "tty" / "ttyACM0")
    gone = inventory(roots)
    assert [p.name for p in diff_inventory(before, gone).removed] == ["ttyACM0"]
    assert probe_port(reader.link, timeout_s=TIMEOUT_S).state is ProbeState.ABSENT
    reader.replug()
    back = inventory(roots)
    assert not diff_inventory(before, back)
    assert probe_port(
        reader.link, request=reader.request, expect=reader.reply, timeout_s=TIMEOUT_S
    ).ok


def test_scanner_emits_unsolicited_data(terminal: dict[str, SimPeripheral]) -> None:
    """A scan pushed by the scanner reaches a host that has the port open."""
    scan = terminal["scanner"]
    port, chan = open_serial(scan.link)
    try:
        chan.drain()
        scan.emit(b"4006381333931\r")
        got = b""
        while not got.endswith(b"\r"):
            chunk = chan.read(64, TIMEOUT_S)
            assert chunk, "scan did not arrive"
            got += chunk
    finally:
        chan.close()
    assert got == b"4006381333931\r"
    assert not port.is_open


def test_request_split_across_writes(terminal: dict[str, SimPeripheral]) -> None:
    """A request written in pieces is answered once it is complete."""
    pad = terminal["pinpad"]
    _port, chan = open_serial(pad.link)
    try:
        chan.write(b"\x02")
        assert chan.read(16, 0.05) == b""
        chan.write(b"S\x03")
        assert chan.read(16, TIMEOUT_S).startswith(b"\x06")
    finally:
        chan.close()
    assert pad.requests_seen == 1


def test_mode_validation_and_silence(terminal: dict[str, SimPeripheral]) -> None:
    """An unknown mode is refused; a silent device gets requests but does not answer."""
    pad = terminal["pinpad"]
    with pytest.raises(ValueError):
        pad.set_mode("broken")
    pad.set_mode("silent")
    r = probe_port(pad.link, request=pad.request, expect=pad.reply, timeout_s=TIMEOUT_S)
    assert r.state is ProbeState.NO_REPLY
    assert pad.requests_seen == 1 and pad.mode == "silent"


def test_register_unregister_without_device(tmp_path: Path) -> None:
    """The sysfs writer alone registers and removes an identity (for trees without a pty)."""
    roots = Roots(sys=tmp_path / "sys", dev=tmp_path / "dev")
    roots.dev.mkdir()
    (roots.dev / "ttyUSB5").touch()
    register_usb_tty(roots.sys, "ttyUSB5", UsbIdentity(0x10C4, 0xEA60, "0001"), "2-1.4")
    (port,) = inventory(roots)
    assert (port.usb_id, port.location) == ("10c4:ea60:0001", "2-1.4")
    unregister_usb_tty(roots.sys, "ttyUSB5", "2-1.4")
    (bare,) = inventory(roots)
    assert bare.vid is None and bare.subsystem is None


def test_pty_link_replaces_stale_link(tmp_path: Path) -> None:
    """Opening a PtyLink over a stale symlink points the path at the new pty."""
    link = tmp_path / "dev" / "ttyS3"
    link.parent.mkdir()
    os.symlink("/dev/pts/does-not-exist", link)
    pty = PtyLink(link)
    pty.open()
    try:
        assert os.readlink(link) == pty.slave_name and os.path.exists(link)
    finally:
        pty.close()
    assert not os.path.lexists(link)

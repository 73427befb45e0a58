"""Serial inventory on fake sysfs trees, VID:PID matching, diffs, probes on pty peripherals, kmsg."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.kmsg import KmsgKind, parse_kmsg, parse_kmsg_line
from drivers.roots import Roots
from drivers.serialports import (
    MatchSpec,
    MatchSpecError,
    PortInfo,
    ProbeState,
    diff_inventory,
    inventory,
    match,
    parse_hex,
    probe_port,
    read_port,
)
from simulator.peripherals import SimPeripheral, UsbIdentity, pinpad, register_usb_tty

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "linux"
TIMEOUT_S = 0.3

FTDI = UsbIdentity(0x0403, 0x6001, "A9XK2L", "FTDI", "FT232R USB UART", driver="usb-serial")
ACM = UsbIdentity(0x0483, 0x5740, "3A7F", "STMicro", "Virtual COM", "CDC Data", driver="acm")


def _fake_tree(tmp_path: Path) -> Roots:
    """A /sys + /dev with a USB-serial, a CDC-ACM, a Qualcomm UART, a PnP and a placeholder 8250."""
    roots = Roots(sys=tmp_path / "sys", dev=tmp_path / "dev")
    roots.dev.mkdir(parents=True)
    for name in ("ttyUSB0", "ttyACM0", "ttyMSM0", "ttyS0", "ttyS1", "ttyHS1"):
        (roots.dev / name).touch()
    register_usb_tty(roots.sys, "ttyUSB0", FTDI, "1-1")
    register_usb_tty(roots.sys, "ttyACM0", ACM, "1-2")
    devices = roots.sys / "devices"
    for name, target, subsystem, extra in (
        ("ttyMSM0", devices / "platform" / "78af000.serial", "platform", {}),
        ("ttyS0", devices / "platform" / "serial8250", "platform", {"type": "0"}),
        ("ttyS1", devices / "pnp0" / "00:05", "pnp", {"type": "4"}),
    ):
        (target / "tty" / name).mkdir(parents=True, exist_ok=True)
        (roots.sys / "bus" / subsystem).mkdir(parents=True, exist_ok=True)
        if not (target / "subsystem").exists():
            os.symlink(os.path.relpath(roots.sys / "bus" / subsystem, target), target / "subsystem")
        os.symlink(f"../../../{target.name}", target / "tty" / name / "device")
        for key, value in extra.items():
            (target / "tty" / name / key).write_text(value + "\n")
        os.symlink(
            os.path.relpath(target / "tty" / name, roots.sys / "class" / "tty"),
            roots.sys / "class" / "tty" / name,
        )
    (devices / "pnp0" / "00:05" / "id").write_text("PNP0501\n")
    return roots


def test_inventory_reads_usb_identity_from_fake_sysfs(tmp_path: Path) -> None:
    """USB-serial and CDC-ACM ports carry VID/PID/serial/location as Linux lays them out."""
    roots = _fake_tree(tmp_path)
    ports = {p.name: p for p in inventory(roots)}
    usb = ports["ttyUSB0"]
    assert (usb.vid, usb.pid, usb.serial_number) == (0x0403, 0x6001, "A9XK2L")
    assert usb.subsystem == "usb-serial" and usb.location == "1-1"
    assert usb.description == "FT232R USB UART"
    assert usb.hwid == "USB VID:PID=0403:6001 SER=A9XK2L LOCATION=1-1"
    assert usb.usb_id == "0403:6001:A9XK2L"
    acm = ports["ttyACM0"]
    assert (acm.vid, acm.pid, acm.serial_number, acm.subsystem) == (0x0483, 0x5740, "3A7F", "usb")
    assert acm.description == "Virtual COM - CDC Data"
    assert ports["ttyS1"].hwid == "PNP0501"


def test_inventory_extra_globs_and_placeholders(tmp_path: Path) -> None:
    """ttyMSM*/ttyHS* come from extra globs; an 8250 slot with UART type 0 is dropped."""
    roots = _fake_tree(tmp_path)
    names = [p.name for p in inventory(roots)]
    assert names == ["ttyACM0", "ttyHS1", "ttyMSM0", "ttyS1", "ttyUSB0"]
    assert [p.name for p in inventory(roots, extra_globs=())] == ["ttyACM0", "ttyS1", "ttyUSB0"]
    hs = read_port(roots, roots.dev / "ttyHS1")
    assert hs.subsystem is None and hs.vid is None and hs.usb_id == ""
    assert read_port(roots, roots.dev / "ttyMSM0").subsystem == "platform"


def _pyserial_in_namespace(roots: Roots) -> list[dict[str, object]]:
    code = (
        "import json; from serial.tools import list_ports_linux as l;"
        "print(json.dumps([dict(name=p.name, vid=p.vid, pid=p.pid, serial_number=p.serial_number,"
        "location=p.location, description=p.description, hwid=p.hwid, product=p.product,"
        "manufacturer=p.manufacturer, interface=p.interface, subsystem=p.subsystem)"
        " for p in l.comports()]))"
    )
    script = (
        f'mount --bind "{roots.sys}" /sys && mount --bind "{roots.dev}" /dev && exec "$0" -c "$1"'
    )
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            sys.executable,
            code,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot bind-mount a fake /sys in a mount namespace: {proc.stderr.decode()[:200]}"
        )
    result: list[dict[str, object]] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_reader_agrees_with_pyserial_on_the_same_tree(tmp_path: Path) -> None:
    """pyserial's own comports(), run with the fake tree mounted on /sys and /dev, sees what read_port sees."""
    roots = _fake_tree(tmp_path)
    theirs = {str(p["name"]): p for p in _pyserial_in_namespace(roots)}
    ours = {p.name: p for p in inventory(roots, extra_globs=(), use_list_ports=False)}
    assert sorted(theirs) == sorted(ours) == ["ttyACM0", "ttyS1", "ttyUSB0"]
    for name, p in ours.items():
        for key in ("vid", "pid", "serial_number", "location", "description", "hwid", "product"):
            assert theirs[name][key] == getattr(p, key), (name, key)
        assert theirs[name]["manufacturer"] == p.manufacturer
        assert theirs[name]["interface"] == p.interface


def test_real_roots_use_list_ports() -> None:
    """On the real /sys and /dev the inventory comes from pyserial and lists real nodes only."""
    ports = inventory()
    assert all(p.source in ("list_ports", "sysfs") and os.path.exists(p.device) for p in ports)
    assert all(
        p.source == "list_ports" for p in ports if not p.name.startswith(("ttyMSM", "ttyHS"))
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0403:6001", ["ttyUSB0"]),
        ("0403:6001:A9XK2L", ["ttyUSB0"]),
        ("0403:6001:OTHER", []),
        ("0483:5740", ["ttyACM0"]),
        ("0483:5740:3A7F", ["ttyACM0"]),
        ("1234:5678", []),
    ],
)
def test_match_spec(tmp_path: Path, spec: str, expected: list[str]) -> None:
    """VID:PID[:SERIAL] selects ports by USB identity (hex, serial compared exactly)."""
    ports = inventory(_fake_tree(tmp_path))
    assert [p.name for p in match(ports, spec)] == expected


@pytest.mark.parametrize("bad", ["", "0403", "0403:60011", "xyz1:6001", "0403-6001", "0403:6001:"])
def test_match_spec_rejects_malformed(bad: str) -> None:
    """Malformed specs raise MatchSpecError (a ValueError)."""
    with pytest.raises(MatchSpecError):
        MatchSpec.parse(bad)


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9:_-]{1,12}", fullmatch=True)),
)
def test_fuzz_match_spec_round_trip(vid: int, pid: int, serial: str | None) -> None:
    """Any VID/PID/serial formats to a spec that parses back to the same identity and matches its port."""
    spec = MatchSpec(vid, pid, serial)
    assert MatchSpec.parse(str(spec)) == spec
    port = PortInfo(device="/dev/ttyUSB0", name="ttyUSB0", vid=vid, pid=pid, serial_number=serial)
    assert spec.matches(port)
    assert MatchSpec.parse(port.usb_id) == spec


@given(st.text(max_size=30))
def test_fuzz_match_spec_parse_never_crashes(text: str) -> None:
    """Parsing arbitrary text yields a spec or MatchSpecError, nothing else."""
    try:
        spec = MatchSpec.parse(text)
    except MatchSpecError:
        return
    assert 0 <= spec.vid <= 0xFFFF and 0 <= spec.pid <= 0xFFFF


def test_diff_added_removed_changed(tmp_path: Path) -> None:
    """Successive inventories show a new port, a removed port and an identity swap on the same path."""
    roots = _fake_tree(tmp_path)
    before = inventory(roots)
    (roots.dev / "ttyACM0").unlink()
    (roots.dev / "ttyUSB1").touch()
    register_usb_tty(roots.sys, "ttyUSB1", UsbIdentity(0x067B, 0x2303), "1-3")
    register_usb_tty(roots.sys, "ttyUSB0", UsbIdentity(0x0403, 0x6001, "EVIL01"), "1-1")
    after = inventory(roots)
    d = diff_inventory(before, after)
    assert [p.name for p in d.added] == ["ttyUSB1"]
    assert [p.name for p in d.removed] == ["ttyACM0"]
    assert [(a.serial_number, b.serial_number) for a, b in d.changed] == [("A9XK2L", "EVIL01")]
    assert not diff_inventory(after, inventory(roots))


# --------------------------------------------------------------------------- probes


@pytest.fixture
def pad(tmp_path: Path) -> Iterator[SimPeripheral]:
    sim = pinpad(tmp_path / "dev" / "ttyUSB0", sys_root=tmp_path / "sys")
    sim.start()
    yield sim
    sim.stop()


def test_probe_ok_with_reply_and_latency(pad: SimPeripheral) -> None:
    """The PIN pad answers the configured hex request and the reply matches expect."""
    r = probe_port(
        pad.link, request=parse_hex("02 53 03"), expect=r"\x06\x02S0OK\x03", timeout_s=TIMEOUT_S
    )
    assert r.state is ProbeState.OK and r.ok
    assert r.reply == b"\x06\x02S0OK\x03"
    assert r.latency_s is not None and r.latency_s < TIMEOUT_S
    assert pad.requests_seen == 1


def test_probe_wrong_reply_and_no_reply(pad: SimPeripheral) -> None:
    """A NAK is wrong_reply with the bytes kept; a silent device is no_reply."""
    pad.set_mode("wrong")
    r = probe_port(pad.link, request=b"\x02S\x03", expect=r"^\x06", timeout_s=TIMEOUT_S)
    assert r.state is ProbeState.WRONG_REPLY and r.reply == b"\x15"
    pad.set_mode("silent")
    r = probe_port(pad.link, request=b"\x02S\x03", expect=r"^\x06", timeout_s=TIMEOUT_S)
    assert r.state is ProbeState.NO_REPLY and r.reply == b""


def test_probe_any_reply_and_open_only(pad: SimPeripheral) -> None:
    """With no expect any reply is ok; with neither request nor expect only the open is checked."""
    assert probe_port(pad.link, request=b"\x02S\x03", timeout_s=TIMEOUT_S).state is ProbeState.OK
    pad.set_mode("silent")
    assert probe_port(pad.link, timeout_s=TIMEOUT_S).state is ProbeState.OK


def test_probe_late_reply_is_no_reply(tmp_path: Path) -> None:
    """A reply slower than the timeout counts as no reply."""
    slow = SimPeripheral(
        tmp_path / "ttyUSB3", request=b"?", reply=b"!", reply_delay_s=TIMEOUT_S + 0.2
    )
    with slow:
        assert (
            probe_port(slow.link, request=b"?", expect="!", timeout_s=TIMEOUT_S).state
            is ProbeState.NO_REPLY
        )


def test_probe_absent_and_unplug_during_probe(pad: SimPeripheral) -> None:
    """A missing node is absent; unplugging while the probe waits is absent too, not no_reply."""
    pad.set_mode("silent")
    timer = threading.Timer(0.05, pad.unplug)
    timer.start()
    r = probe_port(pad.link, request=b"\x02S\x03", expect="x", timeout_s=1.0)
    timer.join()
    assert r.state is ProbeState.ABSENT
    assert probe_port(pad.link, timeout_s=TIMEOUT_S).state is ProbeState.ABSENT


def test_probe_open_failed_on_non_tty(tmp_path: Path) -> None:
    """A node that exists but is no tty gives open_failed."""
    node = tmp_path / "ttyUSB7"
    node.touch()
    assert probe_port(node, request=b"x", timeout_s=TIMEOUT_S).state is ProbeState.OPEN_FAILED


def test_parse_hex() -> None:
    """Probe bytes come from spaced or packed hex; bad hex raises ValueError."""
    assert parse_hex("02 53 03") == parse_hex("025303") == b"\x02S\x03"
    assert parse_hex("") == b""
    with pytest.raises(ValueError):
        parse_hex("0g")


# --------------------------------------------------------------------------- kmsg


def _events(name: str) -> list[tuple[str, str | None, str | None]]:
    return [(str(e.kind), e.tty, e.usb_path) for e in parse_kmsg((FIX / name).read_text())]


def test_kmsg_cdc_acm_four_ports() -> None:
    """A CH344 bound by cdc_acm attaches four ttyACM ports with their interfaces and uptimes."""
    events = parse_kmsg((FIX / "dmesg_usb_serial_cdc_acm_ch344_4port.txt").read_text())
    assert [(e.kind, e.tty, e.usb_path) for e in events] == [
        (KmsgKind.TTY_ATTACHED, f"ttyACM{i}", f"1-1:1.{2 * i}") for i in range(4)
    ]
    assert events[0].uptime_s == pytest.approx(96.517038)
    assert events[0].driver == "cdc_acm"


def test_kmsg_dmesg_T_timestamps() -> None:
    """dmesg -T human timestamps are parsed and the USB identity of the re-enumerated device is read."""
    events = parse_kmsg((FIX / "dmesg_usb_serial_cdc_acm_dmesg_T_timestamps.txt").read_text())
    assert events[0].wall_time == datetime(2023, 5, 22, 17, 50, 15)
    assert events[0].uptime_s is None
    found = [e for e in events if e.kind is KmsgKind.USB_FOUND]
    assert [(e.vid, e.pid, e.usb_path) for e in found] == [(0x0483, 0x5740, "1-4.1.4")] * 2
    assert [e.value for e in events if e.kind is KmsgKind.USB_DISCONNECT] == ["33", "34"]


def test_kmsg_receipt_printer_identity() -> None:
    """The GP-58 receipt printer's VID/PID, product and serial come before its ttyACM0."""
    events = parse_kmsg((FIX / "dmesg_usb_serial_cdc_acm_receipt_printer_gp58.txt").read_text())
    strings = {e.attribute: e.value for e in events if e.kind is KmsgKind.USB_STRING}
    assert strings == {
        "Product": "ICT GP-58 III",
        "Manufacturer": "STMicroelectronics",
        "SerialNumber": "00000000050C",
    }
    assert (events[0].vid, events[0].pid) == (0x0483, 0xA000)
    assert (events[-1].kind, events[-1].tty) == (KmsgKind.TTY_ATTACHED, "ttyACM0")


def test_kmsg_cp210x_attach_detach() -> None:
    """cp210x attach by USB path and detach by tty name, with trailing spaces stripped from strings."""
    events = parse_kmsg((FIX / "dmesg_usb_serial_cp210x_attach_detach.txt").read_text())
    assert (events[0].kind, events[0].tty, events[0].usb_path, events[0].value) == (
        KmsgKind.TTY_ATTACHED,
        "ttyUSB1",
        "1-6.1",
        "cp210x",
    )
    detached = [(e.tty, e.driver) for e in events if e.kind is KmsgKind.TTY_DETACHED]
    assert detached == [("ttyUSB0", "cp210x"), ("ttyUSB1", "cp210x")]
    products = [e.value for e in events if e.attribute == "Product"]
    assert products == ["USB Audio CODEC"]


def test_kmsg_old_kernel_and_ftdi_replug() -> None:
    """Old-kernel wording and an FT4232H replug give the expected attach/detach sequence."""
    assert _events("dmesg_usb_serial_cp210x_ubuntu1204.txt") == [("tty_attached", "ttyUSB0", "8-2")]
    assert _events("dmesg_usb_serial_cp210x_disconnect_old_kernel.txt") == [
        ("tty_detached", "ttyUSB0", None)
    ]
    replug = _events("dmesg_usb_serial_ftdi_sio_ft4232h_replug.txt")
    assert [t for k, t, _ in replug if k == "tty_detached"] == [
        "ttyUSB0",
        "ttyUSB1",
        "ttyUSB2",
        "ttyUSB3",
    ]
    assert replug[-1] == ("tty_attached", "ttyUSB0", "5-1")
    am335x = _events("dmesg_usb_serial_ftdi_sio_arm_am335x.txt")
    assert am335x == [("tty_attached", "ttyUSB0", "2-1"), ("tty_detached", "ttyUSB0", None)]
    assert _events("dmesg_usb_serial_ftdi_sio_ft232r.txt")[-2:] == [
        ("tty_attached", "ttyUSB0", "1-2.1"),
        ("usb_disconnect", None, "1-2.1"),
    ]
    pl = parse_kmsg((FIX / "dmesg_usb_serial_pl2303_attach.txt").read_text())
    assert [(e.vid, e.pid) for e in pl if e.kind is KmsgKind.USB_FOUND] == [(0x067B, 0x2303)]


def test_kmsg_reconnect_loop_counts() -> None:
    """The Z-Wave stick reconnect loop yields one attach per cycle and one disconnect per cycle."""
    kinds = [k for k, _, _ in _events("dmesg_usb_serial_cdc_acm_reconnect_loop.txt")]
    assert kinds.count("tty_attached") == 4 and kinds.count("usb_disconnect") == 4


def test_kmsg_syslog_prefix_and_probe_failure() -> None:
    """kern.log lines keep their syslog time and host; a failed probe reports its errno."""
    (ev,) = parse_kmsg((FIX / "kern_log_usb_serial_ftdi_sio_raspberrypi.txt").read_text())
    assert (ev.syslog_time, ev.host, ev.uptime_s, ev.tty) == (
        "Nov  4 11:07:24",
        "localhost",
        7.387123,
        "ttyUSB0",
    )
    assert (
        parse_kmsg((FIX / "kern_log_usb_serial_ftdi_sio_raspberrypi_urb_stopped.txt").read_text())
        == []
    )
    events = parse_kmsg((FIX / "kern_log_usb_serial_pl2303_probe_failed_sunxi.txt").read_text())
    failed = [e for e in events if e.kind is KmsgKind.PROBE_FAILED]
    assert [(e.driver, e.usb_path, e.error) for e in failed] == [("pl2303", "5-1:1.0", -5)]


def test_kmsg_raw_dev_kmsg_record() -> None:
    """A raw /dev/kmsg record (prio,seq,usec,flags;msg) gives uptime from microseconds."""
    ev = parse_kmsg_line("6,2214,5678901,-;usb 1-1: USB disconnect, device number 3")
    assert (
        ev is not None
        and ev.kind is KmsgKind.USB_DISCONNECT
        and ev.uptime_s == pytest.approx(5.678901)
    )


_FIXTURE_LINES = [
    line for f in sorted(FIX.glob("*usb_serial*")) for line in f.read_text().splitlines()
]


@given(st.text(max_size=200))
def test_fuzz_kmsg_any_text(text: str) -> None:
    """Arbitrary text never crashes the parser."""
    for ev in parse_kmsg(text):
        assert ev.line in text


@given(st.sampled_from(_FIXTURE_LINES), st.integers(0, 200), st.text(max_size=5))
def test_fuzz_kmsg_mangled_fixture_lines(line: str, cut: int, junk: str) -> None:
    """Real lines cut short or with junk spliced in parse or are skipped, never crash."""
    mangled = line[:cut] + junk + line[cut:]
    ev = parse_kmsg_line(mangled)
    assert ev is None or ev.kind in KmsgKind

"""The simulated ESC/POS printer on a pty and on TCP, polled through the real transports."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.escpos import (
    PrinterLinkState,
    SerialTransport,
    TcpTransport,
    poll_printer,
    query_status,
)
from drivers.roots import Roots
from drivers.serialports import inventory
from simulator.peripherals import UsbIdentity
from simulator.printer import (
    DleEotParser,
    PrinterMode,
    PrinterState,
    SimPrinter,
    SimTcpPrinter,
    status_byte,
)

TIMEOUT_S = 0.25


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[SimPrinter]:
    sim = SimPrinter(tmp_path / "dev" / "ttyS0").start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def tcp_printer() -> Iterator[SimTcpPrinter]:
    sim = SimTcpPrinter().start()
    try:
        yield sim
    finally:
        sim.stop()


STATES: list[tuple[PrinterState, list[str]]] = [
    (PrinterState(), []),
    (PrinterState(paper="near_end"), ["paper_near_end"]),
    (PrinterState(paper="end"), ["offline", "paper_end_stop", "paper_near_end", "paper_end"]),
    (PrinterState(cover_open=True), ["offline", "cover_open"]),
    (PrinterState(cutter_error=True), ["offline", "error", "cutter_error"]),
    (PrinterState(unrecoverable=True), ["offline", "error", "unrecoverable"]),
    (PrinterState(overheat=True), ["offline", "error", "auto_recoverable"]),
    (PrinterState(offline=True), ["offline"]),
    (PrinterState(drawer_high=True), []),
]


@pytest.mark.parametrize(("state", "conditions"), STATES)
def test_every_state_through_serial_transport(
    printer: SimPrinter, state: PrinterState, conditions: list[str]
) -> None:
    """Each sensor state reaches the driver through pyserial on the pty with the right flags."""
    printer.set_state(state)
    status = poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S)
    assert status.state is PrinterLinkState.OK, status.error_text
    assert status.conditions() == conditions
    assert status.drawer_high is state.drawer_high
    assert status.raw == {n: status_byte(state, n) for n in (1, 2, 3, 4)}
    assert printer.queries[-4:] == [1, 2, 3, 4]


def test_print_data_is_ignored(printer: SimPrinter) -> None:
    """Print data around a query gets no answer; only the DLE EOT is answered."""
    link = SerialTransport(printer.link)
    try:
        link.write(b"\x1b@Hello\n\x1dV\x00")
        assert link.read(16, 0.1) == b""
        link.write(b"receipt line\n\x10\x04\x04more text")
        assert link.read(16, TIMEOUT_S) == b"\x12"
    finally:
        link.close()
    assert printer.queries == [4]


def test_silent_printer_is_no_reply(printer: SimPrinter) -> None:
    """A printer that stays silent gives no_reply (never paper end) after the timeout."""
    printer.set_state(paper="end")
    printer.set_mode(PrinterMode.SILENT)
    status = poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S, late_drain_s=0)
    assert status.state is PrinterLinkState.NO_REPLY
    assert status.paper_end is None
    assert status.latency_s is not None and status.latency_s >= TIMEOUT_S
    assert printer.queries == [1]


def test_garbage_is_invalid_reply(printer: SimPrinter) -> None:
    """Garbage (wrong baud rate) is invalid_reply with the bytes kept, distinct from silence."""
    printer.set_mode(PrinterMode.GARBAGE, garbage=b"\xf0\x0f\xf0")
    status = poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S)
    assert status.state is PrinterLinkState.INVALID_REPLY
    assert status.reply == b"\xf0\x0f\xf0"
    printer.set_mode(PrinterMode.GARBAGE, garbage=b"\x00")
    assert poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S).reply == b"\x00"


def test_late_reply_is_not_the_next_answer(printer: SimPrinter) -> None:
    """A paper-end reply arriving after the timeout is drained; the next poll sees the real state."""
    printer.set_state(paper="end")
    printer.set_mode(PrinterMode.LATE, delay_s=TIMEOUT_S + 0.1)
    first = poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S)
    assert first.state is PrinterLinkState.NO_REPLY
    assert first.late_bytes == bytes((status_byte(PrinterState(paper="end"), 1),))
    printer.set_state(PrinterState())
    printer.set_mode(PrinterMode.NORMAL)
    second = poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S)
    assert second.state is PrinterLinkState.OK
    assert second.conditions() == []
    assert second.stale_bytes == b""


def test_late_reply_on_a_kept_open_port_is_flushed(printer: SimPrinter) -> None:
    """On one open port with the late drain off, the late byte is flushed before the next query."""
    printer.set_state(cover_open=True)
    printer.set_mode(PrinterMode.LATE, delay_s=TIMEOUT_S + 0.05)
    link = SerialTransport(printer.link)
    try:
        first = query_status(link, ns=(2,), timeout_s=TIMEOUT_S, late_drain_s=0)
        assert first.state is PrinterLinkState.NO_REPLY
        time.sleep(0.3)  # the late byte (due 0.05 s after the timeout) lands in the input queue
        printer.set_state(PrinterState())
        printer.set_mode(PrinterMode.NORMAL)
        second = query_status(link, ns=(2,), timeout_s=TIMEOUT_S)
    finally:
        link.close()
    assert second.state is PrinterLinkState.OK
    assert second.cover_open is False
    assert second.stale_bytes == bytes((status_byte(PrinterState(cover_open=True), 2),))


def test_unplug_during_read_is_absent_then_replug_ok(printer: SimPrinter) -> None:
    """Pulling the printer while a read waits gives absent at once, the path vanishes; replug restores ok."""
    printer.set_mode(PrinterMode.SILENT)
    timer = threading.Timer(0.05, printer.unplug)
    timer.start()
    status = poll_printer("serial", str(printer.link), timeout_s=1.0)
    timer.join()
    assert status.state is PrinterLinkState.ABSENT
    assert status.latency_s is not None and status.latency_s < 1.0
    assert not os.path.lexists(printer.link)
    assert (
        poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S).state
        is PrinterLinkState.ABSENT
    )
    printer.set_mode(PrinterMode.NORMAL)
    printer.replug()
    assert printer.plugged and os.path.exists(printer.link)
    status = poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S)
    assert status.state is PrinterLinkState.OK


def test_usblp_transport_against_pty(printer: SimPrinter) -> None:
    """The usblp transport (plain O_RDWR|O_NONBLOCK file I/O) polls the pty printer too."""
    printer.set_state(paper="near_end")
    status = poll_printer("usblp", str(printer.link), timeout_s=TIMEOUT_S)
    assert status.state is PrinterLinkState.OK
    assert status.conditions() == ["paper_near_end"]


def test_state_changes_from_another_thread(printer: SimPrinter) -> None:
    """State set by a test thread while polls run is picked up by a later poll."""
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            printer.set_state(drawer_high=not printer.state.drawer_high)

    worker = threading.Thread(target=flip)
    worker.start()
    try:
        results = [poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S) for _ in range(5)]
    finally:
        stop.set()
        worker.join()
    assert all(r.state is PrinterLinkState.OK for r in results)
    printer.set_state(drawer_high=True)
    assert poll_printer("serial", str(printer.link), timeout_s=TIMEOUT_S).drawer_high is True


def test_printer_identity_in_fake_sysfs(tmp_path: Path) -> None:
    """A USB printer registers VID/PID/serial under the fake sys root while plugged."""
    ident = UsbIdentity(
        0x0483, 0xA000, "00000000050C", "STMicroelectronics", "ICT GP-58 III", driver="acm"
    )
    roots = Roots(sys=tmp_path / "sys", dev=tmp_path / "dev")
    sim = SimPrinter(tmp_path / "dev" / "ttyACM0", identity=ident, sys_root=roots.sys).start()
    try:
        (port,) = inventory(roots, extra_globs=())
        assert (port.vid, port.pid, port.serial_number) == (0x0483, 0xA000, "00000000050C")
        assert port.product == "ICT GP-58 III"
        assert poll_printer("serial", port.device, timeout_s=TIMEOUT_S).state is PrinterLinkState.OK
        sim.unplug()
        assert inventory(roots, extra_globs=()) == []
    finally:
        sim.stop()


# --------------------------------------------------------------------------- TCP


def test_tcp_transport_every_state(tcp_printer: SimTcpPrinter) -> None:
    """The TCP transport polls the TCP twin and decodes its state."""
    assert poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S).conditions() == []
    tcp_printer.set_state(cutter_error=True)
    status = poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S)
    assert status.state is PrinterLinkState.OK
    assert status.conditions() == ["offline", "error", "cutter_error"]


def test_tcp_silent_garbage_late(tcp_printer: SimTcpPrinter) -> None:
    """Over TCP, silence is no_reply, garbage invalid_reply, and a late reply is drained."""
    tcp_printer.set_mode("silent")
    assert poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S, late_drain_s=0).state is (
        PrinterLinkState.NO_REPLY
    )
    tcp_printer.set_mode("garbage", garbage=b"\x80")
    assert poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S).state is (
        PrinterLinkState.INVALID_REPLY
    )
    tcp_printer.set_mode("late", delay_s=TIMEOUT_S + 0.05)
    late = poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S)
    assert late.state is PrinterLinkState.NO_REPLY and late.late_bytes == b"\x12"


def test_tcp_unplug_is_absent_and_replug_same_port(tcp_printer: SimTcpPrinter) -> None:
    """Powering the TCP printer off mid-read is absent, connect is refused, power on restores ok."""
    tcp_printer.set_mode("silent")
    link = TcpTransport.from_address(tcp_printer.address)
    timer = threading.Timer(0.05, tcp_printer.unplug)
    timer.start()
    try:
        status = query_status(link, timeout_s=1.0)
    finally:
        timer.join()
        link.close()
    assert status.state is PrinterLinkState.ABSENT
    refused = poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S)
    assert refused.state is PrinterLinkState.ABSENT and "refused" in refused.error_text
    tcp_printer.set_mode("normal")
    tcp_printer.replug()
    assert (
        poll_printer("tcp", tcp_printer.address, timeout_s=TIMEOUT_S).state is PrinterLinkState.OK
    )


# --------------------------------------------------------------------------- model


def test_status_bytes_are_valid_for_every_state() -> None:
    """Every simulated state produces valid status bytes with the fixed bits."""
    for state, _ in STATES:
        for n in (1, 2, 3, 4):
            b = status_byte(state, n)
            assert b & 0x93 == 0x12
    with pytest.raises(ValueError):
        PrinterState(paper="empty")


@given(
    st.lists(st.binary(max_size=6), max_size=8), st.lists(st.sampled_from([1, 2, 3, 4]), max_size=5)
)
def test_parser_finds_queries_across_any_split(noise: list[bytes], ns: list[int]) -> None:
    """DLE EOT requests split at any byte boundary are found once each, in order."""
    clean = [n.replace(b"\x10", b"") for n in noise]
    stream = b"".join(c + bytes((0x10, 0x04, n)) for c, n in zip(clean, ns, strict=False))
    stream += b"".join(clean[len(ns) :])
    whole = DleEotParser().feed(stream)
    parser = DleEotParser()
    split = [q for i in range(len(stream)) for q in parser.feed(stream[i : i + 1])]
    assert whole == split == ns[: len(clean)]

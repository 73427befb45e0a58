"""Printer monitor over the pty printer twin and the TCP twin, through the real transports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import PrinterConfig
from agent.monitors.printer import STATUS_FLAGS, PrinterMonitor, printer_values
from drivers.escpos import PrinterLinkState, PrinterStatus
from drivers.roots import Roots
from simulator.printer import PrinterState, SimPrinter, SimTcpPrinter


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[tuple[SimPrinter, PrinterMonitor]]:
    sim = SimPrinter(tmp_path / "ttyS0").start()
    cfg = PrinterConfig(name="receipt", device="/dev/ttyS0", timeout_s=0.2)
    try:
        yield sim, PrinterMonitor(cfg, Roots(dev=tmp_path))
    finally:
        sim.stop()


def _v(mon: PrinterMonitor) -> dict[str, Any]:
    (r,) = mon.poll()
    assert r.source == "printer:receipt" and r.ok
    return r.values


STATES: list[tuple[PrinterState, dict[str, bool]]] = [
    (PrinterState(), {}),
    (PrinterState(paper="near_end"), {"paper_near_end": True}),
    (PrinterState(paper="end"), {"paper_end": True, "paper_near_end": True, "online": False}),
    (PrinterState(cover_open=True), {"cover_open": True, "online": False}),
    (PrinterState(cutter_error=True), {"cutter_error": True, "online": False}),
    (PrinterState(unrecoverable=True), {"unrecoverable": True, "online": False}),
    (PrinterState(overheat=True), {"auto_recoverable": True, "online": False}),
    (PrinterState(offline=True), {"online": False}),
    (PrinterState(drawer_high=True), {"drawer_open": True}),
]


@pytest.mark.parametrize(("state", "expect"), STATES)
def test_every_state(
    printer: tuple[SimPrinter, PrinterMonitor], state: PrinterState, expect: dict[str, bool]
) -> None:
    """Each printer state reads link ok with exactly its flags set."""
    sim, mon = printer
    sim.set_state(state)
    v = _v(mon)
    assert v["link"] == "ok"
    healthy = {k: (k == "online") for k in STATUS_FLAGS}
    assert {k: v[k] for k in STATUS_FLAGS} == healthy | expect


def test_drawer_polarity(tmp_path: Path) -> None:
    """drawer_open_high = false: pin 3 low means open."""
    with SimPrinter(tmp_path / "ttyS0") as sim:
        cfg = PrinterConfig(device="/dev/ttyS0", timeout_s=0.2, drawer_open_high=False)
        mon = PrinterMonitor(cfg, Roots(dev=tmp_path))
        assert _v(mon)["drawer_open"] is True
        assert isinstance(sim, SimPrinter)
        sim.set_state(drawer_high=True)
        assert _v(mon)["drawer_open"] is False


def test_silent_garbage_and_unplug(printer: tuple[SimPrinter, PrinterMonitor]) -> None:
    """Silent → no_reply, garbage → invalid_reply, unplugged → absent; flags stay None."""
    sim, mon = printer
    sim.set_state(paper="end")
    sim.set_mode("silent")
    v = _v(mon)
    assert v["link"] == "no_reply" and v["paper_end"] is None and v["online"] is None
    sim.set_mode("garbage", garbage=b"\xff\x00")
    assert _v(mon)["link"] == "invalid_reply"
    sim.set_mode("normal")
    sim.unplug()
    v = _v(mon)
    assert v["link"] == "absent" and all(v[k] is None for k in STATUS_FLAGS)
    sim.replug()
    v = _v(mon)
    assert v["link"] == "ok" and v["paper_end"] is True


def test_tcp_printer() -> None:
    """The TCP twin: ok with its state, absent once powered off, ok again after."""
    with SimTcpPrinter() as sim:
        mon = PrinterMonitor(
            PrinterConfig(name="receipt", transport="tcp", device=sim.address, timeout_s=0.3)
        )
        sim.set_state(cover_open=True)
        v = _v(mon)
        assert v["link"] == "ok" and v["cover_open"] is True
        sim.unplug()
        assert _v(mon)["link"] == "absent"
        sim.replug()
        assert _v(mon)["link"] == "ok"


def test_open_failed_reads_no_reply() -> None:
    """A port that exists but cannot be opened is not "absent": link no_reply, detail kept."""
    v = printer_values(PrinterStatus(PrinterLinkState.OPEN_FAILED, error_text="EACCES"))
    assert v["link"] == "no_reply" and v["link_detail"] == "open_failed"
    assert v["error"] == "EACCES"

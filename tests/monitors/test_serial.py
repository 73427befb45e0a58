"""Serial peripheral and inventory monitors on pty twins with USB identities in a fake sysfs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.core.config import Config, PeripheralsConfig, PrinterConfig, SerialConfig
from agent.faults.recorder import FlightRecorder, journal_path
from agent.monitors.serial import (
    BASELINE_FILE,
    IdentityBaseline,
    PeripheralsMonitor,
    SerialMonitor,
    stored_identity,
)
from drivers.roots import Roots
from simulator.peripherals import SimPeripheral, UsbIdentity, card_reader, pinpad, scanner

PAD_ID = "0403:6001:PP000123"
HMAC_KEY = b"0123456789abcdef0123456789abcdef"
OTHER = UsbIdentity(0x067B, 0x2303, "SWAP99", driver="usb-serial")


@dataclass
class World:
    tmp: Path
    roots: Roots
    pad: SimPeripheral


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    roots = Roots(sys=tmp_path / "sys", dev=tmp_path / "dev", state=tmp_path / "state")
    pad = pinpad(roots.dev / "ttyUSB0", sys_root=roots.sys).start()
    try:
        yield World(tmp_path, roots, pad)
    finally:
        pad.stop()


def _mon(w: World, **kw: object) -> SerialMonitor:
    base: dict[str, object] = {
        "name": "pinpad",
        "device": "/dev/ttyUSB0",
        "probe_hex": "02 53 03",
        "expect": "S0OK",
        "timeout_s": 0.2,
    }
    cfg = SerialConfig(**(base | kw))  # type: ignore[arg-type]
    return SerialMonitor(cfg, w.roots, IdentityBaseline(w.tmp / "state" / BASELINE_FILE, HMAC_KEY))


def _v(mon: SerialMonitor) -> dict[str, object]:
    (r,) = mon.poll()
    assert r.source == "serial:pinpad" and r.ok
    return r.values


def test_probe_ok_wrong_silent_unplug(world: World) -> None:
    """Probe answered, wrong answer, no answer, unplugged, plugged back."""
    mon = _mon(world)
    v = _v(mon)
    hashed = stored_identity(PAD_ID, HMAC_KEY)  # the serial number never in a reading
    assert (v["state"], v["identity"], v["identity_changed"]) == ("ok", hashed, False)
    world.pad.set_mode("wrong")
    assert _v(mon)["state"] == "wrong_reply"
    world.pad.set_mode("silent")
    assert _v(mon)["state"] == "no_reply"
    world.pad.set_mode("normal")
    world.pad.unplug()
    v = _v(mon)
    assert v["state"] == "absent" and v["identity_changed"] is None
    world.pad.replug()
    assert _v(mon)["state"] == "ok"


def test_presence_only_does_not_open_the_port(world: World) -> None:
    """Without probe_hex/expect only the node's presence is checked (nothing is written)."""
    mon = _mon(world, probe_hex="", expect="")
    assert _v(mon)["state"] == "ok"
    assert world.pad.requests_seen == 0 and bytes(world.pad.received) == b""


def test_swap_is_identity_changed_and_survives_restart(world: World) -> None:
    """Another USB identity on the same port: identity_changed, also for a new monitor;
    the baseline file holds the serial number only as a keyed hash."""
    assert _v(_mon(world))["identity_changed"] is False
    world.pad.swap(OTHER)
    v = _v(_mon(world))  # a fresh monitor: the baseline comes from the state file
    assert v["identity_changed"] is True
    assert v["identity"] == stored_identity(OTHER.usb_id, HMAC_KEY) != OTHER.usb_id
    hashed = stored_identity(PAD_ID, HMAC_KEY)
    assert v["expected_identity"] == hashed and hashed.startswith("0403:6001:~")
    text = (world.tmp / "state" / BASELINE_FILE).read_text()
    assert json.loads(text) == {f"pinpad@{world.roots.dev / 'ttyUSB0'}": hashed}
    assert "PP000123" not in text
    world.pad.swap(UsbIdentity(0x0403, 0x6001, "PP000123"))
    assert _v(_mon(world))["identity_changed"] is False
    # the same serial behind another vid:pid is another device
    world.pad.swap(UsbIdentity(0x0403, 0x6015, "PP000123"))
    assert _v(_mon(world))["identity_changed"] is True


def test_baseline_in_clear_from_an_older_agent_is_rewritten_hashed(world: World) -> None:
    path = world.tmp / "state" / BASELINE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    port_key = f"pinpad@{world.roots.dev / 'ttyUSB0'}"
    path.write_text(json.dumps({port_key: PAD_ID, "scanner@/dev/ttyACM0": "05e0:1200"}))
    mon = _mon(world)
    assert "PP000123" not in path.read_text()  # rewritten at start, before any poll
    assert json.loads(path.read_text())["scanner@/dev/ttyACM0"] == "05e0:1200"  # no serial
    assert _v(mon)["identity_changed"] is False
    world.pad.swap(OTHER)
    assert _v(mon)["identity_changed"] is True


def test_match_follows_the_device_and_flags_a_stranger(world: World) -> None:
    """With match the pad is found on another port; a stranger on its port is a change."""
    mon = _mon(world, match=PAD_ID)
    assert _v(mon)["identity_changed"] is False
    world.pad.swap(OTHER)  # stranger on ttyUSB0, the pad is gone
    v = _v(mon)
    assert v["state"] == "absent" and v["identity_changed"] is True
    moved = pinpad(world.roots.dev / "ttyUSB1", sys_root=world.roots.sys, usb_port="1-5")
    moved.start()
    try:
        v = _v(mon)
        assert v["state"] == "ok" and v["device"].endswith("ttyUSB1")  # type: ignore[union-attr]
        assert v["identity_changed"] is False
    finally:
        moved.stop()


def test_unexpected_devices(world: World) -> None:
    """Configured pad is expected; an unknown card reader is listed; allow-listing removes it."""
    cfg = Config(
        serial=[SerialConfig(device="/dev/ttyUSB0")],
        printer=[PrinterConfig(device="/dev/ttyS0")],
        peripherals=PeripheralsConfig(extra_globs=[]),
    )
    mon = PeripheralsMonitor(cfg, world.roots)
    (r,) = mon.poll()
    assert r.source == "peripherals" and r.values["unexpected"] == []
    reader = card_reader(world.roots.dev / "ttyACM0", sys_root=world.roots.sys).start()
    scan = scanner(world.roots.dev / "ttyACM1", sys_root=world.roots.sys).start()
    try:
        (r,) = mon.poll()
        assert r.values["unexpected"] == ["05e0:1200:S9", "0801:0003:CR42"]
        allow = Config(
            serial=cfg.serial,
            peripherals=PeripheralsConfig(allow=["05e0:1200"], extra_globs=[]),
        )
        (r,) = PeripheralsMonitor(allow, world.roots).poll()
        assert r.values["unexpected"] == ["0801:0003:CR42"]
    finally:
        reader.stop()
        scan.stop()
    (r,) = mon.poll()
    assert r.values["unexpected"] == []


def test_swapped_configured_port_is_not_unexpected(world: World) -> None:
    """A swap on a configured port is identity_changed's business, not unexpected_device."""
    cfg = Config(serial=[SerialConfig(device="/dev/ttyUSB0")])
    world.pad.swap(OTHER)
    (r,) = PeripheralsMonitor(cfg, world.roots).poll()
    assert r.values["unexpected"] == []
    (r,) = PeripheralsMonitor(Config(), world.roots).poll()
    assert r.values["unexpected"] == [OTHER.usb_id]


def test_the_pin_pads_serial_number_is_in_no_reading_the_recorder_keeps(world: World) -> None:
    """Issue 17's stolen terminal: the readings of the pad's monitor and of the port
    inventory name the pad by "vid:pid:~<keyed hash>", so the flight recorder's journal
    and snapshot in the state dir never hold its serial number."""
    cfg = Config(serial=[SerialConfig(device="/dev/ttyUSB0")])
    inventory = PeripheralsMonitor(cfg, world.roots, key=HMAC_KEY)
    (ports,) = inventory.poll()
    hashed = stored_identity(PAD_ID, HMAC_KEY)
    assert ports.values["ports"] == {str(world.roots.dev / "ttyUSB0"): hashed}
    recorder = FlightRecorder(world.tmp / "state" / "recorder.json", window_s=600)
    try:
        for r in [*_mon(world).poll(), ports]:
            recorder.add(r)
        assert recorder.flush()  # the journal, as every few seconds
        journal = journal_path(recorder.path).read_bytes()
        assert hashed.encode() in journal and b"PP000123" not in journal
        assert recorder.compact()  # the snapshot, as every window
        assert b"PP000123" not in recorder.path.read_bytes()
    finally:
        recorder.close()

"""`posagent selftest` against a config pointing at the twins: every device with its state."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.selftest import describe, evaluate, run_selftest
from agent.commands.selftest import run as main
from agent.core.config import parse_config
from agent.core.model import Reading, Severity
from tests.conftest import posagent_argv
from tests.monitors.kit import MonitorRig


@pytest.fixture
def term(tmp_path: Path) -> Iterator[MonitorRig]:
    t = MonitorRig(tmp_path)
    try:
        yield t
    finally:
        t.close()


def _faulty(term: MonitorRig) -> Path:
    assert term.printer is not None
    term.printer.set_state(paper="end")
    term.power.set_capacity("BAT0", 3)
    term.power.set_status("BAT0", "Discharging")
    return term.write_config()


def test_table_shows_each_device_state(term: MonitorRig) -> None:
    """Paper end, 3 % battery and a healthy payment host, link and PIN pad, in the table."""
    path = _faulty(term)
    buf = io.StringIO()
    code = main(argparse.Namespace(config=str(path), json=False), stdout=buf)
    assert code == 1
    rows = {line.split()[0]: line for line in buf.getvalue().splitlines()[1:] if line.strip()}
    assert rows["printer:receipt"].split()[1] == "printer.paper_end"
    assert rows["power"].split()[1] == "power.battery_critical"
    assert rows[f"payment:{term.host.address}"].split()[1] == "ok"
    assert rows["network:eth0"].split()[1] == "ok"
    assert rows["serial:pinpad"].split()[1] == "ok"
    assert rows["peripherals"].split()[1] == "ok"
    assert "ms" in rows["printer:receipt"]


def test_json_output_via_cli(term: MonitorRig) -> None:
    """`posagent selftest --json` parses, names states by fault keys and carries raw readings."""
    path = _faulty(term)
    r = subprocess.run(
        posagent_argv("selftest", "--config", str(path), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    devices = {d["device"]: d for d in doc["devices"]}
    assert doc["ok"] is False
    printer = devices["printer:receipt"]
    assert printer["state"] == "printer.paper_end" and printer["severity"] == "critical"
    keys = {f["key"] for f in printer["faults"]}
    assert {"printer.paper_end", "printer.paper_near_end"} <= keys
    assert "printer.offline" not in keys  # explained by paper end: one fault, not two
    assert printer["reading"]["values"]["paper_end"] is True
    power = devices["power"]
    assert power["state"] == "power.battery_critical"
    assert {f["key"] for f in power["faults"]} == {"power.battery_critical", "power.battery_low"}
    assert power["reading"]["values"]["battery_pct"] == 3
    assert devices[f"payment:{term.host.address}"]["state"] == "ok"
    assert isinstance(devices["power"]["latency_ms"], float)


def test_all_ok_exits_zero(term: MonitorRig) -> None:
    """A healthy terminal (system monitor left out: this host's clock sync is its own) is ok."""
    cfg = term.config()
    from agent.monitors import build_monitors, load_all

    load_all()
    monitors = [m for m in build_monitors(cfg, term.context()) if m.name != "system"]
    results = run_selftest(cfg, monitors=monitors)
    assert {d.state for d in results} == {"ok"}
    assert len(results) == 7  # eth0, route, payment, power, printer, pinpad, peripherals


def test_unplugged_printer_and_refusing_host(term: MonitorRig) -> None:
    """Absent printer, refused payment host: printer.absent and network.host_unreachable."""
    assert term.printer is not None
    term.printer.unplug()
    term.host.set_mode("refuse")
    cfg = term.config()
    from agent.monitors import build_monitors, load_all

    load_all()
    results = {d.device: d for d in run_selftest(cfg, monitors=build_monitors(cfg, term.context()))}
    assert results["printer:receipt"].state == "printer.absent"
    assert results[f"payment:{term.host.address}"].state == "network.host_unreachable"


def test_config_error_exits_78(tmp_path: Path) -> None:
    """An unknown key in the config: exit 78 (EX_CONFIG) with the key named."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[power]\nbogus_s = 1\n")
    r = subprocess.run(
        posagent_argv("selftest", "--config", str(bad)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 78 and "power.bogus_s" in r.stderr


def test_evaluate_one_reading() -> None:
    """Failed monitor, two-level rule, expand rule and the windowed rule's single sample."""
    cfg = parse_config("")
    (f,) = evaluate(cfg, Reading("printer:x", {}, ok=False, error="timeout after 1 s"))
    assert f.key == "agent.monitor_failed"
    hot = evaluate(cfg, Reading("power", {"battery_temp_c": 65.0}))
    assert [(x.key, x.severity) for x in hot] == [("power.battery_hot", Severity.CRITICAL)]
    unexpected = evaluate(cfg, Reading("peripherals", {"unexpected": ["0801:0003:CR42"]}))
    assert [(x.key, x.subject) for x in unexpected] == [
        ("serial.unexpected_device", "0801:0003:CR42")
    ]
    slow = evaluate(
        cfg, Reading("payment:h:1", {"dns_ok": True, "connect_ok": True, "connect_ms": 9000.0})
    )
    assert slow == []  # one sample is not a p95
    assert describe(Reading("power", {"ac_online": True, "battery_pct": 50})) == (
        "ac_online=True, battery_pct=50"
    )


def test_privacy_block_warns_when_nothing_protects_the_screen(term: MonitorRig) -> None:
    """No PIN flag, the default window patterns with no X display, no OCR: the table is
    followed by the privacy block and a WARNING; the exit status stays the devices'."""
    sections = term.sections()
    sections["screen"] = {"backend": "fbdev", "fb_device": str(term.tmp / "nofb")}
    path = term.write_config(sections)
    buf = io.StringIO()
    main(argparse.Namespace(config=str(path), json=False), stdout=buf)
    text = buf.getvalue()
    block = text[text.index("SCREEN PRIVACY") :]
    assert "pin flag          not configured" in block
    assert "sensitive windows 10 pattern(s), default, no detector" in block
    assert "protected by      NOTHING" in block
    assert "WARNING: nothing protects the screen" in block


def test_privacy_state_in_json_with_a_pin_flag(term: MonitorRig) -> None:
    """A PIN flag file configured: protected, the flag absent then present (PIN entry now)."""
    flag = term.tmp / "pin.flag"
    sections = term.sections()
    sections["screen"] = {"backend": "fbdev", "pin_flag_file": str(flag)}
    path = term.write_config(sections)

    def privacy() -> dict[str, Any]:
        r = subprocess.run(
            posagent_argv("selftest", "--config", str(path), "--json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc["privacy"]

    p = privacy()
    assert p["protected"] is True and p["pin_flag"] == "absent"
    assert p["protections"] == [f"PIN flag file {flag}"]
    assert not any("nothing protects" in w for w in p["warnings"])
    assert p["window_source"] == "default" and p["window_detector"] == ""
    flag.touch()
    p = privacy()
    assert p["pin_flag"] == "present" and p["sensitive_now"] is True

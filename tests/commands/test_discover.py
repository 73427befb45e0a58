"""`posagent discover` on the simulated terminal (fake sysfs/dev, real ptys) and on this host."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.discover import (
    Discovery,
    app_name,
    discover,
    discover_processes,
    pos_reason,
    render_fragment,
    run,
)
from agent.commands.selftest import run_selftest
from agent.core.config import parse_config
from agent.monitors import build_monitors, load_all
from drivers.processes import Proc
from drivers.roots import Roots
from simulator.posapp import APP_NAME, SimPosApp
from simulator.terminal import merge_sections, render_toml
from tests.conftest import posagent_argv
from tests.monitors.kit import MonitorRig


@pytest.fixture
def term(tmp_path: Path) -> Iterator[MonitorRig]:
    t = MonitorRig(tmp_path)
    try:
        yield t
    finally:
        t.close()


def _config(term: MonitorRig) -> Path:
    """A config that gives discover only the terminal's roots (no devices declared)."""
    path = term.tmp / "roots.toml"
    path.write_text(render_toml({"roots": term.sim.roots_section()}))
    return path


def _run(*argv: str) -> tuple[int, str]:
    from agent.commands.main import build_parser

    args = build_parser().parse_args(["discover", *argv])
    buf = io.StringIO()
    code = run(args, stdout=buf)
    return code, buf.getvalue()


def _received(term: MonitorRig) -> tuple[bytes, bytes]:
    assert term.printer is not None and term.pinpad is not None
    return bytes(term.printer.received), bytes(term.pinpad.received)


def test_lists_the_simulated_terminal_without_sending_anything(term: MonitorRig) -> None:
    """Ports with USB identity, eth0 with carrier and the default route, resolvers; neither
    twin receives a byte."""
    code, text = _run("--config", str(_config(term)), "--json")
    assert code == 0
    doc = json.loads(text)
    ports = {p["device"]: p for p in doc["serial_ports"]}
    assert set(ports) == {"/dev/ttyS0", "/dev/ttyUSB0"}
    assert term.pinpad is not None and term.pinpad.identity is not None
    assert ports["/dev/ttyUSB0"]["usb_id"] == term.pinpad.identity.usb_id
    assert ports["/dev/ttyS0"]["usb_id"] == ""
    (eth0,) = (i for i in doc["interfaces"] if i["name"] == "eth0")
    assert eth0["carrier"] is True and eth0["up"] is True and eth0["default_route"] is True
    assert [r["interface"] for r in doc["default_routes"]] == ["eth0"]
    assert doc["default_routes"][0]["gateway"] == "192.0.2.1"
    assert doc["probes"] == []
    assert _received(term) == (b"", b"")


def test_probe_sends_dle_eot_only_to_the_ports_named(term: MonitorRig) -> None:
    """--probe /dev/ttyS0: the printer twin answers; the PIN pad is never written to."""
    code, text = _run("--config", str(_config(term)), "--probe", "/dev/ttyS0", "--timeout", "0.5")
    assert code == 0
    assert "ESC/POS printer answered" in text
    assert "DLE EOT was sent only to: /dev/ttyS0" in text
    printer_rx, pinpad_rx = _received(term)
    assert printer_rx.startswith(b"\x10\x04")
    assert pinpad_rx == b""


def test_probe_reports_a_port_that_does_not_answer(term: MonitorRig) -> None:
    """The PIN pad twin ignores DLE EOT: no_reply, and the fragment declares no printer there."""
    cfg = parse_config(_config(term).read_text())
    d = discover(cfg, probe=["/dev/ttyUSB0"], probe_timeout_s=0.3)
    (p,) = d.probes
    assert p["answered"] is False and p["state"] == "no_reply"
    fragment = render_fragment(d)
    assert "[[printer]]" not in fragment
    assert "probed, no ESC/POS answer (not declared): /dev/ttyUSB0" in fragment


def test_written_fragment_gives_a_healthy_terminal_no_fault(term: MonitorRig) -> None:
    """--write: the fragment parses, declares the printer that answered, the PIN pad by identity
    and eth0; merged into the terminal's config, selftest finds every device ok."""
    out = term.tmp / "discovered.toml"
    code, _ = _run("--config", str(_config(term)), "--probe", "/dev/ttyS0", "--write", str(out))
    assert code == 0
    text = out.read_text()
    assert text.startswith("# posagent config fragment written by `posagent discover`")
    assert "# Check:" in text and "payment_hosts is empty" in text
    fragment = tomllib.loads(text)
    parse_config(text, str(out))
    assert fragment["printer"] == [
        {"name": "receipt", "transport": "serial", "device": "/dev/ttyS0", "baudrate": 9600}
    ]
    assert term.pinpad is not None and term.pinpad.identity is not None
    (pinpad,) = fragment["serial"]
    assert (pinpad["device"], pinpad["match"]) == ("/dev/ttyUSB0", term.pinpad.identity.usb_id)
    assert fragment["network"] == {"interfaces": ["eth0"], "payment_hosts": []}

    base = {k: v for k, v in term.sections().items() if k not in ("printer", "serial")}
    cfg = parse_config(render_toml(merge_sections(base, fragment)), "merged.toml")
    load_all()
    monitors = [m for m in build_monitors(cfg, term.context()) if m.name != "system"]
    results = run_selftest(cfg, monitors=monitors)
    assert {(d.device, d.state) for d in results} >= {
        ("printer:receipt", "ok"),
        ("serial:pinpad", "ok")
        if pinpad["name"] == "pinpad"
        else (f"serial:{pinpad['name']}", "ok"),
        ("network:eth0", "ok"),
        ("peripherals", "ok"),
    }
    assert {d.state for d in results} == {"ok"}, [(d.device, d.state) for d in results]


def test_write_refuses_an_existing_file(term: MonitorRig) -> None:
    """--write never replaces a file (say /etc/posagent/agent.toml) without --force."""
    out = term.tmp / "agent.toml"
    out.write_text("[agent]\n")
    code, _ = _run("--config", str(_config(term)), "--write", str(out))
    assert code == 73 and out.read_text() == "[agent]\n"
    code, _ = _run("--config", str(_config(term)), "--write", str(out), "--force")
    assert code == 0 and out.read_text().startswith("# posagent config fragment")


def test_usb_printer_with_identity(tmp_path: Path) -> None:
    """<dev>/usb/lp0 with its usbmisc entry in sysfs: listed with VID:PID and names, unopened."""
    sys_root, dev = tmp_path / "sys", tmp_path / "dev"
    usb = sys_root / "devices" / "pci0000:00" / "usb1" / "1-2"
    iface = usb / "1-2:1.0"
    iface.mkdir(parents=True)
    for k, v in {"idVendor": "04b8", "idProduct": "0202", "product": "TM-T88V"}.items():
        (usb / k).write_text(v + "\n")
    (sys_root / "class" / "usbmisc" / "lp0").mkdir(parents=True)
    os.symlink(iface, sys_root / "class" / "usbmisc" / "lp0" / "device")
    (dev / "usb").mkdir(parents=True)
    (dev / "usb" / "lp0").write_bytes(b"")
    (tmp_path / "proc").mkdir()
    cfg = parse_config(
        render_toml(
            {"roots": {"sys": str(sys_root), "dev": str(dev), "proc": str(tmp_path / "proc")}}
        )
    )
    d = discover(cfg)
    (p,) = d.usb_printers
    assert (p["device"], p["usb_id"], p["product"]) == ("/dev/usb/lp0", "04b8:0202", "TM-T88V")
    assert (dev / "usb" / "lp0").read_bytes() == b""
    assert "/dev/usb/lp0" in render_fragment(d)  # listed as not probed, not declared


def _proc(name: str, *argv: str, pid: int = 100) -> Proc:
    return Proc(pid, name, argv, 1000, "pos")


@pytest.mark.parametrize(
    ("proc", "reason"),
    [
        (_proc("posapp", "/opt/pos/bin/posapp"), "pos"),
        (_proc("java", "java", "-jar", "/opt/till/till-client.jar"), "till"),
        (_proc("chromium", "chromium", "--kiosk", "http://localhost:8080"), "kiosk"),
        (_proc("payment-daemon", "/usr/bin/payment-daemon"), "payment"),
        (_proc("ePOS", "/opt/vendor/ePOS"), "pos"),
        (_proc("postgres", "postgres", "-D", "/var/lib/postgresql"), ""),
        (_proc("master", "/usr/lib/postfix/sbin/master"), ""),
        (_proc("python3", "python3", "-m", "agent.commands.main", "run", "posagent"), ""),
        (_proc("sshd", "sshd: pos@pts/0"), "pos"),  # a user named pos is a hint too
        (_proc("cron", "/usr/sbin/cron", "-f"), ""),
    ],
)
def test_pos_heuristics(proc: Proc, reason: str) -> None:
    """Names and command lines with pos/till/kiosk/payment; postgres, postfix, posagent are not."""
    assert pos_reason(proc) == reason


def test_app_name_is_what_find_process_matches() -> None:
    """argv[0]'s basename, or a Python script's name."""
    assert app_name(_proc("posapp", "/opt/pos/bin/posapp", "--x")) == "posapp"
    assert app_name(_proc("python3", "/usr/bin/python3", "/opt/till/till.py")) == "till.py"


def test_pos_app_found_in_real_proc(tmp_path: Path) -> None:
    """The POS app twin, a real process, is found in /proc with its owner; and in a fake proc
    tree laid out as the kernel does."""
    app = SimPosApp(tmp_path).start()
    try:
        d = Discovery("h", "t", "local")
        discover_processes(d, Roots())
        assert app.proc is not None
        found = [a for a in d.pos_processes if a["pid"] == app.proc.pid]
        assert found and found[0]["app_name"] == APP_NAME
    finally:
        app.stop()
    fake = tmp_path / "proc" / "4242"
    fake.mkdir(parents=True)
    (fake / "comm").write_text("Xorg\n")
    (fake / "cmdline").write_bytes(b"/usr/lib/xorg/Xorg\0:0\0vt7\0")
    (fake / "status").write_text(f"Name:\tXorg\nUid:\t{os.getuid()}\t0\t0\t0\n")
    d = Discovery("h", "t", "local")
    discover_processes(d, Roots(proc=tmp_path / "proc"))
    assert d.gui_sessions == [
        {"pid": 4242, "name": "Xorg", "user": d.gui_sessions[0]["user"], "display": ":0"}
    ]


def test_cli_help_and_json_on_this_host(tmp_path: Path) -> None:
    """`posagent discover --help` says what it does; --json runs on the real host read-only."""
    r = subprocess.run(posagent_argv("discover", "--help"), capture_output=True, text=True)
    assert r.returncode == 0
    for words in ("--probe", "--write", "Nothing is sent to any device", "DLE EOT"):
        assert words in " ".join(r.stdout.split())
    r = subprocess.run(
        posagent_argv("discover", "--json"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    assert {"serial_ports", "interfaces", "screens", "pos_processes", "probes"} <= set(doc)
    assert doc["probes"] == []


def test_screen_backend_that_works_is_declared(tmp_path: Path) -> None:
    """A framebuffer twin: fbdev works, and the fragment sets backend fbdev with its device."""
    from simulator.screen import SimScreen

    sys_root, dev = tmp_path / "sys", tmp_path / "dev"
    screen = SimScreen(tmp_path / "screen", sys_root, dev, backend="fbdev").start()
    try:
        (tmp_path / "proc").mkdir()
        roots = {"sys": str(sys_root), "dev": str(dev), "proc": str(tmp_path / "proc")}
        cfg = parse_config(render_toml({"roots": roots, "screen": {"fb_pixel_format": "xrgb8888"}}))
        d = discover(cfg, env={})
        assert d.screen is not None
        assert (d.screen["backend"], d.screen["where"]) == ("fbdev", "/dev/fb0")
        assert tomllib.loads(render_fragment(d))["screen"] == {
            "backend": "fbdev",
            "fb_device": "/dev/fb0",
        }
        d = Discovery("h", "t", "local")
        assert "screen" not in tomllib.loads(render_fragment(d))
    finally:
        screen.stop()

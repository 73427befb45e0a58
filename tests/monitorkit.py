"""A simulated terminal for the monitor tests: every twin under one tmp dir, and its config.

`SimTerminal` starts the power tree, the link/route tree, a loopback payment
host, the pty printer and the pty PIN pad (with its USB identity in the fake
sysfs), and renders an agent.toml pointing the whole agent at them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from agent.config import Config, parse_config
from agent.monitors import MonitorContext
from drivers.roots import Roots
from drivers.shell import Shell
from simulator.hosts import SimHost, SimNet, SimRoute
from simulator.peripherals import SimPeripheral, pinpad
from simulator.power import SimPower
from simulator.printer import SimPrinter

DEFAULT_ROUTE = SimRoute("eth0", gateway="192.0.2.1")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_toml(sections: dict[str, Any]) -> str:
    """TOML for {section: {key: value}} and {array_section: [{...}, ...]}."""
    out: list[str] = []
    for name, body in sections.items():
        items = body if isinstance(body, list) else [body]
        for item in items:
            out.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            out.append("")
    return "\n".join(out)


class SimTerminal:
    """The twins of one terminal under `tmp`; `config()` points an agent at them."""

    def __init__(self, tmp: Path, *, printer: bool = True, peripheral: bool = True) -> None:
        self.tmp = tmp
        self.sys, self.proc, self.dev = tmp / "sys", tmp / "proc", tmp / "dev"
        self.state = tmp / "state"
        for d in (self.sys, self.proc, self.dev, self.state, tmp / "run"):
            d.mkdir(parents=True, exist_ok=True)
        self.power = SimPower(self.sys)
        self.power.add_mains("AC", online=True)
        self.power.add_battery("BAT0", capacity_pct=80, status="Charging")
        self.net = SimNet(self.sys, self.proc)
        self.net.set_link("eth0", carrier=True)
        self.net.set_routes([DEFAULT_ROUTE])
        self.host = SimHost().start()
        self.printer: SimPrinter | None = None
        self.pinpad: SimPeripheral | None = None
        self._extra: list[Any] = []
        if printer:
            self.printer = SimPrinter(self.dev / "ttyS0").start()
        if peripheral:
            self.pinpad = pinpad(self.dev / "ttyUSB0", sys_root=self.sys, usb_port="1-1").start()

    def add(self, device: Any) -> Any:
        """Start another twin and stop it with the terminal."""
        self._extra.append(device)
        return device.start()

    def close(self) -> None:
        """Stop every twin."""
        for d in [*self._extra, self.printer, self.pinpad, self.host]:
            if d is not None:
                with contextlib.suppress(Exception):
                    d.stop()

    @property
    def roots(self) -> Roots:
        return Roots(self.sys, self.proc, self.dev, self.tmp / "run", self.state)

    def sections(self) -> dict[str, Any]:
        """The config as sections (tests change entries before rendering)."""
        s: dict[str, Any] = {
            "agent": {"device_id": "T-SIM", "state_dir": str(self.state), "log_format": "json"},
            "roots": {
                "sys": str(self.sys),
                "proc": str(self.proc),
                "dev": str(self.dev),
                "run": str(self.tmp / "run"),
            },
            "bundle": {"hmac_key_file": str(self.tmp / "device.key")},
            "upload": {"token_file": str(self.tmp / "token")},
            "power": {"interval_s": 0.2},
            "network": {
                "interval_s": 0.2,
                "interfaces": ["eth0"],
                "payment_hosts": [self.host.address],
                "dns_timeout_s": 0.5,
                "connect_timeout_s": 0.5,
            },
            "peripherals": {"interval_s": 0.2, "extra_globs": []},
            "system": {"interval_s": 0.2, "disk_paths": [str(self.tmp)]},
        }
        if self.printer is not None:
            s["printer"] = [
                {
                    "name": "receipt",
                    "transport": "serial",
                    "device": "/dev/ttyS0",
                    "interval_s": 0.2,
                    "timeout_s": 0.2,
                }
            ]
        if self.pinpad is not None:
            s["serial"] = [
                {
                    "name": "pinpad",
                    "device": "/dev/ttyUSB0",
                    "probe_hex": "02 53 03",
                    "expect": "S0OK",
                    "interval_s": 0.2,
                    "timeout_s": 0.2,
                }
            ]
        return s

    def write_config(self, sections: dict[str, Any] | None = None) -> Path:
        """Write agent.toml for these sections (default: `sections()`); returns its path."""
        path = self.tmp / "agent.toml"
        path.write_text(render_toml(sections or self.sections()))
        return path

    def config(self, sections: dict[str, Any] | None = None) -> Config:
        """The parsed config for these sections."""
        return parse_config(render_toml(sections or self.sections()), "sim.toml")

    def context(self, shell: Shell | None = None) -> MonitorContext:
        """Roots of the twins, a local shell (or the given one), the tmp state dir."""
        return MonitorContext(self.roots, shell or Shell(), self.state)

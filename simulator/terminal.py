"""The whole simulated terminal under one directory, and the agent config pointing at it.

`SimTerminal(root).start()` builds, under root:
- sys/ : power_supply (mains AC + battery BAT0), class/net/eth0 (carrier,
  operstate), the USB identity of the PIN pad (and of any extra device),
  class/graphics/fb0 on the framebuffer fallback;
- proc/net/route : a default route via eth0;
- dev/ : ttyS0 -> the pty of the receipt printer (DLE EOT twin), ttyUSB0 ->
  the pty of the PIN pad (answers STX S ETX), fb0 on the fallback;
- a payment host on loopback (SimHost) whose mode switches ok/refuse/...
  (payment_bind: another local address to listen on, e.g. a veth end);
- optionally the screen (Xvfb + Tk POS window, or the framebuffer file);
- trigger/, crash/, anr/ and app.log: the directories and log the agent watches
  (app_files=False leaves them to the caller);
- with pos_app=True, the POS application twin (SimPosApp: a real `posapp`
  process, its pid file and heartbeat under run/);
- with disk_mib > 0, disk/: a tmpfs of that size (mounting needs root) that
  is the only path the agent's disk check watches; device "disk" fills it;
- with payment_tls=True, a TLS payment host whose self-signed certificate is
  `payment_ca_file` (the agent trusts it through SSL_CERT_FILE).

`apply(device, changes)` is the one entry point scenarios and the demo use
to act on a device (see DEVICES for the keys each device takes).
`agent_sections(...)` renders the agent config with short intervals.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from drivers.shell import run_argv
from simulator.hosts import SimHost, SimNet, SimRoute, make_self_signed_cert
from simulator.peripherals import SimPeripheral, UsbIdentity, card_reader, pinpad
from simulator.posapp import APP_NAME, SimPosApp
from simulator.power import SimPower
from simulator.printer import SimPrinter
from simulator.screen import SimScreen

DEFAULT_ROUTE = SimRoute("eth0", gateway="192.0.2.1")

PRINTER_STATE_KEYS = (
    "paper",
    "cover_open",
    "cutter_error",
    "unrecoverable",
    "overheat",
    "offline",
    "drawer_high",
    "feed_button",
)

DEVICES: dict[str, tuple[str, ...]] = {
    "printer": (*PRINTER_STATE_KEYS, "mode", "plugged"),
    "power": ("ac_online", "capacity", "status", "health", "temp_c", "present"),
    "network": ("carrier", "operstate", "default_route"),
    "payment_host": ("mode", "delay_s"),
    "pinpad": ("plugged", "mode", "swap"),
    "usb": ("plug", "unplug"),
    "screen": ("pin",),
    "trigger": ("note", "contact"),
    "app": ("crash", "anr", "log", "running", "restart", "hung"),
    "disk": ("fill_pct",),
}


class SimError(ValueError):
    """An action the simulated terminal does not know."""


def toml_value(v: Any) -> str:
    """A TOML literal for a str, bool, number or list of those."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + s + '"'


def render_toml(sections: dict[str, Any]) -> str:
    """TOML for {section: {key: value}}, {array: [{...}]} and {faults: {"a.b": {...}}}."""
    out: list[str] = []
    for name, body in sections.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{name}]]")
                out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
                out.append("")
            continue
        plain = {k: v for k, v in body.items() if not isinstance(v, dict)}
        out.append(f"[{name}]")
        out += [f"{k} = {toml_value(v)}" for k, v in plain.items()]
        out.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                out.append(f'[{name}."{k}"]')
                out += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
                out.append("")
    return "\n".join(out)


def merge_sections(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """base updated key by key with extra (tables merge, arrays of tables merge by index)."""
    out = dict(base)
    for name, body in extra.items():
        old = out.get(name)
        if isinstance(body, dict) and isinstance(old, dict):
            out[name] = merge_sections(old, body) if _has_tables(body) else {**old, **body}
        elif (
            isinstance(body, list)
            and isinstance(old, list)
            and all(isinstance(x, dict) for x in body)
        ):
            merged = [dict(x) for x in old]
            for i, item in enumerate(body):
                if i < len(merged):
                    merged[i].update(item)
                else:
                    merged.append(dict(item))
            out[name] = merged
        else:
            out[name] = body
    return out


def _has_tables(d: dict[str, Any]) -> bool:
    return any(isinstance(v, dict) for v in d.values())


def parse_identity(spec: str) -> UsbIdentity:
    """ "VID:PID[:SERIAL]" (hex) -> a USB identity for a swapped-in device."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise SimError(f"USB identity {spec!r} is not VID:PID[:SERIAL]")
    serial = parts[2] if len(parts) == 3 else ""
    return UsbIdentity(
        int(parts[0], 16), int(parts[1], 16), serial, "Sim", "USB-Serial", driver="usb-serial"
    )


class SimTerminal:
    """Every twin of one terminal under `root`; `apply()` acts on them."""

    def __init__(
        self,
        root: Path,
        *,
        device_id: str = "T-SIM",
        site: str = "Sim Store 1",
        screen: str = "none",
        printer: bool = True,
        pinpad: bool = True,
        app_files: bool = True,
        pos_app: bool = False,
        payment_tls: bool = False,
        disk_mib: int = 0,
        payment_bind: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root)
        self.device_id = device_id
        self.site = site
        self.sys, self.proc, self.dev = self.root / "sys", self.root / "proc", self.root / "dev"
        self.run, self.state = self.root / "run", self.root / "state"
        self.trigger_dir = self.root / "trigger"
        self.crash_dir = self.root / "crash"
        self.anr_dir = self.root / "anr"
        self.app_log = self.root / "app.log"
        self.screen_mode = screen
        self.want_printer = printer
        self.want_pinpad = pinpad
        self.want_app_files = app_files
        self.power = SimPower(self.sys)
        self.net = SimNet(self.sys, self.proc)
        self.payment_tls = payment_tls
        self.disk_mib = disk_mib
        self.disk = self.root / "disk"
        self._disk_mounted = False
        self.payment_ca_file = ""
        self.host = SimHost(host=payment_bind)
        self.pos_app = SimPosApp(self.root) if pos_app else None
        self.printer: SimPrinter | None = None
        self.pinpad: SimPeripheral | None = None
        self.screen: SimScreen | None = None
        self.usb: dict[str, SimPeripheral] = {}
        self._link = {"carrier": True, "operstate": None}
        self._triggers = 0

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> SimTerminal:
        """Build the trees and start every twin (stops what started if one fails)."""
        try:
            for d in (self.sys, self.proc, self.dev, self.run, self.state):
                d.mkdir(parents=True, exist_ok=True)
            if self.want_app_files:
                for d in (self.trigger_dir, self.crash_dir, self.anr_dir):
                    d.mkdir(parents=True, exist_ok=True)
                self.app_log.touch()
            self.power.add_mains("AC", online=True)
            self.power.add_battery("BAT0", capacity_pct=80, status="Charging")
            self.net.set_link("eth0", carrier=True)
            self.net.set_routes([DEFAULT_ROUTE])
            if self.payment_tls:
                cert = make_self_signed_cert(self.root / "certs", "127.0.0.1", ("127.0.0.1",))
                self.host = SimHost(cert=cert)
                self.payment_ca_file = str(cert.cert_path)
            self.host.start()
            if self.disk_mib > 0:
                self._mount_disk()
            if self.pos_app is not None:
                self.pos_app.start()
            if self.want_printer:
                self.printer = SimPrinter(self.dev / "ttyS0").start()
            if self.want_pinpad:
                self.pinpad = pinpad(self.dev / "ttyUSB0", sys_root=self.sys, usb_port="1-1")
                self.pinpad.start()
            if self.screen_mode != "none":
                self.screen = SimScreen(
                    self.root / "screen", self.sys, self.dev, backend=self.screen_mode
                ).start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every twin (safe to call twice)."""
        for d in [*self.usb.values(), self.printer, self.pinpad, self.host, self.screen]:
            if d is not None:
                with contextlib.suppress(Exception):
                    d.stop()
        self.usb.clear()
        self.screen = None
        if self.pos_app is not None:
            with contextlib.suppress(Exception):
                self.pos_app.stop()
        if self._disk_mounted:
            r = run_argv(["umount", str(self.disk)], timeout_s=10)
            if r.returncode != 0:
                run_argv(["umount", "-l", str(self.disk)], timeout_s=10)
            self._disk_mounted = False

    def _mount_disk(self) -> None:
        """Mount a tmpfs of disk_mib MiB on disk/ (root only: SimError with the reason)."""
        if os.geteuid() != 0:
            raise SimError("a disk twin (disk_mib) mounts a tmpfs, which needs root")
        self.disk.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "tmpfs", "-o", f"size={self.disk_mib}m,mode=0755", "tmpfs"]
        r = run_argv([*argv, str(self.disk)], timeout_s=10)
        if r.returncode != 0:
            err = r.stderr.decode("utf-8", "replace").strip()
            raise SimError(f"mount tmpfs on {self.disk} failed: {err}")
        self._disk_mounted = True

    def __enter__(self) -> SimTerminal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- actions

    def apply(self, device: str, changes: dict[str, Any]) -> str:
        """Act on one device; returns a short description. SimError on unknown keys."""
        keys = DEVICES.get(device)
        if keys is None:
            raise SimError(f"unknown device {device!r} (known: {', '.join(DEVICES)})")
        unknown = sorted(set(changes) - set(keys))
        if unknown:
            raise SimError(f"device {device!r} has no setting {unknown} (known: {keys})")
        getattr(self, "_apply_" + device)(changes)
        return f"{device}: " + ", ".join(f"{k}={v}" for k, v in changes.items())

    def _apply_printer(self, c: dict[str, Any]) -> None:
        prn = self._need(self.printer, "printer")
        state = {k: v for k, v in c.items() if k in PRINTER_STATE_KEYS}
        if state:
            prn.set_state(**state)
        if "mode" in c:
            prn.set_mode(str(c["mode"]))
        if "plugged" in c:
            prn.replug() if c["plugged"] else prn.unplug()

    def _apply_power(self, c: dict[str, Any]) -> None:
        if "ac_online" in c:
            self.power.set_ac(bool(c["ac_online"]))
        if "capacity" in c:
            self.power.set_capacity("BAT0", int(c["capacity"]))
        if "status" in c:
            self.power.set_status("BAT0", str(c["status"]))
        if "health" in c:
            self.power.set_health("BAT0", str(c["health"]))
        if "temp_c" in c:
            self.power.set_temp("BAT0", float(c["temp_c"]))
        if "present" in c:
            self.power.set_present("BAT0", bool(c["present"]))

    def _apply_network(self, c: dict[str, Any]) -> None:
        if "carrier" in c or "operstate" in c:
            self._link.update({k: c[k] for k in ("carrier", "operstate") if k in c})
            op = self._link["operstate"]
            self.net.set_link(
                "eth0", carrier=bool(self._link["carrier"]), operstate=str(op) if op else None
            )
        if "default_route" in c:
            self.net.set_routes([DEFAULT_ROUTE] if c["default_route"] else [])

    def _apply_payment_host(self, c: dict[str, Any]) -> None:
        delay = c.get("delay_s")
        self.host.set_mode(
            str(c.get("mode", self.host.mode)), None if delay is None else float(delay)
        )

    def _apply_pinpad(self, c: dict[str, Any]) -> None:
        pad = self._need(self.pinpad, "pinpad")
        if "mode" in c:
            pad.set_mode(str(c["mode"]))
        if "swap" in c:
            pad.swap(parse_identity(str(c["swap"])))
        if "plugged" in c:
            pad.replug() if c["plugged"] else pad.unplug()

    def _apply_usb(self, c: dict[str, Any]) -> None:
        if "plug" in c:
            name = str(c["plug"])
            if name in self.usb:
                self.usb[name].replug()
            else:
                port = f"1-{2 + len(self.usb)}"
                dev = card_reader(self.dev / name, sys_root=self.sys, usb_port=port)
                self.usb[name] = dev.start()  # type: ignore[assignment]
        if "unplug" in c:
            d = self.usb.get(str(c["unplug"]))
            if d is None:
                raise SimError(f"no extra USB device {c['unplug']!r} plugged")
            d.unplug()

    def _apply_disk(self, c: dict[str, Any]) -> None:
        """Fill the disk twin to fill_pct % used with a real file (0: remove it)."""
        if not self._disk_mounted:
            raise SimError("the terminal has no disk twin (disk_mib)")
        filler = self.disk / "fill.bin"
        filler.unlink(missing_ok=True)
        st = os.statvfs(self.disk)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        want = int(total * float(c["fill_pct"]) / 100) - (total - free)
        if want <= 0:
            return
        chunk = b"\0" * (1 << 20)
        with filler.open("wb") as f:
            while want > 0:
                want -= f.write(chunk[: min(len(chunk), want)])

    def _apply_screen(self, c: dict[str, Any]) -> None:
        self._need(self.screen, "screen").set_pin(bool(c["pin"]))

    def _apply_trigger(self, c: dict[str, Any]) -> None:
        self.drop_trigger(str(c.get("note", "")), str(c.get("contact", "")))

    def _apply_app(self, c: dict[str, Any]) -> None:
        if "crash" in c:
            _write_new(self.crash_dir / str(c["crash"]), "signal 11 (SIGSEGV) in posapp\n")
        if "anr" in c:
            _write_new(self.anr_dir / str(c["anr"]), "ANR in com.example.pos\n")
        if "log" in c:
            with self.app_log.open("a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {c['log']}\n")
        if any(k in c for k in ("running", "restart", "hung")):
            app = self._need(self.pos_app, "POS app process (pos_app=True)")
            if "running" in c:
                app.start() if c["running"] else app.stop()
            if c.get("restart"):
                app.restart()
            if "hung" in c:
                app.hang(bool(c["hung"]))

    def drop_trigger(self, note: str, contact: str = "") -> Path:
        """A manual report as the POS app's button would drop it: note, then "contact: ..."."""
        self._triggers += 1
        body = note + ("\ncontact: " + contact if contact else "") + "\n"
        path = self.trigger_dir / f"report-{self._triggers}.txt"
        _write_new(path, body)
        return path

    @staticmethod
    def _need(device: Any, name: str) -> Any:
        if device is None:
            raise SimError(f"the terminal has no {name}")
        return device

    # ----------------------------------------------------------------- config

    def agent_sections(
        self, endpoint: str = "", token_file: str = "", key_file: str = ""
    ) -> dict[str, Any]:
        """The agent config for this terminal, with short intervals (demo and scenarios)."""
        s: dict[str, Any] = {
            "agent": {
                "device_id": self.device_id,
                "site": self.site,
                "model": "SIM-POS",
                "serial": "SIM0001",
                "state_dir": str(self.state),
                "log_format": "json",
            },
            "roots": self.roots_section(),
            "bundle": {"hmac_key_file": key_file or str(self.root / "device.key")},
            "spool": {"reserve_mib": 0},
            "upload": {
                "endpoint": endpoint,
                "token_file": token_file or str(self.root / "token"),
                "connect_timeout_s": 1.0,
                "read_timeout_s": 5.0,
                "backoff_base_s": 1.0,
                "backoff_cap_s": 5.0,
            },
            "power": {"interval_s": 1.0},
            "network": {
                "interval_s": 1.0,
                "interfaces": ["eth0"],
                "payment_hosts": [self.host.address],
                "dns_timeout_s": 0.5,
                "connect_timeout_s": 0.5,
            },
            "peripherals": {"interval_s": 1.0, "extra_globs": ["ttyACM*"]},
            "system": {
                "interval_s": 5.0,
                "disk_paths": [str(self.disk if self._disk_mounted else self.root)],
            },
            "screen": self.screen.config() if self.screen is not None else {"backend": "none"},
            "app": {
                "log_files": [str(self.app_log)],
                "log_patterns": ["FATAL|PAYMENT ERROR"],
                "crash_dirs": [str(self.crash_dir)],
                "anr_dirs": [str(self.anr_dir)],
                **self.pos_app_section(),
            },
            "capture": {
                "cooldown_s": 2.0,
                "burst": 10,
                "bundles_per_hour": 600.0,
                "probe_timeout_s": 1.0,
                "total_budget_s": 3.0,
                "trigger_dir": str(self.trigger_dir),
                "persist_interval_s": 5.0,
            },
            # the host's own NTP state is not the simulated terminal's
            "faults": {"system.clock_unsynced": {"enabled": False}},
        }
        s.update(self.device_sections(interval_s=0.5, timeout_s=0.3))
        return s

    def pos_app_section(self) -> dict[str, Any]:
        """[app] keys naming the POS app twin (process, pid file, heartbeat), when there is one."""
        if self.pos_app is None:
            return {}
        return {
            "process": APP_NAME,
            "pid_file": str(self.pos_app.pid_file),
            "heartbeat_file": str(self.pos_app.heartbeat_file),
        }

    def roots_section(self) -> dict[str, str]:
        """The [roots] section: the agent reads sys/proc/dev/run of this terminal."""
        return {
            "sys": str(self.sys),
            "proc": str(self.proc),
            "dev": str(self.dev),
            "run": str(self.run),
        }

    def device_sections(self, *, interval_s: float, timeout_s: float) -> dict[str, Any]:
        """[[printer]] for the receipt printer and [[serial]] for the PIN pad, if present."""
        s: dict[str, Any] = {}
        if self.printer is not None:
            s["printer"] = [
                {
                    "name": "receipt",
                    "transport": "serial",
                    "device": "/dev/ttyS0",
                    "interval_s": interval_s,
                    "timeout_s": timeout_s,
                }
            ]
        if self.pinpad is not None:
            s["serial"] = [
                {
                    "name": "pinpad",
                    "device": "/dev/ttyUSB0",
                    "probe_hex": "02 53 03",
                    "expect": "S0OK",
                    "interval_s": interval_s,
                    "timeout_s": timeout_s,
                }
            ]
        return s

    def write_config(self, path: Path, sections: dict[str, Any]) -> Path:
        """Write sections as TOML to path; returns it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_toml(sections))
        return path


def _write_new(path: Path, text: str) -> None:
    """Write a file in one rename so a watcher never sees it half-written."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)

"""`posagent discover`: what this terminal actually has, and a config fragment declaring it.

Lists, reading only (nothing is written to any port, printer or peripheral):
serial ports with their USB identity (drivers.serialports.inventory) and the
processes holding them open, USB printers (<dev>/usb/lp*), network interfaces
with carrier, the default routes and the resolvers, each screen backend tried
once (a grab whose image is dropped at once), and the processes that look like
the POS application (name or command line with pos, till, kiosk or payment)
beside the GUI session's display server and its owner.

`--probe PORT...` sends DLE EOT (drivers.escpos.poll_printer) to the ports
named, and only to them, and reports which answered as an ESC/POS printer.
`--write FILE` writes a TOML fragment that declares only what was found (a
[[printer]] only for a port that answered a probe), with a comment at its top
saying what was found and what to check. Every path is read through the
configured Roots (`--config`; the default roots without one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent.capture.privacy import grab_options
from agent.commands.common import load
from agent.core.config import Config, ConfigError, parse_config
from agent.core.exits import EX_CANTCREAT, EX_OK
from agent.core.timefmt import rfc3339
from agent.monitors import MonitorContext
from drivers.escpos import PrinterLinkState, list_usb_printers, poll_printer
from drivers.network import default_routes, list_interfaces, read_link, read_routes
from drivers.processes import Proc, iter_processes
from drivers.roots import Roots
from drivers.screen import ScreenError, grab_image, x11_display
from drivers.screen.wayland import socket_exists
from drivers.serialports import inventory
from drivers.shell import Shell

RESOLV_CONF = Path("/etc/resolv.conf")

# Display servers and compositors whose owner is the GUI session's user.
GUI_SERVERS = frozenset(
    {
        "Xorg",
        "X",
        "Xvfb",
        "Xwayland",
        "cage",
        "weston",
        "sway",
        "labwc",
        "kwin_wayland",
        "gnome-shell",
        "mutter",
        "surfaceflinger",
    }
)
# Word starts that contain "pos"/"till" but name no POS software.
NOT_POS = ("posix", "postgres", "postfix", "post", "position", "possib", "posagent", "tiller")
INTERPRETERS = ("python", "java", "node", "electron", "chromium", "chrome", "firefox", "sh", "bash")


# --------------------------------------------------------------------------- heuristics


def pos_reason(proc: Proc) -> str:
    """Why a process looks like a POS application ("" when it does not).

    Words (runs of letters/digits, lower-cased) of the name and command line:
    one starting with "pos" (pos, posapp, pos-client; not posix, postgres,
    position ...), "epos"/"mpos", one starting with "till", or "kiosk" or
    "payment" anywhere (chromium --kiosk, payment-daemon).
    """
    text = " ".join((proc.name, *proc.cmdline)).lower()
    if "posagent" in text:
        return ""
    found: list[str] = []
    for word in re.findall(r"[a-z0-9]+", text):
        if word.startswith(NOT_POS):
            continue
        if word.startswith(("pos", "epos", "mpos")) and "pos" not in found:
            found.append("pos")
        elif word.startswith("till") and "till" not in found:
            found.append("till")
    for word in ("kiosk", "payment"):
        if word in text:
            found.append(word)
    return ",".join(found)


def app_name(proc: Proc) -> str:
    """The [app] process name find_process matches: argv[0]'s basename, a Python script's."""
    if not proc.cmdline:
        return proc.name
    base = os.path.basename(proc.cmdline[0])
    if base.startswith("python") and len(proc.cmdline) > 1:
        return os.path.basename(proc.cmdline[1])
    return base


def _display_of(proc: Proc) -> str:
    for arg in proc.cmdline[1:]:
        if re.fullmatch(r":\d+(\.\d+)?", arg):
            return arg
    return proc.env.get("DISPLAY", "")


# --------------------------------------------------------------------------- discovery


@dataclass
class Discovery:
    """Everything discover found (plain data, as --json prints it)."""

    host: str
    at: str
    target: str
    serial_ports: list[dict[str, Any]] = field(default_factory=list)
    usb_printers: list[dict[str, Any]] = field(default_factory=list)
    interfaces: list[dict[str, Any]] = field(default_factory=list)
    default_routes: list[dict[str, Any]] = field(default_factory=list)
    resolvers: list[str] = field(default_factory=list)
    screens: list[dict[str, Any]] = field(default_factory=list)
    pos_processes: list[dict[str, Any]] = field(default_factory=list)
    gui_sessions: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data for --json."""
        return dataclasses.asdict(self)

    @property
    def screen(self) -> dict[str, Any] | None:
        """The first screen backend that worked."""
        return next((s for s in self.screens if s["ok"]), None)

    @property
    def uplinks(self) -> list[str]:
        """Interfaces that carry a default route, in route order."""
        out: list[str] = []
        for r in self.default_routes:
            if r["interface"] not in out:
                out.append(r["interface"])
        return out


def config_path_of(roots: Roots, node: str | Path) -> str:
    """How a config names a node found under roots.dev: /dev/<relative path>."""
    try:
        return "/dev/" + str(Path(node).relative_to(roots.dev))
    except ValueError:
        return str(node)


def _holders(roots: Roots, nodes: Sequence[Path]) -> dict[str, list[str]]:
    """Which processes hold each node open (<proc>/<pid>/fd links), where readable."""
    want: dict[str, str] = {}
    for n in nodes:
        want[str(n)] = str(n)
        try:
            want[os.path.realpath(n)] = str(n)
        except OSError:
            pass
    out: dict[str, list[str]] = {}
    try:
        pids = [p for p in roots.proc.iterdir() if p.name.isdigit()]
    except OSError:
        return out
    me = str(os.getpid())
    for pdir in pids:
        if pdir.name == me:
            continue
        try:
            fds = list((pdir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            node = want.get(target)
            if node is None:
                continue
            try:
                comm = (pdir / "comm").read_text("utf-8", "replace").strip()
            except OSError:
                comm = "?"
            label = f"{comm}[{pdir.name}]"
            if label not in out.setdefault(node, []):
                out[node].append(label)
    return out


def discover_serial(cfg: Config, roots: Roots) -> list[dict[str, Any]]:
    """Serial ports with USB identity and who holds them; no port is opened."""
    ports = inventory(roots, cfg.peripherals.extra_globs)
    held = _holders(roots, [Path(p.device) for p in ports])
    return [
        {
            "device": config_path_of(roots, p.device),
            "path": p.device,
            "usb_id": p.usb_id,
            "manufacturer": p.manufacturer,
            "product": p.product,
            "description": p.description,
            "subsystem": p.subsystem,
            "held_by": held.get(p.device, []),
        }
        for p in ports
    ]


def discover_usb_printers(roots: Roots) -> list[dict[str, Any]]:
    """USB printer class nodes (<dev>/usb/lp*) with their USB identity."""
    printers = list_usb_printers(roots)
    held = _holders(roots, [Path(p.device) for p in printers])
    return [
        {
            "device": config_path_of(roots, p.device),
            "path": p.device,
            "usb_id": p.usb_id,
            "manufacturer": p.manufacturer,
            "product": p.product,
            "held_by": held.get(p.device, []),
        }
        for p in printers
    ]


def read_resolvers(path: Path = RESOLV_CONF) -> list[str]:
    """nameserver addresses of a resolv.conf ([] when it cannot be read)."""
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1])
    return out


def discover_network(d: Discovery, roots: Roots, resolv_conf: Path) -> None:
    """Interfaces with carrier, default routes, resolvers."""
    table = read_routes(roots)
    defaults = default_routes([*table.ipv4, *table.ipv6])
    d.default_routes = [
        {
            "family": r.family,
            "interface": r.interface,
            "gateway": r.gateway,
            "metric": r.metric,
        }
        for r in defaults
    ]
    uplinks = {r.interface for r in defaults}
    for name in list_interfaces(roots):
        link = read_link(roots, name)
        d.interfaces.append(
            {
                "name": name,
                "carrier": link.carrier,
                "operstate": link.operstate,
                "admin_up": link.admin_up,
                "up": link.up,
                "default_route": name in uplinks,
                "loopback": name == "lo",
            }
        )
    if table.errors:
        d.notes.append("routes: " + "; ".join(table.errors))
    d.resolvers = read_resolvers(resolv_conf)


def discover_processes(d: Discovery, roots: Roots) -> list[Proc]:
    """POS-looking processes and the GUI session's display servers."""
    procs = list(iter_processes(roots))
    me = {os.getpid(), os.getppid()}
    for p in procs:
        if p.pid in me:
            continue
        if p.name in GUI_SERVERS:
            d.gui_sessions.append(
                {"pid": p.pid, "name": p.name, "user": p.user, "display": _display_of(p)}
            )
        why = pos_reason(p)
        if why and p.cmdline:
            d.pos_processes.append(
                {
                    "pid": p.pid,
                    "name": p.name,
                    "app_name": app_name(p),
                    "user": p.user,
                    "reason": why,
                    "command": p.command[:200],
                    "display": p.env.get("DISPLAY", ""),
                    "wayland_display": p.env.get("WAYLAND_DISPLAY", ""),
                }
            )
    return procs


def _try(backend: str, where: str, fn: Any) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        used, img = fn()
    except ScreenError as e:
        return {"backend": backend, "where": where, "ok": False, "detail": str(e)}
    ms = round((time.monotonic() - t0) * 1000)
    return {
        "backend": used,
        "where": where,
        "ok": True,
        "detail": f"{img.width}x{img.height} in {ms} ms",
    }


def discover_screens(
    cfg: Config, shell: Shell, roots: Roots, env: Mapping[str, str], d: Discovery
) -> None:
    """Each screen backend that could apply, tried once; images are dropped at once."""
    base = grab_options(cfg.screen)
    timeout = min(base.timeout_s, 5.0)
    target = cfg.agent.target

    def grab(backend: str, **over: Any) -> Any:
        opts = dataclasses.replace(base, backend=backend, timeout_s=timeout, **over)
        return lambda: grab_image(opts, target, shell, roots, env)

    if target in ("android", "adb"):
        d.screens.append(_try(target, "device", grab(target)))
        return
    displays: list[str] = []
    for disp in (
        x11_display(base, env),
        *(g["display"] for g in d.gui_sessions),
        *(p["display"] for p in d.pos_processes),
    ):
        if disp and disp not in displays:
            displays.append(disp)
    for disp in displays:
        d.screens.append(_try("x11", disp, grab("x11", display=disp)))
    waylands = [base.wayland_display] if base.wayland_display else []
    waylands += [p["wayland_display"] for p in d.pos_processes if p["wayland_display"]]
    if not waylands and env.get("WAYLAND_DISPLAY"):
        waylands.append("")
    for wl in dict.fromkeys(waylands):
        if socket_exists(wl, env):
            d.screens.append(
                _try(
                    "wayland",
                    wl or env.get("WAYLAND_DISPLAY", ""),
                    grab("wayland", wayland_display=wl),
                )
            )
    for fb in sorted(roots.dev.glob("fb[0-9]*")):
        name = config_path_of(roots, fb)
        d.screens.append(_try("fbdev", name, grab("fbdev", fb_device=name)))
    if cfg.screen.backend == "command" and cfg.screen.command:
        d.screens.append(_try("command", " ".join(cfg.screen.command), grab("command")))
    if not d.screens:
        d.screens.append(
            {
                "backend": "none",
                "where": "",
                "ok": False,
                "detail": "no X display, wayland socket or framebuffer found",
            }
        )


def probe_ports(
    ports: Sequence[str], roots: Roots, baudrate: int, timeout_s: float
) -> list[dict[str, Any]]:
    """DLE EOT to each named port (and only those): which answered as an ESC/POS printer."""
    out: list[dict[str, Any]] = []
    for port in ports:
        if "/usb/lp" in port:
            transport = "usblp"
        elif not port.startswith("/") and re.fullmatch(r"[^/\s]+:\d{1,5}", port):
            transport = "tcp"
        else:
            transport = "serial"
        status = poll_printer(transport, port, baudrate=baudrate, timeout_s=timeout_s, roots=roots)
        answered = status.state is PrinterLinkState.OK
        out.append(
            {
                "port": port,
                "transport": transport,
                "baudrate": baudrate,
                "answered": answered,
                "state": str(status.state),
                "conditions": status.conditions() if answered else [],
                "detail": status.error_text,
            }
        )
    return out


def discover(
    cfg: Config,
    *,
    probe: Sequence[str] = (),
    baudrate: int = 9600,
    probe_timeout_s: float = 1.0,
    shell: Shell | None = None,
    env: Mapping[str, str] | None = None,
    resolv_conf: Path = RESOLV_CONF,
) -> Discovery:
    """Everything the terminal has, read through cfg's roots; DLE EOT only to `probe`."""
    ctx = MonitorContext.from_config(cfg)
    roots = ctx.roots
    environ = os.environ if env is None else env
    d = Discovery(host=socket.gethostname(), at=rfc3339(time.time()), target=cfg.agent.target)
    if cfg.agent.target != "local":
        d.notes.append(
            f"target {cfg.agent.target}: ports, interfaces and processes are this Linux "
            "box's; the screen is the device's"
        )
    d.serial_ports = discover_serial(cfg, roots)
    d.usb_printers = discover_usb_printers(roots)
    discover_network(d, roots, resolv_conf)
    discover_processes(d, roots)
    discover_screens(cfg, shell or ctx.shell, roots, environ, d)
    d.probes = probe_ports(probe, roots, baudrate, probe_timeout_s)
    return d


# --------------------------------------------------------------------------- fragment


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))


def _name(text: str | None, fallback: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", (text or "").lower()).strip("_")[:24] or fallback
    name, n = base, 2
    while name in taken:
        name, n = f"{base}{n}", n + 1
    taken.add(name)
    return name


def render_fragment(d: Discovery) -> str:
    """A TOML fragment declaring only what was found, with what to check at its top."""
    printers = [p for p in d.probes if p["answered"]]
    printer_ports = {p["port"] for p in printers}
    silent = [p["port"] for p in d.probes if not p["answered"]]
    serials = [s for s in d.serial_ports if s["usb_id"] and s["device"] not in printer_ports]
    unprobed = [
        s["device"]
        for s in [*d.serial_ports, *d.usb_printers]
        if s["device"] not in printer_ports and s["device"] not in silent
    ]
    screen = d.screen
    apps = d.pos_processes
    up = [i["name"] for i in d.interfaces if i["up"] and not i["loopback"]]
    found = [
        f"{len(d.serial_ports)} serial port(s)"
        + (f" ({', '.join(s['device'] for s in d.serial_ports)})" if d.serial_ports else ""),
        f"{len(d.usb_printers)} USB printer(s)",
        f"printers answering DLE EOT: {', '.join(sorted(printer_ports)) or 'none'}",
        f"interfaces up: {', '.join(up) or 'none'}; default route via: "
        + (", ".join(d.uplinks) or "NONE"),
        f"resolvers: {', '.join(d.resolvers) or 'none found'}",
        "screen: "
        + (f"{screen['backend']} {screen['where']} works" if screen else "no backend worked"),
        f"POS-looking processes: {', '.join(a['app_name'] for a in apps) or 'none'}",
    ]
    check = [
        "payment_hosts is empty: add your payment provider's host:port (discover cannot know it)",
        "every [[serial]] below is a USB serial device plugged in now (presence and identity"
        " are watched): remove any that is not part of the terminal",
    ]
    if unprobed:
        check.append(
            "not probed (nothing was sent): "
            + ", ".join(unprobed)
            + "; `posagent discover --probe PORT` tells whether a receipt printer answers there"
        )
    if silent:
        check.append("probed, no ESC/POS answer (not declared): " + ", ".join(silent))
    if len(apps) == 1:
        check.append(f"[app] process = {apps[0]['app_name']!r}: check it is the POS application")
    elif apps:
        check.append(
            "several POS-looking processes: uncomment the [app] process that is the POS app"
        )
    if screen is None:
        check.append("no screen backend worked here: [screen] is left to backend auto")
    elif screen["backend"] == "x11":
        check.append(
            "the daemon runs without your DISPLAY/XAUTHORITY: the POS session's X socket and"
            " cookie must be readable by the posagent user (README)"
        )
    lines = [
        f"# posagent config fragment written by `posagent discover` on {d.host} at {d.at}.",
        "# Merge these tables into /etc/posagent/agent.toml (they replace the same tables).",
        "# Found:",
        *(f"#   - {f}" for f in found),
        "# Check:",
        *(f"#   - {c}" for c in check),
        "",
    ]
    taken: set[str] = set()
    for i, p in enumerate(printers):
        lines += [
            "[[printer]]",
            f"name = {_toml(_name('receipt' if i == 0 else f'receipt{i + 1}', 'receipt', taken))}",
            f"transport = {_toml(p['transport'])}",
            f"device = {_toml(p['port'])}",
        ]
        if p["transport"] == "serial":
            lines.append(f"baudrate = {p['baudrate']}")
        lines.append("")
    for s in serials:
        lines += [
            "[[serial]]",
            f"name = {_toml(_name(s['product'], 'serial', taken))}",
            f"device = {_toml(s['device'])}",
            f"match = {_toml(s['usb_id'])}",
            "",
        ]
    lines += [
        "[network]",
        f"interfaces = {_toml(d.uplinks)}"
        + ("" if d.uplinks else "  # no default route now: every interface that gets one"),
        'payment_hosts = []               # add: ["pay.example.com:443"]',
        "",
    ]
    if screen is not None:
        lines += ["[screen]", f"backend = {_toml(screen['backend'])}"]
        key = {"x11": "display", "fbdev": "fb_device", "wayland": "wayland_display"}.get(
            screen["backend"]
        )
        if key and screen["where"]:
            lines.append(f"{key} = {_toml(screen['where'])}")
        lines.append("")
    if apps:
        lines.append("[app]")
        prefix = "" if len(apps) == 1 else "# "
        for a in apps:
            lines.append(
                f"{prefix}process = {_toml(a['app_name'])}  # pid {a['pid']}, user {a['user']}"
                f", matched {a['reason']}"
            )
        lines.append("")
    text = "\n".join(lines)
    parse_config(text, "discover fragment")  # never write a fragment the agent would refuse
    return text


# --------------------------------------------------------------------------- output


def _yn(v: bool | None) -> str:
    return "?" if v is None else ("yes" if v else "no")


def render_text(d: Discovery) -> str:
    """The human listing."""
    out = [f"posagent discover on {d.host} (target {d.target}), {d.at}", ""]
    out.append("SERIAL PORTS")
    for s in d.serial_ports:
        who = f"  held by {', '.join(s['held_by'])}" if s["held_by"] else ""
        ident = s["usb_id"] or "no USB identity"
        names = " ".join(x for x in (s["manufacturer"], s["product"]) if x)
        out.append(f"  {s['device']:<16} {ident:<28} {names}{who}".rstrip())
    if not d.serial_ports:
        out.append("  none")
    out.append("USB PRINTERS")
    for p in d.usb_printers:
        names = " ".join(x for x in (p["manufacturer"], p["product"]) if x)
        out.append(f"  {p['device']:<16} {p['usb_id'] or '?':<28} {names}".rstrip())
    if not d.usb_printers:
        out.append("  none")
    out.append("NETWORK")
    for i in d.interfaces:
        flag = "  default route" if i["default_route"] else ""
        out.append(
            f"  {i['name']:<16} carrier={_yn(i['carrier'])} operstate={i['operstate'] or '?'}{flag}"
        )
    for r in d.default_routes:
        out.append(
            f"  default via {r['gateway'] or '(link)'} dev {r['interface']} (IPv{r['family']})"
        )
    if not d.default_routes:
        out.append("  NO default route")
    out.append(f"  resolvers: {', '.join(d.resolvers) or 'none found'}")
    out.append("SCREEN")
    for s in d.screens:
        state = "works" if s["ok"] else "unavailable"
        out.append(f"  {s['backend']:<8} {s['where']:<16} {state}: {s['detail']}")
    out.append("POS-LOOKING PROCESSES")
    for a in d.pos_processes:
        out.append(
            f"  {a['pid']:>7} {a['app_name']:<20} user {a['user']:<10} ({a['reason']}) {a['command'][:80]}"
        )
    if not d.pos_processes:
        out.append("  none")
    out.append("GUI SESSION")
    for g in d.gui_sessions:
        out.append(f"  {g['pid']:>7} {g['name']:<20} user {g['user']:<10} {g['display']}".rstrip())
    if not d.gui_sessions:
        out.append("  none")
    if d.probes:
        out.append("PROBES (DLE EOT)")
        for p in d.probes:
            if p["answered"]:
                what = "ESC/POS printer answered: " + (", ".join(p["conditions"]) or "ready")
            else:
                what = f"no printer: {p['state']} {p['detail']}".rstrip()
            out.append(f"  {p['port']:<16} {what}")
    for n in d.notes:
        out.append(f"note: {n}")
    out.append("")
    if d.probes:
        out.append("DLE EOT was sent only to: " + ", ".join(p["port"] for p in d.probes))
    else:
        out.append("Nothing was sent to any device (--probe PORT asks a port for printer status).")
    return "\n".join(out)


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """The `posagent discover` command (args: config, probe, baudrate, json, write, force)."""
    out = stdout or sys.stdout
    cfg = load(args) if getattr(args, "config", None) else Config()
    d = discover(
        cfg,
        probe=getattr(args, "probe", None) or (),
        baudrate=getattr(args, "baudrate", 9600),
        probe_timeout_s=getattr(args, "timeout", 1.0),
    )
    if getattr(args, "json", False):
        out.write(json.dumps(d.to_json(), indent=2) + "\n")
    else:
        out.write(render_text(d) + "\n")
    target = getattr(args, "write", None)
    if target:
        path = Path(target)
        if path.exists() and not getattr(args, "force", False):
            sys.stderr.write(f"posagent discover: {path} exists (--force replaces it)\n")
            return EX_CANTCREAT
        try:
            text = render_fragment(d)
        except ConfigError as e:  # a bug: the fragment must always parse
            sys.stderr.write(f"posagent discover: fragment does not parse: {e}\n")
            return EX_CANTCREAT
        try:
            path.write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            sys.stderr.write(f"posagent discover: cannot write {path}: {e}\n")
            return EX_CANTCREAT
        if not getattr(args, "json", False):
            out.write(f"config fragment written: {path}\n")
    return EX_OK

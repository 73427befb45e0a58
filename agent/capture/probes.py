"""Diagnostics probes for the capture stage, one per area, built from the config.

`build_probes(cfg, ctx, last_readings)` returns `Probe`s
(name, fn, timeout_s); the capture stage runs them in parallel, each bounded,
and writes what `fn` returns as diagnostics/<name>.json (dict/list) or .txt
(str). A probe raises on failure: the capture stage records the error.

Cheap by design: the printer is never polled again during a capture (it may be
mid-print): its entry is the monitors' last readings. Device state that the
monitors already read (payment probes, serial probes) comes from
`last_readings()` too; what they do not keep (supplies, routes, resolver,
port inventory, processes, logs) is read once here.

Entries: power, network, printer, serial, system, app, logs (tails of
app.log_files), and per platform dmesg + journal (Linux: target local) or
logcat + getprop (targets android and adb).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.config import Config
from agent.core.files import open_regular
from agent.core.model import Reading
from agent.core.redact import SNIFF_BYTES, decode_text, sniff_encoding
from agent.monitors import MonitorContext
from drivers import android
from drivers.network import list_interfaces, read_link, read_routes
from drivers.power import read_power_status
from drivers.roots import Roots
from drivers.serialports import inventory
from drivers.shell import Shell, ShellError
from drivers.system import (
    find_process,
    heartbeat_age,
    read_interfaces,
    read_system,
    read_uptime_s,
    top_processes,
)

LastReadings = Callable[[], Mapping[str, Reading]]

LOG_TAIL_BYTES = 64 * 1024
DMESG_TAIL_LINES = 500
JOURNAL_LINES = 200
LOGCAT_LINES = 500
SHELL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Probe:
    """A named diagnostics probe: `fn` returns a dict/list (→ .json) or str (→ .txt)."""

    name: str
    fn: Callable[[], Any]
    timeout_s: float = 2.0


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def system_snapshot(
    roots: Roots, disk_paths: list[str] | None = None, top_n: int = 10
) -> dict[str, Any]:
    """CPU, memory, disks, uptime, interfaces and the top processes by RSS."""
    snap = read_system(disk_paths or ["/"], temperatures=False)
    disks: dict[str, Any] = {}
    for d in snap.disks:
        if d.error or d.total_bytes is None:
            disks[d.path] = {"error": d.error}
            continue
        used_pct = 100.0 * (d.used_bytes or 0) / d.total_bytes if d.total_bytes else 0.0
        disks[d.path] = {
            "total_bytes": d.total_bytes,
            "free_bytes": d.free_bytes,
            "used_pct": round(used_pct, 1),
        }
    load = [round(x, 2) for x in (snap.load_1, snap.load_5, snap.load_15) if x is not None]
    return {
        "cpu_pct": snap.cpu_percent,
        "cpu_count": snap.cpu_count,
        "load_avg": load,
        "memory": {
            "total_bytes": snap.memory_total_bytes,
            "available_bytes": snap.memory_available_bytes,
            "available_pct": round(snap.memory_available_pct, 1),
        },
        "disks": disks,
        "uptime_s": _round(read_uptime_s(roots)),
        "interfaces": read_interfaces(),
        "top_processes": top_processes(top_n),
    }


def _android(shell: Shell) -> bool:
    return shell.mode in ("android", "adb")


def _readings(last: LastReadings, *prefixes: str) -> list[dict[str, Any]]:
    """The last readings whose source is one of prefixes or starts with "<prefix>:"."""
    out = []
    for source, r in sorted(last().items()):
        if any(source == p or source.startswith(p + ":") for p in prefixes):
            out.append(r.to_json())
    return out


def tail_bytes(path: Path, size_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last size_bytes of a file as text, starting at a line boundary when cut.

    The file (a POS log, in a directory others may write) is opened without
    following a link and must be a regular file: a FIFO or a link to another
    file raises OSError, shown as unreadable. A UTF-16 log (byte-order mark or NULs,
    sniffed from the file's start) is decoded as such, so redaction sees its digits.
    """
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        encoding = sniff_encoding(f.read(SNIFF_BYTES))
        f.seek(0, os.SEEK_END)
        end = f.tell()
        start = max(0, end - size_bytes)
        if encoding != "utf-8":
            start -= start % 2  # on a UTF-16 code unit
        f.seek(start)
        data = f.read(end - start)
    text = decode_text(data, encoding)
    if start > 0:
        nl = text.find("\n")
        if 0 <= nl < len(text) - 1:
            text = text[nl + 1 :]
    return text


def tail_lines(text: str, n: int) -> str:
    """The last n lines of text."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[-n:])


# --------------------------------------------------------------------------- per area


def collect_power(ctx: MonitorContext, last: LastReadings) -> dict[str, Any]:
    """Every power supply now (sysfs, or dumpsys battery) and the last power reading."""
    if _android(ctx.shell):
        status = android.read_power_status(ctx.shell, SHELL_TIMEOUT_S)
    else:
        status = read_power_status(ctx.roots)
    return {
        "source": status.source,
        "updates_stopped": status.updates_stopped,
        "errors": list(status.errors),
        "supplies": [dataclasses.asdict(s) for s in status.supplies],
        "last_readings": _readings(last, "power"),
    }


def _resolver_config() -> str | None:
    try:
        return Path("/etc/resolv.conf").read_text("utf-8", "replace")
    except OSError:
        return None


def collect_network(cfg: Config, ctx: MonitorContext, last: LastReadings) -> dict[str, Any]:
    """Interfaces, routes, resolver config and the last link/route/payment readings."""
    out: dict[str, Any] = {"configured_interfaces": list(cfg.network.interfaces)}
    if _android(ctx.shell):
        text = ctx.shell.check("dumpsys connectivity", SHELL_TIMEOUT_S).decode("utf-8", "replace")
        out["dumpsys_connectivity"] = text[:LOG_TAIL_BYTES]
    else:
        out["interfaces"] = [
            dataclasses.asdict(read_link(ctx.roots, name)) for name in list_interfaces(ctx.roots)
        ]
        table = read_routes(ctx.roots)
        out["routes"] = {
            "ipv4": [dataclasses.asdict(r) for r in table.ipv4],
            "ipv6": [dataclasses.asdict(r) for r in table.ipv6],
            "errors": list(table.errors),
        }
        out["resolv_conf"] = _resolver_config()
    out["last_readings"] = _readings(last, "network", "payment")
    return out


def collect_printer(cfg: Config, last: LastReadings) -> dict[str, Any]:
    """The configured printers and their last status readings (no new poll: may be printing)."""
    return {
        "printers": [dataclasses.asdict(p) for p in cfg.printer],
        "last_readings": _readings(last, "printer"),
    }


def collect_serial(cfg: Config, ctx: MonitorContext, last: LastReadings) -> dict[str, Any]:
    """The serial port inventory now, the configured peripherals and their last readings."""
    ports = inventory(ctx.roots, cfg.peripherals.extra_globs)
    return {
        "ports": [dataclasses.asdict(p) | {"usb_id": p.usb_id} for p in ports],
        "configured": [dataclasses.asdict(s) for s in cfg.serial],
        "allow": list(cfg.peripherals.allow),
        "last_readings": _readings(last, "serial", "peripherals"),
    }


def collect_app(cfg: Config, ctx: MonitorContext, last: LastReadings) -> dict[str, Any]:
    """The POS application's process and heartbeat now, and the last app reading."""
    a = cfg.app
    out: dict[str, Any] = {"process_name": a.process, "pid_file": a.pid_file}
    if _android(ctx.shell) and a.process:
        out["pids"] = list(android.pidof(ctx.shell, a.process, SHELL_TIMEOUT_S))
    elif a.process or a.pid_file:
        out["process"] = dataclasses.asdict(find_process(a.process, a.pid_file or None))
    if a.heartbeat_file and ctx.shell.mode != "adb":
        out["heartbeat"] = dataclasses.asdict(heartbeat_age(a.heartbeat_file))
    out["last_readings"] = _readings(last, "app")
    return out


def collect_logs(cfg: Config) -> str:
    """The last LOG_TAIL_BYTES of each configured log file, one section per file."""
    parts: list[str] = []
    for name in cfg.app.log_files:
        p = Path(name)
        try:
            body = tail_bytes(p)
        except OSError as e:
            body = f"[unreadable: {e.strerror or e}]\n"
        parts.append(f"==> {p} <==\n{body}")
    return "\n".join(parts)


def collect_dmesg(shell: Shell) -> str:
    """The kernel ring buffer, last DMESG_TAIL_LINES lines.

    Under the systemd unit the ring buffer itself is closed (ProtectKernelLogs,
    kernel.dmesg_restrict): the kernel's messages are then read from the journal
    (`journalctl _TRANSPORT=kernel`, the unit's SupplementaryGroups=systemd-journal), and the entry
    says which source it came from.
    """
    try:
        text = shell.check("dmesg", SHELL_TIMEOUT_S).decode("utf-8", "replace")
        return tail_lines(text, DMESG_TAIL_LINES)
    except ShellError as ring_error:
        # _TRANSPORT=kernel, not -k: -k implies -b, and in a container (or after a boot id
        # change) the kernel's entries carry another boot id than the reader's
        cmd = f"journalctl --no-pager -n {DMESG_TAIL_LINES} -o short-monotonic _TRANSPORT=kernel"
        try:
            text = shell.check(cmd, SHELL_TIMEOUT_S).decode("utf-8", "replace")
        except ShellError as journal_error:
            raise ShellError(f"dmesg: {ring_error}; journal: {journal_error}") from journal_error
        return f"# kernel ring buffer closed ({ring_error}); from the journal:\n" + text


def collect_journal(shell: Shell) -> str:
    """The systemd journal's last JOURNAL_LINES entries."""
    cmd = f"journalctl --no-pager -n {JOURNAL_LINES} -o short-iso"
    return shell.check(cmd, SHELL_TIMEOUT_S).decode("utf-8", "replace")


def collect_getprop(shell: Shell) -> dict[str, str]:
    """Android system properties."""
    return android.read_getprop(shell, SHELL_TIMEOUT_S)


# --------------------------------------------------------------------------- the list


def build_probes(cfg: Config, ctx: MonitorContext, last_readings: LastReadings) -> list[Probe]:
    """Every probe that applies to this config and target."""
    t = cfg.capture.probe_timeout_s
    shell = ctx.shell
    out = [
        Probe("power", lambda: collect_power(ctx, last_readings), t),
        Probe("network", lambda: collect_network(cfg, ctx, last_readings), t),
        Probe("system", lambda: system_snapshot(ctx.roots, list(cfg.system.disk_paths)), t),
    ]
    if cfg.printer:
        out.append(Probe("printer", lambda: collect_printer(cfg, last_readings), t))
    out.append(Probe("serial", lambda: collect_serial(cfg, ctx, last_readings), t))
    if cfg.app.process or cfg.app.pid_file or cfg.app.heartbeat_file:
        out.append(Probe("app", lambda: collect_app(cfg, ctx, last_readings), t))
    if cfg.app.log_files:
        out.append(Probe("logs", lambda: collect_logs(cfg), t))
    if _android(shell):
        out.append(
            Probe(
                "logcat",
                lambda: android.read_logcat_tail(shell, LOGCAT_LINES, SHELL_TIMEOUT_S),
                t,
            )
        )
        out.append(Probe("getprop", lambda: collect_getprop(shell), t))
    else:
        out.append(Probe("dmesg", lambda: collect_dmesg(shell), t))
        if shutil.which("journalctl"):
            out.append(Probe("journal", lambda: collect_journal(shell), t))
    return out

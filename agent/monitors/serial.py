"""Serial peripheral monitors: one per [[serial]] ("serial:<name>"), and the port inventory
("peripherals") that spots devices nobody configured.

"serial:<name>" values (the catalog's serial rules read them):
- state: "ok" | "absent" | "no_reply" | "wrong_reply". With probe_hex or
  expect the port is opened and probed (open_failed / io_error read
  "no_reply", `state_detail` keeps the driver's state); without, only the
  device node's presence is checked, so the POS application's port is never
  touched.
- identity: "vid:pid[:~hash]" of the USB device behind the port (lower-case
  hex, as the match spec writes it), its serial number as a keyed hash
  (`stored_identity`, as in the baseline), "" for a port without USB identity:
  readings go to the flight recorder's files in the state dir, which never hold
  the PIN pad's serial number in clear.
- identity_changed: True when the port carries another USB identity than the
  configured `match` or, without match, than the first identity seen on that
  port. The first identity is kept in <state_dir>/serial_baseline.json so a
  swap during an agent restart is still seen; to accept a replacement, set
  `match` to the new identity (or delete that entry). None while unknown
  (port absent, no USB identity readable). The file never holds a device's
  serial number in clear (a stolen terminal's state dir would show its PIN
  pad's): an identity with a serial is kept as "vid:pid:~<keyed hash>",
  HMAC-SHA256 with the device HMAC key (`[bundle] hmac_key_file`), 16 hex;
  entries written in clear by an older agent are rewritten so at start. Without
  a readable key the baseline is kept in memory only (logged).
- expected_identity: that first identity in its stored form ("vid:pid" or
  "vid:pid:~<hash>").

A peripheral configured with `match` is located by identity among all ports
(it may come back as ttyUSB1); `device` then only names the port watched for
a swap.

"peripherals" values: unexpected (sorted identities of present USB serial
ports that are neither allow-listed by [peripherals].allow or a [[serial]]
match, nor sitting at a configured [[serial]]/[[printer]] device path: each
is one serial.unexpected_device instance; a foreign device's serial number is
evidence and stays in clear), ports ({device: identity}, serials hashed as
above: the PIN pad is among them).
Android has no udev: the inventory is simply re-read every interval.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.core.config import Config, SerialConfig
from agent.core.files import atomic_write
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers.roots import Roots
from drivers.serialports import (
    MatchSpec,
    PortInfo,
    ProbeState,
    inventory,
    parse_hex,
    probe_port,
    read_port,
)

log = structlog.get_logger(__name__)

BASELINE_FILE = "serial_baseline.json"

_STATE = {
    ProbeState.OK: "ok",
    ProbeState.ABSENT: "absent",
    ProbeState.NO_REPLY: "no_reply",
    ProbeState.WRONG_REPLY: "wrong_reply",
    ProbeState.OPEN_FAILED: "no_reply",
    ProbeState.IO_ERROR: "no_reply",
}


def stored_identity(identity: str, key: bytes) -> str:
    """The baseline's form of "vid:pid[:serial]": the serial replaced by ~ and a keyed
    hash of the whole identity (16 hex), so the file never shows the serial number."""
    parts = identity.split(":", 2)
    if len(parts) < 3 or not parts[2] or parts[2].startswith("~"):
        return identity
    digest = hmac.new(key, b"posagent serial baseline\0" + identity.encode(), hashlib.sha256)
    return f"{parts[0]}:{parts[1]}:~{digest.hexdigest()[:16]}"


class IdentityBaseline:
    """First identity seen per (peripheral, port), kept in a JSON file (thread-safe), in
    its stored form (`stored_identity`: no serial number in clear). path None: in memory."""

    def __init__(self, path: Path | None, key: bytes) -> None:
        self.path = path
        self.key = key
        self._lock = threading.Lock()
        self._data: dict[str, str] = {}
        if path is not None:
            try:
                raw = json.loads(path.read_text("utf-8"))
                if isinstance(raw, dict):
                    self._data = {str(k): str(v) for k, v in raw.items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as e:
                log.warning("serial_baseline_unreadable", path=str(path), error=str(e))
        clear = {k: stored_identity(v, key) for k, v in self._data.items()}
        if clear != self._data:  # written by an agent that kept serials in clear
            self._data = clear
            self._save(dict(clear))

    def get_or_set(self, key: str, identity: str) -> str:
        """The recorded identity for key (stored form); the given one is recorded when
        there is none."""
        stored = stored_identity(identity, self.key)
        with self._lock:
            known = self._data.get(key)
            if known is not None:
                return known
            self._data[key] = stored
            data = dict(self._data)
        self._save(data)
        return stored

    def changed(self, key: str, identity: str) -> tuple[bool, str]:
        """(whether identity differs from the first one recorded for key, that one)."""
        first = self.get_or_set(key, identity)
        return stored_identity(identity, self.key) != first, first

    def _save(self, data: dict[str, str]) -> None:
        if self.path is None:
            return

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as e:
            log.warning("serial_baseline_write_failed", path=str(self.path), error=str(e))


@dataclass
class SerialMonitor:
    """Presence, identity and (optionally) a probe of one configured peripheral."""

    cfg: SerialConfig
    roots: Roots = field(default_factory=Roots)
    baseline: IdentityBaseline = field(default_factory=lambda: IdentityBaseline(None, b""))
    extra_globs: Sequence[str] = ()

    @property
    def name(self) -> str:
        return f"serial:{self.cfg.name}"

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        return self.cfg.timeout_s + 2.0

    def _port_at(self, path: Path) -> PortInfo | None:
        return read_port(self.roots, path) if os.path.lexists(path) else None

    def poll(self) -> list[Reading]:
        cfg = self.cfg
        watched = self.roots.dev_path(cfg.device) if cfg.device else None
        at_watched = self._port_at(watched) if watched is not None else None
        values: dict[str, Any] = {}
        if cfg.match:
            spec = MatchSpec.parse(cfg.match)
            found = [p for p in inventory(self.roots, self.extra_globs) if spec.matches(p)]
            target: Path | None = Path(found[0].device) if found else None
            identity = found[0].usb_id if found else ""
            if found:
                changed: bool | None = False
            elif at_watched is not None and at_watched.usb_id:
                changed = True  # something else sits where the peripheral was
                identity = at_watched.usb_id
            else:
                changed = None
        else:
            target = watched if at_watched is not None else None
            identity = at_watched.usb_id if at_watched is not None else ""
            changed = None
            if identity and watched is not None:
                changed, first = self.baseline.changed(f"{cfg.name}@{watched}", identity)
                values["expected_identity"] = first
        values["identity"] = stored_identity(identity, self.baseline.key)
        values["identity_changed"] = changed
        values["device"] = str(target) if target is not None else (cfg.device or cfg.match)
        if target is None or not os.path.exists(target):
            values.update(state="absent", state_detail="absent", error="device not found")
            return [Reading(self.name, values)]
        if cfg.probe_hex or cfg.expect:
            r = probe_port(
                target,
                request=parse_hex(cfg.probe_hex),
                expect=cfg.expect,
                baudrate=cfg.baudrate,
                timeout_s=cfg.timeout_s,
            )
            values.update(
                state=_STATE[r.state],
                state_detail=str(r.state),
                reply=r.reply[:64].hex(),
                latency_ms=round(r.latency_s * 1000, 2) if r.latency_s is not None else None,
                error=r.error,
            )
        else:
            values.update(state="ok", state_detail="present", error="")
        return [Reading(self.name, values)]


def _norm(path: str | Path) -> str:
    return os.path.normpath(str(path))


@dataclass
class PeripheralsMonitor:
    """Diffs the serial port inventory against what the config allows."""

    cfg: Config
    roots: Roots = field(default_factory=Roots)
    name: str = "peripherals"
    key: bytes = b""  # hashes the serial numbers of `ports` (stored_identity)

    def __post_init__(self) -> None:
        specs = [MatchSpec.parse(a) for a in self.cfg.peripherals.allow]
        specs += [MatchSpec.parse(s.match) for s in self.cfg.serial if s.match]
        self._allowed = specs
        paths = [s.device for s in self.cfg.serial if s.device and not s.match]
        paths += [p.device for p in self.cfg.printer if p.transport != "tcp"]
        self._configured = {_norm(self.roots.dev_path(p)) for p in paths}

    @property
    def interval_s(self) -> float:
        return self.cfg.peripherals.interval_s

    @property
    def timeout_s(self) -> float:
        return 5.0

    def unexpected(self, ports: Sequence[PortInfo]) -> list[str]:
        """Identities of present USB ports neither allow-listed nor at a configured path."""
        out = {
            p.usb_id
            for p in ports
            if p.usb_id
            and not any(spec.matches(p) for spec in self._allowed)
            and _norm(p.device) not in self._configured
        }
        return sorted(out)

    def poll(self) -> list[Reading]:
        ports = inventory(self.roots, self.cfg.peripherals.extra_globs)
        return [
            Reading(
                "peripherals",
                {
                    "unexpected": self.unexpected(ports),
                    "ports": {p.device: stored_identity(p.usb_id, self.key) for p in ports},
                },
            )
        ]


@register("serial")
def serial_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """One monitor per [[serial]] peripheral."""
    baseline = _baseline(cfg, ctx)
    return [
        SerialMonitor(s, ctx.roots, baseline, tuple(cfg.peripherals.extra_globs))
        for s in cfg.serial
    ]


def _baseline(cfg: Config, ctx: MonitorContext) -> IdentityBaseline:
    """The baseline in the state dir, its serials hashed with the device HMAC key (the
    daemon makes it before the monitors); in memory only when the key is unreadable."""
    if not cfg.serial:
        return IdentityBaseline(None, b"")
    key, reason = _serial_key(cfg)
    if not key:
        log.warning(
            "serial_baseline_in_memory",
            key_file=cfg.bundle.hmac_key_file,
            error=reason,
            effect="a peripheral swapped while the agent is stopped is not seen",
        )
        return IdentityBaseline(None, b"")
    return IdentityBaseline(ctx.state_dir / BASELINE_FILE, key)


def _serial_key(cfg: Config) -> tuple[bytes, str]:
    """The device HMAC key that hashes serial numbers, b"" with why when unreadable."""
    try:
        key = Path(cfg.bundle.hmac_key_file).read_bytes().strip()
    except OSError as e:
        return b"", e.strerror or str(e)
    return key, "" if key else "the key file is empty"


@register("peripherals")
def peripherals_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """The serial port inventory monitor (unexpected devices)."""
    return [PeripheralsMonitor(cfg, ctx.roots, key=_serial_key(cfg)[0])]

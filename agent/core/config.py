"""Typed, frozen configuration read from one TOML file (docs/ARCHITECTURE.md §9).

Every section is a frozen dataclass. The generic loader below turns the parsed
TOML into those dataclasses, refusing unknown keys, wrong types and values out
of range with the file, the dotted key and the line. Field metadata carries
the constraints: ``min``/``max`` for numbers, ``choices`` for strings,
``secret`` for values never echoed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from agent.core.files import read_regular
from agent.core.layers import (
    DEFAULT,
    LOCAL,
    Override,
    RemoteState,
    apply_layers,
    dotted_leaves,
    read_overrides,
    read_remote,
)
from agent.core.sensitive import DEFAULT_SENSITIVE_WINDOWS
from drivers.roots import Roots

DEFAULT_CONFIG_PATH = Path("/etc/posagent/agent.toml")
SAMPLE_CONFIG = Path(__file__).parent.parent / "data" / "agent.toml"


class ConfigError(Exception):
    """A config file that cannot be used, located by file, key and line."""

    def __init__(self, message: str, *, file: str = "", key: str = "", line: int | None = None):
        self.file = file
        self.key = key
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def _f(default: Any, **meta: Any) -> Any:
    """A dataclass field with a default and validation metadata."""
    if isinstance(default, list | dict):
        frozen_default = default

        def factory() -> Any:
            return type(frozen_default)(frozen_default)

        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = _f("T-0001", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    site: str = ""
    model: str = ""
    serial: str = ""
    state_dir: str = "/var/lib/posagent"
    target: str = _f("local", choices=("local", "android", "adb"))
    adb_serial: str = ""
    adb_path: str = "adb"
    log_level: str = _f("info", choices=("debug", "info", "warning", "error"))
    log_format: str = _f("auto", choices=("auto", "json", "console"))
    # node_exporter textfile of the agent's own figures (agent.daemon.textfile); "": none
    metrics_textfile: str = _f("", pattern=r"^$|^/.*[^/]\.prom$")


@dataclass(frozen=True)
class RootsConfig:
    sys: str = "/sys"
    proc: str = "/proc"
    dev: str = "/dev"
    run: str = "/run/posagent"


@dataclass(frozen=True)
class BundleConfig:
    hmac_key_file: str = "/etc/posagent/device.key"
    max_entry_kib: int = _f(512, min=4, max=65536)
    # Ed25519 device signing key (agent.bundle.sealed); "": <state_dir>/keys/device.ed25519
    # (or device.ed25519 beside hmac_key_file, where installs before issue 17's rotation made it)
    signing_key_file: str = ""
    # age X25519 recipients ("age1..."): every bundle is encrypted to all of them
    encrypt_to: list[str] = _f([])
    require_encryption: bool = False

    def signing_key_home(self, state_dir: str) -> str:
        """Where the signing key is made and rotated: signing_key_file, else
        <state_dir>/keys/device.ed25519 (writable by the daemon under its unit)."""
        if self.signing_key_file:
            return self.signing_key_file
        return str(Path(state_dir) / SIGNING_KEYS_DIR / SIGNING_KEY_NAME)

    def signing_key_candidates(self, state_dir: str) -> list[str]:
        """The signing key files in the order they are looked for: signing_key_file alone,
        else the home in the state dir then the legacy path beside hmac_key_file (a key
        made there before stays the terminal's identity until its first rotation)."""
        home = self.signing_key_home(state_dir)
        if self.signing_key_file:
            return [home]
        return [home, str(Path(self.hmac_key_file).with_name(SIGNING_KEY_NAME))]

    def signing_key_path(self, state_dir: str) -> str:
        """The signing key file in use: the first candidate that exists, else the home
        (where keygen or the first start makes it)."""
        return resolve_signing_key(self.signing_key_candidates(state_dir))


SIGNING_KEYS_DIR = "keys"
SIGNING_KEY_NAME = "device.ed25519"


def resolve_signing_key(candidates: list[str]) -> str:
    """The first of candidates that exists (a link counts: it is refused when loaded),
    else the first."""
    for c in candidates:
        if os.path.lexists(c):
            return c
    return candidates[0]


@dataclass(frozen=True)
class RedactionConfig:
    pan_mask: str = _f("first6last4", choices=("first6last4", "full"))
    allow: list[str] = _f([])


@dataclass(frozen=True)
class SpoolConfig:
    max_mib: int = _f(256, min=1, max=1048576)
    max_items: int = _f(10000, min=1, max=10_000_000)
    max_age_days: int = _f(30, min=1, max=3650)
    reserve_mib: int = _f(64, min=0, max=1048576)
    keep_sent: bool = True
    sent_retention_days: int = _f(7, min=0, max=3650)


@dataclass(frozen=True)
class UploadConfig:
    endpoint: str = ""
    token_file: str = "/etc/posagent/token"
    token: str = _f("", secret=True)
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    proxy: str = ""
    verify_tls: bool = True
    connect_timeout_s: float = _f(10.0, min=0.1, max=300)
    read_timeout_s: float = _f(60.0, min=0.1, max=3600)
    backoff_base_s: float = _f(5.0, min=0.01, max=3600)
    backoff_cap_s: float = _f(900.0, min=0.01, max=86400)
    bandwidth_bytes_per_s: int = _f(0, min=0)
    # the two-way channel (docs/CHANNEL.md): enrollment, check-ins, commands, remote config
    enrollment_token_file: str = ""
    checkin_interval_s: int = _f(300, min=30, max=86400)
    longpoll: bool = False
    collector_public_key_file: str = ""  # "": <state_dir>/collector.pub (written at enrollment)
    command_logs: dict[str, str] = _f({})  # name → absolute path: what the `logs` command may send

    def collector_key_path(self, state_dir: str) -> str:
        """The collector's command-signing public key: collector_public_key_file, else
        <state_dir>/collector.pub."""
        return self.collector_public_key_file or str(Path(state_dir) / "collector.pub")


@dataclass(frozen=True)
class PowerConfig:
    interval_s: float = _f(5.0, min=0.05, max=3600)
    battery_low_pct: int = _f(15, min=0, max=100)
    battery_critical_pct: int = _f(5, min=0, max=100)
    battery_hot_c: float = _f(45.0, min=-40, max=150)
    battery_critical_hot_c: float = _f(60.0, min=-40, max=150)


@dataclass(frozen=True)
class NetworkConfig:
    interval_s: float = _f(5.0, min=0.05, max=3600)
    interfaces: list[str] = _f([])  # []: every interface that carries a default route
    payment_hosts: list[str] = _f([])
    tls: bool = False
    dns_timeout_s: float = _f(2.0, min=0.05, max=60)
    connect_timeout_s: float = _f(3.0, min=0.05, max=60)
    captive_portal_url: str = ""
    high_latency_ms: float = _f(2000.0, min=1, max=600000)
    latency_window: int = _f(20, min=1, max=10000)


@dataclass(frozen=True)
class PrinterConfig:
    name: str = "receipt"
    transport: str = _f("serial", choices=("serial", "tcp", "usblp"))
    device: str = "/dev/ttyS0"
    baudrate: int = _f(9600, min=50, max=4_000_000)
    interval_s: float = _f(2.0, min=0.05, max=3600)
    timeout_s: float = _f(1.0, min=0.01, max=60)
    drawer_open_high: bool = True


@dataclass(frozen=True)
class SerialConfig:
    name: str = "pinpad"
    device: str = "/dev/ttyUSB0"
    match: str = _f("", pattern=r"^$|^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}(:.+)?$")
    probe_hex: str = _f("", pattern=r"^([0-9A-Fa-f]{2}\s?)*$")
    expect: str = ""
    baudrate: int = _f(9600, min=50, max=4_000_000)
    interval_s: float = _f(2.0, min=0.05, max=3600)
    timeout_s: float = _f(1.0, min=0.01, max=60)


@dataclass(frozen=True)
class PeripheralsConfig:
    allow: list[str] = _f([])
    extra_globs: list[str] = _f(["ttyMSM*", "ttyHS*", "ttyS[0-9]*", "ttyUSB*", "ttyACM*"])
    interval_s: float = _f(5.0, min=0.05, max=3600)


@dataclass(frozen=True)
class SystemConfig:
    interval_s: float = _f(10.0, min=0.05, max=3600)
    disk_paths: list[str] = _f(["/"])
    disk_low_pct: float = _f(5.0, min=0, max=100)
    disk_low_mib: int = _f(200, min=0)
    memory_low_pct: float = _f(10.0, min=0, max=100)
    cpu_saturated_pct: float = _f(95.0, min=0, max=100)
    clock_jump_s: float = _f(60.0, min=1, max=86400)


@dataclass(frozen=True)
class ScreenConfig:
    backend: str = _f(
        "auto",
        choices=("auto", "x11", "fbdev", "wayland", "android", "adb", "command", "none"),
    )
    display: str = ""
    fb_device: str = "/dev/fb0"
    fb_pixel_format: str = _f(
        "",
        choices=("", "rgb565", "bgr565", "xrgb1555", "xbgr1555", "rgb888", "bgr888")
        + ("xrgb8888", "argb8888", "xbgr8888", "abgr8888", "rgbx8888", "bgrx8888", "gray8"),
    )
    wayland_display: str = ""
    command: list[str] = _f([])
    timeout_s: float = _f(3.0, min=0.1, max=60)
    max_width: int = _f(0, min=0, max=10000)
    sensitive_windows: list[str] = _f(list(DEFAULT_SENSITIVE_WINDOWS))  # [] turns matching off
    pin_flag_file: str = ""
    pin_flag_max_age_s: float = _f(120.0, min=0, max=86400)
    mask_regions: list[str] = _f([])
    ocr_mask: bool = False
    ocr_timeout_s: float = _f(10.0, min=0.5, max=120)


@dataclass(frozen=True)
class AppConfig:
    process: str = ""
    pid_file: str = ""
    interval_s: float = _f(5.0, min=0.05, max=3600)
    heartbeat_file: str = ""
    heartbeat_max_age_s: float = _f(60.0, min=1, max=86400)
    log_files: list[str] = _f([])
    log_patterns: list[str] = _f([])
    crash_dirs: list[str] = _f([])
    anr_dirs: list[str] = _f([])
    tombstone_dirs: list[str] = _f([])


@dataclass(frozen=True)
class CaptureConfig:
    cooldown_s: float = _f(300.0, min=0, max=86400)
    bundles_per_hour: float = _f(6.0, min=0, max=3600)
    burst: int = _f(3, min=1, max=1000)
    critical_reserve: int = _f(2, min=0, max=1000)
    timeline_minutes: float = _f(10.0, min=0.1, max=1440)
    persist_interval_s: float = _f(30.0, min=1, max=3600)
    journal_interval_s: float = _f(4.0, min=0.5, max=5)
    probe_timeout_s: float = _f(2.0, min=0.05, max=60)
    total_budget_s: float = _f(5.0, min=0.1, max=300)
    trigger_dir: str = ""
    manual_per_hour: float = _f(6.0, min=0, max=3600)
    manual_burst: int = _f(3, min=1, max=1000)
    cleared_bundles: bool = True


@dataclass(frozen=True)
class FaultOverride:
    enabled: bool = True
    raise_after: float = _f(-1.0, min=-1)
    clear_after: float = _f(-1.0, min=-1)
    severity: str = _f("", choices=("", "critical", "error", "warning"))


@dataclass(frozen=True)
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    roots: RootsConfig = field(default_factory=RootsConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    printer: list[PrinterConfig] = field(default_factory=list)
    serial: list[SerialConfig] = field(default_factory=list)
    peripherals: PeripheralsConfig = field(default_factory=PeripheralsConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    app: AppConfig = field(default_factory=AppConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    faults: dict[str, FaultOverride] = field(default_factory=dict)
    source: str = field(default="", metadata={"internal": True})
    # agent/core/layers.py: where each value the layers set came from, and what was not applied
    layered: dict[str, str] = field(
        default_factory=dict, compare=False, metadata={"internal": True}
    )
    layer_warnings: tuple[str, ...] = field(default=(), compare=False, metadata={"internal": True})

    def fs_roots(self) -> Roots:
        """The one Roots object every driver path starts from."""
        r = self.roots
        return Roots(
            sys=Path(r.sys),
            proc=Path(r.proc),
            dev=Path(r.dev),
            run=Path(r.run),
            state=Path(self.agent.state_dir),
        )

    def secrets(self) -> list[str]:
        """Every secret value this config names (inline or in files), for redaction."""
        out: list[str] = []
        if self.upload.token:
            out.append(self.upload.token)
        for path in (
            self.upload.token_file,
            self.bundle.hmac_key_file,
            self.upload.enrollment_token_file,
        ):
            value = read_secret_file(path)
            if value:
                out.append(value.decode("utf-8", "replace").strip())
        return [s for s in out if len(s) >= 6]

    def digest(self) -> str:
        """A short stable digest of the effective config (secrets excluded)."""
        blob = json.dumps(to_dict(self, hide_secrets=True), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


SECRET_FILE_LIMIT = 64 * 1024


def read_secret_file(path: str) -> bytes:
    """Read a secret file; an empty or missing path gives b"".

    Never through a symlink and never from a FIFO (a link or FIFO reads as
    missing); `agent.core.secret_files` is what tells the operator why.
    """
    if not path:
        return b""
    try:
        return read_regular(path, SECRET_FILE_LIMIT)
    except OSError:
        return b""


# --------------------------------------------------------------------------- loading

T = TypeVar("T")

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?")
_KEYLINE = re.compile(r"^\s*([A-Za-z0-9_\"'-]+(?:\s*\.\s*[A-Za-z0-9_\"'-]+)*)\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths (printer[0].baudrate) to their 1-based line numbers."""
    lines: dict[str, int] = {}
    section = ""
    counters: dict[str, int] = {}
    in_multiline: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        m = _HEADER.match(line)
        if m:
            name = re.sub(r"\s*\.\s*", ".", m.group(2)).replace('"', "").replace("'", "")
            if m.group(1) == "[[":
                idx = counters.get(name, 0)
                counters[name] = idx + 1
                section = f"{name}[{idx}]"
            else:
                section = name
            lines.setdefault(section, n)
            continue
        m = _KEYLINE.match(line)
        if m:
            key = re.sub(r"\s*\.\s*", ".", m.group(1)).replace('"', "").replace("'", "")
            full = f"{section}.{key}" if section else key
            lines.setdefault(full, n)
            for q in ('"""', "'''"):
                if line.count(q) == 1:
                    in_multiline = q
    return lines


class _Ctx:
    def __init__(self, file: str, lines: dict[str, int]):
        self.file = file
        self.lines = lines

    def error(self, key: str, message: str) -> ConfigError:
        line = self.lines.get(key)
        probe = key
        while line is None and ("." in probe or "[" in probe):
            probe = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
            line = self.lines.get(probe)
        return ConfigError(message, file=self.file, key=key, line=line)


def _type_name(v: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(v), type(v).__name__)


def _convert(tp: Any, value: Any, key: str, meta: typing.Mapping[str, Any], ctx: _Ctx) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ctx.error(key, f"expected a table, got {_type_name(value)}")
        return _build(typing.cast(type, tp), value, key, ctx)
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            raise ctx.error(key, f"expected an array, got {_type_name(value)}")
        sub: dict[str, Any] = {}
        return [
            _convert(inner, v, f"{key}[{i}]" if dataclasses.is_dataclass(inner) else key, sub, ctx)
            for i, v in enumerate(value)
        ]
    if origin is dict:
        _, inner = get_args(tp)
        if not isinstance(value, dict):
            raise ctx.error(key, f"expected a table, got {_type_name(value)}")
        return {k: _convert(inner, v, f"{key}.{k}", {}, ctx) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise ctx.error(key, "unsupported union type")
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(key, f"expected a boolean, got {_type_name(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(key, f"expected an integer, got {_type_name(value)}")
        _check_range(value, key, meta, ctx)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.error(key, f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value):  # nan compares false with every bound: refuse it here
            raise ctx.error(key, f"{value} is not a finite number")
        _check_range(value, key, meta, ctx)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ctx.error(key, f"expected a string, got {_type_name(value)}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ctx.error(key, f"must be one of {', '.join(repr(c) for c in choices)}")
        pattern = meta.get("pattern")
        if pattern is not None and not re.match(pattern, value):
            raise ctx.error(key, f"{value!r} does not match {pattern}")
        return value
    raise ctx.error(key, f"unsupported type {tp!r}")


def _check_range(value: float, key: str, meta: typing.Mapping[str, Any], ctx: _Ctx) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ctx.error(key, f"{value} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ctx.error(key, f"{value} is above the maximum {hi}")


def _build(cls: type[T], data: dict[str, Any], prefix: str, ctx: _Ctx) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ctx.error(key, f"unknown key (known here: {known})")
        f = fields[name]
        kwargs[name] = _convert(hints[name], value, key, f.metadata, ctx)
    return cls(**kwargs)


# Tables of the same file that another program owns and validates: the
# collector reads [collector] (collector/config.py) from a file it may share.
FOREIGN_SECTIONS = frozenset({"collector"})


def _parse_toml(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(
            f"TOML syntax error: {e}", file=file, line=int(m.group(1)) if m else None
        ) from None
    except RecursionError:
        raise ConfigError("TOML nested too deeply", file=file) from None


def parse_config(text: str, file: str = "<string>") -> Config:
    """Parse TOML text into a validated Config (the local file alone); raises ConfigError."""
    data = _parse_toml(text, file)
    ctx = _Ctx(file, _key_lines(text))
    own = {k: v for k, v in data.items() if k not in FOREIGN_SECTIONS}
    cfg = _build(Config, own, "", ctx)
    _cross_check(cfg, ctx)
    return dataclasses.replace(cfg, source=file)


def layered_config(
    text: str,
    file: str,
    remote: RemoteState | None = None,
    overrides: list[Override] | None = None,
    *,
    now: float | None = None,
    strict: bool = False,
) -> Config:
    """The local file with the layers of agent/core/layers.py merged in.

    `remote`/`overrides` None: read from the config's state_dir. The local
    file's own errors raise ConfigError; a layer that does not fit (a value of
    the wrong type, out of range) raises too with `strict` (the channel
    checking what the collector sent), else it is left out and said in
    `layer_warnings`: what the collector sent never stops the daemon.
    """
    local = parse_config(text, file)
    own = {k: v for k, v in _parse_toml(text, file).items() if k not in FOREIGN_SECTIONS}
    warnings: list[str] = []
    state = local.agent.state_dir
    if remote is None:
        try:
            remote = read_remote(state)
        except (OSError, ValueError) as e:
            warnings.append(f"{state}/remote.json not used: {e}")
            remote = RemoteState()
    if overrides is None:
        try:
            overrides = read_overrides(state)
        except (OSError, ValueError) as e:
            warnings.append(f"{state}/overrides.json not used: {e}")
            overrides = []
    merged = apply_layers(own, remote, overrides, to_dict(Config(), hide_secrets=False), now)
    if merged.ignored:
        warnings.append("not a remote-settable key, ignored: " + ", ".join(merged.ignored)[:300])
    if not merged.origins:
        return dataclasses.replace(local, layer_warnings=tuple(warnings))
    ctx = _Ctx(f"{state}/remote.json (under {file})", {})
    try:
        cfg = _build(Config, merged.data, "", ctx)
        _cross_check(cfg, ctx)
    except ConfigError as e:
        if strict:
            raise
        warnings.append(f"remote config not applied: {e}")
        return dataclasses.replace(local, layer_warnings=tuple(warnings))
    return dataclasses.replace(
        cfg, source=file, layered=merged.origins, layer_warnings=tuple(warnings)
    )


def origins(cfg: Config) -> dict[str, str]:
    """Where every value of cfg came from: "default", "local file", or a layer's word."""
    local: set[str] = set()
    if cfg.source and Path(cfg.source).is_file():
        try:
            data = _parse_toml(Path(cfg.source).read_text(encoding="utf-8"), cfg.source)
            local = set(dotted_leaves({k: v for k, v in data.items() if k not in FOREIGN_SECTIONS}))
        except (OSError, UnicodeDecodeError, ConfigError):
            pass
    out: dict[str, str] = {}
    for key in dotted_leaves(to_dict(cfg, hide_secrets=True)):
        out[key] = cfg.layered.get(key) or (LOCAL if key in local else DEFAULT)
    return out


def parse_section(text: str, file: str, name: str, cls: type[T]) -> T:
    """One top-level table of a config file as the dataclass `cls`, validated like the
    agent's own sections (a program that shares the file, such as the collector)."""
    data = _parse_toml(text, file).get(name, {})
    ctx = _Ctx(file, _key_lines(text))
    return _convert(cls, data, name, {}, ctx)  # type: ignore[no-any-return]


def read_config_text(path: str | Path | None = None) -> tuple[str, str]:
    """The text of the config file and its path as shown in errors; raises ConfigError."""
    p = config_path(str(path) if path is not None else None)
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config: {e}", file=str(p)) from None


def _cross_check(cfg: Config, ctx: _Ctx) -> None:
    if cfg.power.battery_critical_pct > cfg.power.battery_low_pct:
        raise ctx.error("power.battery_critical_pct", "must not exceed power.battery_low_pct")
    if cfg.agent.target == "adb" and not cfg.agent.adb_serial:
        raise ctx.error("agent.adb_serial", 'required with target = "adb"')
    names = [p.name for p in cfg.printer] + [s.name for s in cfg.serial]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ctx.error("printer", f"device names must be unique, repeated: {sorted(dup)}")
    for i, s in enumerate(cfg.serial):
        if not s.device and not s.match:
            raise ctx.error(f"serial[{i}]", "needs device or match")
        if s.expect:
            try:
                re.compile(s.expect)
            except re.error as e:
                raise ctx.error(f"serial[{i}].expect", f"invalid regex: {e}") from None
    for pat in cfg.app.log_patterns + cfg.screen.sensitive_windows:
        try:
            re.compile(pat)
        except re.error as e:
            raise ctx.error("app.log_patterns", f"invalid regex {pat!r}: {e}") from None
    for i, reg in enumerate(cfg.screen.mask_regions):
        if not re.fullmatch(r"\d+,\d+,\d+,\d+", reg.replace(" ", "")):
            raise ctx.error("screen.mask_regions", f"region {i} must be 'x,y,width,height'")
    for name, path in cfg.upload.command_logs.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise ctx.error(f"upload.command_logs.{name}", "names are 1-64 of A-Z a-z 0-9 . _ -")
        if not os.path.isabs(path):
            raise ctx.error(f"upload.command_logs.{name}", f"{path!r} is not an absolute path")
    for i, hp in enumerate(cfg.network.payment_hosts):
        if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}", hp):
            raise ctx.error("network.payment_hosts", f"entry {i} {hp!r} must be host:port")


def config_path(explicit: str | None = None) -> Path:
    """--config, else $POSAGENT_CONFIG, else /etc/posagent/agent.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("POSAGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the config file, with the channel's layers (agent/core/layers.py)
    merged around it; raises ConfigError for the file's own errors."""
    text, file = read_config_text(path)
    return layered_config(text, file)


def to_dict(obj: Any, *, hide_secrets: bool = True) -> Any:
    """The effective config as plain data; secret values become '***'."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            v = obj.__dict__[f.name]
            if hide_secrets and f.metadata.get("secret") and v:
                out[f.name] = "***"
            else:
                out[f.name] = to_dict(v, hide_secrets=hide_secrets)
        return out
    if isinstance(obj, list):
        return [to_dict(v, hide_secrets=hide_secrets) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, hide_secrets=hide_secrets) for k, v in obj.items()}
    return obj


def dump_toml(data: dict[str, Any], notes: typing.Mapping[str, str] | None = None) -> str:
    """Render the effective config as TOML (the subset this config uses); `notes` maps
    dotted keys to a trailing comment (where the value came from)."""
    out: list[str] = []
    notes = notes or {}

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return json.dumps(v)

    def table(name: str, d: dict[str, Any], array: bool = False, dotted: str = "") -> None:
        out.append(f"[[{name}]]" if array else f"[{name}]")
        dotted = dotted or name
        nested = []
        for k, v in d.items():
            if isinstance(v, dict) and v:
                nested.append((k, v))
            else:
                note = notes.get(f"{dotted}.{k}")
                text = "{}" if isinstance(v, dict) else scalar(v)
                out.append(f"{k} = {text}" + (f"  # {note}" if note else ""))
        out.append("")
        for k, v in nested:
            table(f"{name}.{k}", v, dotted=f"{dotted}.{k}")

    for name, v in data.items():
        if isinstance(v, list):
            for item in v:
                table(name, item, array=True)
        elif isinstance(v, dict):
            if name == "faults":
                for k, sub in v.items():
                    table(f'faults."{k}"', sub, dotted=f"faults.{k}")
            else:
                table(name, v)
    return "\n".join(out)

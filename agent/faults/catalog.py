"""The fault catalog of docs/ARCHITECTURE.md §8 as data: one `Rule` per fault key.

A rule says which readings it reads (`source`: "power", "printer:*" whose
subject is the part after ':'), a pure check on the reading's values that
returns a `Verdict`, and how long the bad / good condition must hold before
the fault is raised / cleared (`Threshold`: consecutive readings and/or
seconds). The engine (agent/faults/engine.py) owns all state; the only per-rule state
a check sees is the sample window of windowed rules (network.high_latency).

Verdicts: ``None`` unknown (inputs missing: neither raises nor clears and does
not advance or reset the counters), ``False`` good, ``True`` bad at the rule's
severity, or a `Severity` for two-level rules (power.battery_hot: warning at
45 °C, critical at 60 °C).

Modelling choices (docs/ARCHITECTURE.md §8 leaves them open):
- power.battery_low and power.battery_critical are two keys, as the catalog table names
  them: each has its own threshold and clear band (threshold + 5), and an
  operator can disable or re-grade one without the other. power.battery_hot
  is ONE key with severity escalation (warning → critical) because the catalog
  lists it as one key with two severities; the engine emits a second RAISED
  event with the higher severity when the critical level holds for
  raise_after, and severity never drops while the fault stays raised.
- Hysteresis bands are expressed with ``None``: a battery at 17 % (between
  15 and 20) is "unknown" for battery_low, so it neither raises nor clears.
- printer.absent raises after 1 reading and printer.no_reply after 3 misses
  ("1 / 3 misses" in the table); both clear after 1 valid reading. No reply
  is never a paper fault: the status bits are None unless link == "ok".
- system.disk_low / memory_low hold for 2 readings; cpu_saturated for 2 min.
- Flapping: every area gets an `<area>.flapping` rule (network.flapping is
  the one in the catalog table); for those rules `raise_after` is the number of
  transitions within `flap_window_s` and `clear_after` the quiet period.
- Overrides (cfg.faults[key]): `raise_after` / `clear_after` replace the
  threshold in the rule's own unit (readings for count rules, seconds for
  duration rules; the secondary minimum of a mixed rule such as
  power.ac_lost's "2 readings ≥ 5 s" is dropped). `severity` replaces the
  base severity; the explicit critical level of a two-level rule stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from agent.core.config import Config, FaultOverride
from agent.core.model import Severity

Verdict = bool | Severity | None

W = Severity.WARNING
E = Severity.ERROR
C = Severity.CRITICAL


class Kind(StrEnum):
    """How a rule is driven."""

    READING = "reading"  # matched against readings by source
    CONDITION = "condition"  # raised/cleared through FaultEngine.set_condition
    EVENT = "event"  # one-shot through FaultEngine.event
    FLAPPING = "flapping"  # derived from transitions of the area's other rules
    MONITOR = "monitor"  # agent.monitor_failed: readings with ok=False


@dataclass(frozen=True)
class Threshold:
    """How long a condition must hold: `count` consecutive readings AND `seconds`.

    `unit` says which number an override replaces ("readings" or "seconds").
    """

    count: int = 1
    seconds: float = 0.0
    unit: str = "readings"

    def describe(self) -> str:
        """Human form for status output: "2 readings", "300 s", "2 readings ≥ 5 s"."""
        if self.unit == "seconds":
            return f"{self.seconds:g} s"
        text = f"{self.count} reading" + ("s" if self.count != 1 else "")
        return text + (f" ≥ {self.seconds:g} s" if self.seconds > 0 else "")


def readings(n: int, min_s: float = 0.0) -> Threshold:
    """n consecutive readings (and at least min_s seconds since the first)."""
    return Threshold(count=max(1, n), seconds=min_s, unit="readings")


def seconds(s: float) -> Threshold:
    """The condition holds for s seconds (at least one reading at each end)."""
    return Threshold(count=1, seconds=s, unit="seconds")


@dataclass(frozen=True)
class CheckContext:
    """What a check may read besides the values: config and its sample window."""

    cfg: Config
    window: Sequence[float] = ()


Check = Callable[[Mapping[str, Any], CheckContext], Verdict]
Expand = Callable[[Mapping[str, Any], CheckContext], Iterable[tuple[str, Verdict]] | None]
Sample = Callable[[Mapping[str, Any]], float | None]


def _never(values: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    return None


@dataclass(frozen=True)
class Rule:
    """One catalog row: a fault key and how it is detected."""

    key: str
    severity: Severity
    kind: Kind
    summary: str
    source: str = ""
    check: Check = _never
    expand: Expand | None = None
    sample: Sample | None = None
    window_size: Callable[[Config], int] | None = None
    raise_after: Threshold = field(default_factory=Threshold)
    clear_after: Threshold = field(default_factory=Threshold)
    flap_window_s: float = 600.0
    enabled: bool = True
    doc: str = ""

    @property
    def area(self) -> str:
        """The part of the key before the dot: "printer" for printer.paper_end."""
        return self.key.split(".", 1)[0]

    def subject_of(self, source: str) -> str | None:
        """The subject for a reading's source, or None when this rule does not apply."""
        if self.kind is not Kind.READING and not (self.kind is Kind.EVENT and self.source):
            return None
        if self.source.endswith(":*"):
            prefix = self.source[:-1]
            if source.startswith(prefix) and len(source) > len(prefix):
                return source[len(prefix) :]
            return None
        return "" if source == self.source else None


# --------------------------------------------------------------------------- helpers


def _num(values: Mapping[str, Any], key: str) -> float | None:
    v = values.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _flag(values: Mapping[str, Any], key: str) -> bool | None:
    v = values.get(key)
    return v if isinstance(v, bool) else None


def _bad_if(values: Mapping[str, Any], key: str, bad_value: bool) -> Verdict:
    """True when the flag equals bad_value, False when it is the other bool, else None."""
    v = _flag(values, key)
    return None if v is None else v is bad_value


def p95(samples: Sequence[float]) -> float:
    """95th percentile by nearest rank (samples must not be empty)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- checks: power


def _ac_lost(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    return _bad_if(v, "ac_online", False)


def _battery_level(limit: Callable[[Config], int]) -> Check:
    def check(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
        if v.get("battery_present") is False:
            return False
        pct = _num(v, "battery_pct")
        if pct is None:
            return None
        low = limit(ctx.cfg)
        if pct <= low:
            return True
        if pct >= low + 5:
            return False
        return None  # inside the hysteresis band: hold

    return check


def _not_charging(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    plugged, status = _flag(v, "plugged"), v.get("battery_status")
    if plugged is False or v.get("battery_present") is False:
        return False
    if plugged is None or not isinstance(status, str):
        return None
    pct = v.get("battery_pct")
    if isinstance(pct, int | float) and not isinstance(pct, bool) and pct >= 95:
        return False  # firmware stops charging near full and says "Not charging"
    return status.strip().lower() == "not charging"


def _battery_health(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    if v.get("battery_present") is False:
        return False
    health = v.get("battery_health")
    if not isinstance(health, str) or health.strip().lower() in ("", "unknown"):
        return None
    return health.strip().lower() != "good"


def _battery_hot(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    temp = _num(v, "battery_temp_c")
    if temp is None:
        return None
    if temp >= ctx.cfg.power.battery_critical_hot_c:
        return Severity.CRITICAL
    return temp >= ctx.cfg.power.battery_hot_c


# --------------------------------------------------------------------------- checks: network

_LINK_DOWN_STATES = {"down", "lowerlayerdown", "notpresent", "dormant"}


def _link_down(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    carrier, oper = _flag(v, "carrier"), v.get("operstate")
    oper = oper.strip().lower() if isinstance(oper, str) else None
    if carrier is False or oper in _LINK_DOWN_STATES:
        return True
    if carrier is None and oper in (None, "unknown"):
        return None
    # carrier up (or unknown) with operstate up/unknown/testing: link is there
    return False


def _no_route(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    return _bad_if(v, "default_route", False)


def _dns_failure(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    return _bad_if(v, "dns_ok", False)


def _host_unreachable(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    connect = _flag(v, "connect_ok")
    if connect is None:
        return None  # not tried (e.g. DNS failed): dns_failure speaks for it
    if not connect:
        return True
    return _flag(v, "tls_ok") is False


def _latency_sample(v: Mapping[str, Any]) -> float | None:
    if v.get("connect_ok") is False:
        return None
    return _num(v, "connect_ms")


def _high_latency(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    need = min(5, ctx.cfg.network.latency_window)
    if len(ctx.window) < need:
        return None
    return p95(ctx.window) > ctx.cfg.network.high_latency_ms


# --------------------------------------------------------------------------- checks: printer


def _printer_link(bad: set[str]) -> Check:
    def check(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
        link = v.get("link")
        if not isinstance(link, str):
            return None
        if link in bad:
            return True
        if link == "ok":
            return False
        return None  # another link failure: not this rule's to judge

    return check


def _printer_bit(name: str, bad_value: bool = True) -> Check:
    def check(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
        if v.get("link") != "ok":
            return None  # "no reply" is never "no paper"
        return _bad_if(v, name, bad_value)

    return check


PRINTER_CAUSES = ("cover_open", "paper_end", "cutter_error", "unrecoverable", "auto_recoverable")


def _printer_offline(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    """Offline with no more specific cause: a printer goes offline on paper end or an open
    cover too, and those have faults of their own (one fault, one bundle)."""
    if v.get("link") != "ok":
        return None
    online = _flag(v, "online")
    if online is None:
        return None
    if online:
        return False
    return not any(v.get(k) is True for k in PRINTER_CAUSES)


# --------------------------------------------------------------------------- checks: serial


def _serial_state(bad: set[str], good: set[str]) -> Check:
    def check(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
        state = v.get("state")
        if not isinstance(state, str):
            return None
        if state in bad:
            return True
        if state in good:
            return False
        return None

    return check


def _identity_changed(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    return _bad_if(v, "identity_changed", True)


def _unexpected_devices(
    v: Mapping[str, Any], ctx: CheckContext
) -> Iterable[tuple[str, Verdict]] | None:
    """One (identity, True) per unexpected device; None when the list is unknown."""
    found = v.get("unexpected")
    if not isinstance(found, list):
        return None
    return [(str(ident), True) for ident in found if isinstance(ident, str) and ident]


# --------------------------------------------------------------------------- checks: system


def _disk_low(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    pct, mib = _num(v, "disk_free_pct"), _num(v, "disk_free_mib")
    s = ctx.cfg.system
    if (pct is not None and pct < s.disk_low_pct) or (mib is not None and mib < s.disk_low_mib):
        return True
    if pct is None and mib is None:
        return None
    return False


def _above(key: str, limit: Callable[[Config], float], *, below: bool = False) -> Check:
    def check(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
        x = _num(v, key)
        if x is None:
            return None
        return x < limit(ctx.cfg) if below else x >= limit(ctx.cfg)

    return check


def _clock_jump(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    jump = _num(v, "clock_jump_s")
    return None if jump is None else abs(jump) > ctx.cfg.system.clock_jump_s


# --------------------------------------------------------------------------- checks: app


def _hung(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    if v.get("running") is False:
        return None  # not running is app.not_running, not hung
    age = _num(v, "heartbeat_age_s")
    return None if age is None else age > ctx.cfg.app.heartbeat_max_age_s


def _crash_loop(v: Mapping[str, Any], ctx: CheckContext) -> Verdict:
    n = _num(v, "restarts_10min")
    return None if n is None else n >= 3


# --------------------------------------------------------------------------- the table

AREAS = ("power", "network", "printer", "serial", "system", "app", "upload", "agent")


def _flapping(area: str) -> Rule:
    return Rule(
        f"{area}.flapping",
        E,
        Kind.FLAPPING,
        "{instance} flapping: {transitions} transitions in {window_min:g} min",
        raise_after=readings(6),
        clear_after=seconds(300.0),
        flap_window_s=600.0,
        doc="≥ 6 transitions of one fault instance within 10 min; clears after 5 quiet min",
    )


CATALOG: tuple[Rule, ...] = (
    # power ------------------------------------------------------------------
    Rule(
        "power.ac_lost",
        E,
        Kind.READING,
        "AC power lost",
        source="power",
        check=_ac_lost,
        raise_after=readings(2, min_s=5.0),
        clear_after=readings(2),
        doc="no Mains/USB/AC supply online",
    ),
    Rule(
        "power.battery_low",
        W,
        Kind.READING,
        "battery low: {battery_pct:.0f} %",
        source="power",
        check=_battery_level(lambda c: c.power.battery_low_pct),
        raise_after=readings(1),
        clear_after=readings(1),
        doc="capacity ≤ battery_low_pct; clears at ≥ battery_low_pct + 5",
    ),
    Rule(
        "power.battery_critical",
        C,
        Kind.READING,
        "battery critical: {battery_pct:.0f} %",
        source="power",
        check=_battery_level(lambda c: c.power.battery_critical_pct),
        raise_after=readings(1),
        clear_after=readings(1),
        doc="capacity ≤ battery_critical_pct; clears at ≥ battery_critical_pct + 5",
    ),
    Rule(
        "power.not_charging",
        W,
        Kind.READING,
        "plugged in but not charging ({battery_pct} %)",
        source="power",
        check=_not_charging,
        raise_after=seconds(300.0),
        clear_after=readings(1),
        doc='plugged and battery status "Not charging"',
    ),
    Rule(
        "power.battery_health",
        E,
        Kind.READING,
        "battery health: {battery_health}",
        source="power",
        check=_battery_health,
        raise_after=readings(1),
        clear_after=readings(1),
        doc='battery health other than "Good" ("Unknown" is unknown)',
    ),
    Rule(
        "power.battery_hot",
        W,
        Kind.READING,
        "battery hot: {battery_temp_c:.1f} °C",
        source="power",
        check=_battery_hot,
        raise_after=readings(2),
        clear_after=readings(2),
        doc="≥ battery_hot_c warning, ≥ battery_critical_hot_c critical",
    ),
    Rule(
        "power.unclean_shutdown",
        E,
        Kind.EVENT,
        "previous boot ended without a clean stop",
        doc="once per boot, at start",
    ),
    # network ----------------------------------------------------------------
    Rule(
        "network.link_down",
        C,
        Kind.READING,
        "link down on {subject} (carrier {carrier}, operstate {operstate})",
        source="network:*",
        check=_link_down,
        raise_after=readings(2),
        clear_after=readings(3),
        doc="carrier 0 or operstate down on a configured interface",
    ),
    Rule(
        "network.no_route",
        C,
        Kind.READING,
        "no default route",
        source="network",
        check=_no_route,
        raise_after=readings(3),
        clear_after=readings(3),
        doc="no IPv4 or IPv6 default route",
    ),
    Rule(
        "network.dns_failure",
        C,
        Kind.READING,
        "cannot resolve {subject}: {error}",
        source="payment:*",
        check=_dns_failure,
        raise_after=readings(3),
        clear_after=readings(3),
        doc="resolver fails for the payment host",
    ),
    Rule(
        "network.host_unreachable",
        C,
        Kind.READING,
        "payment host {subject} unreachable: {error}",
        source="payment:*",
        check=_host_unreachable,
        raise_after=readings(3),
        clear_after=readings(3),
        doc="TCP connect (and TLS handshake when tried) fails",
    ),
    Rule(
        "network.high_latency",
        W,
        Kind.READING,
        "slow connect to {subject}: p95 {p95_ms:.0f} ms",
        source="payment:*",
        check=_high_latency,
        sample=_latency_sample,
        window_size=lambda c: c.network.latency_window,
        raise_after=seconds(300.0),
        clear_after=seconds(120.0),
        doc="p95 of the last latency_window connect times > high_latency_ms",
    ),
    # printer ----------------------------------------------------------------
    Rule(
        "printer.absent",
        E,
        Kind.READING,
        "printer {subject}: device missing",
        source="printer:*",
        check=_printer_link({"absent"}),
        raise_after=readings(1),
        clear_after=readings(1),
        doc="device node / port missing",
    ),
    Rule(
        "printer.no_reply",
        E,
        Kind.READING,
        "printer {subject}: {link} to DLE EOT",
        source="printer:*",
        check=_printer_link({"no_reply", "invalid_reply"}),
        raise_after=readings(3),
        clear_after=readings(1),
        doc="port present but no valid DLE EOT reply within the timeout",
    ),
    Rule(
        "printer.offline",
        E,
        Kind.READING,
        "printer {subject}: offline",
        source="printer:*",
        check=_printer_offline,
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 1 bit 3",
    ),
    Rule(
        "printer.cover_open",
        C,
        Kind.READING,
        "printer {subject}: cover open",
        source="printer:*",
        check=_printer_bit("cover_open"),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 2 bit 2",
    ),
    Rule(
        "printer.paper_end",
        C,
        Kind.READING,
        "printer {subject}: out of paper",
        source="printer:*",
        check=_printer_bit("paper_end"),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 4 bits 5-6",
    ),
    Rule(
        "printer.cutter_error",
        E,
        Kind.READING,
        "printer {subject}: cutter error",
        source="printer:*",
        check=_printer_bit("cutter_error"),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 3 bit 3",
    ),
    Rule(
        "printer.unrecoverable",
        C,
        Kind.READING,
        "printer {subject}: unrecoverable error",
        source="printer:*",
        check=_printer_bit("unrecoverable"),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 3 bit 5",
    ),
    Rule(
        "printer.overheat",
        E,
        Kind.READING,
        "printer {subject}: auto-recoverable error (head overheat)",
        source="printer:*",
        check=_printer_bit("auto_recoverable"),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 3 bit 6",
    ),
    Rule(
        "printer.paper_near_end",
        W,
        Kind.READING,
        "printer {subject}: paper near end",
        source="printer:*",
        check=_printer_bit("paper_near_end"),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="DLE EOT 4 bits 2-3",
    ),
    Rule(
        "printer.drawer_open_too_long",
        W,
        Kind.READING,
        "printer {subject}: cash drawer open too long",
        source="printer:*",
        check=_printer_bit("drawer_open"),
        raise_after=seconds(120.0),
        clear_after=readings(1),
        doc="DLE EOT 1 bit 2 (polarity applied by the monitor) for 2 min",
    ),
    # serial -----------------------------------------------------------------
    Rule(
        "serial.missing",
        E,
        Kind.READING,
        "peripheral {subject} missing",
        source="serial:*",
        check=_serial_state({"absent"}, {"ok", "no_reply", "wrong_reply"}),
        raise_after=readings(1),
        clear_after=readings(1),
        doc="an expected peripheral is gone",
    ),
    Rule(
        "serial.identity_changed",
        C,
        Kind.READING,
        "peripheral {subject} identity changed to {identity}",
        source="serial:*",
        check=_identity_changed,
        raise_after=readings(1),
        clear_after=readings(1),
        doc="same port, different VID/PID/serial (possible swap)",
    ),
    Rule(
        "serial.unexpected_device",
        W,
        Kind.READING,
        "unexpected serial device {subject}",
        source="peripherals",
        expand=_unexpected_devices,
        raise_after=readings(1),
        clear_after=readings(1),
        doc="a present port not in the allow-list (possible skimmer); one instance per identity",
    ),
    Rule(
        "serial.no_reply",
        E,
        Kind.READING,
        "peripheral {subject}: {state} to probe",
        source="serial:*",
        check=_serial_state({"no_reply", "wrong_reply"}, {"ok"}),
        raise_after=readings(3),
        clear_after=readings(2),
        doc="a configured probe gets no or a wrong reply",
    ),
    # system -----------------------------------------------------------------
    Rule(
        "system.disk_low",
        E,
        Kind.READING,
        "disk low: {disk_free_pct:.1f} % / {disk_free_mib:.0f} MiB free",
        source="system",
        check=_disk_low,
        raise_after=readings(2),
        clear_after=readings(2),
        doc="free < disk_low_pct or < disk_low_mib",
    ),
    Rule(
        "system.memory_low",
        E,
        Kind.READING,
        "memory low: {mem_available_pct:.1f} % available",
        source="system",
        check=_above("mem_available_pct", lambda c: c.system.memory_low_pct, below=True),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="available < memory_low_pct",
    ),
    Rule(
        "system.cpu_saturated",
        E,
        Kind.READING,
        "CPU saturated: {cpu_pct:.0f} %",
        source="system",
        check=_above("cpu_pct", lambda c: c.system.cpu_saturated_pct),
        raise_after=seconds(120.0),
        clear_after=readings(2),
        doc="cpu ≥ cpu_saturated_pct for 2 min",
    ),
    Rule(
        "system.clock_unsynced",
        W,
        Kind.READING,
        "clock not synchronised",
        source="system",
        check=lambda v, ctx: _bad_if(v, "clock_synced", False),
        raise_after=readings(1),
        clear_after=readings(1),
        doc="not NTP-synced",
    ),
    Rule(
        "system.clock_jump",
        W,
        Kind.READING,
        "clock jumped by {clock_jump_s:.0f} s",
        source="system",
        check=_clock_jump,
        raise_after=readings(1),
        clear_after=readings(1),
        doc="wall vs monotonic drift > clock_jump_s",
    ),
    # app --------------------------------------------------------------------
    Rule(
        "app.not_running",
        C,
        Kind.READING,
        "POS application not running",
        source="app",
        check=lambda v, ctx: _bad_if(v, "running", False),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="configured process absent",
    ),
    Rule(
        "app.crash_loop",
        C,
        Kind.READING,
        "POS application restarted {restarts_10min} times in 10 min",
        source="app",
        check=_crash_loop,
        raise_after=readings(2),
        clear_after=readings(2),
        doc="≥ 3 restarts in 10 min",
    ),
    Rule(
        "app.hung",
        C,
        Kind.READING,
        "POS application hung: heartbeat {heartbeat_age_s:.0f} s old",
        source="app",
        check=_hung,
        raise_after=readings(2),
        clear_after=readings(2),
        doc="heartbeat file older than heartbeat_max_age_s",
    ),
    # One-shot events from the watched dirs (runner) or from readings of these sources
    # (the android monitor: dropbox entries, device dirs, logcat), one event per reading.
    Rule(
        "app.crash_report",
        E,
        Kind.EVENT,
        "crash report {subject}",
        source="crash:*",
        doc="new crash/tombstone",
    ),
    Rule("app.anr", E, Kind.EVENT, "ANR report {subject}", source="anr:*", doc="new ANR report"),
    Rule(
        "app.log_error",
        E,
        Kind.EVENT,
        "log error in {subject}",
        source="log_error:*",
        doc="log line matched",
    ),
    Rule("manual.report", W, Kind.EVENT, "manual report", doc="posagent report / trigger file"),
    # agent itself -----------------------------------------------------------
    Rule(
        "upload.auth_failed",
        E,
        Kind.CONDITION,
        "collector rejects the device credentials",
        raise_after=readings(1),
        clear_after=readings(1),
        doc="401/403 from the collector (set by the uploader)",
    ),
    Rule(
        "agent.monitor_failed",
        E,
        Kind.MONITOR,
        "monitor {subject} failing: {error}",
        raise_after=readings(3),
        clear_after=readings(1),
        doc="a monitor raised or overran its timeout N times in a row",
    ),
    Rule(
        "adb.offline",
        C,
        Kind.READING,
        "adb device unreachable",
        source="adb",
        check=lambda v, ctx: _bad_if(v, "online", False),
        raise_after=readings(2),
        clear_after=readings(2),
        doc="the Android terminal cannot be reached over adb",
    ),
    *(_flapping(a) for a in (*AREAS, "adb")),
)

RULES: dict[str, Rule] = {r.key: r for r in CATALOG}


def flapping_key(area: str) -> str:
    """The flapping fault of an area."""
    return f"{area}.flapping"


def _apply_threshold(t: Threshold, value: float) -> Threshold:
    if value < 0:
        return t
    if t.unit == "seconds":
        return seconds(value)
    return readings(round(value))


def apply_override(rule: Rule, ov: FaultOverride | None) -> Rule:
    """The rule with one cfg.faults override applied (-1 / "" keep the default)."""
    if ov is None:
        return rule
    out = replace(
        rule,
        enabled=ov.enabled,
        raise_after=_apply_threshold(rule.raise_after, ov.raise_after),
        clear_after=_apply_threshold(rule.clear_after, ov.clear_after),
    )
    if ov.severity:
        out = replace(out, severity=Severity(ov.severity))
    return out


def effective_rules(cfg: Config) -> dict[str, Rule]:
    """Every catalog rule with cfg.faults overrides applied, by key."""
    return {key: apply_override(rule, cfg.faults.get(key)) for key, rule in RULES.items()}


def unknown_override_keys(faults: Mapping[str, FaultOverride]) -> list[str]:
    """cfg.faults keys that name no catalog rule (typos the daemon should report)."""
    return sorted(k for k in faults if k not in RULES)

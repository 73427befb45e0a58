"""`posagent selftest`: poll every configured device once and show what each one reports.

Every monitor from the config is polled once in parallel (scheduler.poll_once,
each bounded by its own timeout). Each reading is then judged by the catalog
predicates on that one reading, without hysteresis: a device's state is the
most severe fault key whose check says "bad" (`printer.paper_end`,
`power.battery_critical`, ...), `agent.monitor_failed` when the poll itself
failed, or `ok`. Windowed rules (network.high_latency) need several samples and
never fire here; duration thresholds are ignored on purpose (one look).

Below the table, the screen's privacy state: what protects a screenshot right
now (PIN flag file present/absent/unreadable, the sensitive-window patterns,
default or configured, and whether a detector can read window names here, OCR
masking and tesseract, mask regions, the backend) and a WARNING line when
nothing does (agent.capture.privacy.privacy_state). It does not change the
exit status.

Exit status: 0 when every device is ok, 1 when one reports a fault, 78 on a
config error (raised as ConfigError for the CLI to map).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from agent.capture.privacy import privacy_state, render_privacy
from agent.commands.common import check_bundle_crypto, check_secret_files, load, setup_logging
from agent.core.config import Config
from agent.core.exits import EX_FAIL, EX_OK
from agent.core.model import Reading, Severity
from agent.faults.catalog import CheckContext, Kind, Rule, effective_rules
from agent.faults.engine import format_summary
from agent.monitors import Monitor, MonitorContext, build_monitors, load_all
from agent.monitors.scheduler import poll_once


@dataclass(frozen=True)
class Finding:
    """One catalog fault that a single reading shows."""

    key: str
    severity: Severity
    summary: str
    subject: str = ""


@dataclass(frozen=True)
class DeviceResult:
    """One row of the selftest table."""

    device: str
    findings: tuple[Finding, ...]
    detail: str
    latency_ms: float | None
    reading: Reading

    @property
    def state(self) -> str:
        """The most severe fault key, or "ok"."""
        return self.findings[0].key if self.findings else "ok"

    def to_json(self) -> dict[str, Any]:
        """Plain data for --json."""
        return {
            "device": self.device,
            "state": self.state,
            "severity": self.findings[0].severity.value if self.findings else None,
            "faults": [
                {
                    "key": f.key,
                    "severity": f.severity.value,
                    "summary": f.summary,
                    "subject": f.subject,
                }
                for f in self.findings
            ],
            "detail": self.detail,
            "latency_ms": self.latency_ms,
            "reading": self.reading.to_json(),
        }


def _verdict_severity(rule: Rule, verdict: object) -> Severity | None:
    if isinstance(verdict, Severity):
        return verdict if verdict.rank > rule.severity.rank else rule.severity
    if verdict is True:
        return rule.severity
    return None


def evaluate(cfg: Config, reading: Reading, rules: dict[str, Rule] | None = None) -> list[Finding]:
    """The faults one reading shows by the catalog predicates, most severe first."""
    if not reading.ok:
        return [
            Finding(
                "agent.monitor_failed",
                Severity.ERROR,
                f"monitor {reading.source} failing: {reading.error or 'failed'}",
                reading.source,
            )
        ]
    found: list[Finding] = []
    for rule in (rules or effective_rules(cfg)).values():
        if not rule.enabled or rule.kind is not Kind.READING:
            continue
        subject = rule.subject_of(reading.source)
        if subject is None:
            continue
        values = reading.values
        if rule.expand is not None:
            for subj, verdict in rule.expand(values, CheckContext(cfg)) or []:
                sev = _verdict_severity(rule, verdict)
                if sev is not None:
                    text = format_summary(rule.summary, {**values, "subject": subj})
                    found.append(Finding(rule.key, sev, text, subj))
            continue
        window: tuple[float, ...] = ()
        if rule.sample is not None:
            sample = rule.sample(values)
            window = (sample,) if sample is not None else ()
        sev = _verdict_severity(rule, rule.check(values, CheckContext(cfg, window)))
        if sev is not None:
            text = format_summary(rule.summary, {**values, "subject": subject})
            found.append(Finding(rule.key, sev, text, subject))
    found.sort(key=lambda f: (-f.severity.rank, f.key, f.subject))
    return found


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


_DETAIL_KEYS: dict[str, tuple[str, ...]] = {
    "power": ("ac_online", "battery_pct", "battery_status", "battery_health", "battery_temp_c"),
    "network": ("carrier", "operstate", "default_route", "default_interface"),
    "payment": ("connect_ok", "connect_ms", "tls_ok", "error"),
    "printer": ("link", "online", "paper_near_end", "latency_ms", "error"),
    "serial": ("state", "identity", "error"),
    "peripherals": ("unexpected",),
    "system": ("cpu_pct", "mem_available_pct", "disk_free_pct", "clock_synced"),
    "app": ("running", "restarts_10min", "heartbeat_age_s"),
    "adb": ("online", "state"),
}


def describe(reading: Reading) -> str:
    """A short key=value summary of the values that matter for the reading's area."""
    if not reading.ok:
        return reading.error or "failed"
    keys = _DETAIL_KEYS.get(reading.area, tuple(reading.values)[:5])
    parts = []
    for k in keys:
        v = reading.values.get(k)
        if v is None or v == "" or v == []:
            continue
        parts.append(f"{k}={_fmt(v)}")
    return ", ".join(parts)


@dataclass
class _Timed:
    """Wraps a monitor to time its poll and remember which sources it produced."""

    monitor: Monitor
    elapsed_s: float | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.monitor.name

    @property
    def interval_s(self) -> float:
        return self.monitor.interval_s

    @property
    def timeout_s(self) -> float:
        return self.monitor.timeout_s

    def poll(self) -> list[Reading]:
        t0 = time.perf_counter()
        try:
            readings = self.monitor.poll()
            self.sources = [r.source for r in readings] if isinstance(readings, list) else []
            return readings
        finally:
            self.elapsed_s = time.perf_counter() - t0


def run_selftest(
    cfg: Config, ctx: MonitorContext | None = None, monitors: Sequence[Monitor] | None = None
) -> list[DeviceResult]:
    """Poll every monitor once and judge each reading."""
    if monitors is None:
        load_all()
        monitors = build_monitors(cfg, ctx or MonitorContext.from_config(cfg))
    timed = [_Timed(m) for m in monitors]
    readings = poll_once(timed)
    latency: dict[str, float | None] = {}
    for t in timed:
        ms = round(t.elapsed_s * 1000, 1) if t.elapsed_s is not None else None
        for src in [*t.sources, t.name]:
            latency.setdefault(src, ms)
    rules = effective_rules(cfg)
    out: list[DeviceResult] = []
    for r in readings:
        findings = evaluate(cfg, r, rules)
        detail = findings[0].summary if findings else describe(r)
        if findings and not r.ok:
            detail = r.error
        out.append(DeviceResult(r.source, tuple(findings), detail, latency.get(r.source), r))
    return out


def render_table(results: Sequence[DeviceResult]) -> str:
    """The human table: device, state, latency, detail."""
    rows = [("DEVICE", "STATE", "LATENCY", "DETAIL")]
    for d in results:
        lat = f"{d.latency_ms:.0f} ms" if d.latency_ms is not None else "-"
        state = d.state
        if len(d.findings) > 1:
            state += f" (+{len(d.findings) - 1})"
        rows.append((d.device, state, lat, d.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    ]
    bad = sum(1 for d in results if d.findings)
    lines.append("")
    lines.append(
        f"{len(results)} device reading(s), " + ("all ok" if not bad else f"{bad} with a fault")
    )
    return "\n".join(lines)


def exit_code(results: Sequence[DeviceResult]) -> int:
    """0 when every device is ok, 1 otherwise."""
    return EX_FAIL if any(d.findings for d in results) else EX_OK


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """The `posagent selftest` command (args: config, json)."""
    out = stdout or sys.stdout
    cfg = load(args)
    check_secret_files(cfg)
    check_bundle_crypto(cfg)
    setup_logging(cfg, "warning")
    results = run_selftest(cfg)
    ctx = MonitorContext.from_config(cfg)
    privacy = privacy_state(cfg.screen, cfg.agent.target, ctx.shell, ctx.roots)
    if getattr(args, "json", False):
        doc = {
            "ok": exit_code(results) == EX_OK,
            "devices": [d.to_json() for d in results],
            "privacy": privacy.to_json(),
        }
        out.write(json.dumps(doc, indent=2, default=str) + "\n")
    else:
        out.write(render_table(results) + "\n\n" + render_privacy(privacy) + "\n")
    return exit_code(results)

"""One self-contained HTML page for a bundle: summary, screenshot inline, timeline chart, diagnostics."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from agent.bundle.format import MANIFEST, SIGNATURE, BundleReader
from agent.bundle.remedies import CLEARED_NOTE, remedy
from agent.bundle.style import CSS, esc

BAD_WHEN_TRUE = frozenset(
    {
        "cover_open",
        "paper_end",
        "paper_near_end",
        "cutter_error",
        "unrecoverable",
        "auto_recoverable",
        "identity_changed",
        "updates_stopped",
    }
)
BAD_WHEN_FALSE = frozenset(
    {
        "online",
        "running",
        "carrier",
        "connect_ok",
        "dns_ok",
        "tls_ok",
        "ac_online",
        "default_route",
        "clock_synced",
    }
)


def looks_bad(values: dict[str, Any]) -> bool:
    """Whether a reading's values show a device problem (the red marks of the chart)."""
    for k, v in values.items():
        if (k in BAD_WHEN_TRUE and v is True) or (k in BAD_WHEN_FALSE and v is False):
            return True
        if k in ("link", "state") and isinstance(v, str) and v not in ("ok", "up"):
            return True
    return bool(values.get("unexpected"))


def timeline_svg(readings: list[dict[str, Any]], width: int = 1000, row_h: int = 22) -> str:
    """An SVG swim-lane chart: one row per source, a mark per reading (red when not ok).

    A reading whose ``ts`` is not a finite number is left out (and counted below
    the chart): a timeline is the device's word and must never break the page."""
    usable = [r for r in readings if _finite(r.get("ts", 0))]
    skipped = len(readings) - len(usable)
    note = f"<p>{skipped} reading(s) without a valid time left out.</p>" if skipped else ""
    readings = usable
    if not readings:
        return "<p>No readings in the timeline.</p>" + note
    ts = [float(r.get("ts", 0)) for r in readings]
    t0, t1 = min(ts), max(ts)
    span = max(t1 - t0, 1.0)
    sources = sorted({str(r.get("source")) for r in readings})
    left = 160
    h = row_h * len(sources) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, s in enumerate(sources):
        y = 20 + i * row_h
        parts.append(f'<text x="0" y="{y + 4}">{esc(s)}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 10}" y2="{y}" stroke="#eee"/>')
    for r in readings:
        y = 20 + sources.index(str(r.get("source"))) * row_h
        x = left + (float(r.get("ts", 0)) - t0) / span * (width - left - 20)
        values = r.get("values")
        bad = (not r.get("ok", True)) or looks_bad(values if isinstance(values, dict) else {})
        color = "#d33" if bad else "#3a3"
        try:
            title = esc(json.dumps(values, default=str)[:300])
        except (ValueError, RecursionError):
            title = "(unreadable values)"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="{color}"><title>{title}</title></circle>'
        )
    parts.append(
        f'<text x="{left}" y="{h - 4}">-{span:.0f} s</text>'
        f'<text x="{width - 60}" y="{h - 4}">trigger</text></svg>'
    )
    return "".join(parts) + note


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def remedy_html(key: str, *, cleared: bool = False) -> str:
    """The "What to do" section: the remedy of the fault key for the merchant and for support."""
    r = remedy(key)
    note = f"<p>{esc(CLEARED_NOTE)}</p>" if cleared else ""
    return (
        f"<h2>What to do</h2>{note}<table class='remedy'>"
        f"<tr><th>Merchant</th><td>{esc(r.merchant)}</td></tr>"
        f"<tr><th>Support</th><td>{esc(r.support)}</td></tr></table>"
    )


def render_html(reader: BundleReader, signature_checked: bool) -> str:
    """The page; every value is escaped, the screenshot is a data: URI."""
    m = reader.manifest()
    trig = m.get("trigger") or {}
    dev = m.get("device") or {}
    sev = str(trig.get("severity", ""))
    body: list[str] = [
        f"<h1>Bundle {esc(m.get('bundle_id'))}</h1>",
        "<table>",
        f"<tr><th>Trigger</th><td class='sev-{esc(sev)}'>{esc(trig.get('kind'))} "
        f"{esc(trig.get('key', ''))} {esc(sev)}</td></tr>",
        f"<tr><th>Summary</th><td>{esc(trig.get('summary', ''))}</td></tr>",
        f"<tr><th>Created</th><td>{esc(m.get('created_at'))}</td></tr>",
        f"<tr><th>Terminal</th><td>{esc(dev.get('id'))} at {esc(dev.get('site') or '-')} "
        f"({esc(dev.get('platform'))}/{esc(dev.get('target'))})</td></tr>",
        f"<tr><th>Integrity</th><td class='ok'>entries verified"
        f"{', HMAC verified' if signature_checked else ' (HMAC not checked: no key)'}</td></tr>",
        f"<tr><th>Screenshot</th><td>{esc((m.get('redaction') or {}).get('screenshot'))}</td></tr>",
        "</table>",
    ]
    body.append(remedy_html(str(trig.get("key") or ""), cleared=trig.get("kind") == "cleared"))
    names = reader.names
    if "report.txt" in names:
        body.append(
            "<h2>Report</h2><pre>"
            + esc(reader.read("report.txt").decode("utf-8", "replace"))
            + "</pre>"
        )
    if "screenshot.png" in names:
        b64 = base64.b64encode(reader.read("screenshot.png")).decode()
        body.append(
            f'<h2>Screenshot</h2><img class="shot" alt="screenshot" src="data:image/png;base64,{b64}">'
        )
    if "timeline.json" in names:
        try:
            tl = json.loads(reader.read("timeline.json"))
            readings = tl.get("readings", []) if isinstance(tl, dict) else []
        except (ValueError, RecursionError):  # not JSON, or nested too deep
            readings = []
        if not isinstance(readings, list):
            readings = []
        body.append(
            "<h2>Timeline</h2>" + timeline_svg([r for r in readings if isinstance(r, dict)])
        )
    diag = [n for n in names if n.startswith("diagnostics/")]
    if diag:
        body.append("<h2>Diagnostics</h2>")
        for n in diag:
            text = reader.read(n).decode("utf-8", "replace")
            body.append(f"<details><summary>{esc(n)}</summary><pre>{esc(text)}</pre></details>")
    body.append(
        "<h2>Manifest</h2><pre>" + esc(reader.read(MANIFEST).decode("utf-8", "replace")) + "</pre>"
    )
    others = [
        n
        for n in names
        if n not in (MANIFEST, SIGNATURE, "report.txt", "screenshot.png", "timeline.json")
        and n not in diag
    ]
    for n in others:
        body.append(f"<p>Other entry: {esc(n)}</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>posagent bundle {esc(m.get('bundle_id'))}</title><style>{CSS}</style></head>"
        "<body class='page'>" + "\n".join(body) + "</body></html>\n"
    )

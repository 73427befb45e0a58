"""Server-rendered HTML for the operator page. Every value passes html.escape; no external assets."""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from agent.bundle.format import MANIFEST, SIGNATURE, BundleReader
from agent.bundle.html import timeline_svg
from agent.bundle.style import CSS, esc
from agent.core.timefmt import MAX_EPOCH_S, short_utc
from collector.storage import BundleRecord

SEVERITIES = ("critical", "error", "warning")


def shown_time(ts: float) -> str:
    """short_utc, or '-' for a time no terminal can have made (a row stored before ingest
    checked created_at: 1e300 or NaN must not break the list)."""
    return short_utc(ts) if _sane_time(ts) else "-"


def _sane_time(ts: float) -> bool:
    return isinstance(ts, int | float) and 0 <= ts <= MAX_EPOCH_S


def fmt_size(n: int) -> str:
    """Bytes for people."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} B"


def sev_badge(sev: str) -> str:
    """A coloured severity label."""
    cls = sev if sev in SEVERITIES else "info"
    return f'<span class="sev sev-{cls}">{esc(sev or "-")}</span>'


@dataclass(frozen=True)
class Viewer:
    """Who the page is for: set by the read-side gate (`VIEWER`) for the request."""

    name: str
    role: str
    csrf: str = ""  # the session's CSRF token ("" for a Bearer token: no forms)


VIEWER: ContextVar[Viewer | None] = ContextVar("posagent_viewer", default=None)


def csrf_field() -> str:
    """The hidden CSRF input every POST form of a logged-in page carries."""
    viewer = VIEWER.get()
    token = viewer.csrf if viewer else ""
    return f"<input type='hidden' name='csrf' value='{esc(token)}'>"


def _account_bar() -> str:
    viewer = VIEWER.get()
    if viewer is None:
        return ""
    admin = (
        "<a href='/admin' id='nav-admin'>Admin</a> <a href='/audit' id='nav-audit'>Audit</a> "
        if viewer.role == "admin"
        else ""
    )
    out = (
        f"{admin}<span id='whoami'>{esc(viewer.name)} ({esc(viewer.role)})</span> "
        "<a href='/password'>password</a> "
    )
    if viewer.csrf:
        out += (
            "<form method='post' action='/logout' class='inline' id='logout-form'>"
            f"{csrf_field()}<button type='submit' class='light' id='logout'>log out</button>"
            "</form>"
        )
    return out


def layout(title: str, body: str, *, operator_login: bool = False) -> str:
    """The page frame: header, inline CSS, no scripts, no external assets.

    operator_login: the page is behind the login: the header names who is logged in
    (`VIEWER`) and carries the log-out form."""
    right = _account_bar() if operator_login else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}{_EXTRA_CSS}</style></head><body>"
        "<header><a class='brand' href='/'>posagent collector</a>"
        "<a href='/'>Bundles</a><a href='/v1/bundles'>JSON API</a>"
        f"<span class='right'>{right}</span></header>"
        f"<main>{body}</main></body></html>\n"
    )


_EXTRA_CSS = (
    "form.inline{display:inline;margin:0}header form.inline button{padding:.1rem .5rem}"
    ".secret{font-family:monospace;font-size:1.1rem;background:#fff7d6;padding:.3rem .6rem}"
)


def _link(params: dict[str, str], **changes: str) -> str:
    merged = {k: v for k, v in params.items() if k != "offset"}
    merged.update(changes)
    return "/?" + urlencode({k: v for k, v in merged.items() if v})


def render_list(
    records: list[BundleRecord],
    counts: dict[str, int],
    total: int,
    params: dict[str, str],
    limit: int,
    offset: int,
    *,
    error: str = "",
    operator_login: bool = False,
) -> str:
    """The bundle list: filters, counts by fault, a table newest first, a pager."""
    fault_options = sorted(set(counts) | ({params.get("fault", "")} - {""}))
    opts = ["<option value=''>any</option>"] + [
        f"<option value='{esc(f)}'{' selected' if f == params.get('fault') else ''}>"
        f"{esc(f or '(none)')}</option>"
        for f in fault_options
        if f
    ]
    sev_opts = ["<option value=''>any</option>"] + [
        f"<option value='{s}'{' selected' if s == params.get('severity') else ''}>{s}</option>"
        for s in SEVERITIES
    ]

    def field(name: str, label: str, kind: str = "text") -> str:
        return (
            f"<label>{label}<input type='{kind}' name='{name}' id='f-{name}' "
            f"value='{esc(params.get(name, ''))}'></label>"
        )

    form = (
        "<form class='filters' method='get' action='/'>"
        + field("device", "Device")
        + field("site", "Site")
        + f"<label>Fault<select name='fault' id='f-fault'>{''.join(opts)}</select></label>"
        + f"<label>Severity<select name='severity' id='f-severity'>{''.join(sev_opts)}</select></label>"
        + field("since", "Since (UTC)", "datetime-local")
        + field("until", "Until (UTC)", "datetime-local")
        + "<button type='submit' id='apply'>Filter</button>"
        + "<a class='button light' href='/'>Clear</a></form>"
    )
    chips = [
        f"<a class='chip{' on' if not params.get('fault') else ''}' href='{esc(_link(params, fault=''))}'>"
        f"all<b>{sum(counts.values())}</b></a>"
    ]
    for fault, n in counts.items():
        on = " on" if fault and fault == params.get("fault") else ""
        chips.append(
            f"<a class='chip{on}' data-fault='{esc(fault)}' href='{esc(_link(params, fault=fault))}'>"
            f"{esc(fault or '(none)')}<b>{n}</b></a>"
        )
    rows = []
    for r in records:
        href = f"/bundles/{quote(r.bundle_id)}"
        rows.append(
            f"<tr data-bundle='{esc(r.bundle_id)}'>"
            f"<td class='mono'><a href='{href}'>{esc(shown_time(r.created_at))}</a></td>"
            f"<td>{esc(r.device)}</td><td>{esc(r.site or '-')}</td>"
            f"<td class='mono'><a href='{href}'>{esc(r.fault_key or '-')}</a></td>"
            f"<td>{sev_badge(r.severity)}</td><td>{esc(r.trigger_kind)}</td>"
            f"<td>{esc(r.summary)}</td><td>{esc(r.screenshot)}</td>"
            f"<td class='muted'>{esc(fmt_size(r.size_bytes))}</td></tr>"
        )
    table = (
        "<table class='list' id='bundles'><thead><tr><th>Created</th><th>Device</th><th>Site</th>"
        "<th>Fault</th><th>Severity</th><th>Trigger</th><th>Summary</th><th>Screenshot</th>"
        "<th>Size</th></tr></thead><tbody>"
        + ("".join(rows) or "<tr><td colspan='9' class='muted'>No bundles match.</td></tr>")
        + "</tbody></table>"
    )
    pager = [f"<span class='muted' id='total'>{total} bundle(s)</span>"]
    if offset > 0:
        pager.append(
            f"<a class='button light' href='{esc(_link(params, offset=str(max(0, offset - limit))))}'>newer</a>"
        )
    if offset + limit < total:
        pager.append(
            f"<a class='button light' href='{esc(_link(params, offset=str(offset + limit)))}'>older</a>"
        )
    err_html = f"<p class='error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>Bundles</h1>"
        f"<div class='card'>{form}{err_html}</div>"
        f"<div class='card'><div class='chips' id='counts'>{''.join(chips)}</div></div>"
        f"{table}<div class='pager'>{''.join(pager)}</div>"
    )
    return layout("posagent collector: bundles", body, operator_login=operator_login)


def _site(registered: str, claimed: object) -> str:
    """The registered site; the manifest's own claim beside it, marked unverified."""
    shown = esc(registered) if registered else "<span class='muted'>none registered</span>"
    if isinstance(claimed, str) and claimed and claimed != registered:
        shown += f" <span class='muted' id='claimed-site'>(the device claims {esc(claimed)}: unverified)</span>"
    return shown


def render_bundle(
    record: BundleRecord, reader: BundleReader, *, operator_login: bool = False
) -> str:
    """One bundle: the fault, screenshot, report, timeline chart, diagnostics, download."""
    m = reader.manifest()
    trig = m.get("trigger") or {}
    dev = m.get("device") or {}
    names = reader.names
    bid = quote(record.bundle_id)
    base = f"/v1/bundles/{bid}"
    facts = [
        ("Bundle", f"<span class='mono'>{esc(record.bundle_id)}</span>"),
        ("Created", esc(m.get("created_at"))),
        ("Received", esc(shown_time(record.received_at))),
        (
            "Terminal",
            f"{esc(dev.get('id'))} ({esc(dev.get('model') or '-')}, serial {esc(dev.get('serial') or '-')})",
        ),
        ("Site", _site(record.site, dev.get("site"))),
        ("Platform", f"{esc(dev.get('platform'))} / {esc(dev.get('target'))}"),
        ("Agent", esc((m.get("agent") or {}).get("version") or "-")),
        (
            "Integrity",
            "entries verified, HMAC verified"
            if record.signature_checked
            else "entries verified; HMAC not checked (no device key on the collector)",
        ),
        (
            "Size",
            f"{esc(fmt_size(record.size_bytes))} <span class='mono muted'>sha256 {esc(record.sha256)}</span>",
        ),
    ]
    fault_rows = []
    for k in (
        "kind",
        "key",
        "severity",
        "summary",
        "raised_at",
        "cleared_at",
        "duration_s",
        "suppressed",
        "note",
        "contact",
    ):
        if trig.get(k) not in (None, ""):
            val = sev_badge(str(trig[k])) if k == "severity" else esc(trig[k])
            fault_rows.append(f"<tr><th>{esc(k)}</th><td>{val}</td></tr>")
    readings = trig.get("readings") or []
    if isinstance(readings, list) and readings:
        fault_rows.append(
            "<tr><th>readings</th><td><pre>"
            + esc(json.dumps(readings, indent=1, ensure_ascii=False, default=str))
            + "</pre></td></tr>"
        )
    parts = [
        f"<h1>{esc(record.fault_key or record.trigger_kind)} {sev_badge(record.severity)}</h1>",
        f"<p>{esc(record.summary)}</p>" if record.summary else "",
        f"<p><a class='button' id='download' href='{base}/download'>Download bundle (.zip)</a> "
        f"<a class='button light' href='{base}'>Manifest (JSON)</a></p>",
        "<div class='card'><table class='facts'>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
        + "</table></div>",
        "<h2>Fault</h2><div class='card'><table class='facts' id='fault'>"
        + "".join(fault_rows)
        + "</table></div>",
    ]
    shot_status = (m.get("redaction") or {}).get("screenshot", "")
    parts.append("<h2>Screenshot</h2><div class='card'>")
    if "screenshot.png" in names:
        parts.append(
            f"<img class='shot' id='screenshot' alt='screenshot' src='{base}/screenshot.png'>"
        )
        if shot_status and shot_status != "captured":
            parts.append(f"<p class='muted'>{esc(shot_status)}</p>")
    else:
        parts.append(f"<p class='muted'>No screenshot: {esc(shot_status or 'not captured')}</p>")
    parts.append("</div>")
    if "report.txt" in names:
        report = reader.read("report.txt").decode("utf-8", "replace")
        parts.append(f"<h2>Report</h2><pre id='report'>{esc(report)}</pre>")
    if "timeline.json" in names:
        try:
            tl = json.loads(reader.read("timeline.json"))
            tl_readings = tl.get("readings", []) if isinstance(tl, dict) else []
        except (ValueError, RecursionError):  # not JSON, or nested too deep
            tl_readings = []
        if not isinstance(tl_readings, list):
            tl_readings = []
        svg = timeline_svg([r for r in tl_readings if isinstance(r, dict)])
        parts.append(
            f"<h2>Timeline</h2><div class='card svgwrap' id='timeline'>{svg}"
            f"<p class='muted'>{len(tl_readings)} reading(s); red marks failed or faulty readings. "
            f"<a href='{base}/timeline.json'>timeline.json</a></p></div>"
        )
    diag = [n for n in names if n.startswith("diagnostics/")]
    if diag:
        parts.append("<h2>Diagnostics</h2><div class='card' id='diagnostics'>")
        for n in diag:
            text = reader.read(n).decode("utf-8", "replace")
            parts.append(f"<details><summary>{esc(n)}</summary><pre>{esc(text)}</pre></details>")
        parts.append("</div>")
    others = [
        n
        for n in names
        if n not in (MANIFEST, SIGNATURE, "report.txt", "screenshot.png", "timeline.json")
        and n not in diag
    ]
    if others:
        parts.append(
            "<h2>Other entries</h2><ul>"
            + "".join(f"<li><a href='{base}/entries/{quote(n)}'>{esc(n)}</a></li>" for n in others)
            + "</ul>"
        )
    parts.append(
        "<h2>Manifest</h2><details><summary>manifest.json</summary><pre>"
        + esc(reader.read(MANIFEST).decode("utf-8", "replace"))
        + "</pre></details>"
    )
    title = f"posagent bundle {record.fault_key or record.trigger_kind} {record.bundle_id}"
    return layout(title, "".join(parts), operator_login=operator_login)


def render_login(error: str = "", next_url: str = "/", *, csrf: str = "", name: str = "") -> str:
    """The login form: user name and password (csrf: the login form's own token)."""
    err_html = f"<p class='error' id='login-error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>Log in</h1><div class='card'>"
        "<form method='post' action='/login' class='filters' id='login-form'>"
        f"<input type='hidden' name='next' value='{esc(next_url)}'>"
        f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
        f"<label>User<input type='text' name='name' id='name' value='{esc(name)}' "
        "autocomplete='username' required></label>"
        "<label>Password<input type='password' name='password' id='password' "
        "autocomplete='current-password' required></label>"
        "<button type='submit' id='login'>Log in</button></form>"
        f"{err_html}</div>"
    )
    return layout("posagent collector: login", body)

"""The incident pages as HTML (server-rendered, every value through `esc`, links built
with `quote`/`urlencode`, no scripts, no external assets; the frame is
`collector.pages.layout`): the home page (the fleet at a glance), the incident list, one
incident (with its notes form and status buttons) and one device.

Forms post to the API (`collector.incidents.api`), which answers a form with a redirect
back to the page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from agent.bundle.style import esc
from collector.incidents.model import (
    Channel,
    Event,
    EventKind,
    GroupedBundle,
    Incident,
    Status,
)
from collector.incidents.queries import Detail, FaultLine, Home, Trouble
from collector.pages import SEVERITIES, csrf_field, fmt_size, layout, sev_badge, shown_time
from collector.storage import BundleRecord

EXTRA_CSS = (
    "<style>"
    ".st{display:inline-block;padding:0 .45rem;border-radius:3px;font-size:.8rem;font-weight:600}"
    ".st-open{background:#fde2e4;color:#a4001d}.st-acknowledged{background:#e3ecff;color:#1f3f8a}"
    ".st-resolved{background:#e3f5e6;color:#1d6b2c}"
    ".tiles{display:flex;flex-wrap:wrap;gap:.8rem}"
    ".tile{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:.6rem 1rem;"
    "min-width:11rem;text-decoration:none;color:#1d2330}"
    ".tile b{display:block;font-size:1.8rem;line-height:1.1}"
    ".cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}"
    ".cols>div{min-width:0;overflow-x:auto}"  # a wide table scrolls in its column
    "form.inline{display:inline-flex;gap:.4rem;align-items:end;margin:0 .6rem .4rem 0}"
    "form.note{display:grid;gap:.4rem;max-width:44rem}"
    "form.note textarea{font:inherit;min-height:5rem;padding:.3rem;border:1px solid #c5ccd8;"
    "border-radius:4px}"
    "form input,form select{font:inherit;padding:.25rem .4rem;border:1px solid #c5ccd8;"
    "border-radius:4px}"
    ".note-text{white-space:pre-wrap}"
    "table.bars{width:100%;border-collapse:collapse;font-size:.85rem}"
    "table.bars th{text-align:left;font-weight:normal;padding:.15rem .5rem .15rem 0;"
    "width:38%;word-break:break-all}"
    "table.bars td{padding:.15rem 0 .15rem .5rem}table.bars td.barcell{width:30%;padding-left:0}"
    "table.bars .bar{display:block;height:.9rem;min-width:2px;background:#4a6fa5;"
    "border-radius:2px}"
    "</style>"
)
LABEL_CHARS = 40
TAKEN = ("me", "nobody")  # the list's "taken by" choices (`views.page_filter` reads them)


def status_badge(status: str) -> str:
    cls = status if status in {s.value for s in Status} else "open"
    return f"<span class='st st-{cls}'>{esc(status)}</span>"


def fmt_duration(seconds: float) -> str:
    """A duration for people: '45 s', '12 min', '3 h 05 min', '2 d 4 h'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _q(path: str, **params: Any) -> str:
    kept = {k: str(v) for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


def _page(title: str, body: str, operator_login: bool) -> str:
    return layout(title, EXTRA_CSS + body, operator_login=operator_login)


def _device_link(device: str) -> str:
    return f"<a href='/devices/{quote(device, safe='')}'>{esc(device)}</a>"


def _incident_row(i: Incident, now: float) -> str:
    href = f"/incidents/{i.id}"
    state = "raised" if i.active else "cleared"
    return (
        f"<tr data-incident='{i.id}'>"
        f"<td class='mono'><a href='{href}'>#{i.id}</a></td>"
        f"<td>{status_badge(i.status.value)}</td><td>{sev_badge(i.severity)}</td>"
        f"<td class='mono'><a href='{href}'>{esc(i.fault_key)}</a></td>"
        f"<td>{_device_link(i.device)}</td><td>{esc(i.site or '-')}</td>"
        f"<td class='mono'>{esc(shown_time(i.raised_at))}</td>"
        f"<td>{esc(state)}, {esc(fmt_duration(i.total_duration_s(now)))}</td>"
        f"<td>{i.repeats}</td><td>{i.bundles}</td><td>{esc(i.assignee or '-')}</td>"
        f"<td>{esc(i.summary)}</td></tr>"
    )


def incident_table(items: Iterable[Incident], now: float, empty: str = "No incidents.") -> str:
    rows = "".join(_incident_row(i, now) for i in items)
    return (
        "<table class='list' id='incidents'><thead><tr><th>#</th><th>Status</th>"
        "<th>Severity</th><th>Fault</th><th>Terminal</th><th>Site</th><th>Raised</th>"
        "<th>State, duration</th><th>Repeats</th><th>Bundles</th><th>Assignee</th>"
        "<th>Summary</th></tr></thead><tbody>"
        + (rows or f"<tr><td colspan='12' class='muted'>{esc(empty)}</td></tr>")
        + "</tbody></table>"
    )


# --------------------------------------------------------------------------- the chart


def bar_chart(lines: list[FaultLine]) -> str:
    """A horizontal bar per fault key (its incidents), labelled with its terminals and
    sites: an HTML table whose bars are sized by CSS, so the browser lays out every word
    (an SVG of fixed width cut long keys and labels off)."""
    if not lines:
        return "<p class='muted'>No incidents in this period.</p>"
    top = max(x.incidents for x in lines) or 1
    rows = []
    for x in lines:
        key = (
            x.fault_key if len(x.fault_key) <= LABEL_CHARS else x.fault_key[: LABEL_CHARS - 1] + "…"
        )
        words = (
            f"{x.incidents} incident{'s' if x.incidents != 1 else ''}, {x.terminals} terminal"
            f"{'s' if x.terminals != 1 else ''}, {x.sites} site{'s' if x.sites != 1 else ''}"
        )
        pct = max(1.0, round(100 * x.incidents / top, 1))
        rows.append(
            f"<tr data-fault='{esc(x.fault_key)}' title='{esc(x.fault_key)}: {esc(words)}'>"
            f"<th class='mono'>{esc(key)}</th><td class='barcell'>"
            f"<span class='bar' style='width:{pct}%'></span></td><td>{esc(words)}</td></tr>"
        )
    return (
        "<table class='bars' aria-label='incidents by fault key'><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _fault_list(lines: list[FaultLine], since: float) -> str:
    items = "".join(
        f"<li><a class='mono' href='{esc(_q('/incidents', fault=x.fault_key, since=int(since)))}'>"
        f"{esc(x.fault_key)}</a> at {x.terminals} terminal{'s' if x.terminals != 1 else ''} "
        f"in {x.sites} site{'s' if x.sites != 1 else ''} ({x.incidents} incident"
        f"{'s' if x.incidents != 1 else ''}, {x.raised_now} raised now)</li>"
        for x in lines
    )
    return f"<ul>{items}</ul>" if items else ""


# --------------------------------------------------------------------------- home


def _trouble_sites(rows: list[Trouble]) -> str:
    body = "".join(
        f"<tr><td><a href='{esc(_q('/incidents', status='unresolved', site=t.name))}'>"
        f"{esc(t.name or '(no site)')}</a></td><td>{t.terminals}</td><td>{t.incidents}</td>"
        f"<td>{t.raised_now}</td><td>{sev_badge(t.severity)}</td>"
        f"<td class='mono'>{esc(shown_time(t.last_at))}</td></tr>"
        for t in rows
    )
    return (
        "<table class='list' id='trouble-sites'><thead><tr><th>Site</th><th>Terminals</th>"
        "<th>Unresolved</th><th>Raised now</th><th>Worst</th><th>Last</th></tr></thead><tbody>"
        + (body or "<tr><td colspan='6' class='muted'>No site in trouble.</td></tr>")
        + "</tbody></table>"
    )


def _trouble_terminals(rows: list[Trouble]) -> str:
    body = "".join(
        f"<tr><td>{_device_link(t.name)}</td><td>{esc(t.site or '-')}</td>"
        f"<td class='mono'>{esc(', '.join(t.faults))}</td><td>{t.incidents}</td>"
        f"<td>{t.raised_now}</td><td>{sev_badge(t.severity)}</td>"
        f"<td class='mono'>{esc(shown_time(t.last_at))}</td></tr>"
        for t in rows
    )
    return (
        "<table class='list' id='trouble-terminals'><thead><tr><th>Terminal</th><th>Site</th>"
        "<th>Faults</th><th>Unresolved</th><th>Raised now</th><th>Worst</th><th>Last</th>"
        "</tr></thead><tbody>"
        + (body or "<tr><td colspan='7' class='muted'>No terminal in trouble.</td></tr>")
        + "</tbody></table>"
    )


def home(h: Home, now: float, *, operator_login: bool = False) -> str:
    """The fleet at a glance."""
    tiles = []
    for sev in SEVERITIES:
        d = h.unresolved.get(sev, {})
        n = d.get("open", 0) + d.get("acknowledged", 0)
        href = _q("/incidents", status="unresolved", severity=sev)
        tiles.append(
            f"<a class='tile' id='tile-{sev}' href='{esc(href)}'>{sev_badge(sev)}<b>{n}</b>"
            f"{d.get('open', 0)} open, {d.get('acknowledged', 0)} acknowledged; "
            f"{d.get('raised', 0)} still raised</a>"
        )
    week, month = now - 7 * 86400, now - 30 * 86400
    body = (
        "<h1>The fleet at a glance</h1>"
        "<h2>Unresolved incidents by severity</h2>"
        f"<div class='tiles' id='by-severity'>{''.join(tiles)}</div>"
        f"<p><a href='/incidents?status=unresolved'>All unresolved incidents</a> · "
        "<a href='/incidents'>All incidents</a> · <a href='/bundles'>All bundles</a></p>"
        "<h2>In trouble now</h2>"
        f"<p class='muted'>{h.sites_total} site(s) and {h.terminals_total} terminal(s) with "
        "unresolved incidents; the worst first.</p>"
        "<div class='cols'>"
        f"<div><h3>Sites</h3>{_trouble_sites(h.sites)}</div>"
        f"<div><h3>Terminals</h3>{_trouble_terminals(h.terminals)}</div></div>"
        "<h2>Top fault keys</h2><div class='cols'>"
        f"<div class='card' id='top-7'><h3>Last 7 days</h3>{bar_chart(h.week)}"
        f"{_fault_list(h.week, week)}</div>"
        f"<div class='card' id='top-30'><h3>Last 30 days</h3>{bar_chart(h.month)}"
        f"{_fault_list(h.month, month)}</div></div>"
    )
    return _page("posagent collector", body, operator_login)


# --------------------------------------------------------------------------- list


def incident_list(
    items: list[Incident],
    total: int,
    params: Mapping[str, str],
    limit: int,
    offset: int,
    now: float,
    *,
    error: str = "",
    operator_login: bool = False,
) -> str:
    def field(name: str, label: str, kind: str = "text") -> str:
        return (
            f"<label>{label}<input type='{kind}' name='{name}' id='f-{name}' "
            f"value='{esc(params.get(name, ''))}'></label>"
        )

    def select(name: str, label: str, options: Iterable[str]) -> str:
        opts = ["<option value=''>any</option>"] + [
            f"<option value='{esc(o)}'{' selected' if o == params.get(name) else ''}>{esc(o)}</option>"
            for o in options
        ]
        return f"<label>{label}<select name='{name}' id='f-{name}'>{''.join(opts)}</select></label>"

    form = (
        "<form class='filters' method='get' action='/incidents'>"
        + select("status", "Status", ("unresolved", "open", "acknowledged", "resolved"))
        + select("severity", "Severity", SEVERITIES)
        + field("fault", "Fault")
        + field("device", "Terminal")
        + field("site", "Site")
        + field("assignee", "Assignee")
        + select("taken", "Taken by", TAKEN)
        + field("since", "Since (UTC)", "datetime-local")
        + field("until", "Until (UTC)", "datetime-local")
        + "<button type='submit' id='apply'>Filter</button>"
        "<a class='button light' id='clear' href='/incidents'>Clear</a></form>"
    )
    kept = {k: v for k, v in params.items() if k != "offset"}
    pager = [f"<span class='muted' id='total'>{total} incident(s)</span>"]
    if offset > 0:
        prev = _q("/incidents", **kept, offset=max(0, offset - limit))
        pager.append(f"<a class='button light' href='{esc(prev)}'>newer</a>")
    if offset + limit < total:
        nxt = _q("/incidents", **kept, offset=offset + limit)
        pager.append(f"<a class='button light' href='{esc(nxt)}'>older</a>")
    err = f"<p class='error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>Incidents</h1>"
        f"<div class='card'>{form}{err}</div>"
        f"{incident_table(items, now, 'No incidents match.')}"
        f"<div class='pager'>{''.join(pager)}</div>"
    )
    return _page("posagent collector: incidents", body, operator_login)


# --------------------------------------------------------------------------- one incident


_STATUS_KINDS = (EventKind.ACKNOWLEDGED, EventKind.RESOLVED, EventKind.REOPENED)


def _bundle_page(bundle_id: str) -> str:
    return f"/bundles/{quote(bundle_id, safe='')}"


def event_words(ev: Event, bundle_href: Callable[[str], str] = _bundle_page) -> str:
    """An event's detail in words, as HTML (a link to its bundle, at bundle_href, where it
    has one): the incident page's history and the dispute export's."""
    d = ev.detail

    def bundle(bid: str) -> str:
        return f"<a class='mono' href='{esc(bundle_href(bid))}'>{esc(bid)}</a>"

    if ev.kind is EventKind.BUNDLE:
        bid = str(d.get("bundle_id", ""))
        return f"{esc(d.get('trigger_kind'))} bundle {bundle(bid)}"
    if ev.kind is EventKind.CLEARED:
        return f"cleared after {esc(fmt_duration(float(d.get('duration_s') or 0)))}"
    if ev.kind is EventKind.REOPENED and "repeats" in d:
        return f"recurred (repeat {esc(d.get('repeats'))}), was {esc(d.get('was'))}"
    if ev.kind is EventKind.ASSIGNED:
        return f"assigned to {esc(d.get('assignee') or 'nobody')} (was {esc(d.get('was') or 'nobody')})"
    if ev.kind is EventKind.RESOLVED and d.get("auto"):
        return f"resolved by the collector: cleared and quiet for {esc(fmt_duration(float(d.get('quiet_s') or 0)))}"
    if ev.kind is EventKind.ESCALATED:
        return f"critical and unacknowledged for {esc(fmt_duration(float(d.get('after_s') or 0)))}"
    if ev.kind is EventKind.NOTE:
        return f"{esc(d.get('channel'))} with {esc(d.get('contact') or 'the merchant')}"
    if ev.kind in _STATUS_KINDS and "from" in d and "to" in d:
        return f"from {esc(d.get('from'))} to {esc(d.get('to'))}"
    if ev.kind is EventKind.OPENED:
        bid = str(d.get("bundle_id") or "")
        source = f"{esc(d.get('trigger_kind'))} bundle {bundle(bid)}" if bid else "the collector"
        return f"{esc(d.get('summary') or d.get('fault_key'))}, raised by {source}"
    text = json.dumps(d, ensure_ascii=False, default=str)
    return esc(text[:300])


def _bundle_rows(bundles: list[GroupedBundle]) -> str:
    rows = []
    for b in bundles:
        r: BundleRecord | None = b.record
        href = f"/bundles/{quote(b.bundle_id, safe='')}"
        if r is None:
            rows.append(
                f"<tr><td class='mono'>{esc(shown_time(b.at))}</td><td>{esc(b.trigger_kind)}</td>"
                f"<td colspan='4' class='muted'>deleted by retention "
                f"<span class='mono'>{esc(b.bundle_id)}</span></td></tr>"
            )
            continue
        rows.append(
            f"<tr data-bundle='{esc(r.bundle_id)}'><td class='mono'><a href='{href}'>"
            f"{esc(shown_time(r.created_at))}</a></td><td>{esc(r.trigger_kind)}</td>"
            f"<td>{sev_badge(r.severity)}</td><td>{esc(r.summary)}</td>"
            f"<td>{esc(r.screenshot)}</td><td class='muted'>{esc(fmt_size(r.size_bytes))}</td></tr>"
        )
    return "".join(rows)


def _actions(inc: Incident, kept: Mapping[str, str]) -> str:
    base = f"/v1/incidents/{inc.id}/status"
    buttons = {
        Status.OPEN: (("acknowledged", "Acknowledge"), ("resolved", "Resolve")),
        Status.ACKNOWLEDGED: (("resolved", "Resolve"),),
        Status.RESOLVED: (("open", "Reopen"),),
    }[inc.status]
    forms = [
        f"<form class='inline' method='post' action='{base}'>{csrf_field()}"
        f"<input type='hidden' name='status' value='{to}'>"
        f"<button type='submit' id='to-{to}'>{label}</button></form>"
        for to, label in buttons
    ]
    forms.append(
        f"<form class='inline' method='post' action='{base}'>{csrf_field()}"
        f"<input type='text' name='assignee' id='assignee' maxlength='100' "
        f"value='{esc(kept.get('assignee', inc.assignee))}' placeholder='assignee'>"
        "<button type='submit' class='light button' id='assign'>Assign</button></form>"
    )
    return "".join(forms)


def _note_form(inc: Incident, kept: Mapping[str, str]) -> str:
    """The note form, filled with what was sent when it comes back with an error."""
    chosen = kept.get("channel", "")
    opts = "".join(
        f"<option value='{c.value}'{' selected' if c.value == chosen else ''}>{c.value}</option>"
        for c in Channel
    )
    return (
        f"<form class='note' method='post' action='/v1/incidents/{inc.id}/notes' id='note-form'>"
        f"{csrf_field()}"
        f"<label>Channel <select name='channel' id='note-channel'>{opts}</select></label>"
        "<label>Who at the merchant <input type='text' name='contact' id='note-contact' "
        f"maxlength='200' value='{esc(kept.get('contact', ''))}'></label>"
        "<label>When (UTC; empty: now) <input type='datetime-local' name='at' id='note-at' "
        f"value='{esc(kept.get('at', ''))}'></label>"
        "<label>What was said and agreed<textarea name='text' id='note-text' maxlength='4000' "
        f"required>{esc(kept.get('text', ''))}</textarea></label>"
        "<div><button type='submit' id='add-note'>Add note</button></div></form>"
    )


def incident(
    d: Detail,
    now: float,
    *,
    can_write: bool,
    error: str = "",
    kept: Mapping[str, Any] | None = None,
    remedy_html: str = "",
    operator_login: bool = False,
) -> str:
    """One incident: what, where, when, how long, how often; what to do (remedy_html, made
    by the caller); its notes, bundles, events.

    kept: the fields of a form that came back with `error`, shown again in its form
    (nothing typed is lost)."""
    sent = {k: v for k, v in (kept or {}).items() if isinstance(v, str)}
    inc = d.incident
    if inc.active:
        state = f"still raised, for {fmt_duration(now - inc.episode_at)} in this episode"
    else:
        state = f"cleared at {shown_time(inc.cleared_at or 0)}"
    facts = [
        ("What", f"<span class='mono'>{esc(inc.fault_key)}</span>: {esc(inc.summary)}"),
        (
            "Where",
            f"terminal {_device_link(inc.device)}, site {esc(inc.site or '(none registered)')}",
        ),
        ("Raised", esc(shown_time(inc.raised_at))),
        ("Now", esc(state)),
        ("Duration", esc(fmt_duration(inc.total_duration_s(now))) + " raised in all"),
        ("Repeats", f"{inc.repeats} recurrence(s) within the reopen window"),
        ("Bundles", str(inc.bundles)),
        ("Assignee", esc(inc.assignee or "nobody")),
        ("Source", "the terminal's bundles" if inc.source == "bundle" else "the collector"),
    ]
    if inc.escalated_at:
        facts.append(("Escalated", esc(shown_time(inc.escalated_at))))
    if inc.resolved_at:
        facts.append(("Resolved", esc(shown_time(inc.resolved_at))))
    notes = "".join(
        f"<div class='card note' data-note='{n.id}'><p><b>{esc(shown_time(float(n.detail.get('contact_at') or n.at)))}</b> · "
        f"{esc(n.detail.get('channel'))} · {esc(n.actor)}"
        f"{' with ' + esc(n.detail.get('contact')) if n.detail.get('contact') else ''}</p>"
        f"<p class='note-text'>{esc(n.detail.get('text'))}</p></div>"
        for n in reversed(d.notes)
    )
    event_rows = "".join(
        f"<tr><td class='mono'>{esc(shown_time(e.at))}</td><td>{esc(e.kind.value)}</td>"
        f"<td>{esc(e.actor)}</td><td>{event_words(e)}</td></tr>"
        for e in reversed(d.events)
    )
    err = f"<p class='error' id='form-error'>{esc(error)}</p>" if error else ""
    parts = [
        f"<h1>#{inc.id} {esc(inc.fault_key)} on {esc(inc.device)} {sev_badge(inc.severity)} "
        f"{status_badge(inc.status.value)}</h1>",
        err,
        "<div class='card'><table class='facts' id='facts'>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
        + "</table></div>",
        remedy_html,
        f"<p><a class='button light' id='export' href='/v1/incidents/{inc.id}/export'>"
        "Export for a dispute (.zip)</a></p>",
    ]
    if can_write:
        parts.append(f"<div class='card' id='actions'>{_actions(inc, sent)}</div>")
    parts.append(
        f"<h2>Notes</h2><div id='notes'>{notes or '<p class=muted>No notes yet.</p>'}</div>"
    )
    if can_write:
        parts.append(f"<div class='card'>{_note_form(inc, sent)}</div>")
    shown = len(d.bundles)
    parts.append(
        f"<h2>Bundles</h2><p class='muted'>{shown} of {d.bundle_total}, newest first.</p>"
        "<table class='list' id='incident-bundles'><thead><tr><th>Created</th><th>Trigger</th>"
        "<th>Severity</th><th>Summary</th><th>Screenshot</th><th>Size</th></tr></thead><tbody>"
        + (_bundle_rows(d.bundles) or "<tr><td colspan='6' class='muted'>None.</td></tr>")
        + "</tbody></table>"
    )
    parts.append(
        f"<h2>History</h2><p class='muted'>{len(d.events)} of {d.event_total} event(s).</p>"
        "<table class='list' id='events'><thead><tr><th>When</th><th>What</th><th>Who</th>"
        f"<th>Detail</th></tr></thead><tbody>{event_rows}</tbody></table>"
    )
    title = f"posagent incident #{inc.id} {inc.fault_key} {inc.device}"
    return _page(title, "".join(parts), operator_login)


# --------------------------------------------------------------------------- one device


def device_sections(
    name: str,
    incidents: list[Incident],
    incident_total: int,
    bundles: list[BundleRecord],
    bundle_total: int,
    now: float,
) -> str:
    """A terminal's incidents and bundles, newest first (the sections of its page)."""
    brows = "".join(
        f"<tr data-bundle='{esc(r.bundle_id)}'><td class='mono'>"
        f"<a href='/bundles/{quote(r.bundle_id, safe='')}'>{esc(shown_time(r.created_at))}</a></td>"
        f"<td class='mono'>{esc(r.fault_key)}</td><td>{sev_badge(r.severity)}</td>"
        f"<td>{esc(r.trigger_kind)}</td><td>{esc(r.summary)}</td>"
        f"<td class='muted'>{esc(fmt_size(r.size_bytes))}</td></tr>"
        for r in bundles
    )
    return (
        f"<h2>Incidents</h2><p class='muted'>{len(incidents)} of {incident_total}. "
        f"<a href='{esc(_q('/incidents', device=name))}'>All of them</a></p>"
        f"{incident_table(incidents, now)}"
        f"<h2>Bundles</h2><p class='muted'>{len(bundles)} of {bundle_total}. "
        f"<a href='{esc(_q('/bundles', device=name))}'>All of them</a></p>"
        "<table class='list' id='device-bundles'><thead><tr><th>Created</th><th>Fault</th>"
        "<th>Severity</th><th>Trigger</th><th>Summary</th><th>Size</th></tr></thead><tbody>"
        + (brows or "<tr><td colspan='6' class='muted'>No bundles.</td></tr>")
        + "</tbody></table>"
    )

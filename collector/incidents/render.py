"""The incident pages as HTML (server-rendered, every value through `esc`, links built
with `quote`/`urlencode`, no scripts, no external assets; the frame is
`collector.pages.layout`): the home page (the fleet at a glance), the incident list, one
incident (with its notes form and status buttons) and one device.

Forms post to the API (`collector.incidents.api`), which answers a form with a redirect
back to the page. Texts for people are marked `_` (`collector.i18n`: the request's
language); fault keys, ids, names and numbers are shown as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from agent.bundle.style import esc
from collector.i18n import N_
from collector.i18n import gettext as _
from collector.incidents.model import (
    Channel,
    Event,
    EventKind,
    GroupedBundle,
    Incident,
    Status,
)
from collector.incidents.queries import Detail, FaultLine, Home, Trouble
from collector.pages import (
    SEVERITIES,
    csrf_field,
    fmt_size,
    heads,
    layout,
    sev_badge,
    shown_time,
    word,
)
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
TAKEN = (N_("me"), N_("nobody"))  # the list's "taken by" choices (`views.page_filter` reads them)


def status_badge(status: str) -> str:
    cls = status if status in {s.value for s in Status} else "open"
    return f"<span class='st st-{cls}'>{esc(word(status))}</span>"


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


def _none_row(cols: int, text: str) -> str:
    return f"<tr><td colspan='{cols}' class='muted'>{esc(text)}</td></tr>"


def _incident_row(i: Incident, now: float) -> str:
    href = f"/incidents/{i.id}"
    state = _("{state}, {duration}").format(
        state=_("raised") if i.active else _("cleared"),
        duration=fmt_duration(i.total_duration_s(now)),
    )
    return (
        f"<tr data-incident='{i.id}'>"
        f"<td class='mono'><a href='{href}'>#{i.id}</a></td>"
        f"<td>{status_badge(i.status.value)}</td><td>{sev_badge(i.severity)}</td>"
        f"<td class='mono'><a href='{href}'>{esc(i.fault_key)}</a></td>"
        f"<td>{_device_link(i.device)}</td><td>{esc(i.site or '-')}</td>"
        f"<td class='mono'>{esc(shown_time(i.raised_at))}</td>"
        f"<td>{esc(state)}</td>"
        f"<td>{i.repeats}</td><td>{i.bundles}</td><td>{esc(i.assignee or '-')}</td>"
        f"<td>{esc(i.summary)}</td></tr>"
    )


def incident_table(items: Iterable[Incident], now: float, empty: str = "") -> str:
    """The incidents as a table; empty: what an empty one says (default "No incidents.")."""
    rows = "".join(_incident_row(i, now) for i in items)
    header = heads(
        N_("Status"),
        N_("Severity"),
        N_("Fault"),
        N_("Terminal"),
        N_("Site"),
        N_("Raised"),
        N_("State, duration"),
        N_("Repeats"),
        N_("Bundles"),
        N_("Assignee"),
        N_("Summary"),
    )
    return (
        f"<table class='list' id='incidents'><thead><tr><th>#</th>{header}</tr></thead><tbody>"
        + (rows or _none_row(12, empty or _("No incidents.")))
        + "</tbody></table>"
    )


# --------------------------------------------------------------------------- the chart


def bar_chart(lines: list[FaultLine]) -> str:
    """A horizontal bar per fault key (its incidents), labelled with its terminals and
    sites: an HTML table whose bars are sized by CSS, so the browser lays out every word
    (an SVG of fixed width cut long keys and labels off)."""
    if not lines:
        return "<p class='muted'>" + esc(_("No incidents in this period.")) + "</p>"
    top = max(x.incidents for x in lines) or 1
    rows = []
    for x in lines:
        key = (
            x.fault_key if len(x.fault_key) <= LABEL_CHARS else x.fault_key[: LABEL_CHARS - 1] + "…"
        )
        words = _count_words(x)
        pct = max(1.0, round(100 * x.incidents / top, 1))
        rows.append(
            f"<tr data-fault='{esc(x.fault_key)}' title='{esc(x.fault_key)}: {esc(words)}'>"
            f"<th class='mono'>{esc(key)}</th><td class='barcell'>"
            f"<span class='bar' style='width:{pct}%'></span></td><td>{esc(words)}</td></tr>"
        )
    return (
        "<table class='bars' aria-label='"
        + esc(_("incidents by fault key"))
        + "'><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _count_words(x: FaultLine) -> str:
    """ "3 incidents, 2 terminals, 1 site" (English plurals; Chinese has one form)."""
    incidents = (_("{n} incident") if x.incidents == 1 else _("{n} incidents")).format(
        n=x.incidents
    )
    terminals = (_("{n} terminal") if x.terminals == 1 else _("{n} terminals")).format(
        n=x.terminals
    )
    sites = (_("{n} site") if x.sites == 1 else _("{n} sites")).format(n=x.sites)
    return _("{incidents}, {terminals}, {sites}").format(
        incidents=incidents, terminals=terminals, sites=sites
    )


def _fault_list(lines: list[FaultLine], since: float) -> str:
    items = []
    for x in lines:
        href = esc(_q("/incidents", fault=x.fault_key, since=int(since)))
        terminals = (_("{n} terminal") if x.terminals == 1 else _("{n} terminals")).format(
            n=x.terminals
        )
        sites = (_("{n} site") if x.sites == 1 else _("{n} sites")).format(n=x.sites)
        incidents = (_("{n} incident") if x.incidents == 1 else _("{n} incidents")).format(
            n=x.incidents
        )
        rest = _("at {terminals} in {sites} ({incidents}, {raised} raised now)").format(
            terminals=terminals, sites=sites, incidents=incidents, raised=x.raised_now
        )
        items.append(f"<li><a class='mono' href='{href}'>{esc(x.fault_key)}</a> {esc(rest)}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


# --------------------------------------------------------------------------- home


def _trouble_sites(rows: list[Trouble]) -> str:
    body = "".join(
        f"<tr><td><a href='{esc(_q('/incidents', status='unresolved', site=t.name))}'>"
        + esc(t.name or _("(no site)"))
        + f"</a></td><td>{t.terminals}</td><td>{t.incidents}</td>"
        f"<td>{t.raised_now}</td><td>{sev_badge(t.severity)}</td>"
        f"<td class='mono'>{esc(shown_time(t.last_at))}</td></tr>"
        for t in rows
    )
    header = heads(
        N_("Site"), N_("Terminals"), N_("Unresolved"), N_("Raised now"), N_("Worst"), N_("Last")
    )
    return (
        f"<table class='list' id='trouble-sites'><thead><tr>{header}</tr></thead><tbody>"
        + (body or _none_row(6, _("No site in trouble.")))
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
    header = heads(
        N_("Terminal"),
        N_("Site"),
        N_("Faults"),
        N_("Unresolved"),
        N_("Raised now"),
        N_("Worst"),
        N_("Last"),
    )
    return (
        f"<table class='list' id='trouble-terminals'><thead><tr>{header}</tr></thead><tbody>"
        + (body or _none_row(7, _("No terminal in trouble.")))
        + "</tbody></table>"
    )


def home(h: Home, now: float, *, operator_login: bool = False) -> str:
    """The fleet at a glance."""
    tiles = []
    for sev in SEVERITIES:
        d = h.unresolved.get(sev, {})
        n = d.get("open", 0) + d.get("acknowledged", 0)
        href = _q("/incidents", status="unresolved", severity=sev)
        counts = _("{open} open, {acknowledged} acknowledged; {raised} still raised").format(
            open=d.get("open", 0), acknowledged=d.get("acknowledged", 0), raised=d.get("raised", 0)
        )
        tiles.append(
            f"<a class='tile' id='tile-{sev}' href='{esc(href)}'>{sev_badge(sev)}<b>{n}</b>"
            f"{esc(counts)}</a>"
        )
    week, month = now - 7 * 86400, now - 30 * 86400
    trouble = _(
        "{sites} site(s) and {terminals} terminal(s) with unresolved incidents; the worst first."
    ).format(sites=h.sites_total, terminals=h.terminals_total)
    body = (
        "<h1>" + esc(_("The fleet at a glance")) + "</h1>"
        "<h2>" + esc(_("Unresolved incidents by severity")) + "</h2>"
        f"<div class='tiles' id='by-severity'>{''.join(tiles)}</div>"
        "<p><a href='/incidents?status=unresolved'>"
        + esc(_("All unresolved incidents"))
        + "</a> · "
        "<a href='/incidents'>" + esc(_("All incidents")) + "</a> · "
        "<a href='/bundles'>" + esc(_("All bundles")) + "</a></p>"
        "<h2>" + esc(_("In trouble now")) + "</h2>"
        f"<p class='muted'>{esc(trouble)}</p>"
        "<div class='cols'>"
        "<div><h3>" + esc(_("Sites")) + f"</h3>{_trouble_sites(h.sites)}</div>"
        "<div><h3>" + esc(_("Terminals")) + f"</h3>{_trouble_terminals(h.terminals)}</div></div>"
        "<h2>" + esc(_("Top fault keys")) + "</h2><div class='cols'>"
        "<div class='card' id='top-7'><h3>" + esc(_("Last 7 days")) + f"</h3>{bar_chart(h.week)}"
        f"{_fault_list(h.week, week)}</div>"
        "<div class='card' id='top-30'><h3>" + esc(_("Last 30 days")) + "</h3>"
        f"{bar_chart(h.month)}{_fault_list(h.month, month)}</div></div>"
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
            f"<label>{esc(label)}<input type='{kind}' name='{name}' id='f-{name}' "
            f"value='{esc(params.get(name, ''))}'></label>"
        )

    def select(name: str, label: str, options: Iterable[str]) -> str:
        opts = ["<option value=''>" + esc(_("any")) + "</option>"] + [
            f"<option value='{esc(o)}'{' selected' if o == params.get(name) else ''}>"
            f"{esc(word(o) if name == 'status' else _(o))}</option>"
            for o in options
        ]
        return (
            f"<label>{esc(label)}<select name='{name}' id='f-{name}'>{''.join(opts)}"
            "</select></label>"
        )

    form = (
        "<form class='filters' method='get' action='/incidents'>"
        + select("status", _("Status"), ("unresolved", "open", "acknowledged", "resolved"))
        + select("severity", _("Severity"), SEVERITIES)
        + field("fault", _("Fault"))
        + field("device", _("Terminal"))
        + field("site", _("Site"))
        + field("assignee", _("Assignee"))
        + select("taken", _("Taken by"), TAKEN)
        + field("since", _("Since (UTC)"), "datetime-local")
        + field("until", _("Until (UTC)"), "datetime-local")
        + "<button type='submit' id='apply'>"
        + esc(_("Filter"))
        + "</button>"
        "<a class='button light' id='clear' href='/incidents'>" + esc(_("Clear")) + "</a></form>"
    )
    kept = {k: v for k, v in params.items() if k != "offset"}
    shown_total = esc(_("{n} incident(s)").format(n=total))
    pager = [f"<span class='muted' id='total'>{shown_total}</span>"]
    if offset > 0:
        prev = _q("/incidents", **kept, offset=max(0, offset - limit))
        pager.append(f"<a class='button light' href='{esc(prev)}'>" + esc(_("newer")) + "</a>")
    if offset + limit < total:
        nxt = _q("/incidents", **kept, offset=offset + limit)
        pager.append(f"<a class='button light' href='{esc(nxt)}'>" + esc(_("older")) + "</a>")
    err = f"<p class='error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>" + esc(_("Incidents")) + "</h1>"
        f"<div class='card'>{form}{err}</div>"
        + incident_table(items, now, _("No incidents match."))
        + f"<div class='pager'>{''.join(pager)}</div>"
    )
    return _page(_("posagent collector: incidents"), body, operator_login)


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
        kind = _("{kind} bundle").format(kind=word(str(d.get("trigger_kind"))))
        return f"{esc(kind)} {bundle(bid)}"
    if ev.kind is EventKind.CLEARED:
        span = fmt_duration(float(d.get("duration_s") or 0))
        return esc(_("cleared after {duration}").format(duration=span))
    if ev.kind is EventKind.REOPENED and "repeats" in d:
        text = _("recurred (repeat {repeats}), was {was}").format(
            repeats=d.get("repeats"), was=word(str(d.get("was")))
        )
        return esc(text)
    if ev.kind is EventKind.ASSIGNED:
        nobody = _("nobody")
        text = _("assigned to {assignee} (was {was})").format(
            assignee=d.get("assignee") or nobody, was=d.get("was") or nobody
        )
        return esc(text)
    if ev.kind is EventKind.RESOLVED and d.get("auto"):
        span = fmt_duration(float(d.get("quiet_s") or 0))
        return esc(
            _("resolved by the collector: cleared and quiet for {duration}").format(duration=span)
        )
    if ev.kind is EventKind.ESCALATED:
        span = fmt_duration(float(d.get("after_s") or 0))
        return esc(_("critical and unacknowledged for {duration}").format(duration=span))
    if ev.kind is EventKind.NOTE:
        text = _("{channel} with {contact}").format(
            channel=word(str(d.get("channel"))), contact=d.get("contact") or _("the merchant")
        )
        return esc(text)
    if ev.kind in _STATUS_KINDS and "from" in d and "to" in d:
        text = _("from {was} to {now}").format(
            was=word(str(d.get("from"))), now=word(str(d.get("to")))
        )
        return esc(text)
    if ev.kind is EventKind.OPENED:
        bid = str(d.get("bundle_id") or "")
        if bid:
            kind = _("{kind} bundle").format(kind=word(str(d.get("trigger_kind"))))
            source = f"{esc(kind)} {bundle(bid)}"
        else:
            source = esc(_("the collector"))
        what = esc(d.get("summary") or d.get("fault_key"))
        return esc(_("{what}, raised by {source}")).format(what=what, source=source)
    text = json.dumps(d, ensure_ascii=False, default=str)
    return esc(text[:300])


def _bundle_rows(bundles: list[GroupedBundle]) -> str:
    rows = []
    for b in bundles:
        r: BundleRecord | None = b.record
        href = f"/bundles/{quote(b.bundle_id, safe='')}"
        if r is None:
            rows.append(
                f"<tr><td class='mono'>{esc(shown_time(b.at))}</td>"
                f"<td>{esc(word(b.trigger_kind))}</td>"
                "<td colspan='4' class='muted'>" + esc(_("deleted by retention")) + " "
                f"<span class='mono'>{esc(b.bundle_id)}</span></td></tr>"
            )
            continue
        rows.append(
            f"<tr data-bundle='{esc(r.bundle_id)}'><td class='mono'><a href='{href}'>"
            f"{esc(shown_time(r.created_at))}</a></td><td>{esc(word(r.trigger_kind))}</td>"
            f"<td>{sev_badge(r.severity)}</td><td>{esc(r.summary)}</td>"
            f"<td>{esc(r.screenshot)}</td><td class='muted'>{esc(fmt_size(r.size_bytes))}</td></tr>"
        )
    return "".join(rows)


def _actions(inc: Incident, kept: Mapping[str, str]) -> str:
    base = f"/v1/incidents/{inc.id}/status"
    buttons = {
        Status.OPEN: (("acknowledged", N_("Acknowledge")), ("resolved", N_("Resolve"))),
        Status.ACKNOWLEDGED: (("resolved", N_("Resolve")),),
        Status.RESOLVED: (("open", N_("Reopen")),),
    }[inc.status]
    forms = [
        f"<form class='inline' method='post' action='{base}'>{csrf_field()}"
        f"<input type='hidden' name='status' value='{to}'>"
        f"<button type='submit' id='to-{to}'>{esc(_(label))}</button></form>"
        for to, label in buttons
    ]
    forms.append(
        f"<form class='inline' method='post' action='{base}'>{csrf_field()}"
        "<input type='text' name='assignee' id='assignee' maxlength='100' "
        f"value='{esc(kept.get('assignee', inc.assignee))}' placeholder='"
        + esc(_("assignee"))
        + "'>"
        "<button type='submit' class='light button' id='assign'>"
        + esc(_("Assign"))
        + "</button></form>"
    )
    return "".join(forms)


def _note_form(inc: Incident, kept: Mapping[str, str]) -> str:
    """The note form, filled with what was sent when it comes back with an error."""
    chosen = kept.get("channel", "")
    opts = "".join(
        f"<option value='{c.value}'{' selected' if c.value == chosen else ''}>"
        f"{esc(word(c.value))}</option>"
        for c in Channel
    )
    return (
        f"<form class='note' method='post' action='/v1/incidents/{inc.id}/notes' id='note-form'>"
        f"{csrf_field()}"
        "<label>"
        + esc(_("Channel"))
        + f" <select name='channel' id='note-channel'>{opts}</select></label>"
        "<label>" + esc(_("Who at the merchant")) + " <input type='text' name='contact' "
        f"id='note-contact' maxlength='200' value='{esc(kept.get('contact', ''))}'></label>"
        "<label>" + esc(_("When (UTC; empty: now)")) + " "
        f"<input type='datetime-local' name='at' id='note-at' value='{esc(kept.get('at', ''))}'>"
        "</label>"
        "<label>" + esc(_("What was said and agreed")) + "<textarea name='text' id='note-text' "
        f"maxlength='4000' required>{esc(kept.get('text', ''))}</textarea></label>"
        "<div><button type='submit' id='add-note'>" + esc(_("Add note")) + "</button></div></form>"
    )


def incident_facts(
    d: Detail, now: float, device: Callable[[str], str] = _device_link
) -> list[tuple[str, str]]:
    """An incident's facts as (label, HTML) rows, the label marked for translation (`_`
    it when shown): what, where (the terminal through `device`), when, how long, how
    often, who has it. The incident page's and the dispute export's."""
    inc = d.incident
    if inc.active:
        state = _("still raised, for {duration} in this episode").format(
            duration=fmt_duration(now - inc.episode_at)
        )
    else:
        state = _("cleared at {time}").format(time=shown_time(inc.cleared_at or 0))
    where = esc(_("terminal {terminal}, site {site}")).format(
        terminal=device(inc.device), site=esc(inc.site or _("(none registered)"))
    )
    duration = _("{duration} raised in all").format(
        duration=fmt_duration(inc.total_duration_s(now))
    )
    repeats = _("{n} recurrence(s) within the reopen window").format(n=inc.repeats)
    source = _("the terminal's bundles") if inc.source == "bundle" else _("the collector")
    facts = [
        (N_("What"), f"<span class='mono'>{esc(inc.fault_key)}</span>: {esc(inc.summary)}"),
        (N_("Where"), where),
        (N_("Raised"), esc(shown_time(inc.raised_at))),
        (N_("Now"), esc(state)),
        (N_("Duration"), esc(duration)),
        (N_("Repeats"), esc(repeats)),
        (N_("Bundles"), str(inc.bundles)),
        (N_("Assignee"), esc(inc.assignee or _("nobody"))),
        (N_("Source"), esc(source)),
    ]
    if inc.escalated_at:
        facts.append((N_("Escalated"), esc(shown_time(inc.escalated_at))))
    if inc.resolved_at:
        facts.append((N_("Resolved"), esc(shown_time(inc.resolved_at))))
    return facts


def facts_table(facts: list[tuple[str, str]], table_id: str = "facts") -> str:
    """(label, HTML) rows as the pages' facts table, the labels in the reader's language."""
    rows = "".join(f"<tr><th>{esc(_(k))}</th><td>{v}</td></tr>" for k, v in facts)
    return f"<table class='facts' id='{table_id}'>{rows}</table>"


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
    facts = incident_facts(d, now)
    notes = "".join(
        f"<div class='card note' data-note='{n.id}'><p><b>{esc(shown_time(float(n.detail.get('contact_at') or n.at)))}</b> · "
        f"{esc(word(str(n.detail.get('channel'))))} · {esc(n.actor)}"
        + (
            " " + esc(_("with {contact}").format(contact=n.detail.get("contact")))
            if n.detail.get("contact")
            else ""
        )
        + f"</p><p class='note-text'>{esc(n.detail.get('text'))}</p></div>"
        for n in reversed(d.notes)
    )
    event_rows = "".join(
        f"<tr><td class='mono'>{esc(shown_time(e.at))}</td><td>{esc(word(e.kind.value))}</td>"
        f"<td>{esc(e.actor)}</td><td>{event_words(e)}</td></tr>"
        for e in reversed(d.events)
    )
    err = f"<p class='error' id='form-error'>{esc(error)}</p>" if error else ""
    on = esc(_("{fault} on {terminal}")).format(fault=esc(inc.fault_key), terminal=esc(inc.device))
    no_notes = esc(_("No notes yet."))
    parts = [
        f"<h1>#{inc.id} {on} {sev_badge(inc.severity)} {status_badge(inc.status.value)}</h1>",
        err,
        f"<div class='card'>{facts_table(facts)}</div>",
        remedy_html,
        f"<p><a class='button light' id='export' href='/v1/incidents/{inc.id}/export'>"
        + esc(_("Export for a dispute (.zip)"))
        + "</a></p>",
    ]
    if can_write:
        parts.append(f"<div class='card' id='actions'>{_actions(inc, sent)}</div>")
    parts.append(
        "<h2>"
        + esc(_("Notes"))
        + f"</h2><div id='notes'>{notes or f'<p class=muted>{no_notes}</p>'}</div>"
    )
    if can_write:
        parts.append(f"<div class='card'>{_note_form(inc, sent)}</div>")
    shown = len(d.bundles)
    bundles_shown = _("{shown} of {total}, newest first.").format(shown=shown, total=d.bundle_total)
    parts.append(
        "<h2>" + esc(_("Bundles")) + f"</h2><p class='muted'>{esc(bundles_shown)}</p>"
        "<table class='list' id='incident-bundles'><thead><tr>"
        + heads(
            N_("Created"),
            N_("Trigger"),
            N_("Severity"),
            N_("Summary"),
            N_("Screenshot"),
            N_("Size"),
        )
        + "</tr></thead><tbody>"
        + (_bundle_rows(d.bundles) or _none_row(6, _("None.")))
        + "</tbody></table>"
    )
    events_shown = _("{shown} of {total} event(s).").format(
        shown=len(d.events), total=d.event_total
    )
    parts.append(
        "<h2>" + esc(_("History")) + f"</h2><p class='muted'>{esc(events_shown)}</p>"
        "<table class='list' id='events'><thead><tr>"
        + heads(N_("When"), N_("What"), N_("Who"), N_("Detail"))
        + f"</tr></thead><tbody>{event_rows}</tbody></table>"
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
        f"<td>{esc(word(r.trigger_kind))}</td><td>{esc(r.summary)}</td>"
        f"<td class='muted'>{esc(fmt_size(r.size_bytes))}</td></tr>"
        for r in bundles
    )
    of_incidents = _("{shown} of {total}.").format(shown=len(incidents), total=incident_total)
    of_bundles = _("{shown} of {total}.").format(shown=len(bundles), total=bundle_total)
    all_of_them = esc(_("All of them"))
    return (
        "<h2>" + esc(_("Incidents")) + f"</h2><p class='muted'>{esc(of_incidents)} "
        f"<a href='{esc(_q('/incidents', device=name))}'>{all_of_them}</a></p>"
        f"{incident_table(incidents, now)}"
        "<h2>" + esc(_("Bundles")) + f"</h2><p class='muted'>{esc(of_bundles)} "
        f"<a href='{esc(_q('/bundles', device=name))}'>{all_of_them}</a></p>"
        "<table class='list' id='device-bundles'><thead><tr>"
        + heads(
            N_("Created"), N_("Fault"), N_("Severity"), N_("Trigger"), N_("Summary"), N_("Size")
        )
        + "</tr></thead><tbody>"
        + (brows or _none_row(6, _("No bundles.")))
        + "</tbody></table>"
    )

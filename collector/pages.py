"""Server-rendered HTML for the operator page. Every value passes html.escape; no external assets.

Every text for people is marked `_` (`collector.i18n.gettext`: the request's language,
English or Simplified Chinese); `layout` names the language in ``<html lang>``. Fault keys,
ids, names, numbers and units are shown as they are.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from agent.bundle.format import BundleReader
from agent.bundle.html import SEVERITIES as SEVERITIES  # the list's filter, and app's check
from agent.bundle.html import PageContext, render_body
from agent.bundle.html import fmt_size as fmt_size
from agent.bundle.html import sev_badge as _sev_badge
from agent.bundle.remedies import CLEARED_NOTE, Remedy
from agent.bundle.style import CSS, esc
from agent.core.timefmt import MAX_EPOCH_S, short_utc
from collector.i18n import N_, current_language, translator
from collector.i18n import gettext as _
from collector.storage import BundleRecord

# The roles' words in the header (`Viewer.role` is the role's value).
ROLE_WORDS = {"admin": N_("admin"), "support": N_("support"), "merchant": N_("merchant")}


# The words of values shown on the pages (statuses, event kinds, contact channels, trigger
# kinds); the values themselves stay as they are in links, forms and the API.
WORDS = {
    "open": N_("open"),
    "acknowledged": N_("acknowledged"),
    "resolved": N_("resolved"),
    "unresolved": N_("unresolved"),
    "opened": N_("opened"),
    "reopened": N_("reopened"),
    "cleared": N_("cleared"),
    "escalated": N_("escalated"),
    "assigned": N_("assigned"),
    "note": N_("note"),
    "bundle": N_("bundle"),
    "phone": N_("phone"),
    "email": N_("email"),
    "visit": N_("visit"),
    "chat": N_("chat"),
    "other": N_("other"),
    "fault": N_("fault"),
    "manual": N_("manual"),
    "startup": N_("startup"),
    # a device's channel states (collector.channel.devices.Device.state)
    "ok": N_("ok"),
    "late": N_("late"),
    "silent": N_("silent"),
    "never": N_("never"),
    # a command's statuses (collector.channel.commands.Command.shown_status)
    "queued": N_("queued"),
    "delivered": N_("delivered"),
    "done": N_("done"),
    "refused": N_("refused"),
    "failed": N_("failed"),
    "expired": N_("expired"),
}


def word(value: str) -> str:
    """A value's word in the request's language (`WORDS`), another value as it is."""
    return _(WORDS[value]) if value in WORDS else value


def sev_badge(sev: str) -> str:
    """A coloured severity label in the request's language."""
    return _sev_badge(sev, _)


def heads(*names: str) -> str:
    """A table's header cells, each name (marked with `N_`) in the reader's language; ""
    an empty cell."""
    return "".join(f"<th>{esc(_(n)) if n else ''}</th>" for n in names)


def shown_time(ts: float) -> str:
    """short_utc, or '-' for a time no terminal can have made (a row stored before ingest
    checked created_at: 1e300 or NaN must not break the list)."""
    return short_utc(ts) if _sane_time(ts) else "-"


def _sane_time(ts: float) -> bool:
    return isinstance(ts, int | float) and 0 <= ts <= MAX_EPOCH_S


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
        "<a href='/admin' id='nav-admin'>" + esc(_("Admin")) + "</a> "
        "<a href='/audit' id='nav-audit'>" + esc(_("Audit")) + "</a> "
        if viewer.role == "admin"
        else ""
    )
    role = _(ROLE_WORDS[viewer.role]) if viewer.role in ROLE_WORDS else viewer.role
    out = (
        f"{admin}<span id='whoami'>{esc(viewer.name)} ({esc(role)})</span> "
        "<a href='/settings' id='nav-settings'>" + esc(_("settings")) + "</a> "
        "<a href='/password'>" + esc(_("password")) + "</a> "
    )
    if viewer.csrf:
        out += (
            "<form method='post' action='/logout' class='inline' id='logout-form'>"
            f"{csrf_field()}<button type='submit' class='light' id='logout'>"
            + esc(_("log out"))
            + "</button></form>"
        )
    return out


def layout(title: str, body: str, *, operator_login: bool = False) -> str:
    """The page frame: header, inline CSS, no scripts, no external assets.

    operator_login: the page is behind the login: the header names who is logged in
    (`VIEWER`) and carries the log-out form. The page is in the request's language."""
    right = _account_bar() if operator_login else ""
    return (
        f"<!doctype html><html lang='{esc(current_language())}'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{CSS}{_EXTRA_CSS}</style></head><body>"
        "<header><a class='brand' href='/'>posagent collector</a>"
        "<a href='/incidents'>"
        + esc(_("Incidents"))
        + "</a><a href='/bundles'>"
        + esc(_("Bundles"))
        + "</a>"
        "<a href='/v1/bundles'>" + esc(_("JSON API")) + "</a>"
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
    return "/bundles?" + urlencode({k: v for k, v in merged.items() if v})


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
    any_ = esc(_("any"))
    opts = [f"<option value=''>{any_}</option>"] + [
        f"<option value='{esc(f)}'{' selected' if f == params.get('fault') else ''}>"
        f"{esc(f)}</option>"
        for f in fault_options
        if f
    ]
    sev_opts = [f"<option value=''>{any_}</option>"] + [
        f"<option value='{s}'{' selected' if s == params.get('severity') else ''}>"
        f"{esc(_(s))}</option>"
        for s in SEVERITIES
    ]

    def field(name: str, label: str, kind: str = "text") -> str:
        return (
            f"<label>{esc(label)}<input type='{kind}' name='{name}' id='f-{name}' "
            f"value='{esc(params.get(name, ''))}'></label>"
        )

    form = (
        "<form class='filters' method='get' action='/bundles'>"
        + field("device", _("Device"))
        + field("site", _("Site"))
        + "<label>"
        + esc(_("Fault"))
        + f"<select name='fault' id='f-fault'>{''.join(opts)}"
        "</select></label>"
        + "<label>"
        + esc(_("Severity"))
        + "<select name='severity' id='f-severity'>"
        f"{''.join(sev_opts)}</select></label>"
        + field("since", _("Since (UTC)"), "datetime-local")
        + field("until", _("Until (UTC)"), "datetime-local")
        + "<button type='submit' id='apply'>"
        + esc(_("Filter"))
        + "</button>"
        + "<a class='button light' href='/bundles'>"
        + esc(_("Clear"))
        + "</a></form>"
    )
    chips = [
        f"<a class='chip{' on' if not params.get('fault') else ''}' href='{esc(_link(params, fault=''))}'>"
        + esc(_("all"))
        + f"<b>{sum(counts.values())}</b></a>"
    ]
    for fault, n in counts.items():
        on = " on" if fault and fault == params.get("fault") else ""
        chips.append(
            f"<a class='chip{on}' data-fault='{esc(fault)}' href='{esc(_link(params, fault=fault))}'>"
            + esc(fault or _("(none)"))
            + f"<b>{n}</b></a>"
        )
    rows = []
    for r in records:
        href = f"/bundles/{quote(r.bundle_id)}"
        rows.append(
            f"<tr data-bundle='{esc(r.bundle_id)}'>"
            f"<td class='mono'><a href='{href}'>{esc(shown_time(r.created_at))}</a></td>"
            f"<td>{esc(r.device)}</td><td>{esc(r.site or '-')}</td>"
            f"<td class='mono'><a href='{href}'>{esc(r.fault_key or '-')}</a></td>"
            f"<td>{sev_badge(r.severity)}</td><td>{esc(word(r.trigger_kind))}</td>"
            f"<td>{esc(r.summary)}</td><td>{esc(r.screenshot)}</td>"
            f"<td class='muted'>{esc(fmt_size(r.size_bytes))}</td></tr>"
        )
    heads = (
        N_("Created"),
        N_("Device"),
        N_("Site"),
        N_("Fault"),
        N_("Severity"),
        N_("Trigger"),
        N_("Summary"),
        N_("Screenshot"),
        N_("Size"),
    )
    none = esc(_("No bundles match."))
    table = (
        "<table class='list' id='bundles'><thead><tr>"
        + "".join(f"<th>{esc(_(h))}</th>" for h in heads)
        + "</tr></thead><tbody>"
        + ("".join(rows) or f"<tr><td colspan='9' class='muted'>{none}</td></tr>")
        + "</tbody></table>"
    )
    shown_total = esc(_("{n} bundle(s)").format(n=total))
    pager = [f"<span class='muted' id='total'>{shown_total}</span>"]
    if offset > 0:
        pager.append(
            f"<a class='button light' href='{esc(_link(params, offset=str(max(0, offset - limit))))}'>"
            + esc(_("newer"))
            + "</a>"
        )
    if offset + limit < total:
        pager.append(
            f"<a class='button light' href='{esc(_link(params, offset=str(offset + limit)))}'>"
            + esc(_("older"))
            + "</a>"
        )
    err_html = f"<p class='error'>{esc(error)}</p>" if error else ""
    body = (
        "<h1>" + esc(_("Bundles")) + "</h1>"
        f"<div class='card'>{form}{err_html}</div>"
        f"<div class='card'><div class='chips' id='counts'>{''.join(chips)}</div></div>"
        f"{table}<div class='pager'>{''.join(pager)}</div>"
    )
    return layout(_("posagent collector: bundles"), body, operator_login=operator_login)


def remedy_block(remedy: Remedy, lang: str, *, cleared: bool = False) -> str:
    """The "What to do" card of a bundle page (issue 15 item 5), in the reader's language."""
    _ = translator(lang).gettext
    heading, merchant, support = _("What to do"), _("Merchant"), _("Support")
    note = f"<p class='muted'>{esc(_(CLEARED_NOTE))}</p>" if cleared else ""
    return (
        f"<section class='card' id='remedy' lang='{esc(lang)}'>"
        f"<h2>{esc(heading)}</h2>{note}<table class='facts'>"
        f"<tr><th>{esc(merchant)}</th><td id='remedy-merchant'>{esc(remedy.merchant)}</td></tr>"
        f"<tr><th>{esc(support)}</th><td id='remedy-support'>{esc(remedy.support)}</td></tr>"
        "</table></section>"
    )


def render_bundle(
    record: BundleRecord,
    reader: BundleReader,
    *,
    operator_login: bool = False,
    remedy_html: str = "",
) -> str:
    """One bundle for people (`agent.bundle.html.render_body`): what happened, where, when,
    the remedy (remedy_html, made by the caller), the screenshot; the timeline; the rest
    folded. Bounded whatever the bundle holds; entries link to the per-bundle endpoints."""
    base = f"/v1/bundles/{quote(record.bundle_id)}"

    def entry_url(name: str) -> str:
        own = name in ("screenshot.png", "report.txt", "timeline.json")
        return f"{base}/{name}" if own else f"{base}/entries/{quote(name)}"

    ctx = PageContext(
        signature_checked=record.signature_checked,
        entry_url=entry_url,
        download_url=f"{base}/download",
        manifest_url=base,
        received_at=record.received_at if _sane_time(record.received_at) else None,
        registered_site=record.site,
        facts=(
            (
                _("Size"),
                f"{esc(fmt_size(record.size_bytes))} "
                f"<span class='mono muted'>sha256 {esc(record.sha256)}</span>",
            ),
        ),
        remedy_html=remedy_html,
        gettext=_,
    )
    body = render_body(reader, ctx)
    title = f"posagent bundle {record.fault_key or record.trigger_kind} {record.bundle_id}"
    return layout(title, body, operator_login=operator_login)


def render_login(error: str = "", next_url: str = "/", *, csrf: str = "", name: str = "") -> str:
    """The login form: user name and password (csrf: the login form's own token)."""
    err_html = f"<p class='error' id='login-error'>{esc(error)}</p>" if error else ""
    log_in = esc(_("Log in"))
    body = (
        f"<h1>{log_in}</h1><div class='card'>"
        "<form method='post' action='/login' class='filters' id='login-form'>"
        f"<input type='hidden' name='next' value='{esc(next_url)}'>"
        f"<input type='hidden' name='csrf' value='{esc(csrf)}'>"
        "<label>"
        + esc(_("User"))
        + f"<input type='text' name='name' id='name' value='{esc(name)}' "
        "autocomplete='username' required></label>"
        "<label>" + esc(_("Password")) + "<input type='password' name='password' id='password' "
        "autocomplete='current-password' required></label>"
        f"<button type='submit' id='login'>{log_in}</button></form>"
        f"{err_html}</div>"
    )
    return layout(_("posagent collector: login"), body)

"""The device pages for people (issue 16 items 2-4): ``/devices`` (the devices within the
reader's reach and their state) and ``/devices/{id}`` (last seen, last summary, silent
state and outages, the commands and their results, and a form that queues a capture or
a selftest: ``POST /devices/{id}/commands``, support and admin; the form gets its CSRF
token from the accounts work). Every value passes `esc`; texts for people are marked `_`
(`collector.i18n`: the request's language).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from agent.bundle.style import esc
from collector import pages
from collector.access import principal_of
from collector.auth import valid_device_id
from collector.channel import devices, keys
from collector.channel.api import Channel, DeviceView, device_view, queue_command
from collector.channel.errors import ChannelError
from collector.i18n import N_
from collector.i18n import gettext as _
from collector.incidents import views as incident_views
from collector.pages import csrf_field, heads

MAX_FORM = 4096


def _t(ts: float | None) -> str:
    return "-" if ts is None else pages.shown_time(ts)


def _summary_rows(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "<p class='muted'>" + esc(_("No summary yet.")) + "</p>"
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td class='mono'>"
        f"{esc(', '.join(map(str, v)) if isinstance(v, list) else ('-' if v is None else str(v)))}"
        "</td></tr>"
        for k, v in summary.items()
    )
    return f"<table>{rows}</table>"


def render_list(found: list[devices.Device], total: int, now: float, login: bool) -> str:
    rows = "".join(
        f"<tr><td><a href='/devices/{quote(d.id)}'>{esc(d.id)}</a></td><td>{esc(d.site)}</td>"
        f"<td>{esc(pages.word(d.state(now)))}</td><td>{esc(_t(d.last_seen))}</td>"
        f"<td>{esc(d.agent_version)}</td></tr>"
        for d in found
    )
    heading = esc(_("Devices ({n})").format(n=total))
    body = (
        f"<h1>{heading}</h1><table>"
        + "<tr>"
        + heads(N_("Device"), N_("Site"), N_("State"), N_("Last seen"), N_("Agent"))
        + f"{rows}</table>"
    )
    return pages.layout(_("posagent devices"), body, operator_login=login)


def _key_rows(d: devices.Device) -> str:
    """The device's public keys with when each was in use (collector.channel.keys)."""
    found = keys.lives(d.pubkeys)
    if not found:
        none = _("No public key enrolled (keys of device_pubkeys_dir are not listed).")
        return f"<p>{esc(none)}</p>"
    in_use = _("in use")
    rows = "".join(
        f"<tr><td class='mono'>{esc(k.key_id)}</td><td>{esc(_t(k.since))}</td>"
        f"<td>{esc(_t(k.until) if k.until is not None else in_use)}</td></tr>"
        for k in found
    )
    pem = esc(_("Public keys (PEM)"))
    use = esc(_("for {command}")).format(
        command="<code>posagent bundle verify FILE --public-key KEYS</code>"
    )
    return (
        "<table>"
        + "<tr>"
        + heads(N_("Key id"), N_("From"), N_("Until"))
        + f"{rows}</table><p><a href='/v1/devices/{quote(d.id)}/keys'>{pem}</a>, {use}.</p>"
    )


def device_body(v: DeviceView, now: float, *, writes: bool, note: str = "") -> str:
    """An enrolled or checked-in device: its state, last summary, commands, silences."""
    d = v.device
    silent = (
        "<p class='error'>"
        + esc(
            _("Silent since {since} (last check-in {last}).").format(
                since=_t(d.silent_since), last=_t(d.last_seen)
            )
        )
        + "</p>"
        if d.silent_since is not None
        else ""
    )
    cmd_rows = "".join(
        f"<tr><td class='mono'>{esc(c.id[:8])}</td><td>{esc(c.kind)}</td>"
        f"<td>{esc(_t(c.issued_at))}</td><td>{esc(c.issued_by)}</td>"
        f"<td>{esc(pages.word(c.shown_status(now)))}</td><td>{esc(c.detail)}</td></tr>"
        for c in v.commands
    )
    out_rows = "".join(
        f"<tr><td>{esc(_t(o.last_seen))}</td><td>{esc(_t(o.silent_at))}</td>"
        f"<td>{esc(_t(o.back_at))}</td>"
        f"<td>{'-' if o.outage_s is None else esc(f'{o.outage_s:.0f} s')}</td></tr>"
        for o in v.outages
    )
    form = ""
    if writes:
        form = (
            f"<form method='post' action='/devices/{quote(d.id)}/commands' class='filters'>"
            f"{csrf_field()}"
            "<label>" + esc(_("Command")) + "<select name='kind'>"
            "<option value='capture'>capture</option>"
            "<option value='selftest'>selftest</option>"
            "<option value='rotate-signing-key'>rotate-signing-key</option></select></label>"
            "<label>" + esc(_("Note")) + "<input type='text' name='note' maxlength='500'></label>"
            "<button type='submit'>" + esc(_("Queue")) + "</button></form>"
        )
    flash = f"<p class='error'>{esc(note)}</p>" if note else ""
    every = esc(_("every {n} s").format(n=d.interval_s))

    def row(label: str, value: str, cls: str = "") -> str:
        attr = f" class='{cls}'" if cls else ""
        return f"<tr><th>{esc(_(label))}</th><td{attr}>{value}</td></tr>"

    body = (
        "<h1>"
        + esc(_("Device {id}").format(id=d.id))
        + f"</h1>{silent}{flash}<div class='card'><table>"
        + row(N_("Site"), esc(d.site))
        + row(N_("Tenant"), esc(d.tenant or "-"))
        + row(N_("State"), esc(pages.word(d.state(now))))
        + row(N_("Last seen"), f"{esc(_t(d.last_seen))} ({every})")
        + row(N_("Enrolled"), f"{esc(_t(d.enrolled_at))} ({d.enrollments}×)")
        + row(N_("Agent"), esc(d.agent_version))
        + row(N_("Boot id"), esc(d.boot_id), "mono")
        + row(N_("Config"), esc(d.config_digest or "-"), "mono")
        + "</table></div>"
        "<h2>" + esc(_("Signing keys")) + f"</h2>{_key_rows(d)}"
        "<h2>" + esc(_("Last summary")) + f"</h2>{_summary_rows(d.summary)}"
        "<h2>"
        + esc(_("Commands"))
        + f"</h2>{form}<table>"
        + "<tr>"
        + heads(N_("Id"), N_("Kind"), N_("Queued"), N_("By"), N_("Status"), N_("Result"))
        + f"{cmd_rows}</table>"
        "<h2>"
        + esc(_("Silences"))
        + "</h2><table>"
        + "<tr>"
        + heads(N_("Last check-in"), N_("Silent at"), N_("Back at"), N_("Outage"))
        + f"{out_rows}</table>"
    )
    return body


async def devices_page(request: Request) -> Response:
    col = request.app.state.collector
    ch: Channel = col.channel
    who = principal_of(request)

    def read() -> tuple[list[devices.Device], int]:
        with ch.db.transaction(write=False) as tx:
            return devices.listing(tx, who.sites, limit=devices.MAX_LIST)

    found, total = await run_in_threadpool(read)
    page = render_list(found, total, time.time(), True)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


async def _page(request: Request, status: int = 200, note: str = "") -> Response:
    """A terminal's page: its channel state (when it enrolled or checked in), then its
    incidents and bundles (`collector.incidents.views.device_sections`); 404 when the
    principal sees none of it."""
    col = request.app.state.collector
    ch: Channel = col.channel
    who = principal_of(request)
    device_id = str(request.path_params["device_id"])
    if not valid_device_id(device_id):
        return HTMLResponse(
            pages.layout("posagent collector", "<h1>" + esc(_("Not a terminal id.")) + "</h1>"),
            status_code=400,
        )
    try:
        v: DeviceView | None = await run_in_threadpool(device_view, ch.db, device_id, who.sites)
    except ChannelError:
        v = None
    sections, found = await incident_views.device_sections(request, device_id)
    if v is None and not found:
        return HTMLResponse(
            pages.layout(
                "posagent collector",
                "<h1>" + esc(_("No such device.")) + "</h1>",
                operator_login=True,
            ),
            status_code=404,
        )
    head = (
        device_body(v, time.time(), writes=who.writes, note=note)
        if v is not None
        else "<h1>" + esc(_("Device {id}").format(id=device_id)) + "</h1>"
    )
    page = pages.layout(f"posagent device {device_id}", head + sections, operator_login=True)
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


async def device_page(request: Request) -> Response:
    return await _page(request)


async def device_command_form(request: Request) -> Response:
    ch: Channel = request.app.state.collector.channel
    who = principal_of(request)
    device_id = str(request.path_params["device_id"])
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return HTMLResponse(_("Form too large."), status_code=413)
    form = parse_qs(body.decode("utf-8", "replace"))
    kind = (form.get("kind") or [""])[0]
    note = (form.get("note") or [""])[0].strip()
    data: dict[str, Any] = {
        "kind": kind,
        "args": {"note": note} if note and kind == "capture" else {},
    }
    client = request.client.host if request.client else "?"
    try:
        cmd = await run_in_threadpool(
            lambda: queue_command(ch, device_id, data, who=who, address=client, now=time.time())
        )
    except ChannelError as e:
        if e.code == 404:
            return await _page(request)
        return await _page(request, e.code, str(e))
    ch.waiters.notify(cmd.device)
    return RedirectResponse(f"/devices/{quote(device_id)}", status_code=303)

"""The device pages for people (issue 16 items 2-4): ``/devices`` (the devices within the
reader's reach and their state) and ``/devices/{id}`` (last seen, last summary, silent
state and outages, the commands and their results, and a form that queues a capture or
a selftest: ``POST /devices/{id}/commands``, support and admin; the form gets its CSRF
token from the accounts work). Every value passes `esc`.
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
from collector.incidents import views as incident_views
from collector.pages import csrf_field

MAX_FORM = 4096


def _t(ts: float | None) -> str:
    return "-" if ts is None else pages.shown_time(ts)


def _summary_rows(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "<p class='muted'>No summary yet.</p>"
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
        f"<td>{esc(d.state(now))}</td><td>{esc(_t(d.last_seen))}</td>"
        f"<td>{esc(d.agent_version)}</td></tr>"
        for d in found
    )
    body = (
        f"<h1>Devices ({total})</h1><table><tr><th>Device</th><th>Site</th><th>State</th>"
        f"<th>Last seen</th><th>Agent</th></tr>{rows}</table>"
    )
    return pages.layout("posagent devices", body, operator_login=login)


def _key_rows(d: devices.Device) -> str:
    """The device's public keys with when each was in use (collector.channel.keys)."""
    found = keys.lives(d.pubkeys)
    if not found:
        return "<p>No public key enrolled (keys of device_pubkeys_dir are not listed).</p>"
    rows = "".join(
        f"<tr><td class='mono'>{esc(k.key_id)}</td><td>{esc(_t(k.since))}</td>"
        f"<td>{esc(_t(k.until) if k.until is not None else 'in use')}</td></tr>"
        for k in found
    )
    return (
        "<table><tr><th>Key id</th><th>From</th><th>Until</th></tr>"
        f"{rows}</table><p><a href='/v1/devices/{quote(d.id)}/keys'>Public keys (PEM)</a>, "
        "for <code>posagent bundle verify FILE --public-key KEYS</code>.</p>"
    )


def device_body(v: DeviceView, now: float, *, writes: bool, note: str = "") -> str:
    """An enrolled or checked-in device: its state, last summary, commands, silences."""
    d = v.device
    silent = (
        f"<p class='error'>Silent since {esc(_t(d.silent_since))} "
        f"(last check-in {esc(_t(d.last_seen))}).</p>"
        if d.silent_since is not None
        else ""
    )
    cmd_rows = "".join(
        f"<tr><td class='mono'>{esc(c.id[:8])}</td><td>{esc(c.kind)}</td>"
        f"<td>{esc(_t(c.issued_at))}</td><td>{esc(c.issued_by)}</td>"
        f"<td>{esc(c.shown_status(now))}</td><td>{esc(c.detail)}</td></tr>"
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
            "<label>Command<select name='kind'><option value='capture'>capture</option>"
            "<option value='selftest'>selftest</option>"
            "<option value='rotate-signing-key'>rotate-signing-key</option></select></label>"
            "<label>Note<input type='text' name='note' maxlength='500'></label>"
            "<button type='submit'>Queue</button></form>"
        )
    flash = f"<p class='error'>{esc(note)}</p>" if note else ""
    body = (
        f"<h1>Device {esc(d.id)}</h1>{silent}{flash}<div class='card'><table>"
        f"<tr><th>Site</th><td>{esc(d.site)}</td></tr>"
        f"<tr><th>Tenant</th><td>{esc(d.tenant or '-')}</td></tr>"
        f"<tr><th>State</th><td>{esc(d.state(now))}</td></tr>"
        f"<tr><th>Last seen</th><td>{esc(_t(d.last_seen))} (every {d.interval_s} s)</td></tr>"
        f"<tr><th>Enrolled</th><td>{esc(_t(d.enrolled_at))} ({d.enrollments}×)</td></tr>"
        f"<tr><th>Agent</th><td>{esc(d.agent_version)}</td></tr>"
        f"<tr><th>Boot id</th><td class='mono'>{esc(d.boot_id)}</td></tr>"
        f"<tr><th>Config</th><td class='mono'>{esc(d.config_digest or '-')}</td></tr>"
        "</table></div>"
        f"<h2>Signing keys</h2>{_key_rows(d)}"
        f"<h2>Last summary</h2>{_summary_rows(d.summary)}"
        f"<h2>Commands</h2>{form}<table><tr><th>Id</th><th>Kind</th><th>Queued</th>"
        f"<th>By</th><th>Status</th><th>Result</th></tr>{cmd_rows}</table>"
        "<h2>Silences</h2><table><tr><th>Last check-in</th><th>Silent at</th><th>Back at</th>"
        f"<th>Outage</th></tr>{out_rows}</table>"
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
            pages.layout("posagent collector", "<h1>Not a terminal id.</h1>"), status_code=400
        )
    try:
        v: DeviceView | None = await run_in_threadpool(device_view, ch.db, device_id, who.sites)
    except ChannelError:
        v = None
    sections, found = await incident_views.device_sections(request, device_id)
    if v is None and not found:
        return HTMLResponse(
            pages.layout("posagent collector", "<h1>No such device.</h1>", operator_login=True),
            status_code=404,
        )
    head = (
        device_body(v, time.time(), writes=who.writes, note=note)
        if v is not None
        else f"<h1>Device {esc(device_id)}</h1>"
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
            return HTMLResponse("too large", status_code=413)
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

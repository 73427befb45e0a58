"""The incident pages' handlers (`collector.app` routes them behind its gate, html=True):

- ``GET /``: the home page, the fleet at a glance (a ``/`` with the bundle list's filters,
  an old bookmark, is redirected to ``/bundles`` with them);
- ``GET /incidents``: the list with filters (those of ``GET /v1/incidents``, plus
  ``taken``: ``me`` for the viewer's incidents, ``nobody`` for those no one took, which
  the page's assignee field, empty for "any", cannot say);
- ``GET /incidents/{id}``: one incident, what to do about it (its fault key's remedy in
  the reader's language, `collector.remedies`), its notes form and status buttons (for a
  principal who writes);
- ``GET /devices/{device}``: one terminal's incidents and bundles.

Each reads with the request's principal and renders in the thread pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from agent.bundle.style import esc
from collector import audit
from collector.access import Principal, principal_of
from collector.accounts.web import client_address
from collector.i18n import N_, current_language
from collector.i18n import gettext as _
from collector.incidents import render
from collector.incidents.inputs import list_filter
from collector.incidents.model import BadInput, IncidentFilter, NotFound, OutOfReach
from collector.incidents.service import Incidents
from collector.pages import layout, remedy_block
from collector.remedies import remedy_for
from collector.storage import Query
from collector.storage.sql import database

BUNDLE_FILTERS = ("device", "site", "fault", "severity", "since", "until", "limit", "offset")
NO_STORE = {"Cache-Control": "no-store"}
DEVICE_INCIDENTS = 100
DEVICE_BUNDLES = 50


def _service(request: Request) -> Incidents:
    incidents: Incidents = request.app.state.collector.incidents
    return incidents


def _login(request: Request) -> bool:
    """The page header's account bar: always, the read side being closed (accounts)."""
    return True


def _not_found(text: str, code: int = 404) -> HTMLResponse:
    return HTMLResponse(
        layout("posagent collector", f"<h1>{esc(text)}</h1>"), status_code=code, headers=NO_STORE
    )


async def home(request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if v}
    if any(k in params for k in BUNDLE_FILTERS):  # the bundle list's old address
        return RedirectResponse("/bundles?" + urlencode(params), status_code=303)
    inc, who, login = _service(request), principal_of(request), _login(request)

    def go() -> str:
        return render.home(inc.home(who), inc.clock(), operator_login=login)

    return HTMLResponse(await run_in_threadpool(go), headers=NO_STORE)


def page_filter(params: Mapping[str, str], who: Principal) -> IncidentFilter:
    """The list page's filters: the API's (`list_filter`; empty values already dropped)
    and ``taken`` (me, nobody) as the assignee it stands for. BadInput names what is off."""
    api = {k: v for k, v in params.items() if k != "taken"}
    taken = params.get("taken", "")
    if taken:
        if taken not in render.TAKEN:
            raise BadInput(N_("taken must be one of {values}"), values=", ".join(render.TAKEN))
        if "assignee" in api:
            raise BadInput(N_("give an assignee or choose 'taken by', not both"))
        api["assignee"] = who.name if taken == "me" else ""
    return list_filter(api)


async def incident_list(request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if v}
    inc, who, login = _service(request), principal_of(request), _login(request)
    error = ""
    try:
        f = page_filter(params, who)
    except BadInput as e:
        error, f = e.words(), IncidentFilter()

    def go() -> str:
        items, total = inc.page(f, who)
        return render.incident_list(
            items,
            total,
            params,
            f.query.limit,
            f.query.offset,
            inc.clock(),
            error=error,
            operator_login=login,
        )

    return HTMLResponse(
        await run_in_threadpool(go), status_code=400 if error else 200, headers=NO_STORE
    )


def audit_incident(request: Request, action: str, iid: int, detail: dict[str, Any]) -> None:
    """An action on an incident in the audit log (who, from where)."""
    col = request.app.state.collector
    address = client_address(request, col.proxies)
    audit.record(database(col.store), principal_of(request), action, str(iid), address, detail)


def audit_denied(request: Request, iid: int) -> None:
    """An incident out of the caller's reach asked for (answered 404, as one that does
    not exist): ``incident.denied``, as `collector.app` records ``bundle.denied``."""
    audit_incident(
        request, "incident.denied", iid, {"asked": f"{request.method} {request.url.path}"}
    )


def _incident_html(
    request: Request, iid: int, who: Principal, error: str, kept: Mapping[str, Any]
) -> str | None:
    inc, cfg = _service(request), request.app.state.collector.cfg
    try:
        d = inc.detail(iid, who)
    except OutOfReach:
        audit_denied(request, iid)
        return None
    except NotFound:
        return None
    lang = current_language()  # the user's setting, else the browser's (collector.i18n)
    what_to_do = remedy_block(
        remedy_for(d.incident.fault_key, cfg, lang), lang, cleared=not d.incident.active
    )
    return render.incident(
        d,
        inc.clock(),
        can_write=who.writes,
        error=error,
        kept=kept,
        remedy_html=what_to_do,
        operator_login=_login(request),
    )


async def incident_page_with(
    request: Request, iid: int, error: str, code: int, kept: Mapping[str, Any] | None = None
) -> Response:
    """The incident page, with a form's error when there is one (answered with code) and
    the fields that form sent (kept: shown again in it)."""
    who = principal_of(request)
    page = await run_in_threadpool(_incident_html, request, iid, who, error, kept or {})
    if page is None:
        return _not_found(_("No such incident."))
    return HTMLResponse(page, status_code=code, headers=NO_STORE)


async def incident_page(request: Request) -> Response:
    raw = str(request.path_params["incident_id"])
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15 or int(raw) < 1:
        return _not_found(_("Not an incident id."), 400)
    return await incident_page_with(request, int(raw), "", 200)


async def device_sections(request: Request, name: str) -> tuple[str, bool]:
    """A terminal's incidents and bundles within the principal's reach, as sections of
    its page (`collector.channel.views`), and whether it has any."""
    inc, who = _service(request), principal_of(request)
    index = request.app.state.collector.store.index

    def go() -> tuple[str, bool]:
        items, total = inc.page(IncidentFilter(Query(device=name, limit=DEVICE_INCIDENTS)), who)
        q = who.restrict(Query(device=name, limit=DEVICE_BUNDLES))
        n = index.count(q)
        html = render.device_sections(name, items, total, index.query(q), n, inc.clock())
        return html, bool(total or n)

    return await run_in_threadpool(go)

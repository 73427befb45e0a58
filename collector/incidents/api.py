"""The incidents' HTTP API, behind the read side's gate (`collector.app.operator_only`
wraps every handler; each narrows what it reads with `collector.access.principal_of`):

- ``GET /v1/incidents``: filters ``device``, ``site``, ``fault``, ``severity``, ``since``,
  ``until`` (as for bundles: the incidents active in the window), ``status`` (open,
  acknowledged, resolved, or unresolved), ``assignee`` ("" for unassigned), ``limit``
  (≤ 500), ``offset``; ``{"incidents", "total", "limit", "offset"}``, newest activity first;
- ``GET /v1/incidents/{id}``: the incident with its bundles (newest 200, ``bundle_total``),
  notes and events (newest 300, ``event_total``);
- ``POST /v1/incidents/{id}/notes``: ``{"channel": phone|email|visit|chat|other, "text":
  1-4000 characters, "contact": who at the merchant (optional, ≤ 200), "at": when the
  contact took place (optional: RFC 3339 or epoch seconds, from 2000 to a day ahead)}``:
  201 with the note;
- ``POST /v1/incidents/{id}/status``: ``{"status": open|acknowledged|resolved, "assignee":
  name or "" (≤ 100)}`` (one or both): 200 with the incident; 409 for a transition the
  status does not allow (`model.TRANSITIONS`) or one already made;
- ``GET /v1/incidents/{id}/export``: the dispute export (`collector.incidents.export`),
  audited as ``incident.export`` (it hands out the incident's bundles and screenshots);
- ``GET /v1/fleet/faults?days=7`` (1-366): per fault key, the incidents active over the
  window, their terminals and sites (``"printer.paper_end at 37 terminals in 5 sites"``).

The two POSTs take JSON (unknown keys refused) or a form (``application/x-www-form-urlencoded``,
what the incident page posts; fields other than the above are ignored, such as a CSRF
token): a form is answered with 303 to the incident's page, or the page again with the
error (400/409). Bodies over 16 KiB: 413. Answers: 400 malformed, 403 a principal who
only reads (merchant), 404 an incident that does not exist or is out of reach.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from collector.access import principal_of
from collector.i18n import N_
from collector.incidents import export, views
from collector.incidents.as_json import (
    detail_json,
    event_json,
    fault_text,
    incident_json,
    time_json,
)
from collector.incidents.inputs import (
    TooLarge,
    incident_id,
    list_filter,
    note_input,
    read_body,
    status_input,
)
from collector.incidents.model import (
    BadInput,
    Forbidden,
    IncidentError,
    InvalidTransition,
    NotFound,
    OutOfReach,
)
from collector.incidents.service import Incidents

MAX_DAYS = 366

Handler = Callable[[Request], Awaitable[Response]]


def service(request: Request) -> Incidents:
    incidents: Incidents = request.app.state.collector.incidents
    return incidents


def _error(code: int, status: str, text: str) -> JSONResponse:
    return JSONResponse({"status": status, "error": text[:300]}, status_code=code)


def answer(e: Exception) -> JSONResponse:
    """The JSON answer of a package error."""
    if isinstance(e, NotFound):
        return _error(404, "not_found", "no such incident")
    if isinstance(e, Forbidden):
        return _error(403, "forbidden", str(e))
    if isinstance(e, InvalidTransition):
        return _error(409, "conflict", str(e))
    if isinstance(e, TooLarge):
        return _error(413, "too_large", str(e))
    return _error(400, "bad_request", str(e))


async def list_incidents(request: Request) -> Response:
    try:
        f = list_filter(request.query_params)
    except BadInput as e:
        return answer(e)
    inc = service(request)
    items, total = await run_in_threadpool(inc.page, f, principal_of(request))
    now = inc.clock()
    return JSONResponse(
        {
            "incidents": [incident_json(i, now) for i in items],
            "total": total,
            "limit": f.query.limit,
            "offset": f.query.offset,
        }
    )


async def get_incident(request: Request) -> Response:
    inc = service(request)
    iid = 0
    try:
        iid = incident_id(request)
        d = await run_in_threadpool(inc.detail, iid, principal_of(request))
    except IncidentError as e:
        return await _answer(request, e, iid)
    return JSONResponse(detail_json(d, inc.clock()))


async def _post(
    request: Request, act: Callable[[Incidents, int, dict[str, Any], bool], Any], code: int
) -> Response:
    """The shared path of the two POSTs: id, body, the change in the thread pool, the
    answer as JSON or (for a form) a redirect or the page with the error."""
    inc = service(request)
    form, iid = False, 0
    data: dict[str, Any] = {}
    try:
        iid = incident_id(request)
        data, form = await read_body(request)
        out = await run_in_threadpool(act, inc, iid, data, form)
    except (IncidentError, TooLarge) as e:
        if form and not isinstance(e, NotFound | Forbidden):  # the page again: the error, and
            code = answer(e).status_code  # what was sent back in its form (nothing lost)
            return await views.incident_page_with(request, iid, e.words(), code, data)
        return await _answer(request, e, iid)
    if form:
        return RedirectResponse(f"/incidents/{iid}", status_code=303)
    return JSONResponse(out, status_code=code)


_audit = views.audit_incident


async def _answer(request: Request, e: Exception, iid: int) -> JSONResponse:
    """The JSON answer of a package error; an incident out of the caller's reach is
    audited first (``incident.denied``), then answered 404 like one that does not exist."""
    if isinstance(e, OutOfReach):
        await run_in_threadpool(views.audit_denied, request, iid)
    return answer(e)


async def add_note(request: Request) -> Response:
    who = principal_of(request)

    def act(inc: Incidents, iid: int, data: dict[str, Any], form: bool) -> dict[str, Any]:
        if not who.writes:  # 404 before 403: checked again in the service
            inc.get(iid, who)
            raise Forbidden(N_("a {role} may only read incidents"), role=who.role.value)
        n = note_input(data, form, time.time())
        out = event_json(inc.add_note(iid, who, **n))
        _audit(request, "incident.note", iid, {"channel": str(n.get("channel", ""))})
        return out

    return await _post(request, act, 201)


async def set_status(request: Request) -> Response:
    who = principal_of(request)

    def act(inc: Incidents, iid: int, data: dict[str, Any], form: bool) -> dict[str, Any]:
        if not who.writes:
            inc.get(iid, who)
            raise Forbidden(N_("a {role} may only read incidents"), role=who.role.value)
        status, assignee = status_input(data, form)
        after, _ = inc.set_status(iid, who, status, assignee)
        detail = {"status": status.value if status else None, "assignee": assignee}
        _audit(request, "incident.status", iid, detail)
        return incident_json(after, inc.clock())

    return await _post(request, act, 200)


async def fleet_faults(request: Request) -> Response:
    raw = request.query_params.get("days", "7")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_DAYS:
        return _error(400, "bad_request", f"days must be 1 to {MAX_DAYS}")
    inc = service(request)
    since = inc.clock() - int(raw) * 86400.0
    lines = await run_in_threadpool(inc.fleet_faults, principal_of(request), since)
    return JSONResponse(
        {
            "days": int(raw),
            "since": time_json(since),
            "faults": [{**x.to_dict(), "text": fault_text(x.to_dict())} for x in lines],
        }
    )


async def export_incident(request: Request) -> Response:
    inc, who = service(request), principal_of(request)
    col = request.app.state.collector

    def build(iid: int) -> tuple[IO[bytes], str]:
        out, name = export.build(col, inc, iid, who)
        try:  # the export hands out the incident's bundles and screenshots: audited
            _audit(request, "incident.export", iid, {"file": name})
        except BaseException:
            out.close()
            raise
        return out, name

    iid = 0
    try:
        iid = incident_id(request)
        out, name = await run_in_threadpool(build, iid)
    except IncidentError as e:
        return await _answer(request, e, iid)

    def chunks() -> Iterator[bytes]:
        try:
            while block := out.read(1 << 16):
                yield block
        finally:
            out.close()

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/incidents", list_incidents),
    ("GET", "/v1/incidents/{incident_id}", get_incident),
    ("POST", "/v1/incidents/{incident_id}/notes", add_note),
    ("POST", "/v1/incidents/{incident_id}/status", set_status),
    ("GET", "/v1/incidents/{incident_id}/export", export_incident),
    ("GET", "/v1/fleet/faults", fleet_faults),
]

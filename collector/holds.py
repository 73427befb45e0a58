"""Legal holds over HTTP (issue 14 item 4), for admins (`collector.app` wraps these
handlers with `operator_only(admin=True)`); placing and releasing one is audited:

- ``GET /v1/holds``: ``{"holds": [{scope, value, reason, created_at}]}``, oldest first;
- ``POST /v1/holds`` with ``{"bundle" | "device" | "site": VALUE, "reason": TEXT}``: 201
  placed, 200 when that hold was in place (its reason replaced);
- ``DELETE /v1/holds?bundle=ID`` (or ``device=``, ``site=``): 200 released, 404 none.

A hold keeps every bundle it covers from retention (`collector.storage.retention`).
"""

from __future__ import annotations

import json

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from collector import audit
from collector.access import principal_of
from collector.accounts.web import client_address
from collector.storage import BundleStore
from collector.storage.retention import parse_hold_target, retention_index
from collector.storage.sql import database

log = structlog.get_logger(__name__)

MAX_BODY = 4096
MAX_REASON = 500


def _error(code: int, status: str, text: str) -> JSONResponse:
    return JSONResponse({"status": status, "error": text}, status_code=code)


def _store(request: Request) -> BundleStore:
    store: BundleStore = request.app.state.collector.store
    return store


def _address(request: Request) -> str:
    return client_address(request, request.app.state.collector.proxies)


async def list_holds(request: Request) -> Response:
    idx = retention_index(_store(request))
    holds = await run_in_threadpool(idx.holds)
    return JSONResponse({"holds": [h.to_dict() for h in holds]})


async def add_hold(request: Request) -> Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _error(413, "too_large", f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        scope, value = parse_hold_target(data)
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise ValueError(f"reason must be 1-{MAX_REASON} characters")
    except (ValueError, RecursionError) as e:
        return _error(400, "bad_request", str(e)[:300])
    idx = retention_index(_store(request))
    placed = await run_in_threadpool(idx.add_hold, scope, value, reason.strip())
    client = _address(request)
    action = "hold.place" if placed else "hold.update"
    await run_in_threadpool(
        audit.record,
        database(_store(request)),
        principal_of(request),
        action,
        f"{scope}:{value}",
        client,
        {"reason": reason.strip()},
    )
    log.info("hold_placed" if placed else "hold_updated", scope=scope, value=value, client=client)
    return JSONResponse(
        {"status": "placed" if placed else "updated", "scope": scope, "value": value},
        status_code=201 if placed else 200,
    )


async def remove_hold(request: Request) -> Response:
    try:
        scope, value = parse_hold_target(dict(request.query_params))
    except ValueError as e:
        return _error(400, "bad_request", str(e)[:300])
    idx = retention_index(_store(request))
    removed = await run_in_threadpool(idx.remove_hold, scope, value)
    if not removed:
        return _error(404, "not_found", f"no hold on {scope} {value[:80]!r}")
    client = _address(request)
    await run_in_threadpool(
        audit.record,
        database(_store(request)),
        principal_of(request),
        "hold.release",
        f"{scope}:{value}",
        client,
    )
    log.info("hold_released", scope=scope, value=value, client=client)
    return JSONResponse({"status": "released", "scope": scope, "value": value})

"""The delivery log over HTTP, for admins (`collector.app` wraps the handler with the
read side's gate, which resolves the principal):

``GET /v1/webhooks/deliveries?hook=NAME`` (or ``?email=ADDRESS``; optional
``status=pending|delivered|failed`` and ``limit=1..500``, default 100) answers
``{"channel", "target", "deliveries": [...]}``, newest first; each delivery carries its
id, event, incident id, status, attempts, times, the last code and error, and ``log``,
every attempt (at, duration_ms, status_code, error, worker). 400 for a missing or bad
parameter, 403 for a principal that is not an admin. A target that is not configured
(any more) still shows what the log holds.
"""

from __future__ import annotations

import re

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from collector.access import principal_of
from collector.config import HOOK_NAME
from collector.notify import outbox
from collector.storage.sql import database

MAX_LIMIT = 500
STATUSES = ("pending", "delivered", "failed")
_EMAIL = re.compile(r"^[^@\s<>,]{1,200}@[^@\s<>,]{1,200}$")


def _error(code: int, status: str, text: str) -> JSONResponse:
    return JSONResponse({"status": status, "error": text}, status_code=code)


async def list_deliveries(request: Request) -> Response:
    if not principal_of(request).is_admin:
        return _error(403, "forbidden", "the delivery log is for admins")
    q = request.query_params
    hook, email = q.get("hook"), q.get("email")
    if (hook is None) == (email is None):
        return _error(400, "bad_request", "give one of hook=NAME or email=ADDRESS")
    if hook is not None:
        if not re.match(HOOK_NAME, hook):
            return _error(400, "bad_request", "hook: letters, digits, . _ -, 1-64")
        channel, target = "webhook", hook
    else:
        target = email or ""
        if not _EMAIL.match(target):
            return _error(400, "bad_request", "email: an address (name@host)")
        channel = "email"
    status = q.get("status")
    if status is not None and status not in STATUSES:
        return _error(400, "bad_request", f"status: one of {', '.join(STATUSES)}")
    try:
        limit = int(q.get("limit", "100"))
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        return _error(400, "bad_request", f"limit: an integer 1-{MAX_LIMIT}")
    db = database(request.app.state.collector.store)
    rows = await run_in_threadpool(
        outbox.deliveries, db, channel, target, limit=limit, status=status
    )
    return JSONResponse({"channel": channel, "target": target, "deliveries": rows})

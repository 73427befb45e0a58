"""The incident API's input: every parameter and body field checked, with a one-line
reason (`model.BadInput`, answered 400) for anything malformed; bounded sizes."""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request

from agent.bundle.schema import plausible_time
from collector.i18n import N_, Phrased, Word
from collector.incidents.model import STATUS_FILTERS, BadInput, Channel, IncidentFilter, Status
from collector.reads import BadQuery, parse_time, query_from

MAX_BODY = 16384
MAX_NOTE = 4000
MAX_CONTACT = 200
MAX_ASSIGNEE = 100
FORM = "application/x-www-form-urlencoded"
FIELDS = (N_("text"), N_("contact"), N_("assignee"))  # named in errors, in the reader's words


def incident_id(request: Request) -> int:
    raw = str(request.path_params.get("incident_id", ""))
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15 or int(raw) < 1:
        raise BadInput(N_("incident id must be a positive integer"))
    return int(raw)


def list_filter(params: Mapping[str, str]) -> IncidentFilter:
    """The filters of a list from query parameters; BadInput names what is off."""
    try:
        q = query_from(dict(params))
    except BadQuery as e:
        raise BadInput(e.message, **e.params) from None
    status = params.get("status", "").strip()
    if status and status not in STATUS_FILTERS:
        raise BadInput(N_("status must be one of {values}"), values=", ".join(STATUS_FILTERS))
    assignee = params.get("assignee")
    if assignee is not None:
        assignee = _name(assignee, "assignee", MAX_ASSIGNEE)
    return IncidentFilter(q, status, assignee)


def _name(value: Any, what: str, limit: int) -> str:
    """A short single-line text: no control characters, at most limit characters."""
    if not isinstance(value, str):
        raise BadInput(N_("{field} must be a string"), field=Word(what))
    text = value.strip()
    if len(text) > limit:
        raise BadInput(N_("{field} longer than {limit} characters"), field=Word(what), limit=limit)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        raise BadInput(N_("{field} has control characters"), field=Word(what))
    return text


def _text(value: Any, what: str, limit: int) -> str:
    """A note's text: 1 to limit characters, line breaks and tabs allowed."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput(N_("{field} is required"), field=Word(what))
    text = value.strip().replace("\r\n", "\n")
    if len(text) > limit:
        raise BadInput(N_("{field} longer than {limit} characters"), field=Word(what), limit=limit)
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" for c in text):
        raise BadInput(N_("{field} has control characters"), field=Word(what))
    return text


async def read_body(request: Request) -> tuple[dict[str, Any], bool]:
    """The JSON object or form of a POST, and whether it was a form. BadInput when it
    does not read; a body over MAX_BODY raises _TooLarge."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in ("application/json", FORM):
        raise BadInput(N_("Content-Type must be application/json or {form}"), form=FORM)
    declared = request.headers.get("content-length", "")
    if (declared.isascii() and declared.isdigit()) and int(declared) > MAX_BODY:
        raise TooLarge(N_("body over {limit} bytes"), limit=MAX_BODY)
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise TooLarge(N_("body over {limit} bytes"), limit=MAX_BODY)
    except ClientDisconnect:
        raise BadInput(N_("client disconnected")) from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(N_("body is not UTF-8")) from None
    if ctype == FORM:
        try:
            fields = parse_qs(text, keep_blank_values=True, max_num_fields=50, strict_parsing=False)
        except ValueError as e:
            raise BadInput(N_("form does not read: {reason}"), reason=str(e)) from None
        out: dict[str, Any] = {}
        for k, v in fields.items():
            if len(v) != 1:
                raise BadInput(
                    N_("form field {field} given {n} times"), field=repr(k[:40]), n=len(v)
                )
            out[k] = v[0]
        return out, True
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(N_("body is not JSON")) from None
    if not isinstance(data, dict):
        raise BadInput(N_("body must be a JSON object"))
    return data, False


class TooLarge(Phrased):
    """A body over MAX_BODY (413)."""


def _only(data: Mapping[str, Any], known: set[str], form: bool) -> None:
    if form:
        return  # a form carries fields of its own (a CSRF token): ignored
    extra = sorted(set(data) - known)
    if extra:
        raise BadInput(
            N_("unknown field(s): {fields}"), fields=", ".join(k[:40] for k in extra[:5])
        )


def note_input(data: Mapping[str, Any], form: bool, now: float) -> dict[str, Any]:
    """channel, text, contact, contact_at of a note; BadInput names what is off."""
    _only(data, {"channel", "text", "contact", "at"}, form)
    try:
        channel = Channel(str(data.get("channel", "")))
    except ValueError:
        raise BadInput(
            N_("channel must be one of {values}"), values=", ".join(c.value for c in Channel)
        ) from None
    at = data.get("at")
    when: float | None = None
    if isinstance(at, bool) or (at is not None and not isinstance(at, str | int | float)):
        raise BadInput(N_("at must be RFC 3339 text or epoch seconds"))
    if isinstance(at, int | float):
        when = float(at)
    elif isinstance(at, str) and at.strip():
        try:
            when = parse_time(at[:60])
        except BadQuery as e:
            raise BadInput(N_("at: {reason}"), reason=e) from None
    if when is not None and (not math.isfinite(when) or not plausible_time(when, now)):
        raise BadInput(N_("at must be between 2000-01-01 and a day from now"))
    return {
        "channel": channel,
        "text": _text(data.get("text"), "text", MAX_NOTE),
        "contact": _name(data.get("contact", ""), "contact", MAX_CONTACT),
        "contact_at": when,
    }


def status_input(data: Mapping[str, Any], form: bool) -> tuple[Status | None, str | None]:
    _only(data, {"status", "assignee"}, form)
    raw = data.get("status")
    status = None
    if raw is not None and not (form and raw == ""):
        try:
            status = Status(str(raw)) if isinstance(raw, str) else None
        except ValueError:
            status = None
        if status is None:
            raise BadInput(
                N_("status must be one of {values}"), values=", ".join(s.value for s in Status)
            )
    assignee = data.get("assignee")
    if assignee is not None:
        assignee = _name(assignee, "assignee", MAX_ASSIGNEE)
    if status is None and assignee is None:
        raise BadInput(N_("give status and/or assignee"))
    return status, assignee

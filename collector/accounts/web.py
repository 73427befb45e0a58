"""People over HTTP: who is asking, login and logout, the password page, the admin page,
the audit log. `collector.app.operator_only` gates every read-side handler with
`authenticate` and `csrf_ok`.

Credentials, in this order:

1. ``Authorization: Bearer pat_...``: a personal API token (`tokens`). A wrong one answers
   401 and counts as a failed login of its address (`throttle`); past the address's
   limit, 429. Requests with a token need no CSRF token.
2. The session cookie ``posagent_session`` (`sessions`): HttpOnly, SameSite=Lax, Secure
   when the request came over TLS (directly, or ``X-Forwarded-Proto: https`` from one of
   ``[collector] trusted_proxies``). Every POST/PUT/DELETE with the cookie carries the
   session's CSRF token (the hidden ``csrf`` field of every form, or the
   ``X-CSRF-Token`` header), else 403.
3. Nothing: HTML pages redirect to ``/login?next=...``, the API answers 401.

The client's address (throttling, audit) is the peer's, or, when the peer is a trusted
proxy, the nearest untrusted address of ``X-Forwarded-For``.

The login form carries its own CSRF token (a cookie set with the form, compared with the
field: a page elsewhere cannot log a victim into another account). A user whose password
was made for them (``must_change``) reaches only ``/password`` until they set their own.

``/settings``: a user's own settings; today the pages' language (`users.set_language`),
which wins over the browser's Accept-Language (`collector.i18n`).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from collector import audit
from collector.access import Principal, principal_of
from collector.accounts import pages as account_pages
from collector.accounts import passwords, sessions, tokens, users
from collector.accounts.devices import place_device
from collector.accounts.errors import AccountError
from collector.accounts.sessions import SessionPolicy
from collector.accounts.throttle import Throttle
from collector.auth import TokenFileError, TokenStore
from collector.config import CollectorConfig
from collector.i18n import gettext as _
from collector.pages import render_login
from collector.storage import BundleStore
from collector.storage.sql import Database, database
from collector.timeparse import parse_time

log = structlog.get_logger(__name__)

SESSION_COOKIE = "posagent_session"
LOGIN_COOKIE = "posagent_login"
MAX_FORM_BYTES = 16384
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Collector(Protocol):
    """What these handlers use of `collector.app.Shared`."""

    cfg: CollectorConfig
    store: BundleStore
    tokens: TokenStore
    proxies: tuple[Network, ...]


def proxy_networks(cfg: CollectorConfig) -> tuple[Network, ...]:
    """[collector] trusted_proxies as networks (validated by the config loader)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in cfg.trusted_proxies)


def _trusted(host: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(request: Request, proxies: Sequence[Network]) -> str:
    """The client's address: the peer, or past trusted proxies, X-Forwarded-For's nearest
    untrusted hop."""
    peer = request.client.host if request.client else "?"
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:100]
    return hops[0][:100] if hops else peer


def is_secure(request: Request, proxies: Sequence[Network]) -> bool:
    """The request came over TLS (to us, or to a trusted proxy that says so)."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else ""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and _trusted(peer, proxies)


def _col(request: Request) -> Collector:
    col: Collector = request.app.state.collector
    return col


def _db(col: Collector) -> Database:
    return database(col.store)


def _policy(cfg: CollectorConfig) -> SessionPolicy:
    return SessionPolicy(float(cfg.session_lifetime_s), float(cfg.session_idle_s))


def _throttle(cfg: CollectorConfig) -> Throttle:
    return Throttle(
        cfg.login_failures_per_account, cfg.login_failures_per_address, float(cfg.login_window_s)
    )


# --------------------------------------------------------------------------- who is asking


@dataclass(frozen=True)
class Who:
    """An authenticated request: the principal, and for a session its CSRF token."""

    principal: Principal
    csrf: str = ""
    must_change: bool = False


@dataclass(frozen=True)
class Refused:
    """No (valid) credentials: the HTTP code, a one-line reason, extra headers."""

    code: int
    reason: str
    headers: dict[str, str]


def _by_token(col: Collector, token: str, address: str) -> Who | Refused:
    db = _db(col)
    user = tokens.resolve(db, token)
    if user is not None:
        with db.transaction(write=False) as tx:
            return Who(users.principal(tx, user, "token"))
    throttle = _throttle(col.cfg)
    with db.transaction() as tx:
        wait = throttle.wait(tx, "", address)
        if wait > 0:
            log.warning("operator_token_throttled", client=address)
            return Refused(
                429, "too many wrong tokens; retry later", {"Retry-After": str(int(wait))}
            )
        throttle.fail(tx, "", address)
        audit.record(tx, "?", "token.refused", "", address)
    log.warning("operator_token_refused", client=address)
    return Refused(401, "unknown or revoked token", {"WWW-Authenticate": 'Bearer realm="posagent"'})


def _by_session(col: Collector, cookie: str) -> Who | None:
    db = _db(col)
    found = sessions.resolve(db, cookie, _policy(col.cfg))
    if found is None:
        return None
    with db.transaction(write=False) as tx:
        p = users.principal(tx, found.user, "session")
    return Who(p, found.csrf, found.user.must_change)


async def authenticate(request: Request) -> Who | Refused:
    """The request's principal from its Bearer token or session cookie (module docstring)."""
    col = _col(request)
    scheme, _sep, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return await run_in_threadpool(
            _by_token, col, value.strip(), client_address(request, col.proxies)
        )
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie:
        who = await run_in_threadpool(_by_session, col, cookie)
        if who is not None:
            return who
    return Refused(401, "login required", {"WWW-Authenticate": 'Bearer realm="posagent"'})


async def read_form(request: Request) -> dict[str, str] | None:
    """A url-encoded form body (first value per field), kept on request.state; None when
    over MAX_FORM_BYTES."""
    cached: dict[str, str] | None = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    request._body = body  # the handler may read the body again (Starlette's own cache)
    form: dict[str, str] = {}
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        form = {k: v[0] for k, v in parsed.items()}
    request.state.form = form
    return form


async def csrf_ok(request: Request, expected: str) -> bool:
    """The X-CSRF-Token header or the form's csrf field equals the session's token."""
    sent = request.headers.get("x-csrf-token", "")
    if not sent:
        form = await read_form(request)
        sent = (form or {}).get("csrf", "")
    return bool(sent) and bool(expected) and hmac.compare_digest(sent, expected)


def _set_session_cookie(resp: Response, request: Request, cookie: str, col: Collector) -> None:
    resp.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=col.cfg.session_lifetime_s,
        httponly=True,
        samesite="lax",
        secure=is_secure(request, col.proxies),
        path="/",
    )


# --------------------------------------------------------------------------- login, logout


def safe_next(target: str) -> str:
    """A local path to go back to after login (never another host)."""
    ok = (
        target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()
    )
    return target if ok else "/"


def _login_page(
    request: Request,
    error: str = "",
    next_url: str = "/",
    name: str = "",
    code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    col = _col(request)
    token = secrets.token_urlsafe(24)
    resp = HTMLResponse(
        render_login(error, next_url, csrf=token, name=name),
        status_code=code,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
    resp.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=is_secure(request, col.proxies),
        path="/login",
    )
    return resp


@dataclass(frozen=True)
class _LoginResult:
    cookie: str = ""
    must_change: bool = False
    wait_s: float = 0.0


def _login(col: Collector, name: str, password: str, address: str) -> _LoginResult:
    db = _db(col)
    throttle = _throttle(col.cfg)
    with db.transaction() as tx:
        wait, _reserved = throttle.reserve(tx, name, address)
    if wait > 0:
        log.warning("operator_login_throttled", user=name, client=address, retry_after_s=wait)
        return _LoginResult(wait_s=wait)
    with db.transaction(write=False) as tx:
        found = users.user_and_hash(tx, name)
    if found is None or found[0].disabled:
        passwords.verify_nobody(password)
        ok = False
    else:
        ok = passwords.verify(found[1], password)
    if not ok or found is None:
        audit.record(db, name, "login.failed", name, address)
        log.warning("operator_login_failed", user=name, client=address)
        return _LoginResult()
    user, stored = found
    with db.transaction() as tx:
        Throttle.succeeded(tx, name)
        cookie, _started = sessions.start(tx, user, address, _policy(col.cfg))
        audit.record(tx, name, "login.ok", name, address)
    if passwords.needs_rehash(stored):
        users.rehash(db, user.id, password)
    log.info("operator_login", user=name, client=address)
    return _LoginResult(cookie=cookie, must_change=user.must_change)


async def login(request: Request) -> Response:
    """GET: the form. POST: name + password -> a new session, or 401 / 429."""
    col = _col(request)
    if request.method == "GET":
        return _login_page(request, next_url=safe_next(request.query_params.get("next", "/")))
    form = await read_form(request)
    if form is None:
        return _login_page(request, _("Form too large."), code=413)
    target = safe_next(form.get("next", "/"))
    name = form.get("name", "").strip()[:64]
    expected = request.cookies.get(LOGIN_COOKIE, "")
    sent = form.get("csrf", "")
    if not (sent and expected and hmac.compare_digest(sent, expected)):
        return _login_page(request, _("The form expired; log in again."), target, name, code=403)
    result = await run_in_threadpool(
        _login, col, name, form.get("password", ""), client_address(request, col.proxies)
    )
    if result.wait_s > 0:
        return _login_page(
            request,
            _("Too many failed attempts; wait and retry."),
            target,
            name,
            code=429,
            headers={"Retry-After": str(int(result.wait_s))},
        )
    if not result.cookie:
        return _login_page(request, _("Wrong user name or password."), target, name, code=401)
    resp = RedirectResponse("/password" if result.must_change else target, status_code=303)
    _set_session_cookie(resp, request, result.cookie, col)
    resp.delete_cookie(LOGIN_COOKIE, path="/login")
    return resp


def _end_session(col: Collector, cookie: str, who: Principal, address: str) -> None:
    db = _db(col)
    if sessions.end(db, cookie):
        audit.record(db, who, "logout", who.name, address)


async def logout(request: Request) -> Response:
    """POST (gated, CSRF checked): end this session on every instance. GET: the button."""
    col = _col(request)
    who = principal_of(request)
    if request.method == "GET":
        return HTMLResponse(account_pages.render_logout(), headers={"Cache-Control": "no-store"})
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie:
        await run_in_threadpool(
            _end_session, col, cookie, who, client_address(request, col.proxies)
        )
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# --------------------------------------------------------------------------- own password


def _change_password(
    col: Collector, who: Principal, current: str, new: str, address: str
) -> tuple[str, str]:
    """(new session cookie, '') or ('', the reason it was refused)."""
    db = _db(col)
    throttle = _throttle(col.cfg)
    with db.transaction() as tx:
        wait, _reserved = throttle.reserve(tx, who.name, address)
    if wait > 0:
        return "", _("Too many failed attempts; wait and retry.")
    with db.transaction(write=False) as tx:
        found = users.user_and_hash(tx, who.name)
    if found is None or not passwords.verify(found[1], current):
        audit.record(db, who, "login.failed", who.name, address, {"form": "password"})
        return "", _("The current password is wrong.")
    try:
        users.set_password(
            db,
            who.name,
            new,
            must_change=False,
            actor=who,
            address=address,
            action="password.change",
        )
    except AccountError as e:
        return "", str(e)
    with db.transaction() as tx:
        user = users.user_by_id(tx, found[0].id)
        assert user is not None
        cookie, _started = sessions.start(tx, user, address, _policy(col.cfg))
    return cookie, ""


async def password(request: Request) -> Response:
    """GET: the form; POST (CSRF checked): current + new twice -> the password changes,
    every other session of the user ends, this one is renewed."""
    col = _col(request)
    who = principal_of(request)
    if who.via != "session":
        return JSONResponse({"status": "forbidden", "error": "log in with a password"}, 403)
    if request.method == "GET":
        return HTMLResponse(account_pages.render_password(), headers={"Cache-Control": "no-store"})
    form = await read_form(request) or {}
    new = form.get("new", "")
    if new != form.get("repeat", ""):
        return HTMLResponse(account_pages.render_password(_("The new passwords differ.")), 400)
    try:
        passwords.check_strength(new)
    except AccountError as e:
        return HTMLResponse(account_pages.render_password(str(e)), 400)
    cookie, error = await run_in_threadpool(
        _change_password,
        col,
        who,
        form.get("current", ""),
        new,
        client_address(request, col.proxies),
    )
    if error:
        return HTMLResponse(account_pages.render_password(error), 400)
    resp = RedirectResponse("/", status_code=303)
    _set_session_cookie(resp, request, cookie, col)
    return resp


# --------------------------------------------------------------------------- own settings


async def settings(request: Request) -> Response:
    """GET: the user's settings (the pages' language); POST (CSRF checked): save them."""
    col = _col(request)
    who = principal_of(request)
    if who.user_id is None:
        return JSONResponse({"status": "forbidden", "error": "not an account"}, 403)
    if request.method == "GET":
        return HTMLResponse(
            account_pages.render_settings(who.language), headers={"Cache-Control": "no-store"}
        )
    form = await read_form(request)
    if form is None:
        return HTMLResponse(account_pages.render_settings(who.language, _("Form too large.")), 413)
    language = form.get("language", "")
    try:
        await run_in_threadpool(
            users.set_language,
            _db(col),
            who.name,
            language,
            actor=who,
            address=client_address(request, col.proxies),
        )
    except AccountError as e:
        return HTMLResponse(account_pages.render_settings(who.language, str(e)), 400)
    return RedirectResponse("/settings", status_code=303)


# --------------------------------------------------------------------------- admin


def _admin_state(col: Collector) -> dict[str, Any]:
    db = _db(col)
    col.tokens.reload()  # a device added here, on another instance or by the CLI
    return {
        "users": users.list_users(db),
        "tokens": [t for t in tokens.list_tokens(db) if t.revoked_at is None],
        "devices": [(d, col.tokens.site_for(d)) for d in col.tokens.devices()],
        "site_tenants": users.site_tenants(db),
    }


async def admin_page(request: Request) -> Response:
    """The admin page: users, tokens, devices, sites (admins only; the gate checks)."""
    col = _col(request)
    state = await run_in_threadpool(_admin_state, col)
    return HTMLResponse(account_pages.render_admin(**state), headers={"Cache-Control": "no-store"})


def _admin_action(col: Collector, action: str, f: dict[str, str], who: Principal, addr: str) -> str:
    """Run one admin form; the notice to show (a one-time secret on its own line)."""
    db = _db(col)
    if action == "users/add":
        role = users.parse_role(f.get("role", ""))
        tl = [t.strip() for t in f.get("tenants", "").split(",") if t.strip()]
        secret = passwords.generate()
        users.add_user(
            db,
            f.get("name", "").strip(),
            role,
            password=secret,
            tenants_=tl,
            all_tenants=f.get("all_tenants") == "1",
            must_change=True,
            actor=who,
            address=addr,
        )
        added = _("User {name} added; one-time password:").format(name=f.get("name", "").strip())
        return f"{added}\n{secret}"
    if action in ("users/disable", "users/enable"):
        users.set_disabled(
            db, f.get("name", ""), action == "users/disable", actor=who, address=addr
        )
        done = (
            _("User {name} disabled.") if action == "users/disable" else _("User {name} enabled.")
        )
        return done.format(name=f.get("name", ""))
    if action == "users/password":
        secret = passwords.generate()
        users.set_password(db, f.get("name", ""), secret, must_change=True, actor=who, address=addr)
        return _("New one-time password for {name}:").format(name=f.get("name", "")) + f"\n{secret}"
    if action == "tokens/revoke":
        raw = f.get("id", "")
        if not (raw.isascii() and raw.isdigit()):
            raise AccountError(_("token id must be a number"))
        owner = tokens.revoke(db, int(raw), actor=who, address=addr)
        return _("Token {id} of {user} revoked.").format(id=raw, user=owner)
    if action == "devices/add":
        device = f.get("device", "").strip()
        token = place_device(
            db,
            col.cfg.tokens_file,
            device,
            site=f.get("site", "").strip() or None,
            tenant=f.get("tenant", "").strip(),
            rotate=f.get("rotate") == "1",
            actor=who,
            address=addr,
        )
        registered = _(
            "Device {device} registered; its token (put it in the terminal's token_file):"
        ).format(device=device)
        return f"{registered}\n{token}"
    if action == "sites/place":
        site, tenant = f.get("site", "").strip(), f.get("tenant", "").strip()
        with db.transaction() as tx:
            changed = users.place_site(tx, site, tenant, move=True)
            if changed:
                audit.record(tx, who, "site.place", site, addr, {"tenant": tenant})
        return _("Site {site} belongs to {tenant}.").format(site=site, tenant=tenant)
    raise AccountError(_("unknown admin action {action}").format(action=repr(action[:40])))


async def admin_post(request: Request) -> Response:
    """POST /admin/{group}/{verb}: one admin change (CSRF checked by the gate)."""
    col = _col(request)
    who = principal_of(request)
    action = f"{request.path_params['group']}/{request.path_params['verb']}"
    form = await read_form(request)
    if form is None:
        return HTMLResponse(_("Form too large."), status_code=413)
    addr = client_address(request, col.proxies)
    code, notice, error = 200, "", ""
    try:
        notice = await run_in_threadpool(_admin_action, col, action, form, who, addr)
    except (AccountError, ValueError, FileExistsError, TokenFileError) as e:
        code, error = 400, str(e)
    except OSError as e:
        code, error = 500, _("cannot write the tokens file: {error}").format(error=e.strerror or e)
    state = await run_in_threadpool(_admin_state, col)
    return HTMLResponse(
        account_pages.render_admin(notice=notice, error=error, **state),
        status_code=code,
        headers={"Cache-Control": "no-store"},
    )


async def list_users(request: Request) -> Response:
    """GET /v1/users (admins): every account with its role and tenants."""
    found = await run_in_threadpool(users.list_users, _db(_col(request)))
    return JSONResponse({"users": [u.to_dict() for u in found]})


# --------------------------------------------------------------------------- audit


def _audit_params(request: Request, default_limit: int) -> dict[str, Any]:
    q = request.query_params
    raw = q.get("limit", "")
    if raw and not (raw.isascii() and raw.isdigit()):
        raise ValueError("limit must be a non-negative integer")
    return {
        "since": parse_time(q.get("since", "")),
        "until": parse_time(q.get("until", "")),
        "limit": int(raw) if raw else default_limit,
        "actor": q.get("actor", "").strip()[:100],
        "action": q.get("action", "").strip()[:64],
    }


async def audit_export(request: Request) -> Response:
    """GET /v1/audit (admins): JSON lines, oldest first; since/until/limit/actor/action."""
    col = _col(request)
    try:
        params = _audit_params(request, 10_000)
    except ValueError as e:
        return JSONResponse({"status": "bad_request", "error": str(e)}, status_code=400)
    who = principal_of(request)
    addr = client_address(request, col.proxies)

    def run() -> list[audit.Entry]:
        db = _db(col)
        found = audit.entries(db, **params)
        audit.record(db, who, "audit.export", "audit_log", addr, {"entries": len(found)})
        return found

    found = await run_in_threadpool(run)
    body = "".join(account_pages.json_line(e.to_dict()) for e in found)
    return Response(body, media_type="application/x-ndjson", headers={"Cache-Control": "no-store"})


async def audit_page(request: Request) -> Response:
    """GET /audit (admins): the newest entries, filterable."""
    col = _col(request)
    try:
        params = _audit_params(request, 200)
        error = ""
    except ValueError as e:
        params, error = {"limit": 200}, str(e)
    found = await run_in_threadpool(lambda: audit.entries(_db(col), newest_first=True, **params))
    return HTMLResponse(
        account_pages.render_audit(found, dict(request.query_params), error),
        status_code=400 if error else 200,
        headers={"Cache-Control": "no-store"},
    )

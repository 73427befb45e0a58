"""The collector's ASGI application (Starlette): upload protocol v1, read API, operator page.

Ingest, ``PUT /v1/bundles/{bundle_id}``, checks in this order and answers with
``{"status", "bundle_id", "error"}``:

1. the id in the path is a canonical UUID (400);
2. ``Authorization: Bearer <device token>`` names a registered device (401);
3. ``X-Posagent-Device`` is that device (403);
4. the device's token bucket has a token (429 + Retry-After; on PostgreSQL the bucket
   is a row every instance shares);
5. ``Idempotency-Key`` (when sent) equals the id; Content-Type is application/zip
   (400 / 415); a declared Content-Length over max_body_mib (413, before reading);
6. the body streams into ``data_dir/incoming`` with the limit enforced per
   chunk (413) while its SHA-256 is computed and compared with
   ``Content-Digest: sha-256=:<base64>:`` (400);
7. the bundle is verified with the reader of agent.bundle.format: structure (hostile
   zips), the manifest against the bundle schema (`agent.bundle.schema`: every
   field's type, size and range, nesting depth, finite numbers), entry digests,
   and the HMAC when ``device_keys_dir`` holds ``<device>.key`` (422 with the
   one-line reason);
8. the manifest's bundle_id equals the path id (400) and its device id the
   token's device (422 ``device_mismatch``: a refusal of this one bundle, not of
   the credentials, which check 3 already accepted; the agent moves the bundle
   to failed/ and goes on); its trigger reads as `agent.bundle.trigger.Trigger`
   (422); a created_at outside [2000-01-01, now + 1 day] (a terminal with a wrong
   clock) is not refused: the bundle is listed at the time it arrived;
9. stored once under the device's registered site (``add-device --site``; the
   manifest's site is the device's claim, shown on the bundle's page as
   unverified, never used to file it: a device registered without a site has
   its bundles under no site): 201 created, 200 same digest already stored,
   409 other digest.

A store that cannot take the upload at any step (PostgreSQL, S3 or a disk down, slower
than their timeouts, or full; `StorageError`) answers 503 with Retry-After
(``unavailable_retry_after_s``) and "storage full" or "storage unavailable": the blob is
written before the index row, so nothing is half-written (at most a blob no row names,
which the next upload of that bundle or `reconcile` takes up), and the agent sends it
again.

Whatever passes these checks renders on every page and API answer (the tests
store hostile manifests and render them all), in bounded time and memory: the
heavy part of a per-bundle answer (page, diagnostics, entry, manifest) runs in a
worker thread, at most MAX_RENDERS at once (`_off_loop`), and the page shows a
bounded part of what a bundle holds (`agent.bundle.html`). Slow clients are cut off by the
server (`collector.server.GuardedHttpToolsProtocol`: header and body deadlines, a body
past its deadline answered 408, idle connections per client); redirects carry a
relative Location, never the Host header.

Read side, closed: every handler behind `operator_only` needs a user's session or
personal API token (`collector.accounts.web`) and narrows what it reads to the user's
tenants (`collector.access`): ``GET /v1/bundles`` and the per-bundle endpoints (each
view or download is an audit entry, `collector.audit`), the HTML page at ``/``, ``GET
/metrics`` (Prometheus text, `collector.metrics`; admin and support). Admins also have
``/admin``, ``/audit``, ``GET /v1/audit`` (JSON lines), ``GET /v1/users`` and the holds.
``/login``, ``/logout``, ``/password`` and ``GET /healthz`` complete it.

Storage is the engine pair the config names (`collector.storage.open_store`); on
PostgreSQL the rate limits are rows shared by every instance, else in memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio.to_thread
import structlog
from anyio import CapacityLimiter
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.bundle.format import (
    BundleError,
    BundleReader,
    bundle_id_time,
    is_bundle_id,
    load_key,
)
from agent.bundle.schema import ManifestError, plausible_time
from agent.bundle.style import esc
from agent.bundle.trigger import Trigger, TriggerError
from agent.upload.protocol import BUNDLE_REFUSED_DEVICE, parse_content_digest
from collector import audit, holds, notify, openapi, pages, sealed
from collector.access import Principal, Role, principal_of
from collector.accounts import web
from collector.auth import DeviceTokens, TokenFileError, TokenStore, valid_device_id
from collector.channel import api as channel_api
from collector.channel import devices as channel_devices
from collector.channel import hooks as channel_hooks
from collector.channel import views as channel_views
from collector.channel.signing import Signer
from collector.channel.waiters import Waiters
from collector.config import CollectorConfig
from collector.i18n import LANGUAGE, N_, Negotiated, current_language, negotiate
from collector.i18n import gettext as _
from collector.incidents import api as incident_api
from collector.incidents import views as incident_views
from collector.incidents.grouping import Settings as IncidentSettings
from collector.incidents.service import Incidents, IncidentWorker
from collector.metrics import CONTENT_TYPE, Metrics
from collector.notify import api as notify_api
from collector.notify.worker import start_delivery
from collector.ratelimit import RateLimiter
from collector.reads import BadQuery, parse_time, record_json
from collector.reads import query_from as _query_from
from collector.remedies import remedy_for
from collector.storage import (
    BundleRecord,
    BundleStore,
    Limiter,
    Query,
    StorageError,
    StorageFull,
    open_store,
    os_error,
)
from collector.storage.retention import RetentionPolicy, RetentionWorker
from collector.storage.sql import database

log = structlog.get_logger(__name__)

MAX_RENDERS = 2  # heavy per-bundle answers worked on at once (see _off_loop)
DIAG_INLINE_BYTES = 64 * 1024  # a diagnostics entry up to this size is served whole
DIAG_HEAD_BYTES = 16 * 1024  # of a larger one, its first bytes
DIAG_TOTAL_BYTES = 256 * 1024  # of all entries of one answer together
MAX_LOGIN_BODY_BYTES = 4096
RETRY_LATER = {"Retry-After": "60"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]


class _TooLarge(Exception):
    pass


@dataclass
class Shared:
    """Everything the request handlers share."""

    cfg: CollectorConfig
    store: BundleStore
    tokens: DeviceTokens
    limiter: Limiter
    metrics: Metrics
    incidents: Incidents
    proxies: tuple[web.Network, ...] = ()
    renders: CapacityLimiter = field(default_factory=lambda: CapacityLimiter(MAX_RENDERS))
    channel: channel_api.Channel | None = None  # issue 16 (collector.channel)

    def enrolled_pem(self, device: str) -> str | None:
        """The public keys an enrolled device gave (collector.sealed's key lookup)."""
        if not valid_device_id(device):
            return None
        return channel_devices.pem_of(database(self.store), device)

    @property
    def max_body_bytes(self) -> int:
        return self.cfg.max_body_mib * 1024 * 1024

    def device_key(self, device: str) -> bytes | None:
        """The device's HMAC key from device_keys_dir, or None when not known."""
        if not self.cfg.device_keys_dir or not valid_device_id(device):
            return None
        path = Path(self.cfg.device_keys_dir) / f"{device}.key"
        if not path.exists():
            return None
        return load_key(path)


def _reply(
    code: int,
    status: str,
    bundle_id: str | None,
    error: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    bid = bundle_id[:80] if bundle_id else None
    return JSONResponse(
        {"status": status, "bundle_id": bid, "error": error}, status_code=code, headers=headers
    )


def record_from_manifest(
    m: dict[str, Any],
    *,
    size_bytes: int,
    sha256: str,
    signature_checked: bool,
    received_at: float,
    site: str = "",
) -> BundleRecord:
    """The index row for a verified manifest; site is the device's registered one."""

    def section(name: str) -> dict[str, Any]:
        v = m.get(name)
        return v if isinstance(v, dict) else {}

    trig = Trigger.from_json(m.get("trigger"))  # TriggerError: refused at ingest (422)
    dev, red = section("device"), section("redaction")
    bid = str(m["bundle_id"])
    try:
        created = parse_time(str(m.get("created_at") or "")) or bundle_id_time(bid)
    except ValueError:
        created = bundle_id_time(bid)
    if not plausible_time(created, received_at):
        # a terminal whose clock was wrong (1970 after a flat RTC battery, or years ahead):
        # the bundle is evidence all the same; it is listed at the time it arrived, and its
        # manifest keeps what the terminal said
        created = received_at

    def s(d: dict[str, Any], k: str, limit: int = 200) -> str:
        v = d.get(k)
        return "" if v is None else str(v)[:limit]

    return BundleRecord(
        bundle_id=bid,
        device=s(dev, "id", 64),
        site=site[:200],
        fault_key=trig.key,
        severity=trig.severity.value,
        trigger_kind=trig.kind.value,
        summary=trig.summary[:300],
        created_at=created or received_at,
        received_at=received_at,
        size_bytes=size_bytes,
        sha256=sha256,
        screenshot=s(red, "screenshot", 100),
        signature_checked=signature_checked,
    )


def _reindex_record(col: Shared, bid: str, data: bytes, received_at: float) -> BundleRecord | None:
    """The index row for a stored blob the index lost (verified again on the way)."""
    try:
        with BundleReader(data) as r:
            m = r.verify(None).manifest  # a sealed bundle: its signed envelope
            dev = m.get("device")
            device = str(dev.get("id", "")) if isinstance(dev, dict) else ""
        res = sealed.check_upload(col, device, data, col.device_key(device), valid_at=received_at)
    except BundleError as e:
        log.error("stored_bundle_unreadable", bundle_id=bid, error=str(e))
        return None
    if res.manifest["bundle_id"] != bid:
        log.error("stored_bundle_misnamed", bundle_id=bid)
        return None
    try:
        return record_from_manifest(
            res.manifest,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            signature_checked=res.signature_checked,
            received_at=received_at,
            site=col.tokens.site_for(device),
        )
    except TriggerError as e:
        log.error("stored_bundle_unreadable", bundle_id=bid, error=str(e))
        return None


def reconcile(col: Shared) -> int:
    """Index stored blobs missing from the index (start-up, in the background)."""
    try:
        added = col.store.reconcile(lambda b, d, t: _reindex_record(col, b, d, t))
    except (StorageError, OSError) as e:
        log.error("reconcile_failed", error=str(e))
        return 0
    if added:
        log.warning("reconcile_reindexed", bundles=added)
    return added


def reindex_undecryptable(col: Shared) -> sealed.Reindexed:
    """Bundles indexed as undecryptable, opened and indexed again (`collector reindex`)."""
    return sealed.reindex_undecryptable(col.store, lambda b, d, t: _reindex_record(col, b, d, t))


# --------------------------------------------------------------------------- ingest


async def _receive_to_file(request: Request, path: Path, limit: int) -> tuple[int, bytes]:
    h = hashlib.sha256()
    n = 0
    fd = path.open("xb")
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            n += len(chunk)
            if n > limit:
                raise _TooLarge()
            h.update(chunk)
            fd.write(chunk)
    finally:
        fd.close()
    return n, h.digest()


def _verify_and_commit(
    col: Shared, bid: str, device: str, staged: Path, size: int, sha_hex: str
) -> JSONResponse:
    """Blocking part of ingest (runs in the thread pool)."""

    try:
        key = col.device_key(device)
    except BundleError as e:
        log.error("device_key_unreadable", device=device, error=str(e))
        return _reply(
            503, "unavailable", bid, "device key unreadable on the collector", headers=RETRY_LATER
        )
    try:
        res = sealed.check_upload(col, device, staged, key)  # sealed or plain (issue 17)
    except BundleError as e:
        log.warning("bundle_rejected", bundle_id=bid, device=device, reason=str(e))
        return _reply(422, "invalid_bundle", bid, str(e))
    m = res.manifest
    if m["bundle_id"] != bid:
        return _reply(400, "bad_request", bid, "bundle id in the path differs from the manifest")
    mdev = (m.get("device") or {}).get("id") if isinstance(m.get("device"), dict) else None
    if mdev != device:
        log.warning("bundle_device_mismatch", bundle_id=bid, device=device, manifest_device=mdev)
        return _reply(
            422,
            BUNDLE_REFUSED_DEVICE,
            bid,
            f"manifest device {mdev!r} differs from the token's device {device!r}",
        )
    now = time.time()
    try:
        record = record_from_manifest(
            m,
            size_bytes=size,
            sha256=sha_hex,
            signature_checked=res.signature_checked,
            received_at=now,
            site=col.tokens.site_for(device),
        )
    except (TriggerError, ManifestError) as e:
        log.warning("bundle_rejected", bundle_id=bid, device=device, reason=str(e))
        return _reply(422, "invalid_bundle", bid, str(e))
    result = col.store.commit(record, staged)
    if result != "conflict":
        col.incidents.on_stored(record)  # grouped by the incident worker: never waits
    if result == "created":
        col.metrics.stored_bytes.inc(size)
        log.info("bundle_stored", bundle_id=bid, device=device, size_bytes=size)
        return _reply(201, "created", bid)
    if result == "exists":
        return _reply(200, "already_stored", bid)
    log.warning("bundle_conflict", bundle_id=bid, device=device)
    return _reply(409, "conflict", bid, "a different bundle is stored under this id")


async def put_bundle(request: Request) -> Response:
    col: Shared = request.app.state.collector
    bid = str(request.path_params["bundle_id"])
    if not is_bundle_id(bid):
        return _reply(400, "bad_request", None, "bundle id must be a canonical lower-case UUID")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        device = col.tokens.resolve(token.strip()) if scheme.lower() == "bearer" else None
    except TokenFileError as e:
        log.error("tokens_file_unreadable", error=str(e))
        return _reply(503, "unavailable", bid, "device tokens unavailable", headers=RETRY_LATER)
    if device is None:
        return _reply(
            401,
            "unauthorized",
            bid,
            "missing or unknown device token",
            headers={"WWW-Authenticate": 'Bearer realm="posagent"'},
        )
    claimed = request.headers.get("x-posagent-device", "")
    if claimed != device:
        return _reply(403, "forbidden", bid, "X-Posagent-Device does not match the token's device")
    wait_s = await run_in_threadpool(col.limiter.take, device)  # a query on PostgreSQL
    if wait_s > 0:
        return _reply(
            429,
            "rate_limited",
            bid,
            f"more than {col.cfg.rate_per_minute} uploads per minute",
            headers={"Retry-After": str(int(wait_s))},
        )
    ikey = request.headers.get("idempotency-key")
    if ikey is not None and ikey.strip() != bid:
        return _reply(400, "bad_request", bid, "Idempotency-Key must equal the bundle id")
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/zip":
        return _reply(415, "unsupported_media_type", bid, "Content-Type must be application/zip")
    limit = col.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            return _reply(400, "bad_request", bid, "invalid Content-Length")
        if int(declared) > limit:
            return _reply(413, "too_large", bid, f"body over {col.cfg.max_body_mib} MiB")
    expected = parse_content_digest(request.headers.get("content-digest", ""))
    if expected is None:
        return _reply(400, "bad_request", bid, "Content-Digest sha-256=:<base64>: required")
    staged = col.store.staging_dir / f"{bid}.{secrets.token_hex(6)}.part"
    try:
        try:
            size, digest = await _receive_to_file(request, staged, limit)
        except _TooLarge:
            log.warning("bundle_too_large", bundle_id=bid, device=device)
            return _reply(413, "too_large", bid, f"body over {col.cfg.max_body_mib} MiB")
        except ClientDisconnect:
            return _reply(400, "bad_request", bid, "client disconnected")
        except OSError as e:  # data_dir/incoming full or unwritable: 503, like the store
            raise os_error(f"cannot receive {bid} into {col.store.staging_dir}", e) from e
        if not secrets.compare_digest(digest, expected):
            return _reply(400, "bad_request", bid, "Content-Digest does not match the body")
        return await run_in_threadpool(
            _verify_and_commit, col, bid, device, staged, size, digest.hex()
        )
    finally:
        staged.unlink(missing_ok=True)


# --------------------------------------------------------------------------- read side

Handler = Callable[[Request], Awaitable[Response]]


def operator_only(
    html: bool, *, admin: bool = False, roles: frozenset[Role] | None = None
) -> Callable[[Handler], Handler]:
    """Gate a read-side handler: a session or an API token (`collector.accounts.web`);
    admin=True for admins only, roles to name the roles allowed. A cookie-authenticated
    POST/PUT/DELETE must carry the session's CSRF token. The handler finds the caller in
    `principal_of(request)`; HTML pages name them in the header (`pages.VIEWER`) and speak
    the user's own language when they chose one (`collector.i18n.LANGUAGE`), else the
    browser's."""

    def wrap(fn: Handler) -> Handler:
        async def inner(request: Request) -> Response:
            who = await web.authenticate(request)
            if isinstance(who, web.Refused):
                if html and who.code == 401:
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
                status = "rate_limited" if who.code == 429 else "unauthorized"
                return _reply(who.code, status, None, who.reason, headers=who.headers)
            p = who.principal
            lang = LANGUAGE.set(negotiate(request.headers.get("accept-language"), p.language))
            try:
                if (admin and not p.is_admin) or (roles is not None and p.role not in roles):
                    return _forbidden(html, N_("not allowed for your role"))
                unsafe = request.method not in ("GET", "HEAD")
                if who.csrf and unsafe and not await web.csrf_ok(request, who.csrf):
                    return _forbidden(html, N_("CSRF token missing or wrong: reload the page"))
                if who.must_change and request.url.path not in ("/password", "/logout"):
                    if html:
                        return RedirectResponse("/password", status_code=303)
                    return _forbidden(False, "change your one-time password first (/password)")
                request.state.principal = p
                viewer = pages.VIEWER.set(pages.Viewer(p.name, p.role.value, who.csrf))
                try:
                    return await fn(request)
                finally:
                    pages.VIEWER.reset(viewer)
            finally:
                LANGUAGE.reset(lang)

        return inner

    return wrap


def _forbidden(html: bool, reason: str) -> Response:
    """403: a page in the reader's language (reason: an English text marked N_), or JSON."""
    if html:
        return HTMLResponse(
            pages.layout("posagent collector", f"<h1>403: {esc(_(reason))}</h1>"),
            status_code=403,
        )
    return _reply(403, "forbidden", None, reason)


def _audit_read(col: Shared, who: Principal, action: str, bid: str, address: str) -> None:
    """One view or download of a bundle in the audit log."""
    audit.record(database(col.store), who, action, bid, address)


def _list(col: Shared, q: Query) -> tuple[list[BundleRecord], int, dict[str, int]]:
    return col.store.index.query(q), col.store.index.count(q), col.store.index.counts(q)


@operator_only(html=False)
async def list_bundles(request: Request) -> Response:
    col: Shared = request.app.state.collector
    try:
        q = _query_from(dict(request.query_params))
    except ValueError as e:
        return _reply(400, "bad_request", None, str(e))
    records, total, counts = await run_in_threadpool(_list, col, principal_of(request).restrict(q))
    return JSONResponse(
        {
            "bundles": [record_json(r) for r in records],
            "total": total,
            "limit": q.limit,
            "offset": q.offset,
            "counts_by_fault": counts,
        }
    )


def _load(
    col: Shared, bid: str, who: Principal, action: str, address: str, detail: dict[str, str]
) -> tuple[BundleRecord, bytes] | None:
    """The bundle (None when missing or out of who's reach); the read is audited."""
    record = col.store.index.get(bid)
    if record is None:
        return None
    db = database(col.store)
    if not who.sees(record.site):
        audit.record(db, who, "bundle.denied", bid, address, {"asked": action, **detail})
        return None
    try:
        data = col.store.read(record)
    except KeyError:
        log.error("bundle_blob_missing", bundle_id=bid)
        return None
    audit.record(db, who, action, bid, address, detail or None)
    return record, data


async def _bundle_or_error(
    request: Request, action: str, detail: dict[str, str] | None = None
) -> tuple[BundleRecord, bytes] | Response:
    """The path's bundle for a per-bundle endpoint (action: its audit action), or the
    error answer (400, or 404 for a missing bundle and one out of the caller's reach)."""
    col: Shared = request.app.state.collector
    bid = str(request.path_params["bundle_id"])
    if not is_bundle_id(bid):
        return _reply(400, "bad_request", None, "bundle id must be a canonical lower-case UUID")
    address = web.client_address(request, col.proxies)
    found = await run_in_threadpool(
        _load, col, bid, principal_of(request), action, address, detail or {}
    )
    if found is None:
        return _reply(404, "not_found", bid, "no such bundle")
    return found


T = TypeVar("T")


async def _off_loop(col: Shared, fn: Callable[..., T], *args: Any) -> T:
    """Run the heavy part of a per-bundle answer (decrypt, decompress, parse, render, encode)
    in a worker thread, at most MAX_RENDERS at once: a heavy bundle never stalls the other
    requests on the event loop, and a burst of heavy views waits its turn instead of
    multiplying the memory held."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=col.renders)


def _manifest_response(col: Shared, data: bytes) -> Response:
    return JSONResponse(sealed.manifest_json(col, data))


@operator_only(html=False)
async def get_manifest(request: Request) -> Response:
    found = await _bundle_or_error(request, "bundle.manifest")
    if isinstance(found, Response):
        return found
    col: Shared = request.app.state.collector
    return await _off_loop(col, _manifest_response, col, found[1])


@operator_only(html=False)
async def download(request: Request) -> Response:
    found = await _bundle_or_error(request, "bundle.download")
    if isinstance(found, Response):
        return found
    record, data = found
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{record.bundle_id}.zip"'},
    )


_ENTRY_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
}


def _entry_response(col: Shared, data: bytes, record: BundleRecord, name: str) -> Response:
    """One entry, whole (the link a page's cut entry points to): at most the reader's
    MAX_ENTRY_BYTES."""
    try:
        data = sealed.readable(col, data)
    except BundleError as e:
        return _reply(422, "undecryptable", record.bundle_id, str(e))
    with BundleReader(data) as r:
        if name not in r.names:
            return _reply(404, "not_found", record.bundle_id, f"no entry {name[:100]!r}")
        body = r.read(name)
    suffix = Path(name).suffix.lower()
    media = _ENTRY_TYPES.get(suffix, "application/octet-stream")
    headers = {}
    if media == "application/octet-stream":
        headers["Content-Disposition"] = "attachment"
    return Response(body, media_type=media, headers=headers)


def entry_handler(fixed: str | None) -> Handler:
    """Serve one entry of a stored bundle (a fixed name, or the {name} path parameter)."""

    @operator_only(html=False)
    async def handler(request: Request) -> Response:
        name = fixed or str(request.path_params.get("name", ""))
        action = "bundle.screenshot" if name == "screenshot.png" else "bundle.entry"
        found = await _bundle_or_error(request, action, {"entry": name[:200]})
        if isinstance(found, Response):
            return found
        record, data = found
        name = fixed or str(request.path_params.get("name", ""))
        col: Shared = request.app.state.collector
        return await _off_loop(col, _entry_response, col, data, record, name)

    return handler


def diagnostics_json(data: bytes, base: str) -> dict[str, Any]:
    """The diagnostics entries of a readable bundle by name, bounded: an entry of at most
    DIAG_INLINE_BYTES whole (a JSON entry as JSON when it is JSON again: no NaN, not too
    deep), a larger one (or one past DIAG_TOTAL_BYTES for the answer) as
    ``{"truncated": true, "size", "head": its first bytes as text, "href": the whole entry}``."""
    out: dict[str, Any] = {}
    left = DIAG_TOTAL_BYTES
    with BundleReader(data) as r:
        for n in r.names:
            if not n.startswith("diagnostics/"):
                continue
            size = r.size(n)
            if size > min(DIAG_INLINE_BYTES, left):
                head = r.read_head(n, min(DIAG_HEAD_BYTES, left))
                left -= len(head)
                out[n] = {
                    "truncated": True,
                    "size": size,
                    "head": head.decode("utf-8", "replace"),
                    "href": f"{base}/entries/{quote(n)}",
                }
                continue
            raw = r.read(n)
            left -= len(raw)
            text = raw.decode("utf-8", "replace")
            if n.endswith(".json"):
                try:  # served as JSON only when it is JSON again (no NaN, not too deep)
                    obj = json.loads(text)
                    json.dumps(obj, allow_nan=False)
                except (ValueError, RecursionError):
                    pass
                else:
                    out[n] = obj
                    continue
            out[n] = text
    return out


def _diagnostics_response(col: Shared, data: bytes, base: str) -> Response:
    return JSONResponse(diagnostics_json(sealed.readable_or_outer(col, data), base))


@operator_only(html=False)
async def diagnostics(request: Request) -> Response:
    found = await _bundle_or_error(request, "bundle.diagnostics")
    if isinstance(found, Response):
        return found
    col: Shared = request.app.state.collector
    base = f"/v1/bundles/{quote(found[0].bundle_id)}"
    return await _off_loop(col, _diagnostics_response, col, found[1], base)


@operator_only(html=True)
async def index_page(request: Request) -> Response:
    col: Shared = request.app.state.collector
    params = {k: v for k, v in request.query_params.items() if v}
    error = ""
    try:
        q = _query_from(params)
    except BadQuery as e:
        error = e.words()
        q = Query()
    records, total, counts = await run_in_threadpool(_list, col, principal_of(request).restrict(q))
    return HTMLResponse(
        pages.render_list(
            records,
            counts,
            total,
            params,
            q.limit,
            q.offset,
            error=error,
            operator_login=True,
        ),
        status_code=400 if error else 200,
        headers={"Cache-Control": "no-store"},
    )


def _bundle_page(col: Shared, record: BundleRecord, data: bytes, lang: str) -> Response:
    """The bundle page (in a worker thread: `_off_loop`, which sees the request's
    `LANGUAGE`, lang); bounded by `agent.bundle.html`."""
    try:
        data = sealed.readable(col, data)
    except BundleError as e:
        body = sealed.undecryptable_page(record.bundle_id, data, str(e))
        return HTMLResponse(
            pages.layout("posagent collector", body, operator_login=True),
            headers={"Cache-Control": "no-store"},
        )
    remedy = remedy_for(record.fault_key, col.cfg, lang)
    block = pages.remedy_block(remedy, lang, cleared=record.trigger_kind == "cleared")
    with BundleReader(data) as r:
        page = pages.render_bundle(record, r, operator_login=True, remedy_html=block)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@operator_only(html=True)
async def bundle_page(request: Request) -> Response:
    col: Shared = request.app.state.collector
    found = await _bundle_or_error(request, "bundle.view")
    if isinstance(found, Response):
        code = found.status_code
        msg = _("No such bundle.") if code == 404 else _("Not a bundle id.")
        return HTMLResponse(
            pages.layout("posagent collector", f"<h1>{esc(msg)}</h1>", operator_login=True),
            status_code=code,
        )
    record, data = found
    return await _off_loop(col, _bundle_page, col, record, data, current_language())


def counted(col: Shared, handler: Handler) -> Handler:
    """Count every upload in the metrics by its answer (a storage failure as 503)."""

    async def inner(request: Request) -> Response:
        try:
            resp = await handler(request)
        except StorageError:
            col.metrics.count_ingest(503)
            raise
        except Exception:
            col.metrics.count_ingest(500)
            raise
        col.metrics.count_ingest(resp.status_code)
        return resp

    return inner


@operator_only(html=False, roles=frozenset({Role.ADMIN, Role.SUPPORT}))
async def metrics(request: Request) -> Response:
    col: Shared = request.app.state.collector
    return Response(col.metrics.render(), media_type=CONTENT_TYPE)


async def healthz(request: Request) -> Response:
    col: Shared = request.app.state.collector
    try:
        await run_in_threadpool(col.store.index.get, "00000000-0000-0000-0000-000000000000")
    except StorageError as e:
        return JSONResponse({"status": "unhealthy", "error": str(e)}, status_code=503)
    return JSONResponse({"status": "ok"})


async def openapi_document(request: Request) -> Response:
    """The API described (`collector.openapi`), public like /healthz."""
    return JSONResponse(openapi.document())


async def favicon(request: Request) -> Response:
    return Response(status_code=204)


# --------------------------------------------------------------------------- errors, headers


# Starlette's words for the errors a person may meet (404 and 405 pages), translated there.
HTTP_ERROR_WORDS = (N_("Not Found"), N_("Method Not Allowed"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/v1/"):
        status = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _reply(exc.status_code, status, None, str(exc.detail), headers=exc.headers)
    detail = _(str(exc.detail))
    return HTMLResponse(
        pages.layout("posagent collector", f"<h1>{exc.status_code}: {esc(detail)}</h1>"),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.error("storage_error", path=request.url.path, error=str(exc))
    col: Shared = request.app.state.collector
    what = "storage full" if isinstance(exc, StorageFull) else "storage unavailable"
    return _reply(
        503,
        "unavailable",
        None,
        f"{what}, retry later",
        headers={"Retry-After": str(col.cfg.unavailable_retry_after_s)},
    )


async def _bundle_error(request: Request, exc: Exception) -> Response:
    log.error("stored_bundle_unreadable", path=request.url.path, error=str(exc))
    return _reply(500, "error", None, f"stored bundle unreadable: {exc}")


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("collector_internal_error", path=request.url.path, error=repr(exc))
    return _reply(500, "error", None, "internal error")


def _relative(location: bytes) -> bytes:
    """A Location without scheme and host (Starlette's slash redirect builds it from Host)."""
    if b"://" not in location.split(b"?", 1)[0]:
        return location
    rest = location.split(b"://", 1)[1]
    path = rest[rest.find(b"/") :] if b"/" in rest else b"/"
    return b"/" + path.lstrip(b"/")


# The terminals' JSON routes (issue 16): no browser renders them, and a check-in on a
# metered link pays for every byte, so they carry nosniff alone, and their 200 answers
# (JSON the collector makes of its own data, 288 a day per terminal) not even that.
TERMINAL_PATHS = frozenset({"/v1/checkins", "/v1/enroll", "/v1/devices/self/token"})
TERMINAL_HEADERS = SECURITY_HEADERS[:1]


class SecurityHeaders:
    """Pure ASGI middleware adding nosniff, CSP and friends to every HTTP response (nosniff
    alone on TERMINAL_PATHS, none on their 200s), and making every redirect's Location
    relative (never the request's Host header)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        terminal = scope.get("path") in TERMINAL_PATHS
        extra = TERMINAL_HEADERS if terminal else SECURITY_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                ok = terminal and message.get("status") == 200
                message["headers"] = [
                    (k, _relative(v) if k.lower() == b"location" else v)
                    for k, v in message.get("headers", [])
                ] + ([] if ok else extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def default_public_url(cfg: CollectorConfig) -> str:
    """The collector's address for links sent to people when public_url is not set."""
    scheme = "https" if cfg.tls_cert_file else "http"
    return f"{scheme}://{cfg.listen}"


def by_method(path: str, **handlers: Handler) -> Route:
    """One route for a path served by several handlers, one per method: Starlette answers
    405 from the first route of a path alone, so its Allow header would name only that
    route's methods; one route lists them all."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, dispatch, methods=list(handlers))


def start_retention(col: Shared) -> RetentionWorker | None:
    """The periodic retention of `collector serve` (none when interval_s is 0 or the policy
    keeps everything); its deletions are counted in /metrics."""
    r = col.cfg.retention
    policy = RetentionPolicy(r.default_days, r.kind_days, r.severity_days)
    if r.interval_s <= 0 or not policy.deletes_anything:
        return None
    return RetentionWorker(
        col.store,
        policy,
        r.interval_s,
        batch_size=r.batch_size,
        on_deleted=col.metrics.count_retention,
    ).start()


def _fleet_recipients(cfg: CollectorConfig) -> list[str]:
    """The age recipients given to terminals at enrollment: [collector] encrypt_to, else the
    recipient of the newest identity of age_identity_file, else none."""
    if cfg.encrypt_to:
        return list(cfg.encrypt_to)
    try:
        found = sealed.identities(cfg)
    except BundleError as e:
        log.error("age_identity_unusable", error=str(e))
        return []
    return [str(found[-1].to_public())] if found else []


def create_app(cfg: CollectorConfig, *, store: BundleStore | None = None) -> Starlette:
    """The collector application for cfg; store defaults to the engines cfg names
    (`collector.storage.open_store`: files + SQLite under data_dir unless configured)."""
    notifier = notify.Notifier(  # ConfigError (78): a bad secret
        notify.load_channels(cfg), base_url=cfg.public_url or default_public_url(cfg)
    )
    notify.install(notifier)
    store = store or open_store(cfg)
    limits = store.limits
    db = database(store)
    channel_hooks.configure(IncidentSettings.of(cfg.incidents))  # device.silent's incidents
    col = Shared(
        cfg=cfg,
        store=store,
        tokens=DeviceTokens(
            TokenStore(cfg.tokens_file),
            enrolled=lambda token: channel_devices.resolve_token(db, token),
            enrolled_site=lambda device: channel_devices.site_of(db, device),
        ),
        limiter=limits(cfg.rate_per_minute, "ingest")
        if limits
        else RateLimiter(cfg.rate_per_minute),
        metrics=Metrics(),
        incidents=Incidents(database(store), IncidentSettings.of(cfg.incidents)),
        proxies=web.proxy_networks(cfg),
    )
    col.channel = channel_api.Channel(
        db=db,
        signer=Signer(cfg.signing_key_file),
        waiters=Waiters(db),
        enroll_limiter=limits(cfg.enroll_per_minute, "enroll")
        if limits
        else RateLimiter(cfg.enroll_per_minute),
        # per instance, in memory: a check-in costs no shared write for its rate limit
        checkin_limiter=RateLimiter(cfg.rate_per_minute),
        silent_after=cfg.silent_after_checkins,
        encrypt_to=_fleet_recipients(cfg),
        silent_check_s=cfg.silent_check_interval_s,
        keys_cfg=cfg,
    )
    store.set_observer(col.metrics.observe_storage)
    pool_size = getattr(store.index, "connections", None)
    if callable(pool_size):
        col.metrics.track_index_connections(pool_size)

    channel = col.channel
    ch = channel_api
    dev = "/v1/devices/{device_id}"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = threading.Thread(target=reconcile, args=(col,), name="collector-reconcile")
        worker.start()
        retention = start_retention(col)  # issue 14 item 4: retention every interval_s
        incidents = IncidentWorker(col.incidents, cfg.incidents.interval_s).start()
        delivery = start_delivery(col.store, notifier.channels, cfg.notify)  # issue 15 item 6
        channel.start()  # issue 16: the silent sweep
        yield
        await channel.stop()
        if delivery is not None:
            delivery.stop()
        incidents.stop()
        if retention is not None:
            retention.stop()
        worker.join(timeout=30)
        col.store.close()

    routes = [
        # the terminals' routes first: Starlette tries a request's path on each route in
        # turn (some 1 us a route), and check-ins are most of the requests
        Route("/v1/checkins", ch.post_checkin, methods=["POST"]),
        by_method("/v1/bundles/{bundle_id}", PUT=counted(col, put_bundle), GET=get_manifest),
        Route("/v1/enroll", ch.post_enroll, methods=["POST"]),
        Route("/v1/devices/self/token", ch.post_self_token, methods=["POST"]),
        Route("/", operator_only(html=True)(incident_views.home), methods=["GET"]),
        Route("/bundles", index_page, methods=["GET"]),
        Route(
            "/incidents", operator_only(html=True)(incident_views.incident_list), methods=["GET"]
        ),
        Route(
            "/incidents/{incident_id}",
            operator_only(html=True)(incident_views.incident_page),
            methods=["GET"],
        ),
        Route("/bundles/{bundle_id}", bundle_page, methods=["GET"]),
        Route("/login", web.login, methods=["GET", "POST"]),
        Route("/logout", operator_only(html=True)(web.logout), methods=["GET", "POST"]),
        Route("/password", operator_only(html=True)(web.password), methods=["GET", "POST"]),
        Route("/settings", operator_only(html=True)(web.settings), methods=["GET", "POST"]),
        Route("/admin", operator_only(html=True, admin=True)(web.admin_page), methods=["GET"]),
        Route(
            "/admin/{group}/{verb}",
            operator_only(html=True, admin=True)(web.admin_post),
            methods=["POST"],
        ),
        Route("/audit", operator_only(html=True, admin=True)(web.audit_page), methods=["GET"]),
        Route(
            "/v1/audit", operator_only(html=False, admin=True)(web.audit_export), methods=["GET"]
        ),
        Route("/v1/users", operator_only(html=False, admin=True)(web.list_users), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        by_method(
            "/v1/holds",
            GET=operator_only(html=False, admin=True)(holds.list_holds),
            POST=operator_only(html=False, admin=True)(holds.add_hold),
            DELETE=operator_only(html=False, admin=True)(holds.remove_hold),
        ),
        Route(
            "/v1/webhooks/deliveries",
            operator_only(html=False)(notify_api.list_deliveries),
            methods=["GET"],
        ),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/v1/devices", operator_only(html=False)(ch.list_devices), methods=["GET"]),
        Route(dev, operator_only(html=False)(ch.get_device), methods=["GET"]),
        Route(f"{dev}/keys", operator_only(html=False)(ch.get_keys), methods=["GET"]),
        by_method(
            f"{dev}/commands",
            GET=operator_only(html=False)(ch.get_commands),
            POST=operator_only(html=False)(ch.post_command),
        ),
        Route("/devices", operator_only(html=True)(channel_views.devices_page), methods=["GET"]),
        Route(
            "/devices/{device_id}",
            operator_only(html=True)(channel_views.device_page),
            methods=["GET"],
        ),
        Route(
            "/devices/{device_id}/commands",
            operator_only(html=True)(channel_views.device_command_form),
            methods=["POST"],
        ),
        Route("/v1/openapi.json", openapi_document, methods=["GET"]),
        Route("/v1/bundles", list_bundles, methods=["GET"]),
        Route("/v1/bundles/{bundle_id}/download", download, methods=["GET"]),
        Route(
            "/v1/bundles/{bundle_id}/screenshot.png",
            entry_handler("screenshot.png"),
            methods=["GET"],
        ),
        Route("/v1/bundles/{bundle_id}/report.txt", entry_handler("report.txt"), methods=["GET"]),
        Route(
            "/v1/bundles/{bundle_id}/timeline.json", entry_handler("timeline.json"), methods=["GET"]
        ),
        Route("/v1/bundles/{bundle_id}/diagnostics", diagnostics, methods=["GET"]),
        Route("/v1/bundles/{bundle_id}/entries/{name:path}", entry_handler(None), methods=["GET"]),
        *[
            Route(path, operator_only(html=False)(handler), methods=[method])
            for method, path, handler in incident_api.ROUTES
        ],
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            StorageError: _storage_error,
            BundleError: _bundle_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.collector = col
    app.state.notifier = notifier
    app.add_middleware(SecurityHeaders)
    app.add_middleware(Negotiated)  # the request's language (collector.i18n.LANGUAGE)
    return app

"""The channel over HTTP (docs/CHANNEL.md): the terminals' routes and the operators'.

Terminals (no operator credentials):

- ``POST /v1/enroll``: throttled per client address (``[collector] enroll_per_minute``,
  429 + Retry-After), then `collector.channel.enroll`; 503 + Retry-After while the
  collector has no command key (the terminal could not trust a command from it);
- ``POST /v1/checkins[?wait=S]``: the checks of ingest (401 unknown token, 403 another
  device's id, 429 + Retry-After per device), then `collector.channel.checkin` (409
  resend: a base that is not the stored state); with
  ``wait`` (0-55) and nothing to deliver, the long-poll (`collector.channel.waiters`);
- ``POST /v1/devices/self/token``: a rotated device token (`devices.rotate_token`).

Operators (behind the read side's gate, `collector.app.operator_only`, narrowed by the
principal's sites: a device out of reach is 404, as one that does not exist):

- ``GET /v1/devices`` (``site``, ``limit``, ``offset``), ``GET /v1/devices/{id}`` (state,
  last summary, recent commands and outages);
- ``POST /v1/devices/{id}/commands`` (support and admin: `Principal.writes`, else 403):
  ``{"kind", "args", "expires_in_s"}`` checked by `commands.validate`, signed, queued
  (201), a waiting long-poll woken; ``GET /v1/devices/{id}/commands``.

Every answer is JSON; an error is ``{"status": <word>, "error": <one line>}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from agent.bundle.format import BundleError, key_id
from agent.bundle.sealed import public_pem
from collector.access import principal_of
from collector.auth import TokenFileError, hash_token, valid_device_id
from collector.channel import checkin, commands, devices, enroll, remote_config
from collector.channel.errors import BadRequest, ChannelError, NotFound
from collector.channel.hooks import _audit
from collector.channel.signing import NoSigningKey, Signer
from collector.channel.silent import SilentWorker, outages
from collector.channel.waiters import Waiters
from collector.channel.writer import CheckinWriter
from collector.sealed import device_keyring
from collector.storage import Limiter
from collector.storage.sql import Database

log = structlog.get_logger(__name__)

RETRY = {"Retry-After": "60"}
MAX_OPERATOR_BODY = 16 * 1024


@dataclass
class Channel:
    """What the channel's handlers share (``col.channel``)."""

    db: Database
    signer: Signer
    waiters: Waiters
    enroll_limiter: Limiter
    checkin_limiter: Limiter
    silent_after: int
    encrypt_to: list[str] = field(default_factory=list)
    silent_check_s: float = 10.0
    keys_cfg: Any = None  # the collector's config: device_pubkeys_dir for key rotations
    worker: SilentWorker | None = None
    writer: CheckinWriter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = CheckinWriter(self.db, silent_after=self.silent_after, keys_cfg=self.keys_cfg)

    def start(self) -> None:
        """The silent sweep of this instance (`collector serve`'s lifespan)."""
        self.worker = SilentWorker(self.db, self.silent_check_s).start()

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        await run_in_threadpool(self.writer.stop)
        await self.waiters.close()


def error(e: ChannelError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": e.status, "error": str(e)[:300]}, e.code, headers=headers)


def _col(request: Request) -> Any:
    return request.app.state.collector


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON; BadRequest (413 as ChannelError) when too large or malformed."""
    raw = await read_body(request, limit)
    if isinstance(raw, ChannelError):
        raise raw
    return parse_json(raw)


async def read_body(request: Request, limit: int) -> bytes | ChannelError:
    """The body's bytes, or the refusal to raise once the caller is known (413, 400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return ChannelError(413, "too_large", f"body over {limit} bytes")
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return ChannelError(413, "too_large", f"body over {limit} bytes")
    except ClientDisconnect:
        return BadRequest("client disconnected")
    return body


def parse_json(raw: bytes) -> Any:
    """JSON of a body; BadRequest when malformed."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("body is not JSON") from None


# --------------------------------------------------------------------------- terminals


async def post_enroll(request: Request) -> Response:
    col = _col(request)
    ch: Channel = col.channel
    address = _client(request)
    wait_s = ch.enroll_limiter.take(address)
    if wait_s > 0:
        return error(
            ChannelError(429, "rate_limited", "too many enrollments from this address"),
            {"Retry-After": str(int(wait_s))},
        )
    try:
        req = enroll.parse_request(await read_json(request, checkin.MAX_BODY))
        try:
            collector_key = ch.signer.public_pem()
        except NoSigningKey as e:
            log.error("enroll_without_signing_key", error=str(e))
            raise ChannelError(503, "unavailable", "the collector has no command key yet") from None
        done = await run_in_threadpool(
            lambda: enroll.enroll(
                ch.db,
                req,
                address=address,
                now=time.time(),
                file_site=col.tokens.registered_site,
                interval_s=300,
            )
        )
    except ChannelError as e:
        log.warning("enroll_refused", address=address, status=e.status, error=str(e))
        return error(e, RETRY if e.code == 503 else None)
    except TokenFileError as e:
        log.error("tokens_file_unreadable", error=str(e))
        return error(ChannelError(503, "unavailable", "device tokens unavailable"), RETRY)
    values = await run_in_threadpool(_values, ch.db, done.site)
    log.info("device_enrolled", device=done.device_id, site=done.site, reenrolled=done.reenrolled)
    return JSONResponse(
        {
            "status": "enrolled",
            "device_id": done.device_id,
            "device_token": done.device_token,
            "site": done.site,
            "tenant": done.tenant,
            "encrypt_to": ch.encrypt_to,
            "collector_public_key": collector_key,
            "checkin_interval_s": int(values.get(remote_config.CHECKIN_INTERVAL, 300)),
        },
        status_code=201,
    )


def _values(db: Database, site: str) -> dict[str, Any]:
    with db.transaction(write=False) as tx:
        return remote_config.values_for(tx, site)


class Mismatch(ChannelError):
    """A device token presented for another device's id (403)."""

    def __init__(self) -> None:
        super().__init__(403, "forbidden", "X-Posagent-Device does not match the token's device")


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _tokens_file(col: Any, request: Request, *, reread: bool) -> tuple[str, str] | None:
    """(device, site) of the bearer token in the tokens file, or None; 503 unreadable."""
    try:
        return col.tokens.in_file(_bearer(request), reread_on_miss=reread)  # type: ignore[no-any-return]
    except TokenFileError as e:
        log.error("tokens_file_unreadable", error=str(e))
        raise ChannelError(503, "unavailable", "device tokens unavailable") from None


def _caller(request: Request) -> checkin.Caller:
    """The check-in's caller: a tokens-file device (the file as last read), else the
    token's hash for the check-in's transaction to resolve; 401 without a token."""
    token = _bearer(request)
    if not token:
        raise checkin.Unknown()
    found = _tokens_file(_col(request), request, reread=False)
    if found is not None:
        return checkin.Caller(device=found[0], site=found[1])
    return checkin.Caller(token_hash=hash_token(token))


def _device_of(request: Request) -> tuple[str, str]:
    """(device, site) of the bearer token, which the request must claim; ChannelError."""
    col = _col(request)
    try:
        found = col.tokens.resolve_with_site(_bearer(request))
    except TokenFileError as e:
        log.error("tokens_file_unreadable", error=str(e))
        raise ChannelError(503, "unavailable", "device tokens unavailable") from None
    if found is None:
        raise checkin.Unknown()
    if request.headers.get("x-posagent-device", "") != found[0]:
        raise Mismatch()
    return str(found[0]), str(found[1])


def _wait_param(request: Request) -> int:
    raw = request.query_params.get("wait", "")
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > checkin.MAX_WAIT_S:
        raise BadRequest(f"wait must be 0-{checkin.MAX_WAIT_S} seconds")
    return int(raw)


async def post_checkin(request: Request) -> Response:
    col = _col(request)
    ch: Channel = col.channel
    # the body first, then everything else in the check-in writer's thread, in one
    # transaction with the check-ins that came with it (`collector.channel.writer`): the
    # device's token, the rate limit, the wait, the body's checks, the check-in's work;
    # refused in that order, as before
    raw = await read_body(request, checkin.MAX_BODY)
    address = _client(request)
    claimed = request.headers.get("x-posagent-device", "")
    # parsed before the transaction (no writer waits on it), refused in order within it
    parsed: checkin.CheckIn | ChannelError
    try:
        if isinstance(raw, ChannelError):
            raise raw
        parsed = checkin.parse(parse_json(raw), claimed)
    except ChannelError as e:
        parsed = e

    def admit(device: str, site: str) -> tuple[checkin.CheckIn, int]:
        if claimed != device:
            raise Mismatch()
        wait_s = ch.checkin_limiter.take(device)
        if wait_s > 0:
            raise ChannelError(429, "rate_limited", "too many check-ins", int(wait_s))
        wait = _wait_param(request)
        if isinstance(parsed, ChannelError):
            raise parsed
        return parsed, wait

    try:
        incoming = checkin.Incoming(
            _caller(request),  # the tokens file as last read (memory)
            admit,
            reread=lambda: _tokens_file(col, request, reread=True),
            address=address,
            now=time.time(),
        )
        device, wait, reply = await ch.writer.submit(incoming)
    except ChannelError as e:
        if e.code >= 500:
            return error(e, RETRY)
        if e.retry_after_s is not None:
            return error(e, {"Retry-After": str(e.retry_after_s)})
        headers = {"WWW-Authenticate": 'Bearer realm="posagent"'} if e.code == 401 else None
        return error(e, headers)
    if reply.came_back:
        log.info("device_checked_in_after_silence", device=device)
    if reply.commands or not wait:
        return JSONResponse(reply.to_json())
    found: list[commands.Command] = []

    async def check() -> bool:
        found.extend(await run_in_threadpool(checkin.deliver, ch.db, device, time.time()))
        return bool(found)

    await ch.waiters.wait(device, wait, check)
    held = checkin.Reply(
        found,
        reply.config,
        reply.next_checkin_s,
        key_rotations=reply.key_rotations,
        state=reply.state,
    )
    return JSONResponse(held.to_json())


async def post_self_token(request: Request) -> Response:
    col = _col(request)
    ch: Channel = col.channel
    try:
        device, _ = await run_in_threadpool(_device_of, request)
        address = _client(request)

        def rotate() -> str:
            with ch.db.transaction() as tx:
                if devices.get(tx, device) is None or tx.one(
                    "SELECT 1 FROM devices WHERE id = ? AND enroll_token_id = 'tokens_file'",
                    (device,),
                ):
                    raise ChannelError(
                        409,
                        "not_enrolled",
                        "this device's token is in the tokens file: add-device --rotate",
                    )
                token = devices.rotate_token(tx, device)
                _audit(tx, f"device:{device}", "device.token_rotate", device, address)
                return token

        token = await run_in_threadpool(rotate)
    except ChannelError as e:
        return error(e, RETRY if e.code >= 500 else None)
    return JSONResponse({"status": "ok", "device_id": device, "device_token": token})


# --------------------------------------------------------------------------- operators


def _number(params: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, "")
    if not raw:
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer")
    return max(lo, min(hi, int(raw)))


async def list_devices(request: Request) -> Response:
    ch: Channel = _col(request).channel
    who = principal_of(request)
    try:
        limit = _number(request.query_params, "limit", 100, 1, devices.MAX_LIST)
        offset = _number(request.query_params, "offset", 0, 0, 10**9)
    except ChannelError as e:
        return error(e)
    site = request.query_params.get("site", "").strip()

    def read() -> tuple[list[devices.Device], int]:
        with ch.db.transaction(write=False) as tx:
            return devices.listing(tx, who.sites, site=site, limit=limit, offset=offset)

    found, total = await run_in_threadpool(read)
    now = time.time()
    return JSONResponse(
        {
            "devices": [d.to_json(now) for d in found],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@dataclass(frozen=True)
class DeviceView:
    device: devices.Device
    commands: list[commands.Command]
    outages: list[Any]


def device_view(db: Database, device_id: str, sites: frozenset[str] | None) -> DeviceView:
    """A device with its recent commands and outages; NotFound when absent or out of reach."""
    if not valid_device_id(device_id):
        raise NotFound("no such device")
    with db.transaction(write=False) as tx:
        d = devices.get(tx, device_id)
        if d is None or (sites is not None and d.site not in sites):
            raise NotFound("no such device")
        return DeviceView(d, commands.recent(tx, device_id, 50), outages(tx, device_id, 20))


async def _view(request: Request) -> DeviceView | Response:
    """The path's device within the principal's reach, or the error answer (404)."""
    ch: Channel = _col(request).channel
    who = principal_of(request)
    try:
        return await run_in_threadpool(
            device_view, ch.db, str(request.path_params["device_id"]), who.sites
        )
    except ChannelError as e:
        return error(e)


async def get_device(request: Request) -> Response:
    v = await _view(request)
    if isinstance(v, Response):
        return v
    now = time.time()
    out = v.device.to_json(now)
    out["commands"] = [c.to_json(now) for c in v.commands]
    out["outages"] = [o.to_json() for o in v.outages]
    return JSONResponse(out)


async def get_keys(request: Request) -> Response:
    """The device's public keys as one PEM file (`posagent bundle verify --public-key`):
    those it enrolled with or rotated to, with their comment lines, then those of
    device_pubkeys_dir; revoked ones left out."""
    v = await _view(request)
    if isinstance(v, Response):
        return v
    col = _col(request)
    d = v.device
    text = d.pubkeys.rstrip("\n") + "\n" if d.pubkeys.strip() else ""
    try:
        ring = await run_in_threadpool(device_keyring, col.cfg, d.id, enrolled=d.pubkeys)
    except BundleError as e:
        return error(ChannelError(409, "keys_unusable", str(e)))
    known = set(d.key_ids())
    for pub in ring.current if ring is not None else []:
        kid = key_id(pub)
        if kid not in known and kid not in (ring.revoked if ring else {}):
            known.add(kid)
            text += f"# key {kid} (device_pubkeys_dir)\n{public_pem(pub)}"
    return PlainTextResponse(text, media_type="application/x-pem-file")


async def get_commands(request: Request) -> Response:
    v = await _view(request)
    if isinstance(v, Response):
        return v
    now = time.time()
    return JSONResponse({"commands": [c.to_json(now) for c in v.commands]})


def queue_command(
    ch: Channel,
    device_id: str,
    data: Any,
    *,
    who: Any,
    address: str,
    now: float,
) -> commands.Command:
    """Check, sign and queue a command for a device within who's reach (the JSON API and
    the device page's form); ChannelError with the refusal."""
    if not who.writes:
        raise ChannelError(403, "forbidden", "queueing commands is for support and admins")
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    extra = sorted(set(data) - {"kind", "args", "expires_in_s"})
    if extra:
        raise BadRequest(f"unknown fields: {', '.join(extra)[:100]} (kind, args, expires_in_s)")
    args = commands.validate(data.get("kind"), data.get("args"), now)
    expires = commands.expires_in(data.get("expires_in_s"))
    if not valid_device_id(device_id):
        raise NotFound("no such device")
    with ch.db.transaction() as tx:
        d = devices.get(tx, device_id)
        if d is None or not who.sees(d.site):
            raise NotFound("no such device")
        try:
            ch.signer.key()
        except NoSigningKey as e:
            raise ChannelError(503, "unavailable", str(e)) from None
        return commands.queue(
            tx,
            ch.signer,
            device_id,
            str(data["kind"]),
            args,
            expires_in_s=expires,
            by=who.name,
            address=address,
            now=now,
        )


async def post_command(request: Request) -> Response:
    ch: Channel = _col(request).channel
    who = principal_of(request)
    device_id = str(request.path_params["device_id"])
    try:
        data = await read_json(request, MAX_OPERATOR_BODY)
        cmd = await run_in_threadpool(
            lambda: queue_command(
                ch, device_id, data, who=who, address=_client(request), now=time.time()
            )
        )
    except ChannelError as e:
        return error(e, RETRY if e.code >= 500 else None)
    ch.waiters.notify(device_id)
    log.info("command_queued", device=device_id, command=cmd.id, kind=cmd.kind, by=who.name)
    return JSONResponse({"status": "queued", "command": cmd.to_json(time.time())}, status_code=201)

"""The channel's thread in the daemon: enroll, check in, run the collector's commands.

docs/CHANNEL.md is the contract. One daemon thread (`Channel`), one request at
a time, every HTTP request and every signature check in the upload child
(agent/upload/worker.py, its own `WorkerTransport`, so a long-poll never holds
an upload back): the daemon loads neither requests, TLS nor cryptography.

A turn of the loop:
1. set-level overrides whose window ended are dropped (overrides.json) and the
   daemon reloads its config (`on_layers_changed`);
2. no device token yet: with `[upload] enrollment_token_file` set, enroll
   (`POST /v1/enroll`); a refusal is one log line and a new try one interval
   later, nothing else happens; without one the channel waits;
3. a check-in (`POST /v1/checkins`, `?wait=` with `[upload] longpoll`) carrying
   the summary (`summary` callback: the daemon's state) and the results not
   yet acknowledged, only what changed since the collector's last state token
   (agent/channel/delta.py; a `409 resend` sends it whole at once); a 200 acknowledges them, delivers commands (checked by
   agent/channel/commands.py, run once, each outcome recorded) and remote
   config (checked by building the layered config strictly, then kept in
   remote.json and applied by a reload).

Commands that need the daemon (capture, selftest, logs) go to `run_command`;
set-level, checkin-interval, rotate-token and rotate-signing-key are the
channel's own. A signing key rotation is staged when its command runs (the new
public key, signed by the old key, goes with the result) and promoted once a
check-in that carried the result is answered 200 (agent/bundle/keyfiles.py). A turn
that ran commands checks in again at once, so their results reach the
collector without waiting an interval.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.bundle.keyfiles import RotationError, discard, promote, read_pending
from agent.channel.commands import Command, Refused, check_command, envelope_id
from agent.channel.delta import Acked, acked_after, checkin_body
from agent.channel.store import Result, Results, Seen, one_line
from agent.core.config import (
    Config,
    ConfigError,
    layered_config,
    read_config_text,
    read_secret_file,
)
from agent.core.files import atomic_write
from agent.core.layers import (
    Override,
    RemoteState,
    active_overrides,
    read_overrides,
    read_remote,
    split_key,
    write_overrides,
    write_remote,
)
from agent.core.timefmt import rfc3339
from agent.upload.protocol import (
    CHECKIN_PATH,
    ENROLL_PATH,
    LONGPOLL_WAIT_S,
    TOKEN_PATH,
    channel_headers,
    channel_url,
)
from agent.upload.uploader import device_token, parse_retry_after, tls_settings
from agent.upload.worker import (
    Aborted,
    PostJsonRequest,
    PublicKeyRequest,
    PutReply,
    RotateKeyRequest,
    VerifyRequest,
    WorkerRequest,
    WorkerTransport,
)
from drivers.system import read_boot_id

log = structlog.get_logger(__name__)

HEARTBEAT_S = 5.0  # longest sleep between two progress marks (watchdog)
MAX_COMMANDS_PER_REPLY = 20
MAX_TOKEN_CHARS = 512
RESULT_FLUSH_S = 1.0  # a turn that ran commands checks in again this soon

Summary = Callable[[], dict[str, Any]]
RunCommand = Callable[[Command], tuple[str, str]]  # → (done | refused | failed, detail)


def _header_safe(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_CHARS and all(32 < ord(c) < 127 for c in token)


def _status_of(reply: PutReply) -> str:
    """The `status` word of a JSON reply body ("" when there is none)."""
    try:
        doc = json.loads(reply.body)
    except ValueError:
        return ""
    return str(doc.get("status", "")) if isinstance(doc, dict) else ""


def _error_of(reply: PutReply) -> str:
    """One line for a reply that is not a success."""
    if reply.status is None:
        return reply.error or "no answer"
    try:
        doc = json.loads(reply.body)
        text = doc.get("error") or doc.get("status") if isinstance(doc, dict) else None
    except ValueError:
        text = None
    return one_line(f"HTTP {reply.status}" + (f": {text}" if text else ""))


class Channel:
    """The daemon's channel thread; thread-safe start/stop/status."""

    def __init__(
        self,
        cfg: Config,
        *,
        summary: Summary,
        run_command: RunCommand,
        on_layers_changed: Callable[[], None],
        transport: WorkerTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.up = cfg.upload
        self.state_dir = Path(cfg.agent.state_dir)
        self._summary = summary
        self._run_command = run_command
        self._on_layers_changed = on_layers_changed
        self._transport = transport or WorkerTransport()
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.results = Results(self.state_dir)
        self.seen = Seen(self.state_dir)
        self._progress_mono = time.monotonic()
        self._in_request_s = 0.0  # the bound of the request in flight (0: none)
        self._said: set[str] = set()  # one-time log lines already written
        self._refused_digest = ""
        self._proofs: dict[str, dict[str, str]] = {}  # command id → its key rotation's proof
        self._reloading = False
        self._loaded_at = clock()  # the config (and its overrides) were read about now
        self._acked: Acked | None = None  # the collector's state token: send only changes
        self.state: dict[str, Any] = {
            "enrolled": bool(device_token(self.up)),
            "checkins": 0,
            "last_checkin_at": None,
            "last_error": None,
            "commands_run": 0,
            "commands_refused": 0,
        }

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the thread (posagent-channel)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="posagent-channel", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; a request in flight is abandoned (its child killed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._transport.close()

    def last_progress(self) -> float:
        """time.monotonic() of the loop's last sign of life; a request in flight counts
        as alive for its own bound (connect + read timeout)."""
        p = self._progress_mono
        if self._in_request_s:
            return max(p, min(time.monotonic(), p + self._in_request_s))
        return p

    def status(self) -> dict[str, Any]:
        """For `posagent status`."""
        return {
            **self.state,
            "interval_s": self.up.checkin_interval_s,
            "longpoll": self.up.longpoll,
            "results_pending": len(self.results.pending()),
        }

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        log.info(
            "channel_started", endpoint=self.up.endpoint, interval_s=self.up.checkin_interval_s
        )
        while not self._stop.is_set():
            self._progress_mono = time.monotonic()
            try:
                delay = self._turn()
            except Aborted:
                return
            except Exception as e:  # never let the thread die: the next turn tries again
                log.exception("channel_loop_error", error=str(e))
                delay = float(self.up.checkin_interval_s)
            self._sleep(delay)
        log.info("channel_stopped")

    def _sleep(self, delay_s: float) -> None:
        end = time.monotonic() + delay_s
        while not self._stop.is_set():
            self._progress_mono = time.monotonic()
            left = end - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, HEARTBEAT_S))

    def _once(self, key: str, event: str, **kw: Any) -> None:
        """A log line written once per key (a state that persists, not an event)."""
        if key not in self._said:
            self._said.add(key)
            log.error(event, **kw)

    def _turn(self) -> float:
        interval = float(self.up.checkin_interval_s)
        if self._reloading:
            return interval  # the daemon is replacing this channel
        next_expiry = self._expire_overrides()
        if self._reloading:
            return interval
        self._promote_rotation()  # one acknowledged before a restart
        if not device_token(self.up):
            if not self.up.enrollment_token_file:
                self._once(
                    "no_token",
                    "channel_not_enrolled",
                    reason="no device token and no [upload] enrollment_token_file",
                )
                return interval
            if not self._enroll():
                return interval
        delay = self._checkin()
        if next_expiry is not None:
            delay = min(delay, max(0.5, next_expiry - self._clock()))
        return delay

    def _layers_changed(self, why: str) -> None:
        log.info("channel_config_layers_changed", reason=why)
        self._reloading = True
        self._on_layers_changed()

    # ------------------------------------------------------------------ requests

    def _request(self, req: WorkerRequest) -> PutReply:
        bound = req.connect_timeout_s + req.read_timeout_s
        if isinstance(req, PostJsonRequest) and req.resend_safe:
            bound *= 2  # sent once more when its kept connection broke
        self._in_request_s = bound + 30.0
        try:
            return self._transport.put(req, lambda _n: None, self._stop)
        finally:
            self._in_request_s = 0.0
            self._progress_mono = time.monotonic()

    def _post(self, path: str, body: dict[str, Any], token: str, wait_s: int = 0) -> PutReply:
        text = json.dumps(body, separators=(",", ":"))
        return self._request(
            PostJsonRequest(
                url=channel_url(self.up.endpoint, path, wait_s),
                body=text,
                headers=channel_headers(self.cfg.agent.device_id, token),
                connect_timeout_s=self.up.connect_timeout_s,
                read_timeout_s=self.up.read_timeout_s + wait_s,
                tls=tls_settings(self.up),
                # a check-in is safe to send again (its results are acknowledged by the
                # reply's state); an enrollment or a token rotation is not
                resend_safe=path == CHECKIN_PATH,
            )
        )

    # ------------------------------------------------------------------ enrollment

    def _enroll(self) -> bool:
        """One enrollment attempt; True when the terminal now has its device token."""
        up = self.up
        enrollment = read_secret_file(up.enrollment_token_file).decode("utf-8", "replace").strip()
        if not enrollment:
            self._once(
                "no_enrollment_token",
                "channel_enroll_impossible",
                reason=f"enrollment token file {up.enrollment_token_file} missing or empty",
            )
            return False
        key_file = self.cfg.bundle.signing_key_path(self.cfg.agent.state_dir)
        pem = self._request(PublicKeyRequest(key_file))
        if pem.error or not pem.body:
            self._note_error(f"cannot read the signing key: {pem.error}", "channel_enroll_failed")
            return False
        body = {
            "enrollment_token": enrollment,
            "device_id": self.cfg.agent.device_id,
            "ed25519_public_key": pem.body,
            "agent_version": __version__,
            "boot_id": read_boot_id(self.cfg.fs_roots()) or "",
        }
        reply = self._post(ENROLL_PATH, body, "")
        if reply.status != 201:
            event = "channel_enroll_refused" if reply.status else "channel_enroll_failed"
            self._note_error(_error_of(reply), event, retry_in_s=up.checkin_interval_s)
            return False
        try:
            doc = json.loads(reply.body)
            token = doc["device_token"]
            collector_key = doc["collector_public_key"]
            encrypt_to = doc.get("encrypt_to", [])
            if not isinstance(token, str) or not _header_safe(token):
                raise ValueError("device_token is not a usable token")
            if not isinstance(collector_key, str) or "BEGIN PUBLIC KEY" not in collector_key:
                raise ValueError("collector_public_key is not a PEM public key")
            if not isinstance(encrypt_to, list) or not all(isinstance(r, str) for r in encrypt_to):
                raise ValueError("encrypt_to is not a list of recipients")
        except (ValueError, KeyError, TypeError) as e:
            self._note_error(f"enrollment answer unusable: {e}", "channel_enroll_failed")
            return False
        try:
            remote = read_remote(self.state_dir)
        except (OSError, ValueError):
            remote = RemoteState()
        remote = replace(
            remote,
            encrypt_to=list(encrypt_to),
            site=str(doc.get("site", "")),
            tenant=str(doc.get("tenant", "")),
        )
        try:
            atomic_write(Path(up.token_file), token.encode() + b"\n", mode=0o600)
            key_path = Path(up.collector_key_path(str(self.state_dir)))
            atomic_write(key_path, collector_key.encode(), mode=0o600)
            write_remote(self.state_dir, remote)
        except OSError as e:
            self._note_error(f"cannot write what enrollment gave: {e}", "channel_enroll_failed")
            return False
        self.state["enrolled"] = True
        log.info(
            "channel_enrolled",
            device_id=self.cfg.agent.device_id,
            site=remote.site,
            tenant=remote.tenant,
            recipients=len(encrypt_to),
        )
        if encrypt_to and list(encrypt_to) != list(self.cfg.bundle.encrypt_to):
            self._layers_changed("enrollment gave the fleet's recipients")
        return True

    def _note_error(self, error: str, event: str, **kw: Any) -> None:
        self.state["last_error"] = error
        log.error(event, error=error, **kw)

    # ------------------------------------------------------------------ check-in

    def _remote_digest(self) -> str:
        try:
            return read_remote(self.state_dir).digest
        except (OSError, ValueError):
            return ""

    def _checkin(self) -> float:
        """One check-in; returns the delay to the next one."""
        up = self.up
        interval = float(up.checkin_interval_s)
        token = device_token(up)
        sent = self.results.pending()
        now = self._clock()
        fields = {
            "device_id": self.cfg.agent.device_id,
            "sent_at": rfc3339(now),
            "boot_id": read_boot_id(self.cfg.fs_roots()) or "",
            "agent_version": __version__,
            "config_digest": self._remote_digest(),
            "interval_s": up.checkin_interval_s,
            "summary": self._summary(),
        }
        # results go at once (no hold): their acknowledgement is what a key rotation waits for
        wait = LONGPOLL_WAIT_S if up.longpoll and not sent else 0
        t0 = time.monotonic()
        reply = self._post(CHECKIN_PATH, checkin_body(fields, sent, self._acked), token, wait)
        if reply.status == 409 and self._acked is not None and _status_of(reply) == "resend":
            self._acked = None  # the collector holds another state: the whole check-in now
            reply = self._post(CHECKIN_PATH, checkin_body(fields, sent, None), token, wait)
        if reply.status != 200:
            error = _error_of(reply)
            self._note_error(error, "channel_checkin_failed", status=reply.status)
            retry = parse_retry_after(reply.retry_after, self._clock())
            if reply.status in (429, 503) and retry is not None:
                return max(1.0, retry)
            return interval
        try:
            doc = json.loads(reply.body)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._note_error(f"check-in answer is not JSON: {e}", "channel_checkin_failed")
            return interval
        self.results.acknowledge(sent)
        self._rotation_verdicts(doc.get("key_rotations"))
        self._promote_rotation()
        self._acked = acked_after(doc, fields)
        self.state["checkins"] += 1
        self.state["last_checkin_at"] = self._clock()
        self.state["last_error"] = None
        ran = self._commands(doc.get("commands"))
        conf = doc.get("config")
        if isinstance(conf, dict):
            self._remote_config(conf)
        if self._reloading:
            return interval
        if ran:
            return RESULT_FLUSH_S
        delay = interval
        nxt = doc.get("next_checkin_s")
        if isinstance(nxt, int | float) and not isinstance(nxt, bool) and nxt > interval:
            delay = min(float(nxt), 86400.0)  # the collector asks for fewer check-ins
        if up.longpoll and time.monotonic() - t0 >= wait / 2:
            return 0.0  # held as asked: poll again at once
        return delay

    # ------------------------------------------------------------------ commands

    def _commands(self, items: Any) -> bool:
        """Check and run the reply's commands; True when any was recorded."""
        if not isinstance(items, list) or not items:
            return False
        items = items[:MAX_COMMANDS_PER_REPLY]
        raws: list[bytes | None] = []
        pairs: list[list[str]] = []
        for it in items:
            env = it.get("envelope") if isinstance(it, dict) else None
            sig = it.get("signature") if isinstance(it, dict) else None
            try:
                raws.append(base64.b64decode(str(env), validate=True))
            except (binascii.Error, ValueError):
                raws.append(None)
            pairs.append([str(env), str(sig)])
        key_file = self.up.collector_key_path(str(self.state_dir))
        verdict = self._request(VerifyRequest(key_file, pairs))
        try:
            sig_problems = json.loads(verdict.body) if not verdict.error else []
        except ValueError:
            sig_problems = []
        if not isinstance(sig_problems, list) or len(sig_problems) != len(pairs):
            why = verdict.error or "signature check gave no answer"
            sig_problems = [f"signature not checked: {why}"] * len(pairs)
        recorded = False
        for raw, problem in zip(raws, sig_problems, strict=True):
            recorded |= self._one_command(raw, str(problem))
        return recorded

    def _one_command(self, raw: bytes | None, sig_problem: str) -> bool:
        now = self._clock()
        if raw is None:
            log.warning("channel_command_refused", reason="envelope is not base64")
            return False
        try:
            cmd = check_command(
                raw,
                sig_problem,
                device_id=self.cfg.agent.device_id,
                now=now,
                seen=self.seen.ids,
                command_logs=self.up.command_logs,
            )
        except Refused as e:
            cid = envelope_id(raw)
            self.state["commands_refused"] += 1
            log.warning("channel_command_refused", command_id=cid or None, reason=str(e))
            if not cid:
                return False
            self.results.add(Result(cid, "refused", one_line(str(e)), now))
            return True
        self.seen.add(cmd.id, cmd.expires_at, now)  # before it runs: at most once
        log.info("channel_command", command_id=cmd.id, kind=cmd.kind)
        try:
            status, detail = self._execute(cmd)
        except Exception as e:  # a command's failure is its result, never the channel's end
            log.exception("channel_command_error", command_id=cmd.id, error=str(e))
            status, detail = "failed", f"{type(e).__name__}: {e}"
        key = self._proofs.pop(cmd.id, None)
        self.state["commands_run"] += 1
        log.info(
            "channel_command_result",
            command_id=cmd.id,
            kind=cmd.kind,
            status=status,
            detail=one_line(detail),
        )
        self.results.add(Result(cmd.id, status, one_line(detail), self._clock(), key))
        return True

    def _execute(self, cmd: Command) -> tuple[str, str]:
        if cmd.kind == "set-level":
            return self._set_level(cmd)
        if cmd.kind == "checkin-interval":
            return self._checkin_interval(int(cmd.args["seconds"]))
        if cmd.kind == "rotate-token":
            return self._rotate_token()
        if cmd.kind == "rotate-signing-key":
            return self._rotate_signing_key(cmd)
        return self._run_command(cmd)

    def _local_text(self) -> tuple[str, str]:
        return read_config_text(self.cfg.source)

    def _set_level(self, cmd: Command) -> tuple[str, str]:
        now = self._clock()
        try:
            current = active_overrides(read_overrides(self.state_dir), now)
        except (OSError, ValueError) as e:
            log.warning("channel_overrides_unreadable", error=str(e))
            current = []
        new = [*current, Override(cmd.id, cmd.until, cmd.values)]
        try:
            text, file = self._local_text()
            layered_config(text, file, overrides=new, now=now, strict=True)
        except ConfigError as e:
            return "refused", f"args: {e.key}: {e.message}" if e.key else f"args: {e}"
        write_overrides(self.state_dir, new)
        self._layers_changed(f"set-level {cmd.id}")
        return "done", f"{len(cmd.values)} value(s) until {rfc3339(cmd.until)}"

    def _expire_overrides(self) -> float | None:
        """Drop ended set-level windows (reloading when one was in force); the next end."""
        now = self._clock()
        try:
            every = read_overrides(self.state_dir)
        except (OSError, ValueError):
            return None
        live = active_overrides(every, now)
        if len(live) != len(every):
            write_overrides(self.state_dir, live)
            ended = [o.command_id for o in every if o not in live]
            log.info("channel_set_level_expired", command_ids=ended)
            # one that ended before this config was loaded was never in it: no reload
            if any(o.until > self._loaded_at for o in every if o not in live):
                self._layers_changed("set-level window ended")
        return min((o.until for o in live), default=None)

    def _checkin_interval(self, seconds: int) -> tuple[str, str]:
        try:
            remote = read_remote(self.state_dir)
        except (OSError, ValueError):
            remote = RemoteState()
        write_remote(self.state_dir, replace(remote, checkin_interval_s=seconds))
        if seconds != self.up.checkin_interval_s:
            self._layers_changed("checkin-interval command")
        return "done", f"check-in interval {seconds} s"

    def _rotate_token(self) -> tuple[str, str]:
        reply = self._post(
            TOKEN_PATH, {"device_id": self.cfg.agent.device_id}, device_token(self.up)
        )
        if reply.status != 200:
            return "failed", _error_of(reply)
        try:
            token = json.loads(reply.body)["device_token"]
            if not isinstance(token, str) or not _header_safe(token):
                raise ValueError("device_token is not a usable token")
        except (ValueError, KeyError, TypeError) as e:
            return "failed", f"token answer unusable: {e}"
        atomic_write(Path(self.up.token_file), token.encode() + b"\n", mode=0o600)
        log.info("channel_token_rotated")
        return "done", "device token rotated"

    def _key_home(self) -> str:
        return self.cfg.bundle.signing_key_home(str(self.state_dir))

    def _rotate_signing_key(self, cmd: Command) -> tuple[str, str]:
        """Stage a new key (in the upload child) and vouch for it with the current one; the
        proof travels with the result, and the new key signs bundles once the collector
        has acknowledged it (`_promote_rotation`)."""
        home = self._key_home()
        waiting = read_pending(home)
        if waiting is not None and waiting.command_id:
            return "refused", (
                f"rotation {waiting.command_id} to key {waiting.key_id} still waits for the "
                "collector's acknowledgement"
            )
        current = self.cfg.bundle.signing_key_path(str(self.state_dir))
        reply = self._request(RotateKeyRequest(current, home, cmd.id, self.cfg.agent.device_id))
        if reply.error:
            return "failed", reply.error
        try:
            doc = json.loads(reply.body)
            proof = {k: str(doc[k]) for k in ("public_key", "previous", "signature")}
            new_id = str(doc["key_id"])
        except (ValueError, KeyError, TypeError) as e:
            return "failed", f"key rotation answer unusable: {e}"
        self._proofs[cmd.id] = proof
        log.info("channel_signing_key_staged", key_id=new_id, previous=proof["previous"])
        return "done", f"signing key {proof['previous']} -> {new_id}"

    def _rotation_verdicts(self, items: Any) -> None:
        """A staged key the collector did not trust (its reply's ``key_rotations``) is
        dropped: the current key stays in force (a collector that does not say is taken
        to have trusted it once it acknowledged the result)."""
        home = self._key_home()
        pending = read_pending(home)
        if pending is None or not pending.command_id or not isinstance(items, list):
            return
        for it in items:
            if not isinstance(it, dict) or it.get("command_id") != pending.command_id:
                continue
            if it.get("status") == "done":
                return
            try:
                discard(home)
            except OSError as e:
                log.error("channel_signing_key_not_discarded", error=str(e))
            log.error(
                "channel_signing_key_refused",
                command_id=pending.command_id,
                key_id=pending.key_id,
                kept=pending.previous,
                reason=one_line(str(it.get("detail", ""))),
            )
            return

    def _promote_rotation(self) -> None:
        """A staged key whose rotation result the collector acknowledged replaces the
        current one (agent.bundle.keyfiles.promote); the sealing worker picks it up at
        its next bundle."""
        home = self._key_home()
        pending = read_pending(home)
        if pending is None or not pending.command_id:
            return
        if any(r.get("command_id") == pending.command_id for r in self.results.pending()):
            return  # its result has not reached the collector yet
        try:
            promote(home, pending)
        except RotationError as e:
            self._once(
                f"promote:{pending.command_id}", "channel_signing_key_not_rotated", error=str(e)
            )
            return
        log.info(
            "channel_signing_key_rotated",
            command_id=pending.command_id,
            key_id=pending.key_id,
            previous=pending.previous,
            key_file=home,
        )

    # ------------------------------------------------------------------ remote config

    def _remote_config(self, conf: dict[str, Any]) -> None:
        digest, values = conf.get("digest"), conf.get("values")
        if not isinstance(digest, str) or not isinstance(values, dict):
            log.error("channel_remote_config_refused", error="config needs a digest and values")
            return
        if digest == self._refused_digest:
            return
        try:
            remote = read_remote(self.state_dir)
        except (OSError, ValueError):
            remote = RemoteState()
        if digest == remote.digest:
            return
        candidate = replace(remote, digest=digest, values=values)
        unsafe = sorted(k for k in values if split_key(str(k)) is None)
        try:
            if unsafe:
                raise ConfigError("not remote-settable: " + ", ".join(unsafe)[:200])
            text, file = self._local_text()
            layered_config(text, file, remote=candidate, strict=True)
        except ConfigError as e:
            self._refused_digest = digest
            log.error("channel_remote_config_refused", digest=digest, error=str(e))
            return
        write_remote(self.state_dir, candidate)
        log.info("channel_remote_config", digest=digest, keys=len(values))
        self._layers_changed(f"remote config {digest}")

"""Connectivity-aware uploader: drains the spool to the collector (docs/ARCHITECTURE.md §6).

One daemon thread, one upload at a time, critical bundles first, then oldest.
Each bundle is `PUT {endpoint}/v1/bundles/{bundle_id}`, sent by the upload
worker child (agent/upload/worker.py, so the daemon never loads requests), with
the zip streamed from its spool file (optionally paced to a bandwidth cap) and the headers
`Content-Type`, `Authorization: Bearer`, `Idempotency-Key`, `Content-Digest`
(RFC 9530) and `X-Posagent-Device`.

Responses map to spool moves:

| response                                   | outcome                         |
|--------------------------------------------|---------------------------------|
| 200, 201                                   | done: `spool.ack`               |
| 400, 409, 413, 422                         | permanent: `spool.fail`         |
| 403 whose body refuses the bundle itself    | permanent: `spool.fail` (e.g. `device_mismatch`) |
| 401, 403                                   | queue paused, `upload.auth_failed` raised, retried every backoff cap |
| 408, 429, 503 with Retry-After             | queue waits as told (≤ 1 h)     |
| other statuses, connection errors, timeouts, TLS errors, garbage | full-jitter backoff |

Retriable failures hold the whole queue (`hold_until`) for a full-jitter delay
whose exponent is the number of consecutive failures; the bundle itself gets
`next_at` from the larger of its own attempts and that count, so one bundle the
server keeps failing on backs off on its own while the rest of the queue flows.
Connectivity coming back (`notify_online`) resets every backoff and wakes the
thread at once. Between uploads the thread sleeps on an Event (never a busy
loop), waking at least every `HEARTBEAT_S` to report progress to the watchdog.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import structlog

from agent.core.config import Config, UploadConfig, read_secret_file
from agent.spool.maildir import Item, Spool
from agent.upload.protocol import bundle_url, file_digest, refuses_bundle_only, upload_headers
from agent.upload.worker import Aborted, PutRequest, TlsSettings, WorkerTransport

log = structlog.get_logger(__name__)

AUTH_CONDITION = "upload.auth_failed"
DONE_STATUSES = frozenset({200, 201})
REJECT_STATUSES = frozenset({400, 409, 413, 422})
AUTH_STATUSES = frozenset({401, 403})
RETRY_AFTER_STATUSES = frozenset({408, 429, 503})
MAX_RETRY_AFTER_S = 3600.0
HEARTBEAT_S = 15.0  # longest sleep between two progress marks (watchdog)
RESCAN_S = 1.0  # the due list is rebuilt at least this often (a new critical bundle jumps ahead)
NOT_CONFIGURED_RECHECK_S = 60.0

ConditionCallback = Callable[[str, bool, str], None]


class Outcome(Enum):
    """What one upload attempt came to."""

    DONE = "done"
    REJECTED = "rejected"  # permanent: failed/
    AUTH = "auth"  # 401/403: pause the queue
    WAIT = "wait"  # Retry-After: the server said when
    RETRY = "retry"  # anything else: full-jitter backoff


@dataclass(frozen=True)
class Attempt:
    """The result of one PUT."""

    outcome: Outcome
    status: int | None = None
    error: str = ""
    retry_after_s: float | None = None
    bytes_sent: int = 0
    elapsed_s: float = 0.0


@dataclass
class Progress:
    """Reported to a drain's progress callback: after every bundle and while a body is sent."""

    bundle_id: str
    event: str  # "sending" | "done" | "rejected" | "deferred"
    done: int  # bundles finished (uploaded + failed) in this drain
    total: int  # bundles queued when the drain started
    bytes_sent: int  # bytes of bodies sent in this drain, including the current one
    elapsed_s: float
    size_bytes: int = 0
    error: str = ""


@dataclass
class DrainSummary:
    """Counts of one `drain_once`."""

    uploaded: int = 0
    failed: int = 0
    deferred: int = 0
    bytes_sent: int = 0
    elapsed_s: float = 0.0
    remaining: int = 0
    last_error: str = ""
    stopped: str = ""  # empty | not_due | retriable | auth | deadline | stopped | not_configured

    @property
    def rate_bytes_per_s(self) -> float:
        return self.bytes_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate_bytes_per_s"] = round(self.rate_bytes_per_s, 1)
        return d


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter backoff: uniform(0, min(cap, base * 2**attempt))."""
    exp = min(max(attempt, 0), 62)
    return rng.uniform(0.0, min(cap_s, base_s * (2.0**exp)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped at 1 h.

    None when absent or unparsable; 0 for a date in the past.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    import email.utils  # lazy: a Retry-After date is rare; the email package stays out of the daemon

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER_S)


def classify(status: int, retry_after_s: float | None, body: str = "") -> Outcome:
    """The protocol v1 response table (`body`: the reply's start, to tell a 403's subject)."""
    if status in DONE_STATUSES:
        return Outcome.DONE
    if status in REJECT_STATUSES:
        return Outcome.REJECTED
    if status == 403 and refuses_bundle_only(body):
        return Outcome.REJECTED  # this bundle, not the credentials: the queue goes on
    if status in AUTH_STATUSES:
        return Outcome.AUTH
    if status in RETRY_AFTER_STATUSES and retry_after_s is not None:
        return Outcome.WAIT
    return Outcome.RETRY


def tls_settings(up: UploadConfig) -> TlsSettings:
    """What the upload child's session is built from, for uploads and the channel alike."""
    return TlsSettings(
        verify_tls=up.verify_tls,
        ca_file=up.ca_file,
        client_cert_file=up.client_cert_file,
        client_key_file=up.client_key_file,
        proxy=up.proxy,
    )


def device_token(up: UploadConfig) -> str:
    """The device token: inline `token`, else the token file's text ("" when none)."""
    return up.token.strip() or read_secret_file(up.token_file).decode("utf-8", "replace").strip()


def check_upload_config(up: UploadConfig) -> tuple[str, str]:
    """(token, '') when uploads can be attempted, else ('', why not). Reads the token file."""
    if not up.endpoint:
        return "", "no upload endpoint configured ([upload] endpoint)"
    parts = urlsplit(up.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "", f"upload endpoint is not an http(s) URL: {up.endpoint!r}"
    for key, path in (
        ("ca_file", up.ca_file),
        ("client_cert_file", up.client_cert_file),
        ("client_key_file", up.client_key_file),
    ):
        if path and not os.access(path, os.R_OK):
            return "", f"[upload] {key} is not readable: {path}"
    token = device_token(up)
    if any(c in token for c in "\r\n\x00") or any(ord(c) < 32 or ord(c) > 126 for c in token):
        return "", "device token contains characters not allowed in a header"
    if not token and not up.client_cert_file:
        return "", f"no device token (token_file {up.token_file or '-'} missing or empty)"
    return token, ""


# --------------------------------------------------------------------------- the uploader


@dataclass
class _State:
    """Mutable status, guarded by Uploader._lock."""

    activity: str = "idle"
    config_error: str = ""
    paused_auth: bool = False
    hold_until: float = 0.0
    next_attempt_at: float | None = None
    online: bool | None = None
    current_bundle: str = ""
    last_success_at: float | None = None
    last_success_bundle: str = ""
    last_failure_at: float | None = None
    last_failure_reason: str = ""
    last_failure_bundle: str = ""
    uploaded_total: int = 0
    failed_total: int = 0
    bytes_total: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Uploader:
    """Drains the spool to the collector; thread-safe control methods, one worker thread."""

    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        *,
        on_condition: ConditionCallback | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: WorkerTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.up = cfg.upload
        self.spool = spool
        self.device_id = cfg.agent.device_id
        self._on_condition = on_condition
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # one upload at a time (thread or drain_once)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport = transport or WorkerTransport()
        self._owns_transport = transport is None  # a one-shot drain then ends its worker
        self._ahead: tuple[Item, Item] | None = None  # (claimed, as queued) of the next bundle
        self._ahead_digest: tuple[str, str, int] | None = None
        self._reset_session = False
        self._failures = 0  # consecutive retriable failures, queue-wide
        self._progress_mono = time.monotonic()
        self._in_request = False
        self._due: deque[Item] = deque()
        self._due_at = 0.0
        self._due_stale = False
        self._s = _State()
        self._warned_plain_http = False
        self._warned_unverified = False

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the worker thread (a daemon thread named posagent-uploader)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="posagent-uploader", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Ask the thread to stop (an upload in progress is abandoned); True if it ended in time."""
        self._stop.set()
        self._wake.set()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            ended = not self._thread.is_alive()
        if ended:
            with self._busy:
                self._unclaim_ahead()
            if self._owns_transport:
                self._close_worker()
            with self._lock:
                self._s.activity = "stopped"
        return ended

    def wake(self) -> None:
        """A bundle was queued: look at the spool now (does not reset backoff)."""
        self._due_stale = True
        self._wake.set()

    def notify_online(self) -> None:
        """Connectivity is back: reset every backoff and drain at once."""
        n = 0
        try:
            n = self.spool.reset_backoff()
        except OSError as e:
            log.warning("upload_backoff_reset_failed", error=str(e))
        with self._lock:
            self._failures = 0
            self._s.hold_until = 0.0
            self._s.next_attempt_at = None
            self._s.online = True
            self._reset_session = True
        self._due_stale = True
        log.info("upload_connectivity_back", reset=n)
        self._wake.set()

    def connectivity_changed(self, up: bool) -> None:
        """Called by the network monitor: up → notify_online; down is only recorded."""
        if up:
            self.notify_online()
        else:
            with self._lock:
                self._s.online = False

    @property
    def _max_wait_s(self) -> float:
        """The longest legitimate wait: a retry time further ahead means the clock jumped back."""
        return max(self.up.backoff_cap_s, MAX_RETRY_AFTER_S) + 60.0

    def last_progress(self) -> float:
        """time.monotonic() of the loop's last sign of life (watchdog).

        Sending a body marks progress at every chunk. Waiting for a reply is a
        bounded wait (connect + read timeouts), so while a request is in flight
        the loop counts as alive for that long after its last mark; a request
        stuck beyond its own bounds shows as stale.
        """
        p = self._progress_mono
        if self._in_request:
            grace = self.up.connect_timeout_s + self.up.read_timeout_s + 5.0
            return max(p, min(time.monotonic(), p + grace))
        return p

    def status(self) -> dict[str, Any]:
        """Queue depth, oldest age, last success/failure, auth pause, next attempt."""
        q = self.spool.stats()  # cached on directory mtimes: cheap with 10,000 queued
        depth = q["new"]["count"] + q["cur"]["count"]
        with self._lock:
            s = self._s
            out: dict[str, Any] = {
                "state": s.activity,
                "endpoint": self.up.endpoint,
                "configured": not s.config_error,
                "error": s.config_error,
                "queue_depth": depth,
                "oldest_age_s": q["oldest_queued_age_s"],
                "current_bundle": s.current_bundle or None,
                "last_success_at": s.last_success_at,
                "last_success_bundle": s.last_success_bundle or None,
                "last_failure_at": s.last_failure_at,
                "last_failure_reason": s.last_failure_reason or None,
                "last_failure_bundle": s.last_failure_bundle or None,
                "paused_for_auth": s.paused_auth,
                "next_attempt_at": s.next_attempt_at,
                "consecutive_failures": self._failures,
                "online": s.online,
                "uploaded_total": s.uploaded_total,
                "failed_total": s.failed_total,
                "bytes_total": s.bytes_total,
            }
        return out

    # ------------------------------------------------------------------ draining

    def drain_once(
        self,
        deadline_s: float | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> DrainSummary:
        """Upload every bundle due now, critical first then oldest; stop at a retriable error.

        A hold from an earlier failure is ignored (this is an explicit "now");
        bundles whose own next_at lies ahead are not due and are left alone.
        `deadline_s` bounds the drain (seconds from now); the bundle being sent
        when it passes is finished first.
        """
        t0 = time.monotonic()
        summary = DrainSummary()
        total = sum(1 for _ in self.spool.items("new"))
        tried: set[str] = set()
        self._due_stale = True
        with self._busy:
            while True:
                if self._stop.is_set():
                    summary.stopped = "stopped"
                    break
                if deadline_s is not None and time.monotonic() - t0 >= deadline_s:
                    summary.stopped = "deadline"
                    break
                token, why = self._configured()
                if why:
                    summary.stopped = "not_configured"
                    summary.last_error = why
                    break
                item, _ = self._next_due(self._clock())
                if item is None:
                    summary.stopped = (
                        "empty" if not any(True for _ in self.spool.items("new")) else "not_due"
                    )
                    break
                if item.bundle_id in tried:
                    summary.stopped = "not_due"
                    break
                tried.add(item.bundle_id)
                outcome = self._process(item, token, summary, t0, total, progress)
                if outcome in (Outcome.RETRY, Outcome.WAIT, Outcome.AUTH):
                    summary.stopped = "auth" if outcome is Outcome.AUTH else "retriable"
                    break
            self._unclaim_ahead()
        if self._owns_transport and (self._thread is None or not self._thread.is_alive()):
            self._close_worker()  # a one-shot drain (flush): no worker left behind
        summary.elapsed_s = time.monotonic() - t0
        summary.remaining = sum(1 for _ in self.spool.items("new")) + sum(
            1 for _ in self.spool.items("cur")
        )
        return summary

    def _next_due(self, now: float) -> tuple[Item | None, float | None]:
        """Like spool.next_due, from a due list rebuilt every RESCAN_S or after a wake.

        One directory scan serves many uploads instead of one scan per upload
        (which is O(n) each, O(n²) for a drain). wake() and notify_online()
        invalidate the list, so a newly queued critical bundle still goes next.
        """
        if self._ahead is not None:
            if not self._due_stale:
                return self._ahead[1], None  # claimed while the previous bundle was sent
            self._unclaim_ahead()  # something was queued meanwhile: choose afresh (critical first)
        mono = time.monotonic()
        if self._due and mono - self._due_at < RESCAN_S and not self._due_stale:
            return self._due.popleft(), None
        self._due_stale = False
        self._due_at = mono
        waiting = self.spool.retry_ids()
        due: deque[Item] = deque()
        earliest: float | None = None
        for item in self.spool.queued():
            if item.bundle_id in waiting:
                next_at = self.spool.retry_state(item.bundle_id, now, self._max_wait_s).next_at
                if next_at > now:
                    earliest = next_at if earliest is None else min(earliest, next_at)
                    continue
            due.append(item)
        self._due = due
        if due:
            return due.popleft(), None
        return None, earliest

    def _configured(self) -> tuple[str, str]:
        """(token, '') or ('', why not); records the error state for status()."""
        token, why = check_upload_config(self.up)
        with self._lock:
            changed = why != self._s.config_error
            self._s.config_error = why
            if why:
                self._s.activity = "not_configured"
        if changed and why:
            log.error("upload_not_configured", error=why)
        elif changed:
            log.info("upload_configured", endpoint=self.up.endpoint)
        if not why and self.up.endpoint.startswith("http://") and not self._warned_plain_http:
            self._warned_plain_http = True
            log.warning("upload_plain_http", endpoint=self.up.endpoint)
        return token, why

    def _run(self) -> None:
        log.info("uploader_started", endpoint=self.up.endpoint or None)
        while not self._stop.is_set():
            self._progress_mono = time.monotonic()
            try:
                delay = self._step()
            except Exception as e:  # never let the thread die; back off and carry on
                log.exception("uploader_loop_error", error=str(e))
                delay = min(self.up.backoff_cap_s, 5.0)
            if delay > 0:
                with self._busy:
                    self._unclaim_ahead()
                self._transport.close_if_idle()
                self._sleep(delay)
        log.info("uploader_stopped")

    def _sleep(self, delay_s: float) -> None:
        if self._wake.wait(min(delay_s, HEARTBEAT_S)):
            self._wake.clear()

    def _step(self) -> float:
        """One loop turn: upload one due bundle (→ 0) or return how long to sleep."""
        token, why = self._configured()
        if why:
            return min(NOT_CONFIGURED_RECHECK_S, self.up.backoff_cap_s)
        now = self._clock()
        with self._lock:
            hold = self._s.hold_until
        if hold > now:
            with self._lock:
                self._s.activity = "paused_auth" if self._s.paused_auth else "waiting"
                self._s.next_attempt_at = hold
            return hold - now
        with self._busy:
            item, earliest = self._next_due(now)
            if item is None:
                with self._lock:
                    self._s.activity = (
                        "paused_auth"
                        if self._s.paused_auth
                        else ("waiting" if earliest else "idle")
                    )
                    self._s.next_attempt_at = earliest
                return (earliest - now) if earliest is not None else HEARTBEAT_S
            self._process(item, token, None, time.monotonic(), 0, None)
        return 0.0

    # ------------------------------------------------------------------ one bundle

    def _process(
        self,
        item: Item,
        token: str,
        summary: DrainSummary | None,
        t0: float,
        total: int,
        progress: Callable[[Progress], None] | None,
    ) -> Outcome | None:
        """Claim, upload and file one bundle; returns the outcome (None when not claimed)."""
        claimed = self._claim(item)
        if claimed is None:
            return None
        with self._lock:
            self._s.activity = "uploading"
            self._s.current_bundle = claimed.bundle_id
            self._s.next_attempt_at = None
        base_sent = summary.bytes_sent if summary else 0
        done_count = (summary.uploaded + summary.failed) if summary else 0

        def on_chunk(sent_now: int) -> None:
            self._progress_mono = time.monotonic()
            if progress is not None:
                progress(
                    Progress(
                        claimed.bundle_id,
                        "sending",
                        done_count,
                        total,
                        base_sent + sent_now,
                        time.monotonic() - t0,
                        claimed.size,
                    )
                )

        self._in_request = True
        try:
            att = self._put(claimed, token, on_chunk)
        except Aborted:
            self._safe(lambda: self.spool.release(claimed, self._clock(), "aborted: stopping"))
            self._unclaim_ahead()
            with self._lock:
                self._s.current_bundle = ""
            return None
        finally:
            self._progress_mono = time.monotonic()
            self._in_request = False
        event = self._file(claimed, att)
        if att.outcome not in (Outcome.DONE, Outcome.REJECTED):
            self._unclaim_ahead()  # the queue is held: the next bundle waits in new/
        if summary is not None:
            summary.bytes_sent += att.bytes_sent
            if att.outcome is Outcome.DONE:
                summary.uploaded += 1
            elif att.outcome is Outcome.REJECTED:
                summary.failed += 1
                summary.last_error = att.error
            else:
                summary.deferred += 1
                summary.last_error = att.error
            if progress is not None:
                progress(
                    Progress(
                        claimed.bundle_id,
                        event,
                        summary.uploaded + summary.failed,
                        total,
                        summary.bytes_sent,
                        time.monotonic() - t0,
                        claimed.size,
                        att.error,
                    )
                )
        return att.outcome

    # ------------------------------------------------------------------ claim ahead

    def _claim(self, item: Item) -> Item | None:
        """The bundle claimed ahead for this item, else claim it now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead[0].bundle_id == item.bundle_id:
                return ahead[0]
            self._safe(lambda: self.spool.unclaim(ahead[0]))
        return self.spool.claim(item)

    def _claim_ahead(self) -> None:
        """While the worker sends a bundle: claim (check) the next due one and hash it.

        The spool's integrity check and the digest are the parent's share of
        an upload; doing them for bundle N+1 while the child sends bundle N
        keeps both processes busy. A bundle queued meanwhile (wake) makes
        `_next_due` give it back and choose afresh, so critical still goes
        first. Whatever ends the drain early gives it back too (a crash
        leaves it in cur/, which start-up returns to new/).
        """
        if self._ahead is not None or self._stop.is_set():
            return
        try:
            item, _ = self._next_due(self._clock())
            if item is None:
                return
            claimed = self.spool.claim(item)
            if claimed is None:
                return
            self._ahead = (claimed, item)
            self._ahead_digest = (claimed.bundle_id, *file_digest(claimed.path))
        except OSError as e:  # the bundle is taken again the normal way, which reports it
            log.warning("upload_claim_ahead_failed", error=str(e))

    def _unclaim_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        self._ahead_digest = None
        if ahead is not None:
            self._safe(lambda: self.spool.unclaim(ahead[0]))
            self._due_stale = True

    def _safe(self, op: Callable[[], object]) -> None:
        """A spool move that may race an operator or a recovering process: log, never raise."""
        try:
            op()
        except OSError as e:
            log.warning("upload_spool_move_failed", error=str(e))

    def _file(self, item: Item, att: Attempt) -> str:
        """Move the bundle according to the attempt's outcome; update state, log, conditions."""
        now = self._clock()
        bid = item.bundle_id
        up = self.up
        if att.outcome is Outcome.DONE:
            self._safe(lambda: self.spool.ack(item))
            with self._lock:
                self._failures = 0
                self._s.hold_until = 0.0
                self._s.current_bundle = ""
                self._s.last_success_at = now
                self._s.last_success_bundle = bid
                self._s.uploaded_total += 1
                self._s.bytes_total += att.bytes_sent
                was_paused = self._s.paused_auth
                self._s.paused_auth = False
            log.info(
                "upload_ok",
                bundle_id=bid,
                status=att.status,
                size_bytes=att.bytes_sent,
                elapsed_s=round(att.elapsed_s, 3),
            )
            if was_paused:
                self._condition(False, "uploads accepted again")
            return "done"
        if att.outcome is Outcome.REJECTED:
            reason = att.error or f"HTTP {att.status}"
            self._safe(lambda: self.spool.fail(item, reason))
            with self._lock:
                self._failures = 0
                self._s.current_bundle = ""
                self._s.failed_total += 1
                self._record_failure(now, bid, reason)
            log.error("upload_rejected", bundle_id=bid, status=att.status, reason=reason)
            return "rejected"
        # retriable: pick the bundle's next_at and the queue's hold
        prev_attempts = self.spool.retry_state(bid).attempts
        with self._lock:
            self._failures += 1
            failures = self._failures
        if att.outcome is Outcome.AUTH:
            item_delay = queue_delay = up.backoff_cap_s
        elif att.outcome is Outcome.WAIT:
            # as told, but never a hot loop on "Retry-After: 0"
            item_delay = queue_delay = max(att.retry_after_s or 0.0, min(1.0, up.backoff_base_s))
        else:
            queue_delay = backoff_delay(
                failures - 1, up.backoff_base_s, up.backoff_cap_s, self._rng
            )
            item_delay = max(
                queue_delay,
                backoff_delay(
                    max(prev_attempts, failures - 1),
                    up.backoff_base_s,
                    up.backoff_cap_s,
                    self._rng,
                ),
            )
        reason = att.error or f"HTTP {att.status}"
        self._safe(lambda: self.spool.release(item, now + item_delay, reason))
        with self._lock:
            self._s.current_bundle = ""
            self._s.hold_until = now + queue_delay
            self._s.next_attempt_at = now + queue_delay
            self._record_failure(now, bid, reason)
            newly_paused = att.outcome is Outcome.AUTH and not self._s.paused_auth
            if att.outcome is Outcome.AUTH:
                self._s.paused_auth = True
        if att.outcome is Outcome.AUTH:
            log.error(
                "upload_auth_failed",
                bundle_id=bid,
                status=att.status,
                retry_in_s=round(queue_delay, 1),
            )
            if newly_paused:
                self._condition(
                    True, f"collector refused the device credentials (HTTP {att.status})"
                )
        else:
            log.warning(
                "upload_retry",
                bundle_id=bid,
                status=att.status,
                error=reason,
                attempt=prev_attempts + 1,
                retry_in_s=round(queue_delay, 2),
                bundle_retry_in_s=round(item_delay, 2),
            )
        return "deferred"

    def _record_failure(self, now: float, bid: str, reason: str) -> None:
        self._s.last_failure_at = now
        self._s.last_failure_reason = reason
        self._s.last_failure_bundle = bid

    def _condition(self, bad: bool, summary: str) -> None:
        if self._on_condition is None:
            return
        try:
            self._on_condition(AUTH_CONDITION, bad, summary)
        except Exception as e:
            log.warning("upload_condition_callback_failed", error=str(e))

    # ------------------------------------------------------------------ HTTP

    def _tls(self) -> TlsSettings:
        up = self.up
        if not up.verify_tls and not self._warned_unverified:
            self._warned_unverified = True
            log.warning("upload_tls_unverified", endpoint=up.endpoint)
        return tls_settings(up)

    def _close_worker(self) -> None:
        try:
            self._transport.close()
        except Exception as e:
            log.debug("upload_worker_close_failed", error=str(e))

    def _put(self, item: Item, token: str, on_chunk: Callable[[int], None]) -> Attempt:
        """One PUT of one claimed bundle (in the upload worker); never raises for transport or HTTP trouble."""
        t0 = time.monotonic()
        known, self._ahead_digest = self._ahead_digest, None
        try:
            digest, size = (
                known[1:] if known and known[0] == item.bundle_id else file_digest(item.path)
            )
        except OSError as e:
            return Attempt(Outcome.RETRY, error=f"cannot read bundle: {e.strerror or e}")
        headers = upload_headers(item.bundle_id, digest, self.device_id, token)
        with self._lock:
            reset = self._reset_session
            self._reset_session = False
        req = PutRequest(
            url=bundle_url(self.up.endpoint, item.bundle_id),
            path=str(item.path),
            size_bytes=size,
            headers=headers,
            connect_timeout_s=self.up.connect_timeout_s,
            read_timeout_s=self.up.read_timeout_s,
            rate_bytes_per_s=self.up.bandwidth_bytes_per_s,
            tls=self._tls(),
            fresh_session=reset,
        )
        reply = self._transport.put(req, on_chunk, self._stop, self._claim_ahead)
        elapsed = time.monotonic() - t0
        if reply.status is None:
            return Attempt(
                Outcome.RETRY,
                error=reply.error or "upload worker: no status",
                bytes_sent=reply.bytes_sent,
                elapsed_s=elapsed,
            )
        status = reply.status
        retry_after = parse_retry_after(reply.retry_after, self._clock())
        outcome = classify(status, retry_after, reply.body)
        error = ""
        if outcome is not Outcome.DONE:
            snippet = " ".join(reply.body.split())[:200]
            error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        return Attempt(
            outcome,
            status=status,
            error=error,
            retry_after_s=retry_after,
            bytes_sent=reply.bytes_sent,
            elapsed_s=elapsed,
        )

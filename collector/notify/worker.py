"""The delivery worker: sends what the outbox holds, in a thread of `collector serve`.

Every ``interval_s`` (`[collector.notify]`) a pass looks for the targets (a webhook, an
email recipient) with rows due and hands each one not already being served to a small
thread pool: targets are served independently, so a hook that is down or slow never
delays the others. Serving a target: `outbox.claim` a batch (a lease long enough for the
whole batch), send each row in order, `outbox.finish` each; after a failed attempt the
rest of the batch is released untouched (the target is tried again on a later pass,
one request per pass while it is down).

Every instance runs a worker against the same index; the claim's lease keeps one row to
one worker at a time. Stopping (`stop`) lets the sends in flight end (each is bounded by
its timeout) and releases the leases not used; a worker killed outright leaves leases
that expire after ``lease_s``, and its rows are sent by whoever runs next.

The contract is at-least-once with an id: a delivery recorded as delivered is never
sent again, but a crash between a receiver's 2xx and the record of it (or a send that
outlives its lease) sends the same delivery id again. Receivers dedupe by
``X-Posagent-Delivery``.

`run_once(now)` is one synchronous pass at a given time, for tests and tools.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from collector.config import NotifyConfig
from collector.notify import mail, outbox, webhook
from collector.notify.channels import Channels
from collector.notify.outbox import Claimed, Outcome, RetryPolicy
from collector.storage.base import BundleStore, StorageError
from collector.storage.sql import Database, database

log = structlog.get_logger(__name__)

PRUNE_EVERY_S = 3600.0


def policy_of(cfg: NotifyConfig) -> RetryPolicy:
    return RetryPolicy(cfg.backoff_base_s, cfg.backoff_max_s, cfg.max_attempts, cfg.max_age_s)


class DeliveryWorker:
    """Delivers the outbox rows of the configured channels (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        channels: Channels,
        cfg: NotifyConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        worker_id: str | None = None,
        threads: int = 8,
    ):
        self.db = db
        self.channels = channels
        self.cfg = cfg or NotifyConfig()
        self.policy = policy_of(self.cfg)
        self.clock = clock
        self.rng = rng or random.Random()
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._targets = channels.targets()
        self._stop = threading.Event()
        self._busy: set[tuple[str, str]] = set()
        self._busy_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(threads, len(self._targets))),
            thread_name_prefix="collector-notify-send",
        )
        self._thread = threading.Thread(target=self._loop, name="collector-notify", daemon=True)
        self._next_prune = 0.0
        self.attempts = 0  # attempts recorded by this worker

    def lease_s(self, target: tuple[str, str], n: int) -> float:
        """How long a batch of n rows of target may take (every send at its timeout)."""
        channel, name = target
        if channel == "webhook":
            hook = self.channels.hook(name)
            per = 2 * (hook.timeout_s if hook else 10.0) + 5
        else:
            per = 4 * (self.channels.mail.timeout_s if self.channels.mail else 30.0) + 5
        return 60.0 + n * per

    # ------------------------------------------------------------------ sending

    def _send(self, row: Claimed) -> Outcome:
        try:
            if row.channel == "webhook":
                hook = self.channels.hook(row.target)
                if hook is not None:
                    return webhook.post(hook, row.delivery_id, row.event, row.body)
            elif self.channels.mail is not None:
                return mail.send(
                    self.channels.mail, row.target, row.delivery_id, row.event, row.body
                )
            return Outcome(False, None, f"{row.channel} {row.target} is not configured here")
        except Exception as e:  # a bug must cost one attempt, never the worker
            log.error("notify_send_crashed", delivery_id=row.delivery_id, error=repr(e))
            return Outcome(False, None, webhook.one_line(f"internal error: {e!r}"))

    def _serve(self, target: tuple[str, str], now: Callable[[], float]) -> int:
        """Claim one batch of target's due rows and send them; the attempts recorded."""
        channel, name = target
        done = 0
        try:
            rows = outbox.claim(
                self.db,
                channel,
                name,
                now=now(),
                worker=self.id,
                limit=self.cfg.batch_size,
                lease_s=self.lease_s(target, self.cfg.batch_size),
            )
            for i, row in enumerate(rows):
                if self._stop.is_set():
                    outbox.release(self.db, self.id, [r.id for r in rows[i:]])
                    break
                started = now()
                outcome = self._send(row)
                status = outbox.finish(
                    self.db,
                    row,
                    outcome,
                    started_at=started,
                    now=now(),
                    worker=self.id,
                    policy=self.policy,
                    rng=self.rng,
                )
                done += status is not None
                if status is None:
                    log.warning("notify_lease_lost", delivery_id=row.delivery_id, target=name)
                elif status == "failed":
                    log.error(
                        "notify_delivery_failed",
                        channel=channel,
                        target=name,
                        delivery_id=row.delivery_id,
                        attempts=row.attempts + 1,
                        error=outcome.error,
                    )
                elif not outcome.ok:
                    log.warning(
                        "notify_attempt_failed",
                        channel=channel,
                        target=name,
                        delivery_id=row.delivery_id,
                        attempt=row.attempts + 1,
                        status_code=outcome.status_code,
                        error=outcome.error,
                    )
                if not outcome.ok:
                    outbox.release(self.db, self.id, [r.id for r in rows[i + 1 :]])
                    break
        except StorageError as e:
            log.error("notify_storage_failed", target=name, error=str(e))
        except Exception as e:  # never silent in a pool thread; the leases expire
            log.error("notify_serve_crashed", target=name, error=repr(e))
        finally:
            with self._busy_lock:
                self._busy.discard(target)
                self.attempts += done
        return done

    def _dispatch(self, now: Callable[[], float]) -> list[Future[int]]:
        """Hand every configured target with rows due, not already being served, to the
        pool (rows of a target this config does not name wait for an instance that does)."""
        futures = []
        for target in outbox.due_targets(self.db, self._targets, now()):
            with self._busy_lock:
                if target in self._busy:
                    continue
                self._busy.add(target)
            futures.append(self._pool.submit(self._serve, target, now))
        return futures

    def run_once(self, now: float | None = None) -> int:
        """One synchronous pass at now (default: the clock); the attempts recorded."""
        at = self.clock() if now is None else now
        return sum(f.result() for f in self._dispatch(lambda: at))

    # ------------------------------------------------------------------ the thread

    def start(self) -> DeliveryWorker:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch(self.clock)
                if self.clock() >= self._next_prune:
                    self._next_prune = self.clock() + PRUNE_EVERY_S
                    gone = outbox.prune(self.db, before=self.clock() - self.cfg.log_days * 86400.0)
                    if gone:
                        log.info("notify_log_pruned", rows=gone)
            except StorageError as e:
                log.error("notify_pass_failed", error=str(e))
            self._stop.wait(self.cfg.interval_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop passing, let the sends in flight end, release the leases not used."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            outbox.release(self.db, self.id)
        except StorageError as e:
            log.warning("notify_release_failed", error=str(e))


def start_delivery(
    store: BundleStore, channels: Channels, cfg: NotifyConfig
) -> DeliveryWorker | None:
    """`collector serve`'s delivery worker (none when no channel is configured or
    interval_s is 0)."""
    if channels.empty or cfg.interval_s <= 0:
        return None
    return DeliveryWorker(database(store), channels, cfg).start()

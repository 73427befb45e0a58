"""Notifications of incident events (issue 15 item 6): webhooks and email, through a
durable, transactional outbox in the index.

Events: ``incident.opened``, ``incident.reopened``, ``incident.escalated`` (a critical
incident open longer than the escalation time) and ``incident.resolved``.

Writing (the incident code, in the incident's own transaction)::

    with database(store).transaction() as tx:
        ...  # the incident change and its incident_events row
        notify.enqueue(tx, "incident.opened", payload, at=now)

`enqueue` writes one outbox row per webhook and email recipient whose ``events`` take the
event, with a fresh delivery id each, in tx: the change and its notifications commit or
roll back together (`outbox`). The payload is an `IncidentPayload`.

Sending: `worker.DeliveryWorker`, a thread of `collector serve` (`start_delivery`),
claims due rows (safe with any number of instances), POSTs them signed (`webhook`) or
mails them (`mail`), retries with exponential backoff and jitter up to
``max_attempts``/``max_age_s`` (then ``failed``, kept in the log). At least once, with an
id: receivers dedupe by the delivery id.

The body (webhook POST, and the source of the email)::

    {"schema": "posagent.notify/1", "event": "incident.opened",
     "delivery_id": "<uuid>", "at": "<RFC 3339>", "incident": {<IncidentPayload>}}

Reading: ``GET /v1/webhooks/deliveries?hook=NAME`` (or ``?email=ADDRESS``), admins only
(`api`): the delivery log, newest first, each with its attempts.

The channels come from the config (`channels.load_channels`); `create_app` installs the
process's `Notifier`, which the module-level `enqueue` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from collector.notify.channels import Channels, load_channels
from collector.notify.outbox import Event, IncidentPayload
from collector.notify.outbox import enqueue as _enqueue
from collector.storage.sql import Tx

__all__ = [
    "Channels",
    "Event",
    "IncidentPayload",
    "Notifier",
    "enqueue",
    "install",
    "installed",
    "load_channels",
]


class Notifier:
    """The configured channels, and enqueueing for them."""

    def __init__(self, channels: Channels, base_url: str = ""):
        self.channels = channels
        self.base_url = base_url.rstrip("/")  # what a payload's relative url is joined to

    def enqueue(self, tx: Tx, event: str, payload: Mapping[str, Any], *, at: float) -> int:
        """One outbox row per subscribed target, in tx; the rows written (0: none subscribed).

        A payload url starting with "/" is the collector's own page: base_url is put before
        it. ValueError for an unknown event or a payload that is not an `IncidentPayload`."""
        url = payload.get("url")
        if isinstance(url, str) and url.startswith("/"):
            payload = {**payload, "url": self.base_url + url}
        return _enqueue(tx, self.channels, event, payload, at=at)


_installed = Notifier(Channels())


def install(notifier: Notifier) -> None:
    """Make notifier the process's (`create_app` does, with the config's channels)."""
    global _installed
    _installed = notifier


def installed() -> Notifier:
    return _installed


def enqueue(tx: Tx, event: str, payload: Mapping[str, Any], *, at: float) -> int:
    """`Notifier.enqueue` of the process's notifier (no channel: writes nothing, 0)."""
    return _installed.enqueue(tx, event, payload, at=at)

"""Where the channel meets the rest of the collector: three functions to connect at merge.

- `_audit`: every operator or terminal action of the channel (enrollment tokens made and
  revoked, enrollments, commands queued and their results, token rotations, remote config
  changes). Logged with structlog today; its signature is `collector.audit.record`'s, so
  at merge its body becomes ``audit.record(db_or_tx, who, action, target, address, detail)``.
- `on_silent`: a device became silent (§5). Called in the transaction that records it;
  at merge it raises the fleet-side incident ``device.silent`` (a fleet Signal, kind
  fault) carrying the last summary.
- `on_back`: a silent device checked in again. Called in the transaction of that check-in;
  at merge it clears the incident with the outage's duration.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from typing import Any

import structlog

from collector.access import Principal
from collector.storage.sql import Database, Tx

log = structlog.get_logger("collector.channel")

SILENT_KEY = "device.silent"


def _audit(
    db_or_tx: Database | Tx,
    who: Principal | str,
    action: str,
    target: str,
    address: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One audit entry (actions ``enroll_token.create``, ``enroll_token.revoke``,
    ``device.enroll``, ``device.reenroll``, ``device.token_rotate``, ``command.queue``,
    ``command.result``, ``remote_config.set``, ``remote_config.unset``)."""
    actor = who.name if isinstance(who, Principal) else who
    log.info(
        "audit", actor=actor, action=action, target=target, address=address, **dict(detail or {})
    )


def on_silent(
    tx: Tx,
    device: str,
    *,
    site: str,
    tenant: str,
    last_seen: float,
    silent_at: float,
    summary: Mapping[str, Any] | None,
) -> None:
    """A device missed its check-ins: raise ``device.silent`` (at merge: the incidents engine)."""
    log.warning(
        "device_silent",
        key=SILENT_KEY,
        device=device,
        site=site,
        tenant=tenant,
        last_seen=last_seen,
        silent_at=silent_at,
        summary=dict(summary or {}),
    )


def on_back(
    tx: Tx,
    device: str,
    outage_s: float,
    *,
    site: str,
    tenant: str,
    back_at: float,
    rebooted: bool,
) -> None:
    """A silent device checked in again: clear ``device.silent`` with the outage's duration
    (rebooted: its boot id changed, so an unclean-shutdown bundle is likely on its way)."""
    log.info(
        "device_back",
        key=SILENT_KEY,
        device=device,
        site=site,
        tenant=tenant,
        outage_s=round(outage_s, 1),
        back_at=back_at,
        rebooted=rebooted,
    )


def cli_actor() -> str:
    """The actor of a command-line change, ``cli:<login name>`` (at merge:
    `collector.audit.cli_actor`)."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "?"
    return f"cli:{who}"[:100]

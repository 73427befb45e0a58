"""Where the channel meets the rest of the collector.

- `_audit`: every operator or terminal action of the channel (enrollment tokens made and
  revoked, enrollments, commands queued and their results, token rotations, remote config
  changes) in the audit log (`collector.audit.record`).
- `on_silent`: a device became silent (docs/CHANNEL.md §5). Called in the transaction that
  records it: the fleet-side incident ``device.silent`` is raised (a fleet `Signal` of
  kind fault through the incidents' grouping), carrying the last summary in its words.
- `on_back`: a silent device checked in again. Called in the transaction of that check-in:
  the incident clears, its episode lasting the outage.

The incidents' settings (`[collector.incidents]`) come from `configure`, called by
`collector.app.create_app`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from agent.bundle.trigger import TriggerKind
from collector import audit
from collector.incidents.grouping import Settings, Signal, apply
from collector.incidents.model import Source
from collector.storage.sql import Tx

log = structlog.get_logger("collector.channel")

SILENT_KEY = "device.silent"


# every operator or terminal action of the channel (``enroll_token.create``,
# ``enroll_token.revoke``, ``device.enroll``, ``device.reenroll``, ``device.token_rotate``,
# ``command.queue``, ``command.result``, ``remote_config.set``, ``remote_config.unset``)
_audit = audit.record


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
    """A device missed its check-ins: raise ``device.silent`` with its last summary."""
    log.warning("device_silent", device=device, site=site, last_seen=last_seen)
    text = f"{device} stopped checking in" + (f" ({_last(summary)})" if summary else "")
    signal = Signal(
        device=device,
        site=site,
        key=SILENT_KEY,
        kind=TriggerKind.FAULT,
        severity="critical",
        summary=text[:300],
        at=last_seen,
        seen_at=silent_at,
        source=Source.FLEET,
    )
    apply(tx, signal, _settings, silent_at)


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
    log.info("device_back", device=device, outage_s=round(outage_s, 1), rebooted=rebooted)
    signal = Signal(
        device=device,
        site=site,
        key=SILENT_KEY,
        kind=TriggerKind.CLEARED,
        severity="critical",
        summary=f"{device} checked in again after {outage_s / 60:.0f} min"
        + (" (it restarted)" if rebooted else ""),
        at=back_at,
        seen_at=back_at,
        source=Source.FLEET,
    )
    apply(tx, signal, _settings, back_at)


_settings = Settings()


def configure(settings: Settings) -> None:
    """The incidents' settings the silent signals are grouped with (`create_app`)."""
    global _settings
    _settings = settings


def _last(summary: Mapping[str, Any]) -> str:
    """The last summary in words: "last: battery 4 %, AC lost, link down"."""
    parts = []
    battery = summary.get("battery_pct")
    if isinstance(battery, int | float) and not isinstance(battery, bool):
        parts.append(f"battery {battery:g} %")
    ac = summary.get("ac_online")
    if ac is False:
        parts.append("AC lost")
    link = summary.get("link")
    if isinstance(link, str) and link:
        parts.append(f"link {link[:20]}")
    depth = summary.get("queue_depth")
    if isinstance(depth, int) and not isinstance(depth, bool) and depth:
        parts.append(f"{depth} bundles queued")
    return "last: " + ", ".join(parts) if parts else "no summary"


def cli_actor() -> str:
    """The actor of a command-line change (`collector.audit.cli_actor`)."""
    return audit.cli_actor()

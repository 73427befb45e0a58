"""Silent devices (docs/CHANNEL.md §5).

Each check-in sets the device's ``silent_deadline``: its time + ``[collector]
silent_after_checkins`` (default 3) × its interval (+ the long-poll's wait).
`sweep` finds the devices past their deadline and not yet silent, marks them
(``silent_since``), opens an outage row (``device_outages``: the last check-in's time
and summary) and calls `collector.channel.hooks.on_silent`, all in one transaction
under the lock ``channel:silent`` (several instances sweep; a device turns silent
once). A silent device's next check-in (`came_back`, in the check-in's transaction)
closes its outage with ``outage_s`` (first check-in after − last check-in before) and
calls `on_back`.

`SilentWorker` sweeps every ``[collector] silent_check_interval_s`` (default 10 s) in
a thread of `collector serve`; the tests drive the clock through ``now``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.core.timefmt import rfc3339
from collector.channel.hooks import on_back, on_silent
from collector.storage.base import StorageError
from collector.storage.sql import Database, Tx

log = structlog.get_logger(__name__)

BATCH = 500
LOCK = "channel:silent"


def _summary(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        v = json.loads(text)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def sweep(db: Database, now: float, *, limit: int = BATCH) -> list[str]:
    """Mark the devices past their deadline silent (at most limit); their ids."""
    with db.transaction() as tx:
        tx.lock(LOCK)
        rows = tx.all(
            "SELECT id, site, tenant, last_seen, summary FROM devices "
            "WHERE silent_since IS NULL AND silent_deadline IS NOT NULL AND silent_deadline < ? "
            "ORDER BY silent_deadline LIMIT ?",
            (now, limit),
        )
        out = []
        for dev, site, tenant, last_seen, summary in rows:
            changed = tx.execute(
                "UPDATE devices SET silent_since = ? WHERE id = ? AND silent_since IS NULL "
                "AND silent_deadline < ?",
                (now, dev, now),
            )
            if changed != 1:
                continue
            tx.execute(
                "INSERT INTO device_outages (device, site, last_seen, silent_at, last_summary) "
                "VALUES (?, ?, ?, ?, ?)",
                (dev, site, last_seen, now, summary),
            )
            on_silent(
                tx,
                str(dev),
                site=str(site),
                tenant=str(tenant),
                last_seen=float(last_seen),
                silent_at=now,
                summary=_summary(summary),
            )
            out.append(str(dev))
    return out


def came_back(
    tx: Tx, device: str, *, site: str, tenant: str, now: float, rebooted: bool
) -> float | None:
    """Close the device's open outage (a check-in from a silent device); its duration."""
    row = tx.one(
        "SELECT id, last_seen FROM device_outages WHERE device = ? AND back_at IS NULL "
        "ORDER BY silent_at DESC LIMIT 1",
        (device,),
    )
    if row is None:
        return None
    outage_s = max(0.0, now - float(row[1]))
    tx.execute(
        "UPDATE device_outages SET back_at = ?, outage_s = ?, rebooted = ? WHERE id = ?",
        (now, outage_s, rebooted, row[0]),
    )
    on_back(tx, device, outage_s, site=site, tenant=tenant, back_at=now, rebooted=rebooted)
    return outage_s


@dataclass(frozen=True)
class Outage:
    device: str
    last_seen: float
    silent_at: float
    last_summary: dict[str, Any] | None
    back_at: float | None
    outage_s: float | None
    rebooted: bool | None

    def to_json(self) -> dict[str, Any]:
        return {
            "last_seen": rfc3339(self.last_seen),
            "silent_at": rfc3339(self.silent_at),
            "last_summary": self.last_summary,
            "back_at": None if self.back_at is None else rfc3339(self.back_at),
            "outage_s": self.outage_s,
            "rebooted": self.rebooted,
        }


def outages(tx: Tx, device: str, limit: int = 20) -> list[Outage]:
    """The device's silences, newest first."""
    rows = tx.all(
        "SELECT device, last_seen, silent_at, last_summary, back_at, outage_s, rebooted "
        "FROM device_outages WHERE device = ? ORDER BY silent_at DESC LIMIT ?",
        (device, limit),
    )
    return [
        Outage(
            str(r[0]),
            float(r[1]),
            float(r[2]),
            _summary(r[3]),
            None if r[4] is None else float(r[4]),
            None if r[5] is None else float(r[5]),
            None if r[6] is None else bool(r[6]),
        )
        for r in rows
    ]


class SilentWorker:
    """`sweep` every interval_s in a thread until `stop` (errors logged, never raised)."""

    def __init__(self, db: Database, interval_s: float, clock: Callable[[], float] = time.time):
        self.db = db
        self.interval_s = interval_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector-silent", daemon=True)

    def start(self) -> SilentWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                while len(sweep(self.db, self.clock())) == BATCH and not self._stop.is_set():
                    pass
            except StorageError as e:
                log.error("silent_sweep_failed", error=str(e))

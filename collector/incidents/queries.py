"""What the read side asks of the incidents: lists, one incident with its evidence, the
fleet's faults over a window and the home page's figures, each narrowed to the sites the
caller may see before counting or paging (never after).

Every function takes an open transaction (`collector.storage.sql.Tx`) and the site
restriction of the principal (`Query.sites`: None is every site).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.incidents import events
from collector.incidents.grouping import get
from collector.incidents.model import (
    SELECT_INCIDENT,
    Event,
    EventKind,
    GroupedBundle,
    Incident,
    IncidentFilter,
)
from collector.storage.base import COLUMNS, BundleRecord
from collector.storage.sql import Tx

UNRESOLVED = "status IN ('open', 'acknowledged')"
MAX_BUNDLES_SHOWN = 200
MAX_EVENTS_SHOWN = 300
MAX_NOTES_SHOWN = 1000
SEVERITY_OF_RANK = {2: "critical", 1: "error", 0: "warning"}


def _sites(sites: frozenset[str] | None) -> tuple[list[str], list[Any]]:
    if sites is None:
        return [], []
    if not sites:
        return ["1 = 0"], []
    allowed = sorted(sites)
    return [f"site IN ({', '.join('?' for _ in allowed)})"], list(allowed)


def where(f: IncidentFilter) -> tuple[str, list[Any]]:
    """The WHERE of a list (with ``?`` placeholders) and its values."""
    q = f.query
    clauses, params = _sites(q.sites)
    for column, value in (
        ("device", q.device),
        ("site", q.site),
        ("fault_key", q.fault),
        ("severity", q.severity),
    ):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if f.status == "unresolved":
        clauses.append(UNRESOLVED)
    elif f.status:
        clauses.append("status = ?")
        params.append(f.status)
    if f.assignee is not None:
        clauses.append("assignee = ?")
        params.append(f.assignee)
    if q.since is not None:
        clauses.append("last_at >= ?")
        params.append(q.since)
    if q.until is not None:
        clauses.append("raised_at <= ?")
        params.append(q.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def page(tx: Tx, f: IncidentFilter) -> tuple[list[Incident], int]:
    """One page of matching incidents, newest activity first, and how many match."""
    w, params = where(f)
    rows = tx.all(
        f"{SELECT_INCIDENT}{w} ORDER BY last_at DESC, id DESC LIMIT ? OFFSET ?",
        [*params, f.query.limit, f.query.offset],
    )
    total = tx.one(f"SELECT COUNT(*) FROM incidents{w}", params)
    return [Incident.from_row(r) for r in rows], int(total[0]) if total else 0


def visible(tx: Tx, incident_id: int, sites: frozenset[str] | None) -> Incident | None:
    """The incident when it exists and its site is in reach; else None (answered 404)."""
    inc = get(tx, incident_id)
    if inc is None or (sites is not None and inc.site not in sites):
        return None
    return inc


@dataclass(frozen=True)
class Detail:
    """One incident with its evidence and history (each list bounded, newest kept)."""

    incident: Incident
    bundles: list[GroupedBundle]
    bundle_total: int
    notes: list[Event]
    events: list[Event]
    event_total: int


def grouped_bundles(
    tx: Tx, incident_id: int, sites: frozenset[str] | None, limit: int = MAX_BUNDLES_SHOWN
) -> tuple[list[GroupedBundle], int]:
    """The incident's bundles, newest first (the record when the index still has it and it
    is in reach), and how many it groups."""
    cols = ", ".join(f"b.{c}" for c in COLUMNS)
    rows = tx.all(
        f"SELECT ib.bundle_id, ib.trigger_kind, ib.at, {cols} FROM incident_bundles ib "
        "LEFT JOIN bundles b ON b.bundle_id = ib.bundle_id WHERE ib.incident_id = ? "
        "ORDER BY ib.at DESC, ib.bundle_id DESC LIMIT ?",
        (incident_id, limit),
    )
    out = []
    for r in rows:
        rec = None
        if r[3] is not None:
            d = dict(zip(COLUMNS, r[3:], strict=True))
            d["signature_checked"] = bool(d["signature_checked"])
            rec = BundleRecord(**d)
            if sites is not None and rec.site not in sites:
                continue
        out.append(GroupedBundle(str(r[0]), str(r[1]), float(r[2]), rec))
    total = tx.one("SELECT COUNT(*) FROM incident_bundles WHERE incident_id = ?", (incident_id,))
    return out, int(total[0]) if total else 0


def detail(
    tx: Tx,
    incident_id: int,
    sites: frozenset[str] | None,
    *,
    bundles: int = MAX_BUNDLES_SHOWN,
    history: int = MAX_EVENTS_SHOWN,
) -> Detail | None:
    """The incident page's and API's content (the newest `bundles` bundles and `history`
    events); None when not in reach."""
    inc = visible(tx, incident_id, sites)
    if inc is None:
        return None
    found, bundle_total = grouped_bundles(tx, incident_id, sites, bundles)
    notes = events.of_incident(tx, incident_id, kinds=(EventKind.NOTE,), limit=MAX_NOTES_SHOWN)
    evs = events.of_incident(tx, incident_id, limit=history)
    return Detail(inc, found, bundle_total, notes, evs, events.count(tx, incident_id))


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class FaultLine:
    """One fault key over a window: "printer.paper_end at 37 terminals in 5 sites"."""

    fault_key: str
    incidents: int
    terminals: int
    sites: int
    severity: str  # the worst of its incidents
    raised_now: int  # of its incidents, those still raised

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault_key": self.fault_key,
            "incidents": self.incidents,
            "terminals": self.terminals,
            "sites": self.sites,
            "severity": self.severity,
            "raised_now": self.raised_now,
        }


def fleet_faults(
    tx: Tx, since: float, sites: frozenset[str] | None, limit: int = 50
) -> list[FaultLine]:
    """Per fault key, the incidents active since `since`, their terminals and sites."""
    clauses, params = _sites(sites)
    clauses.append("last_at >= ?")
    params.append(since)
    # grouped by an expression (fault_key || ''), not the column: SQLite would otherwise
    # walk the whole fault_key index to skip a sort, where the window's range of the
    # covering index incidents_window is 6x faster at 50,000 incidents
    rows = tx.all(
        "SELECT fault_key || '' AS k, COUNT(*), COUNT(DISTINCT device), "
        "COUNT(DISTINCT NULLIF(site, '')), MAX(sev_rank), SUM(active) FROM incidents "
        f"WHERE {' AND '.join(clauses)} GROUP BY k ORDER BY COUNT(*) DESC, k LIMIT ?",
        [*params, limit],
    )
    return [
        FaultLine(
            str(k),
            int(n),
            int(t),
            int(s),
            SEVERITY_OF_RANK.get(int(r), "info"),
            int(a or 0),
        )
        for k, n, t, s, r, a in rows
    ]


@dataclass(frozen=True)
class Trouble:
    """A site or terminal with unresolved incidents."""

    name: str  # the site, or the device
    site: str  # the device's site (a site's own name for a site)
    incidents: int
    raised_now: int
    terminals: int
    severity: str
    last_at: float
    faults: list[str] = field(default_factory=list)  # a terminal's unresolved fault keys


@dataclass(frozen=True)
class Home:
    """The home page's figures."""

    unresolved: dict[str, dict[str, int]]  # severity -> {"open", "acknowledged", "raised"}
    sites: list[Trouble]
    terminals: list[Trouble]
    sites_total: int
    terminals_total: int
    week: list[FaultLine]
    month: list[FaultLine]


def home(
    tx: Tx,
    now: float,
    sites: frozenset[str] | None,
    week: list[FaultLine],
    month: list[FaultLine],
    limit: int = 20,
) -> Home:
    """Unresolved incidents by severity, the sites and terminals that have them (the worst
    first), the top fault keys over 7 and 30 days (`fleet_faults`, given: they are kept a
    while). The unresolved incidents are read once and summed here: one pass over the
    status index instead of one per figure."""
    clauses, params = _sites(sites)
    w = " WHERE " + " AND ".join([UNRESOLVED, *clauses])
    unresolved: dict[str, dict[str, int]] = {}
    by_site: dict[str, dict[str, Any]] = {}
    by_dev: dict[str, dict[str, Any]] = {}
    for sev, status, active, site, dev, key, rank, last in tx.all(
        "SELECT severity, status, active, site, device, fault_key, sev_rank, last_at "
        f"FROM incidents{w} ORDER BY sev_rank DESC, last_at DESC",
        params,
    ):
        d = unresolved.setdefault(str(sev), {"open": 0, "acknowledged": 0, "raised": 0})
        d[str(status)] += 1
        d["raised"] += int(active)
        for table, name in ((by_site, str(site)), (by_dev, str(dev))):
            t = table.get(name)
            if t is None:  # rows come worst first: the first is the worst and newest
                t = table[name] = {
                    "n": 0,
                    "raised": 0,
                    "rank": int(rank),
                    "last": float(last),
                    "site": str(site),
                    "devices": set(),
                    "faults": [],
                }
            t["n"] += 1
            t["raised"] += int(active)
            t["last"] = max(t["last"], float(last))
            t["devices"].add(str(dev))
            if str(key) not in t["faults"] and len(t["faults"]) < 5:
                t["faults"].append(str(key))

    def worst(table: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        return sorted(
            table.items(), key=lambda kv: (-kv[1]["rank"], -kv[1]["raised"], -kv[1]["n"], kv[0])
        )[:limit]

    return Home(
        unresolved=unresolved,
        sites=[
            Trouble(s, s, t["n"], t["raised"], len(t["devices"]), _sev(t["rank"]), t["last"])
            for s, t in worst(by_site)
        ],
        terminals=[
            Trouble(d, t["site"], t["n"], t["raised"], 1, _sev(t["rank"]), t["last"], t["faults"])
            for d, t in worst(by_dev)
        ],
        sites_total=len(by_site),
        terminals_total=len(by_dev),
        week=week[:10],
        month=month[:10],
    )


def _sev(rank: Any) -> str:
    return SEVERITY_OF_RANK.get(int(rank), "info")

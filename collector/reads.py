"""What the read side's handlers share: the time and filter parameters of a list, and a
bundle's index row as JSON (`collector.app` for bundles, `collector.incidents` for
incidents)."""

from __future__ import annotations

from typing import Any

from agent.core.timefmt import rfc3339
from collector import pages
from collector.i18n import N_
from collector.storage import BundleRecord, Query
from collector.timeparse import BadQuery, parse_time

__all__ = ["BadQuery", "parse_time", "query_from", "record_json"]

MAX_LIST_LIMIT = 500


def record_json(r: BundleRecord) -> dict[str, Any]:
    """A record for the JSON API: times in RFC 3339, links to the bundle's endpoints."""
    d = r.to_dict()
    # None for a time no terminal can have made (a row stored before ingest checked it)
    d["created_at"] = rfc3339(r.created_at) if pages.shown_time(r.created_at) != "-" else None
    d["received_at"] = rfc3339(r.received_at) if pages.shown_time(r.received_at) != "-" else None
    base = f"/v1/bundles/{r.bundle_id}"
    d["links"] = {
        "manifest": base,
        "download": f"{base}/download",
        "page": f"/bundles/{r.bundle_id}",
    }
    return d


def query_from(params: dict[str, str]) -> Query:
    def number(name: str, default: int, lo: int, hi: int) -> int:
        raw = params.get(name, "")
        if not raw:
            return default
        if not (raw.isascii() and raw.isdigit()):
            raise BadQuery(N_("{name} must be a non-negative integer"), name=name)
        return max(lo, min(hi, int(raw)))

    sev = params.get("severity", "")
    if sev and sev not in pages.SEVERITIES:
        raise BadQuery(N_("severity must be one of {values}"), values=", ".join(pages.SEVERITIES))
    return Query(
        device=params.get("device", "").strip(),
        site=params.get("site", "").strip(),
        fault=params.get("fault", "").strip(),
        severity=sev,
        since=parse_time(params.get("since", "")),
        until=parse_time(params.get("until", "")),
        limit=number("limit", 50, 1, MAX_LIST_LIMIT),
        offset=number("offset", 0, 0, 10**9),
    )

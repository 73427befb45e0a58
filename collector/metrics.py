"""The collector's metrics, served at ``GET /metrics`` in the Prometheus text format.

One registry per application (several collectors in one test process never share
counters). Every instance counts its own traffic; Prometheus sums the instances.

| metric | type | labels |
|---|---|---|
| ``posagent_collector_ingest_total`` | counter | ``result``: created, already_stored, conflict, rejected |
| ``posagent_collector_ingest_rejects_total`` | counter | ``reason``: the reply's status (bad_request, unauthorized, forbidden, too_large, unsupported_media_type, invalid_bundle, rate_limited, unavailable, error) |
| ``posagent_collector_storage_seconds`` | histogram | ``engine`` (files, sqlite, s3, postgres), ``op`` (blob_put, index_add, ...) |
| ``posagent_collector_stored_bytes_total`` | counter | bytes of the bundles this instance stored (201) |
| ``posagent_collector_open_connections`` | gauge | HTTP connections open to this instance |
| ``posagent_collector_index_connections`` | gauge | connections the PostgreSQL pool holds (0 on SQLite) |
| ``posagent_collector_retention_deletions_total`` | counter | ``reason``: the rule that expired the bundle (default, kind:<kind>, severity:<severity>) |
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
RESULTS = ("created", "already_stored", "conflict", "rejected")
REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_bundle",
    429: "rate_limited",
    503: "unavailable",
}
STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The instruments of one collector application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingest = Counter(
            "posagent_collector_ingest", "Uploads by result", ["result"], registry=r
        )
        self.rejects = Counter(
            "posagent_collector_ingest_rejects",
            "Refused uploads by reason (the reply's status)",
            ["reason"],
            registry=r,
        )
        self.storage_seconds = Histogram(
            "posagent_collector_storage_seconds",
            "Latency of storage calls by engine and operation",
            ["engine", "op"],
            buckets=STORAGE_BUCKETS,
            registry=r,
        )
        self.stored_bytes = Counter(
            "posagent_collector_stored_bytes",
            "Bytes of the bundles this instance stored (201 created)",
            registry=r,
        )
        self.open_connections = Gauge(
            "posagent_collector_open_connections",
            "HTTP connections open to this instance",
            registry=r,
        )
        self.index_connections = Gauge(
            "posagent_collector_index_connections",
            "Connections the index's pool holds open (PostgreSQL; 0 on SQLite)",
            registry=r,
        )
        self.retention_deletions = Counter(
            "posagent_collector_retention_deletions",
            "Bundles deleted by this instance's retention runs, by the rule that expired them",
            ["reason"],
            registry=r,
        )
        for result in RESULTS:
            self.ingest.labels(result=result)

    def observe_storage(self, engine: str, op: str, seconds: float) -> None:
        self.storage_seconds.labels(engine=engine, op=op).observe(seconds)

    def count_ingest(self, status_code: int) -> None:
        """One finished upload by its HTTP status."""
        if status_code == 201:
            self.ingest.labels(result="created").inc()
        elif status_code == 200:
            self.ingest.labels(result="already_stored").inc()
        elif status_code == 409:
            self.ingest.labels(result="conflict").inc()
        else:
            self.ingest.labels(result="rejected").inc()
            self.rejects.labels(reason=REASONS.get(status_code, "error")).inc()

    def count_retention(self, reason: str, n: int) -> None:
        self.retention_deletions.labels(reason=reason).inc(n)

    def track_connections(self, count: Callable[[], int]) -> None:
        """Read the open HTTP connections from the server at each scrape."""
        self.open_connections.set_function(lambda: float(count()))

    def track_index_connections(self, count: Callable[[], int]) -> None:
        self.index_connections.set_function(lambda: float(count()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

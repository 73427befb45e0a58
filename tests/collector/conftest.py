"""The collector tests' real servers (tests/collector/servers.py) as fixtures."""

from tests.collector.servers import fleet, pg_url, postgres, s3_url, seaweed

__all__ = ["fleet", "pg_url", "postgres", "s3_url", "seaweed"]

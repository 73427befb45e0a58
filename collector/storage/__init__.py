"""Collector storage, one module per engine behind two protocols (`base`).

| config | engine | module |
|---|---|---|
| ``blob_url = ""`` | files under ``data_dir/bundles`` (one instance) | `files` |
| ``blob_url = "s3://bucket/prefix"`` | any S3-compatible server (boto3) | `s3` |
| ``index_url = ""`` | SQLite in ``data_dir/index.sqlite3`` (one instance) | `sqlite` |
| ``index_url = "postgresql://..."`` | PostgreSQL (psycopg 3 + pool) | `postgres` |

`open_store(cfg)` builds the pair the config names; `migrate_store(cfg)` applies the
index's missing schema versions (`posagent collector migrate`). The fleet engines are
imported only when configured, so the embedded collector runs without the fleet extra.
"""

from __future__ import annotations

from pathlib import Path

from collector.config import CollectorConfig
from collector.storage.base import (
    COLUMNS,
    BlobStore,
    BundleRecord,
    BundleStore,
    CommitResult,
    Index,
    Limiter,
    Query,
    SchemaError,
    StorageError,
    StorageFull,
    os_error,
)
from collector.storage.files import FsBlobStore
from collector.storage.schema import LATEST
from collector.storage.sqlite import SqliteIndex

__all__ = [
    "COLUMNS",
    "LATEST",
    "BlobStore",
    "BundleRecord",
    "BundleStore",
    "CommitResult",
    "FsBlobStore",
    "Index",
    "Limiter",
    "Query",
    "SchemaError",
    "SqliteIndex",
    "StorageError",
    "StorageFull",
    "migrate_store",
    "open_default",
    "open_store",
    "os_error",
]

FLEET_HINT = "install the fleet extra (pip install 'posagent[fleet]')"


def open_default(data_dir: str | Path) -> BundleStore:
    """The embedded storage under data_dir: bundles/, incoming/, index.sqlite3."""
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    return BundleStore(
        FsBlobStore(root / "bundles"), SqliteIndex(root / "index.sqlite3"), root / "incoming"
    )


def _index(cfg: CollectorConfig) -> Index:
    if not cfg.index_url:
        return SqliteIndex(Path(cfg.data_dir) / "index.sqlite3")
    try:
        # lazy: psycopg is the fleet extra's; the embedded collector runs without it
        from collector.storage.postgres import PostgresIndex
    except ImportError as e:
        raise StorageError(f"index_url is PostgreSQL: {FLEET_HINT}: {e}") from e
    return PostgresIndex(cfg.index_url)


def _blobs(cfg: CollectorConfig) -> BlobStore:
    if not cfg.blob_url:
        return FsBlobStore(Path(cfg.data_dir) / "bundles")
    try:
        # lazy: boto3 is the fleet extra's; the embedded collector runs without it
        from collector.storage.s3 import S3BlobStore
    except ImportError as e:
        raise StorageError(f"blob_url is S3: {FLEET_HINT}: {e}") from e
    return S3BlobStore(cfg.blob_url, endpoint_url=cfg.s3_endpoint_url, region=cfg.s3_region)


def open_store(cfg: CollectorConfig) -> BundleStore:
    """The store the config names (embedded by default); StorageError / SchemaError."""
    root = Path(cfg.data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {root}: {e.strerror or e}") from e
    index = _index(cfg)
    try:
        blobs = _blobs(cfg)
    except BaseException:
        index.close()
        raise
    limiter = getattr(index, "limiter", None)
    return BundleStore(blobs, index, root / "incoming", limits=limiter)


def migrate_store(cfg: CollectorConfig) -> tuple[str, int, int]:
    """Apply the index's missing schema versions: (where, before, after)."""
    if not cfg.index_url:
        path = Path(cfg.data_dir) / "index.sqlite3"
        index = SqliteIndex(path, migrate=True)
        index.close()
        return str(path), *index.migrated
    try:
        from collector.storage.postgres import migrate, redact_url  # lazy: the fleet extra
    except ImportError as e:
        raise StorageError(f"index_url is PostgreSQL: {FLEET_HINT}: {e}") from e
    return redact_url(cfg.index_url), *migrate(cfg.index_url)

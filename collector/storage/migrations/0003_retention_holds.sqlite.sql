-- Legal holds (issue 14 item 4): a bundle, a device or a site kept from retention until
-- released; one row per (scope, value), retention skips every bundle a hold covers.
CREATE TABLE IF NOT EXISTS holds (
    scope TEXT NOT NULL CHECK (scope IN ('bundle', 'device', 'site')),
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, value)
);
-- Blobs whose index row retention deleted, until the blob is deleted too (a run killed
-- in between leaves the row here: the next run deletes the blob, reconcile never
-- re-indexes it).
CREATE TABLE IF NOT EXISTS retention_pending (
    bundle_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    deleted_at REAL NOT NULL,
    PRIMARY KEY (bundle_id, sha256)
);
-- Retention walks each (kind, severity) rule oldest first.
CREATE INDEX IF NOT EXISTS bundles_retention ON bundles (trigger_kind, severity, created_at, bundle_id);

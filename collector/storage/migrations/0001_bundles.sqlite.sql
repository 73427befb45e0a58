-- The index as it was before versioning (a store without schema_version is at 1).
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    fault_key TEXT NOT NULL,
    severity TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    summary TEXT NOT NULL,
    created_at REAL NOT NULL,
    received_at REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    screenshot TEXT NOT NULL,
    signature_checked INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bundles_created ON bundles (created_at DESC, bundle_id DESC);
CREATE INDEX IF NOT EXISTS bundles_device ON bundles (device, created_at DESC);
CREATE INDEX IF NOT EXISTS bundles_site ON bundles (site, created_at DESC);
CREATE INDEX IF NOT EXISTS bundles_fault ON bundles (fault_key, created_at DESC);
CREATE INDEX IF NOT EXISTS bundles_severity ON bundles (severity, created_at DESC);

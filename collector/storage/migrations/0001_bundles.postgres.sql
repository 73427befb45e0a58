-- One row per stored bundle; the primary key is what makes ingest idempotent across
-- instances (INSERT ... ON CONFLICT (bundle_id) DO NOTHING, then the digests compared).
CREATE TABLE bundles (
    bundle_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    fault_key TEXT NOT NULL,
    severity TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    summary TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    screenshot TEXT NOT NULL,
    signature_checked BOOLEAN NOT NULL
);
CREATE INDEX bundles_created ON bundles (created_at DESC, bundle_id DESC);
CREATE INDEX bundles_device ON bundles (device, created_at DESC);
CREATE INDEX bundles_site ON bundles (site, created_at DESC);
CREATE INDEX bundles_fault ON bundles (fault_key, created_at DESC);
CREATE INDEX bundles_severity ON bundles (severity, created_at DESC);

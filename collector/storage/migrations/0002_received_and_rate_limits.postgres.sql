-- The newest receipt (start-up reconcile) without a full scan.
CREATE INDEX bundles_received ON bundles (received_at);

-- Token buckets shared by every instance: one row per "scope:key", updated atomically
-- by one INSERT ... ON CONFLICT DO UPDATE (the row lock orders concurrent takes).
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    granted BOOLEAN NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX rate_buckets_updated ON rate_buckets (updated_at);

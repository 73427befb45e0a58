-- The newest receipt (start-up reconcile) without a full scan. The embedded engine
-- keeps its rate limits in memory: no table here.
CREATE INDEX IF NOT EXISTS bundles_received ON bundles (received_at);

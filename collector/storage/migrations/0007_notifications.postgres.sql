-- Notifications (issue 15 item 6): the transactional outbox of incident events, one row
-- per (event, webhook or email recipient), written in the incident's own transaction and
-- delivered by collector.notify.worker; delivered and failed rows stay as the delivery log.
CREATE TABLE notify_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL CHECK (channel IN ('webhook', 'email')),
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    ref TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    claimed_by TEXT,
    done_at DOUBLE PRECISION,
    last_status INTEGER,
    last_error TEXT NOT NULL DEFAULT ''
);
-- The worker's claim: the due rows of one target, oldest first.
CREATE INDEX notify_outbox_due ON notify_outbox (channel, target, next_at) WHERE status = 'pending';
-- The delivery log of one target, newest first; pruning by age.
CREATE INDEX notify_outbox_log ON notify_outbox (channel, target, id);
CREATE INDEX notify_outbox_done ON notify_outbox (done_at) WHERE status <> 'pending';
-- Every attempt of a delivery: when, how long, the HTTP or SMTP code, the error.
CREATE TABLE notify_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The two-way channel (issue 16, docs/CHANNEL.md): enrollment tokens, enrolled devices
-- with their last check-in, commands for them, remote config, outages of silent devices.
-- Enrollment tokens: stored hashed (token_hash), used at most uses_max times (0: no
-- limit) before expires_at; id is the short public name `enroll-token list` shows.
CREATE TABLE IF NOT EXISTS enroll_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL,
    tenant TEXT NOT NULL,
    uses_max INTEGER NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    created_by TEXT NOT NULL
);
-- One row per enrolled device: its credentials (the device token's hash; next_token_hash
-- while a rotation waits for the new token's first use), its Ed25519 public keys (PEM
-- blocks, the newest last), and what its last check-in said. silent_deadline: when the
-- device becomes silent without another check-in; silent_since: set while it is.
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    tenant TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    next_token_hash TEXT UNIQUE,
    pubkeys TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    enrollments INTEGER NOT NULL DEFAULT 1,
    enroll_token_id TEXT NOT NULL,
    last_seen REAL,
    interval_s INTEGER NOT NULL DEFAULT 300,
    summary TEXT,
    agent_version TEXT NOT NULL DEFAULT '',
    boot_id TEXT NOT NULL DEFAULT '',
    config_digest TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    silent_deadline REAL,
    silent_since REAL
);
CREATE INDEX IF NOT EXISTS devices_site ON devices (site, id);
CREATE INDEX IF NOT EXISTS devices_due ON devices (silent_deadline) WHERE silent_since IS NULL;
-- Commands for a device, signed when queued (envelope and signature as delivered, base64);
-- status: queued, delivered (sent at least once, no result yet), done, refused, failed.
CREATE TABLE IF NOT EXISTS device_commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    issued_by TEXT NOT NULL,
    envelope TEXT NOT NULL,
    signature TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'done', 'refused', 'failed')),
    deliveries INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    result_at REAL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS device_commands_device ON device_commands (device, issued_at);
CREATE INDEX IF NOT EXISTS device_commands_issued ON device_commands (issued_at);
-- Remote config: fleet-wide (site '') and per-site values of the safe keys (JSON values).
CREATE TABLE IF NOT EXISTS remote_config (
    site TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (site, key)
);
-- A device's silences: from the last check-in before it (last_seen) to the first after
-- (back_at), with the summary it last sent; back_at NULL while it lasts.
CREATE TABLE IF NOT EXISTS device_outages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    last_seen REAL NOT NULL,
    silent_at REAL NOT NULL,
    last_summary TEXT,
    back_at REAL,
    outage_s REAL,
    rebooted BOOLEAN
);
CREATE INDEX IF NOT EXISTS device_outages_device ON device_outages (device, silent_at);

-- People and tenants (issue 15 items 1-2): tenants own sites, users have a role and the
-- tenants they serve, sessions and personal API tokens are rows (every instance sees a
-- logout at once), failed logins are counted here (every instance counts together), and
-- the audit log is append-only. Flags are INTEGER 0/1 on both engines (one SQL text).
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE sites (
    site TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (name),
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX sites_tenant ON sites (tenant, site);
CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'support', 'merchant')),
    all_tenants INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT NOT NULL,
    must_change INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    password_changed_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE user_tenants (
    user_id BIGINT NOT NULL REFERENCES users (id),
    tenant TEXT NOT NULL REFERENCES tenants (name),
    PRIMARY KEY (user_id, tenant)
);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    csrf TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE TABLE api_tokens (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
CREATE TABLE login_failures (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    account TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX login_failures_account ON login_failures (account, at);
CREATE INDEX login_failures_address ON login_failures (address, at);
CREATE INDEX login_failures_at ON login_failures (at);
CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_log_at ON audit_log (at, id);
-- append-only: the engine refuses to change or delete an entry
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Incidents (issue 15 item 3, collector.incidents): bundles grouped by (device, fault key)
-- into episodes; fleet-side faults (no bundle) have source 'fleet'. The bundles stay the
-- record: an incident is derived from them and never deletes one.
CREATE TABLE incidents (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    fault_key TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('bundle', 'fleet')),
    severity TEXT NOT NULL,
    sev_rank INTEGER NOT NULL,
    summary TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    assignee TEXT NOT NULL,
    active INTEGER NOT NULL CHECK (active IN (0, 1)),
    raised_at DOUBLE PRECISION NOT NULL,
    episode_at DOUBLE PRECISION NOT NULL,
    cleared_at DOUBLE PRECISION,
    last_at DOUBLE PRECISION NOT NULL,
    duration_s DOUBLE PRECISION NOT NULL,
    repeats INTEGER NOT NULL,
    bundles BIGINT NOT NULL,
    open_since DOUBLE PRECISION NOT NULL,
    touched_at DOUBLE PRECISION NOT NULL,
    escalated_at DOUBLE PRECISION,
    resolved_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
-- grouping: the newest incident of a (device, fault key)
CREATE INDEX incidents_key ON incidents (device, fault_key, id DESC);
-- the list newest activity first, alone or by status, site, fault, device, assignee
CREATE INDEX incidents_last ON incidents (last_at DESC, id DESC);
CREATE INDEX incidents_status ON incidents (status, last_at DESC, id DESC);
CREATE INDEX incidents_site ON incidents (site, last_at DESC, id DESC);
CREATE INDEX incidents_fault ON incidents (fault_key, last_at DESC, id DESC);
CREATE INDEX incidents_device ON incidents (device, last_at DESC, id DESC);
CREATE INDEX incidents_assignee ON incidents (assignee, last_at DESC, id DESC);
-- the fleet's faults over a window (home page, /v1/fleet/faults): a range read of this
-- index alone
CREATE INDEX incidents_window ON incidents (last_at, fault_key, device, site, sev_rank, active);
-- Which incident groups a bundle: the primary key makes grouping idempotent (once each).
CREATE TABLE incident_bundles (
    bundle_id TEXT PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    trigger_kind TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX incident_bundles_incident ON incident_bundles (incident_id, at DESC, bundle_id DESC);
-- Every change of an incident, append-only (collector.incidents.events.append).
CREATE TABLE incident_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    kind TEXT NOT NULL CHECK (kind IN ('opened', 'reopened', 'cleared', 'acknowledged', 'resolved', 'escalated', 'assigned', 'note', 'bundle')),
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, kind, id);
-- The catch-up pass's position in the bundles (received_at, bundle_id).
CREATE TABLE incident_cursor (
    name TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    bundle_id TEXT NOT NULL
);

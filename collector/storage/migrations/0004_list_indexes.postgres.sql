-- The list's counts without scanning the index (issue 14: the list API and page at
-- 1,000,000 bundles within 50 ms). `bundle_counts` holds how many bundles each
-- (site, device, fault_key, severity) has, kept exact by statement triggers on `bundles`
-- in the same transaction as the rows; `count` and `counts` read it when the query has no
-- time filter (a time window is counted on `bundles`, over the window's rows only).
CREATE TABLE bundle_counts (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    fault_key TEXT NOT NULL,
    severity TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (site, device, fault_key, severity)
);
CREATE INDEX bundle_counts_device ON bundle_counts (device);
CREATE INDEX bundle_counts_fault ON bundle_counts (fault_key);

CREATE FUNCTION bundle_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bundle_counts AS c (site, device, fault_key, severity, n)
    SELECT site, device, fault_key, severity, count(*) FROM counted_new
    GROUP BY site, device, fault_key, severity ORDER BY site, device, fault_key, severity
    ON CONFLICT (site, device, fault_key, severity) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION bundle_counts_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bundle_counts AS c SET n = c.n - o.n
    FROM (SELECT site, device, fault_key, severity, count(*) AS n FROM counted_old
          GROUP BY site, device, fault_key, severity) AS o
    WHERE c.site = o.site AND c.device = o.device AND c.fault_key = o.fault_key
      AND c.severity = o.severity;
    RETURN NULL;
END $$;

CREATE FUNCTION bundle_counts_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bundle_counts AS c SET n = c.n - o.n
    FROM (SELECT site, device, fault_key, severity, count(*) AS n FROM counted_old
          GROUP BY site, device, fault_key, severity) AS o
    WHERE c.site = o.site AND c.device = o.device AND c.fault_key = o.fault_key
      AND c.severity = o.severity;
    INSERT INTO bundle_counts AS c (site, device, fault_key, severity, n)
    SELECT site, device, fault_key, severity, count(*) FROM counted_new
    GROUP BY site, device, fault_key, severity ORDER BY site, device, fault_key, severity
    ON CONFLICT (site, device, fault_key, severity) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER bundles_counted_insert AFTER INSERT ON bundles
    REFERENCING NEW TABLE AS counted_new FOR EACH STATEMENT
    EXECUTE FUNCTION bundle_counts_add();
CREATE TRIGGER bundles_counted_delete AFTER DELETE ON bundles
    REFERENCING OLD TABLE AS counted_old FOR EACH STATEMENT
    EXECUTE FUNCTION bundle_counts_remove();
CREATE TRIGGER bundles_counted_update AFTER UPDATE ON bundles
    REFERENCING OLD TABLE AS counted_old NEW TABLE AS counted_new FOR EACH STATEMENT
    EXECUTE FUNCTION bundle_counts_change();

INSERT INTO bundle_counts (site, device, fault_key, severity, n)
SELECT site, device, fault_key, severity, count(*) FROM bundles
GROUP BY site, device, fault_key, severity;

-- A time window's counts by fault read the created_at index alone (no heap visit per row).
DROP INDEX bundles_created;
CREATE INDEX bundles_created ON bundles (created_at DESC, bundle_id DESC) INCLUDE (fault_key);

-- The list's counts without scanning the index (issue 14: the list API and page at
-- 1,000,000 bundles within 50 ms). `bundle_counts` holds how many bundles each
-- (site, device, fault_key, severity) has, kept exact by triggers on `bundles` in the
-- same transaction as the rows; `count` and `counts` read it when the query has no time
-- filter (a time window is counted on `bundles`, over the window's rows only).
CREATE TABLE IF NOT EXISTS bundle_counts (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    fault_key TEXT NOT NULL,
    severity TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (site, device, fault_key, severity)
);
CREATE INDEX IF NOT EXISTS bundle_counts_device ON bundle_counts (device);
CREATE INDEX IF NOT EXISTS bundle_counts_fault ON bundle_counts (fault_key);

CREATE TRIGGER IF NOT EXISTS bundles_counted_insert AFTER INSERT ON bundles BEGIN
    INSERT INTO bundle_counts (site, device, fault_key, severity, n)
    VALUES (NEW.site, NEW.device, NEW.fault_key, NEW.severity, 1)
    ON CONFLICT (site, device, fault_key, severity) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS bundles_counted_delete AFTER DELETE ON bundles BEGIN
    UPDATE bundle_counts SET n = n - 1 WHERE site = OLD.site AND device = OLD.device
        AND fault_key = OLD.fault_key AND severity = OLD.severity;
END;
CREATE TRIGGER IF NOT EXISTS bundles_counted_update
AFTER UPDATE OF site, device, fault_key, severity ON bundles BEGIN
    UPDATE bundle_counts SET n = n - 1 WHERE site = OLD.site AND device = OLD.device
        AND fault_key = OLD.fault_key AND severity = OLD.severity;
    INSERT INTO bundle_counts (site, device, fault_key, severity, n)
    VALUES (NEW.site, NEW.device, NEW.fault_key, NEW.severity, 1)
    ON CONFLICT (site, device, fault_key, severity) DO UPDATE SET n = n + 1;
END;

DELETE FROM bundle_counts;
INSERT INTO bundle_counts (site, device, fault_key, severity, n)
SELECT site, device, fault_key, severity, count(*) FROM bundles
GROUP BY site, device, fault_key, severity;

-- Issue 18: load reports keep which version served the requests ('' for
-- the stable cluster, the canary's version otherwise), so a rollout can
-- compare the canary's failure rate with the stable version's. Failover
-- still sums a zone's versions.
ALTER TABLE load_reports ADD COLUMN version text NOT NULL DEFAULT '';
ALTER TABLE load_reports DROP CONSTRAINT load_reports_pkey;
ALTER TABLE load_reports ADD PRIMARY KEY (policy_name, zone, version, reporter, bucket);

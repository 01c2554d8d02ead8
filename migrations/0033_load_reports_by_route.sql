-- Issue 18, zone-by-zone rollouts: a route under a rollout has its own
-- clusters (`policy~route`, `policy@version~route`), so load reports keep
-- the route ('' for the policy's shared clusters) and a rollout's analysis
-- counts its route's traffic alone. Failover still sums a zone's rows.
ALTER TABLE load_reports ADD COLUMN route text NOT NULL DEFAULT '';
ALTER TABLE load_reports DROP CONSTRAINT load_reports_pkey;
ALTER TABLE load_reports ADD PRIMARY KEY (policy_name, zone, version, route, reporter, bucket);

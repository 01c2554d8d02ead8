-- Issue 17: endpoint health from the checkers.

-- Each checker's window per endpoint of the zone:
-- {"ip:port": {"samples": n, "failures": n, "failingRun": n}, ...}.
ALTER TABLE health_reports ADD COLUMN endpoints jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Endpoints the failover leader marked unhealthy ({"zone": ["ip:port", ...]}):
-- EDS serves them as UNHEALTHY. Decided once, by the leader, like weights.
CREATE TABLE endpoint_health (
    policy_name   text COLLATE "C" PRIMARY KEY REFERENCES policies (name) ON DELETE CASCADE,
    unhealthy     jsonb NOT NULL,
    decided_at    timestamptz NOT NULL,
    lease_token   bigint NOT NULL
);

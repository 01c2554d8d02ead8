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

-- A policy an xDS client refused inside a shared route configuration
-- (egress_<port>): left out of that route while the policy is at
-- resource_version, so the other policies on the port keep getting
-- updates. A new write of the policy (a new resource_version) tries it again.
CREATE TABLE xds_rejections (
    policy_name      text COLLATE "C" PRIMARY KEY REFERENCES policies (name) ON DELETE CASCADE,
    resource_version text NOT NULL,
    resource         text NOT NULL,
    node_id          text NOT NULL,
    message          text NOT NULL,
    at               timestamptz NOT NULL DEFAULT now()
);

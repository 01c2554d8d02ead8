-- Health from real traffic (issue 15): request and failure counts that
-- Envoys and proxyless gRPC clients report through LRS, per zone, summed
-- per xDS replica that received them and per one-second bucket. The
-- failover leader pools every replica's buckets over a policy's window.
-- No foreign key: rows of a deleted policy age out with the rest.
CREATE TABLE load_reports (
    policy_name  text COLLATE "C" NOT NULL,
    zone         text NOT NULL,
    reporter     text NOT NULL,
    bucket       timestamptz NOT NULL,
    requests     bigint NOT NULL,
    failures     bigint NOT NULL,
    PRIMARY KEY (policy_name, zone, reporter, bucket)
);
CREATE INDEX load_reports_bucket ON load_reports (bucket);

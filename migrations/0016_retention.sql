-- Retention (issue 16): old rows of events, audit_log, gitops_syncs and
-- expired workload_certs are pruned by age.
--
-- The audit log is also the watch's change log: how far it has been pruned
-- is kept here, so a watch resuming from a pruned version is told to start
-- again from a snapshot instead of silently missing changes.
CREATE TABLE log_compaction (
    id               smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    resource_version bigint NOT NULL DEFAULT 0
);
INSERT INTO log_compaction DEFAULT VALUES;

-- Pruning finds old rows by these.
CREATE INDEX gitops_syncs_finished_at ON gitops_syncs (finished_at);
CREATE INDEX workload_certs_not_after ON workload_certs (not_after);

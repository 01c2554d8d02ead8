-- Policies, their immutable revisions, and the audit log.
--
-- resource_version comes from one sequence shared by all policies, so it
-- is unique across the store and orders writes (like etcd's revision).

CREATE SEQUENCE resource_version_seq;

CREATE TABLE policies (
    -- "C" collation: names sort bytewise, the same on every database, so
    -- list pagination by name is stable whatever the cluster's locale.
    name             text COLLATE "C" PRIMARY KEY,
    host             text NOT NULL UNIQUE,
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb,
    spec             jsonb NOT NULL,
    resource_version bigint NOT NULL,
    generation       bigint NOT NULL,
    revision         bigint NOT NULL,
    source           text NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

CREATE INDEX policies_labels ON policies USING gin (labels jsonb_path_ops);

-- One row per write, never updated. Removed with the policy: the audit log
-- keeps the full before/after of every write, deletes included.
CREATE TABLE policy_revisions (
    policy_name      text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    revision         bigint NOT NULL,
    resource_version bigint NOT NULL,
    generation       bigint NOT NULL,
    labels           jsonb NOT NULL,
    spec             jsonb NOT NULL,
    source           text NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (policy_name, revision)
);

CREATE TABLE audit_log (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    actor            text NOT NULL,
    action           text NOT NULL,
    policy_name      text NOT NULL,
    resource_version bigint,
    before           jsonb,
    after            jsonb
);

CREATE INDEX audit_log_policy ON audit_log (policy_name, id);

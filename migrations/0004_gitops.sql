-- GitOps: policy repositories ("sources"), the record of every sync, and
-- which source owns which policy.

CREATE TABLE gitops_sources (
    name              text COLLATE "C" PRIMARY KEY,
    url               text NOT NULL,
    branch            text NOT NULL,
    path              text NOT NULL,
    interval_seconds  integer NOT NULL,
    prune             boolean NOT NULL,
    adopt             boolean NOT NULL,
    -- Where credentials live ({"env": ...} / {"file": ...}), never the
    -- credentials themselves.
    auth              jsonb,
    webhook_secret    jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- When a replica running the gitops role may next claim this source;
    -- a manual sync or webhook sets it to now().
    next_sync_at      timestamptz NOT NULL DEFAULT now(),
    -- Status, kept here so GET .../status is one row.
    last_fetched_commit text,
    last_fetched_at     timestamptz,
    last_applied_commit text,
    last_applied_at     timestamptz,
    last_sync_id        bigint
);

-- One row per sync attempt, with its plan; never updated.
CREATE TABLE gitops_syncs (
    id           bigserial PRIMARY KEY,
    source_name  text COLLATE "C" NOT NULL REFERENCES gitops_sources (name) ON DELETE CASCADE,
    trigger      text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    commit       text,
    outcome      text NOT NULL,
    plan         jsonb NOT NULL DEFAULT '{}'::jsonb,
    errors       jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX gitops_syncs_source ON gitops_syncs (source_name, id);

-- The source that owns a policy (NULL: managed through the API). Separate
-- from `source`, which says who wrote last: a forced API write changes
-- `source` but not the owner, so the next sync knows to restore it.
ALTER TABLE policies ADD COLUMN gitops_source text COLLATE "C";
CREATE INDEX policies_gitops_source ON policies (gitops_source) WHERE gitops_source IS NOT NULL;

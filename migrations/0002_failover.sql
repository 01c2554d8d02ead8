-- Health reports, failover decisions, overrides, drains, events and the
-- failover lease. Rows of a policy go with it.

-- What one health checker (a replica running the health role) saw of one
-- zone over the policy's window. Upserted every round; "fresh" by reported_at.
CREATE TABLE health_reports (
    policy_name   text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    zone          text NOT NULL,
    checker       text NOT NULL,
    samples       integer NOT NULL,
    failures      integer NOT NULL,
    last_error    text,
    reported_at   timestamptz NOT NULL,
    PRIMARY KEY (policy_name, zone, checker)
);

-- The leader's hysteresis state per zone, so a new leader continues it.
CREATE TABLE zone_states (
    policy_name   text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    zone          text NOT NULL,
    state         jsonb NOT NULL,
    PRIMARY KEY (policy_name, zone)
);

-- Decided once, by the leader; every replica's xDS reads them.
CREATE TABLE effective_weights (
    policy_name   text COLLATE "C" PRIMARY KEY REFERENCES policies (name) ON DELETE CASCADE,
    weights       jsonb NOT NULL,
    cause         text NOT NULL,
    reasons       jsonb NOT NULL DEFAULT '{}'::jsonb,
    decided_at    timestamptz NOT NULL,
    lease_token   bigint NOT NULL
);

CREATE TABLE overrides (
    policy_name   text COLLATE "C" PRIMARY KEY REFERENCES policies (name) ON DELETE CASCADE,
    weights       jsonb NOT NULL,
    reason        text NOT NULL,
    expires_at    timestamptz,
    actor         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE drains (
    policy_name   text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    zone          text NOT NULL,
    actor         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_name, zone)
);

-- Kept after a policy is deleted: the timeline of an incident outlives it.
CREATE TABLE events (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    policy_name   text,
    kind          text NOT NULL,
    severity      text NOT NULL,
    message       text NOT NULL,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_policy_at ON events (policy_name, at);
CREATE INDEX events_at ON events (at);

-- One row per lease. The token grows on every change of holder and fences
-- writes: a deposed leader's write carries a stale token and is refused.
CREATE TABLE leases (
    name          text PRIMARY KEY,
    holder        text NOT NULL,
    token         bigint NOT NULL,
    expires_at    timestamptz NOT NULL
);

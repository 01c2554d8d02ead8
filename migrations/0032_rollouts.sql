-- Issue 18: progressive delivery. Where each route's rollout is, as the
-- failover leader stores it after a step (meridian_rollout::Status, JSON),
-- fenced by its lease token like effective weights.
CREATE TABLE rollout_status (
    policy_name  text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    route        text COLLATE "C" NOT NULL,
    status       jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    lease_token  bigint NOT NULL,
    PRIMARY KEY (policy_name, route)
);

-- Operator actions (pause, resume, promote, abort) waiting for the
-- leader's next step, which consumes the oldest one per route in the same
-- transaction as the status it leads to.
CREATE TABLE rollout_commands (
    id           bigserial PRIMARY KEY,
    policy_name  text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    route        text COLLATE "C" NOT NULL,
    action       text NOT NULL,
    actor        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollout_commands_route ON rollout_commands (policy_name, route, id);

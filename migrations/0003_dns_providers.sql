-- DNS providers: where a zone's `dns.provider` publishes. The config holds
-- settings and *references* to credentials ({"env": NAME} or {"file": PATH}),
-- never the secrets themselves.
CREATE TABLE dns_providers (
    name        text COLLATE "C" PRIMARY KEY,
    kind        text NOT NULL,
    config      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per policy and provider: what the reconciler last did.
CREATE TABLE dns_status (
    policy_name    text COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    provider       text NOT NULL,
    state          text NOT NULL,          -- synced | pending | error
    last_change_at timestamptz,
    last_error     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_name, provider)
);

-- API tokens. Only a SHA-256 hash of each token is kept: the token itself is
-- shown once, when it is created.
CREATE TABLE api_tokens (
    name       text COLLATE "C" PRIMARY KEY,
    role       text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    hash       text NOT NULL UNIQUE,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_at ON audit_log (at);

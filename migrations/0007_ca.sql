-- The certificate authority: one row. Its key is sealed (AES-256-GCM) with
-- the master key from --ca-key-file / MERIDIAN_CA_KEY, which is never
-- stored here: a database dump alone cannot issue certificates.
CREATE TABLE ca (
    id               smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    trust_domain     text NOT NULL,
    -- generated (a root Meridian made) or provided (an operator's CA, e.g. an intermediate)
    source           text NOT NULL CHECK (source IN ('generated', 'provided')),
    cert_pem         text NOT NULL,
    key_sealed       bytea NOT NULL,
    chain_pem        text NOT NULL DEFAULT '',
    trust_bundle_pem text NOT NULL,
    -- Bumped by a forced rotation: every workload certificate issued under
    -- a lower number is replaced at once instead of at half life.
    rotation         bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Workload certificates, shared by replicas so that every replica serves a
-- node the same bytes, and a restart does not re-issue.
CREATE TABLE workload_certs (
    spiffe_id    text COLLATE "C" PRIMARY KEY,
    cert_pem     text NOT NULL,
    key_sealed   bytea NOT NULL,
    not_before   timestamptz NOT NULL,
    not_after    timestamptz NOT NULL,
    rotation     bigint NOT NULL,
    issued_at    timestamptz NOT NULL DEFAULT now()
);

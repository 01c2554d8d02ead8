-- DNS ownership (issue 15): which records this installation created, so it
-- changes and cleans up only those.

-- The installation's owner id, written into every ownership mark (like
-- external-dns's --txt-owner-id). One per database, so every replica of an
-- installation shares it and two installations sharing a DNS zone never
-- touch each other's records. Change it only with no records published.
CREATE TABLE dns_owner (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         text NOT NULL
);
INSERT INTO dns_owner (id)
VALUES ('meridian-' || substr(md5(random()::text || clock_timestamp()::text), 1, 12));

-- Every (provider, host) the leader has published to, written before the
-- first change is submitted and removed once the provider holds nothing of
-- ours there. Not tied to policies: when a policy is deleted, a zone moves
-- to another provider or a host changes, the row is what tells the leader
-- to clean up.
CREATE TABLE dns_published (
    provider     text NOT NULL,
    host         text NOT NULL,
    policy_name  text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, host)
);

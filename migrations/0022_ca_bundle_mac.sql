-- The CA's certificates and trust bundle, authenticated with a key derived
-- from the master key (HMAC-SHA256): whoever can write this table but does
-- not hold the master key cannot add a trusted root. NULL on rows stored
-- before this migration; Meridian seals those on its next start when they
-- hold only what it wrote itself (see services/xds-sync/src/ca.rs).
ALTER TABLE ca ADD COLUMN bundle_mac bytea;

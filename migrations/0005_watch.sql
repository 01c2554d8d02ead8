-- Watches read the change log by resource version (see store/src/watch.rs).
CREATE INDEX audit_log_resource_version ON audit_log (resource_version)
    WHERE resource_version IS NOT NULL;

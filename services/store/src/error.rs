/// What can go wrong in the store. Callers map these to HTTP or gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No policy has that name.
    #[error("policy {name:?} not found")]
    NotFound { name: String },
    /// No DNS provider has that name.
    #[error("DNS provider {name:?} not found")]
    ProviderNotFound { name: String },
    /// A DNS provider with that name exists already.
    #[error("a DNS provider named {name:?} already exists")]
    ProviderExists { name: String },
    /// An API token with that name exists already.
    #[error("a token named {name:?} already exists")]
    TokenExists { name: String },
    /// The token was revoked; revocation is for good.
    #[error("token {name:?} was revoked; import a new token to replace it")]
    TokenRevoked { name: String },
    /// No API token has that name.
    #[error("token {name:?} not found")]
    TokenNotFound { name: String },
    /// The policy has no such revision.
    #[error("policy {name:?} has no revision {revision}")]
    RevisionNotFound { name: String, revision: i64 },
    /// A policy with that name exists already.
    #[error("a policy named {name:?} already exists")]
    NameTaken { name: String },
    /// Another policy already serves that host.
    #[error("host {host:?} is already used by policy {owner:?}")]
    HostTaken { host: String, owner: String },
    /// The caller's expected resourceVersion is not the current one.
    #[error(
        "policy {name:?} is at resourceVersion {current}, not {expected}; read it again and retry"
    )]
    StaleVersion {
        name: String,
        expected: String,
        current: String,
    },
    /// The caller expected a policy to exist (If-Match) and there is none.
    #[error("policy {name:?} does not exist, so If-Match cannot match")]
    PreconditionOnMissing { name: String },
    /// A GitOps source owns the policy; only its syncs (or a forced write) change it.
    #[error("policy {name:?} is managed by GitOps source {owner:?}; change it in the repository, or pass force=true (the next sync restores the repository's version)")]
    OwnedByGitops { name: String, owner: String },
    /// No GitOps source has that name.
    #[error("GitOps source {name:?} not found")]
    SourceNotFound { name: String },
    /// A GitOps source with that name exists already.
    #[error("a GitOps source named {name:?} already exists")]
    SourceExists { name: String },
    /// This replica's failover lease expired or was taken over: it must stop deciding.
    #[error("the failover lease {lease:?} is no longer held with token {token}")]
    LeaseLost { lease: String, token: i64 },
    /// A traffic move would break one of the policy's guard rails (e.g.
    /// `minHealthyZones`); forcing it with a reason goes ahead, audited.
    #[error("refused by the guard rail {rule}: {message}")]
    GuardRail { rule: String, message: String },
    /// No CA is stored yet (no replica has started with `--ca-key-file`).
    #[error("no certificate authority is configured; start a replica with --ca-key-file")]
    NoCa,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl Error {
    /// The database could not be reached or had no free connection: worth a retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            )
        )
    }
}

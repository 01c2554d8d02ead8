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
    /// The policy has no rollout on that route (none in its spec, or the
    /// leader has not started it yet).
    #[error("policy {policy:?} has no rollout on route {route:?}")]
    NoRollout { policy: String, route: String },
    /// An operator's rollout action does not apply in the rollout's phase
    /// (resuming a failed rollout); the message says why.
    #[error("{message}")]
    RolloutRefused { message: String },
    /// No CA is stored yet (no replica has started with `--ca-key-file`).
    #[error("no certificate authority is configured; start a replica with --ca-key-file")]
    NoCa,
    /// A watch resumed from a version whose changes were pruned by retention.
    #[error("changes after resource version {after} were pruned (up to {compacted}); start again from a snapshot")]
    Compacted { after: i64, compacted: i64 },
    /// A value is text PostgreSQL cannot store (a NUL character, or not
    /// valid in the database's encoding). The REST edge refuses such text
    /// before it gets here, naming the field; this is the backstop for
    /// every other way in (gRPC, GitOps files).
    #[error("a value contains text that cannot be stored (a NUL character or invalid encoding)")]
    InvalidText,
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// What kind of failure an [`Error`] is: the one classification that both
/// edges map, the REST API to a status and code and the gRPC API to a
/// `Code`, each with an exhaustive `match`, so they cannot disagree and a
/// new error cannot slip through a catch-all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The named resource does not exist.
    NotFound,
    /// A resource of that name exists already.
    AlreadyExists,
    /// Another policy already serves the host.
    HostTaken,
    /// A GitOps source owns the policy.
    ManagedByGitops,
    /// The token was revoked for good.
    Revoked,
    /// The caller's expected version does not hold (optimistic concurrency).
    Precondition,
    /// A field of the request is wrong in a way only the store can tell
    /// (a revision that does not exist, text that cannot be stored);
    /// [`Error::field`] names it when known.
    Invalid,
    /// Something the call needs is not set up (no CA yet).
    NotConfigured,
    /// A traffic guard rail (capacity, minimum healthy zones) refuses the move.
    GuardRail,
    /// The action does not apply in the resource's current state.
    Conflict,
    /// What was asked for is no longer kept (pruned by retention).
    Gone,
    /// The database cannot be reached or has no free connection: retry.
    Unavailable,
    /// Anything else: a bug or an unexpected database error. The edges
    /// say only "internal error" and log the details.
    Internal,
}

impl Error {
    /// The kind of failure, for the edges to map. Exhaustive on purpose.
    pub fn kind(&self) -> Kind {
        match self {
            Error::NotFound { .. }
            | Error::ProviderNotFound { .. }
            | Error::TokenNotFound { .. }
            | Error::SourceNotFound { .. }
            | Error::NoRollout { .. } => Kind::NotFound,
            Error::ProviderExists { .. }
            | Error::TokenExists { .. }
            | Error::NameTaken { .. }
            | Error::SourceExists { .. } => Kind::AlreadyExists,
            Error::HostTaken { .. } => Kind::HostTaken,
            Error::OwnedByGitops { .. } => Kind::ManagedByGitops,
            Error::TokenRevoked { .. } => Kind::Revoked,
            Error::StaleVersion { .. } | Error::PreconditionOnMissing { .. } => Kind::Precondition,
            Error::RevisionNotFound { .. } | Error::InvalidText => Kind::Invalid,
            Error::NoCa => Kind::NotConfigured,
            Error::GuardRail { .. } => Kind::GuardRail,
            Error::RolloutRefused { .. } => Kind::Conflict,
            Error::Compacted { .. } => Kind::Gone,
            // Only the failover loop sees it; reaching an edge is a bug.
            Error::LeaseLost { .. } | Error::Migrate(_) => Kind::Internal,
            Error::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                    Kind::Unavailable
                }
                _ => Kind::Internal,
            },
        }
    }

    /// The request field a [`Kind::Invalid`] error is about, when known.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::RevisionNotFound { .. } => Some("revision"),
            _ => None,
        }
    }

    /// The database could not be reached or had no free connection: worth a retry.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == Kind::Unavailable
    }
}

impl From<sqlx::Error> for Error {
    /// Text PostgreSQL refused to store (SQLSTATE 22021, invalid byte
    /// sequence, e.g. a NUL in `text`; 22P05, untranslatable character,
    /// e.g. `\u0000` in `jsonb`) is the caller's mistake, not ours.
    fn from(e: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &e {
            if matches!(db.code().as_deref(), Some("22021" | "22P05")) {
                return Error::InvalidText;
            }
        }
        Error::Database(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let cases = [
            (Error::NoCa, Kind::NotConfigured),
            (
                Error::RevisionNotFound {
                    name: "a".into(),
                    revision: 3,
                },
                Kind::Invalid,
            ),
            (Error::InvalidText, Kind::Invalid),
            (
                Error::Database(sqlx::Error::PoolTimedOut),
                Kind::Unavailable,
            ),
            (Error::Database(sqlx::Error::RowNotFound), Kind::Internal),
            (Error::TokenRevoked { name: "t".into() }, Kind::Revoked),
            (
                Error::NoRollout {
                    policy: "p".into(),
                    route: "r".into(),
                },
                Kind::NotFound,
            ),
            (
                Error::RolloutRefused {
                    message: "no".into(),
                },
                Kind::Conflict,
            ),
        ];
        for (e, kind) in cases {
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}

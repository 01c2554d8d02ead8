//! Store and validation errors as gRPC statuses that mean what they say.

use meridian_policy::FieldError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with every problem as a field violation
/// (`google.rpc.BadRequest` in the status details).
pub fn invalid(problems: Vec<FieldError>) -> Status {
    let summary = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for p in problems {
        details.add_bad_request_violation(p.field, p.message);
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid: {summary}"),
        details,
    )
}

/// A store error as a status, by its [`meridian_store::Kind`]: the same
/// classification the REST edge maps, with no catch-all.
pub fn from_store(e: meridian_store::Error) -> Status {
    use meridian_store::Kind;
    let message = e.to_string();
    match e.kind() {
        Kind::NotFound => Status::not_found(message),
        Kind::AlreadyExists | Kind::HostTaken => Status::already_exists(message),
        Kind::ManagedByGitops
        | Kind::Revoked
        | Kind::Precondition
        | Kind::NotConfigured
        | Kind::GuardRail
        | Kind::Conflict => Status::failed_precondition(message),
        Kind::Gone => Status::out_of_range(message),
        Kind::Invalid => invalid(vec![FieldError::new(
            e.field().unwrap_or_default(),
            message,
        )]),
        Kind::Unavailable => {
            tracing::warn!(error = %e, "database unavailable");
            Status::unavailable("the database is not reachable; retry")
        }
        Kind::Internal => {
            // Never leak SQL or internals to the client; the log has it.
            tracing::error!(error = %e, "internal error");
            Status::internal("internal error; see the server log")
        }
    }
}

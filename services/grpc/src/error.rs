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

pub fn from_store(e: meridian_store::Error) -> Status {
    use meridian_store::Error as E;
    let message = e.to_string();
    match e {
        E::NotFound { .. }
        | E::ProviderNotFound { .. }
        | E::RevisionNotFound { .. }
        | E::TokenNotFound { .. } => Status::not_found(message),
        E::NameTaken { .. }
        | E::HostTaken { .. }
        | E::ProviderExists { .. }
        | E::TokenExists { .. } => Status::already_exists(message),
        E::StaleVersion { .. }
        | E::OwnedByGitops { .. }
        | E::TokenRevoked { .. }
        | E::GuardRail { .. } => Status::failed_precondition(message),
        E::SourceNotFound { .. } => Status::not_found(message),
        E::SourceExists { .. } => Status::already_exists(message),
        E::PreconditionOnMissing { name } => Status::not_found(format!(
            "policy {name:?} does not exist, so the expected resource version cannot match"
        )),
        unavailable if unavailable.is_unavailable() => {
            tracing::warn!(error = %unavailable, "database unavailable");
            Status::unavailable("the database is not reachable; retry")
        }
        other => {
            // Never leak SQL or internals to the client; the log has it.
            tracing::error!(error = %other, "internal error");
            Status::internal("internal error; see the server log")
        }
    }
}

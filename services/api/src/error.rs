//! The one error type of the REST edge, and its JSON shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_policy::{DecodeError, FieldError};
use serde::Serialize;
use utoipa::ToSchema;

/// `Retry-After` of every 503: about how long the database health check
/// takes to notice that the database is back.
pub const RETRY_AFTER_SECONDS: u64 = 2;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Short machine-readable code, e.g. `invalid`, `precondition_failed`.
    pub error: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// One entry per invalid field, when the request was invalid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error,
                message: message.into(),
                details: Vec::new(),
            },
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid(details: Vec<FieldError>) -> Self {
        Self::invalid_resource("policy", details)
    }
    /// 422 for a `what` (policy, provider, source): every field named.
    pub fn invalid_resource(what: &str, details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("invalid {what}: {}: {}", one.field, one.message),
            many => format!("invalid {what}: {} problems, see details", many.len()),
        };
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: ErrorBody {
                error: "invalid",
                message,
                details,
            },
        }
    }
    /// A body that is not JSON at all (a JSON body of the wrong shape is
    /// [`ApiError::invalid`]).
    pub fn malformed_json(e: serde_json::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("malformed JSON: {e}"),
        )
    }
    pub fn unsupported_media_type(got: Option<&str>, allowed: &str) -> Self {
        let got = got.map_or("no Content-Type".to_owned(), |g| {
            format!("Content-Type {g:?}")
        });
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{got} is not supported here; send {allowed}"),
        )
    }
    /// 503: the database cannot be used now. `Retry-After` tells clients
    /// when to come back instead of hammering a replica that cannot help.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unavailable = self.body.error == "unavailable";
        let mut response = (self.status, axum::Json(self.body)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if unavailable {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Malformed { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "malformed", e.to_string())
            }
            DecodeError::Invalid(field) => Self::invalid(vec![field]),
        }
    }
}

impl From<meridian_store::Error> for ApiError {
    /// By the error's [`meridian_store::Kind`]: the same classification
    /// the gRPC edge maps, with no catch-all.
    fn from(e: meridian_store::Error) -> Self {
        use meridian_store::Kind;
        let message = e.to_string();
        let (status, code) = match e.kind() {
            Kind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Kind::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Kind::HostTaken => (StatusCode::CONFLICT, "host_conflict"),
            Kind::ManagedByGitops => (StatusCode::CONFLICT, "gitops_managed"),
            Kind::Revoked => (StatusCode::CONFLICT, "revoked"),
            Kind::Precondition => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            Kind::NotConfigured => (StatusCode::CONFLICT, "no_ca"),
            Kind::GuardRail => (StatusCode::CONFLICT, "guard_rail"),
            Kind::Conflict => (StatusCode::CONFLICT, "conflict"),
            Kind::Gone => (StatusCode::GONE, "gone"),
            Kind::Invalid => {
                let field = e.field().unwrap_or_default();
                let mut err = Self::invalid(vec![FieldError::new(field, message.clone())]);
                err.body.message = message;
                return err;
            }
            Kind::Unavailable => {
                tracing::warn!(error = %e, "database unavailable");
                return Self::unavailable("the database is not reachable; retry");
            }
            Kind::Internal => {
                // Never leak SQL or internals to the client; the log has it.
                tracing::error!(error = %e, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = if code == "internal" {
            "internal error; see the server log".to_owned()
        } else {
            message
        };
        Self::new(status, code, message)
    }
}

/// Gives every bodiless error that axum produces itself (unknown route,
/// wrong method, bad path encoding) the same JSON shape as ours.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "method not allowed on this route".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload_too_large", "request body is too large".to_owned())
        }
        other => (
            "bad_request",
            other
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned(),
        ),
    };
    let mut fixed = ApiError::new(status, code, message).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        fixed.headers_mut().insert(header::ALLOW, allow.clone());
    }
    fixed
}

//! Authentication and authorization at the REST edge, and the caller of
//! the request being handled.
//!
//! The middleware runs after routing, so it knows the matched route, and
//! asks [`meridian_auth::rest_access`] what that route needs. The caller it
//! finds is kept for the rest of the request in a task-local, which the
//! handlers read for the audit log ([`caller`]).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_auth::{Access, AuthError, Identity};

use crate::error::ApiError;
use crate::AppState;

tokio::task_local! {
    static CALLER: Identity;
}

/// Who makes the request being handled (anonymous on open routes and when
/// authentication is off).
pub fn caller() -> Identity {
    CALLER
        .try_with(Identity::clone)
        .unwrap_or_else(|_| Identity::anonymous())
}

/// Largest total size of a request's headers; more is refused with 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers are over {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let needed = match meridian_auth::rest_access(request.method().as_str(), &route) {
        Access::Open => return next.run(request).await,
        Access::Role(role) => role,
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Present when the server was started with connect info (the binary
    // does): failed token lookups are limited per source address.
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let who = match state.auth.authorize_from(authorization, needed, peer).await {
        Ok(who) => who,
        Err(e) => return refusal(e),
    };
    if !STREAMS.contains(&route.as_str()) {
        return CALLER.scope(who, next.run(request)).await;
    }
    // A long-lived stream counts against its caller's cap for as long as
    // its body is being sent.
    let permit = match state.auth.open_stream(&who) {
        Ok(permit) => permit,
        Err(e) => return refusal(e),
    };
    let response = CALLER.scope(who, next.run(request)).await;
    let (parts, body) = response.into_parts();
    let held = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _ = &permit;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(held))
}

/// Routes whose responses are long-lived streams, capped per caller.
const STREAMS: [&str; 1] = ["/api/v1/events/stream"];

fn refusal(e: AuthError) -> Response {
    let message = e.to_string();
    match e {
        AuthError::Missing | AuthError::Invalid(_) => {
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        AuthError::Forbidden { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
        }
        AuthError::RateLimited { retry_after, .. } => {
            let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .into_response();
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            r
        }
        AuthError::TooManyStreams { .. } => {
            let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message)
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(5u32));
            r
        }
        AuthError::Unavailable(why) => {
            tracing::warn!(error = %why, "cannot check credentials");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot check credentials now; retry",
            )
            .into_response()
        }
    }
}

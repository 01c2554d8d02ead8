//! `/api/v1/tokens` and `/api/v1/audit` (admin).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_auth::{token, Role};
use meridian_policy::FieldError;
use meridian_store::tokens::AuditQuery;
use serde::Deserialize;
use serde_json::json;

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::request::{self, query_pairs};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
}

/// Creates a token and returns it, the only time it is ever shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access",
    request_body(content = Object, content_type = "application/json", description = "`{name, role}`; role viewer, operator or admin"),
    responses(
        (status = 201, description = "The token's record and, this once, `token`", body = Object),
        (status = 400, body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = request::read_body(&headers, body).await?;
    let req: NewToken = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(vec![FieldError::new("", e.to_string())]))?;
    let mut problems = Vec::new();
    if meridian_policy::validate::dns_label(&req.name).is_err() {
        problems.push(FieldError::new(
            "name",
            "must be a DNS label: lowercase letters, digits and '-', at most 63",
        ));
    }
    let role = req.role.parse::<Role>();
    if let Err(e) = &role {
        problems.push(FieldError::new("role", e.clone()));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let secret = token::generate();
    let stored = state
        .store
        .create_token(
            &req.name,
            role.expect("checked").as_str(),
            &token::hash(&secret),
            &caller().actor,
        )
        .await?;
    let mut body = json!(stored);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Every token's name, role and state; never the tokens or their hashes.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "access",
    responses((status = 200, description = "`{items: [token]}`", body = Object)))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({"items": state.store.tokens().await?})).into_response())
}

/// Revoke a token for good.
#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "access", params(("name" = String, Path, description = "Token name")),
    responses((status = 204, description = "Revoked (or revoked already)"), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.store.revoke_token(&name, &caller().actor).await?;
    state.auth.forget_tokens();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/audit?policy=&actor=&since=RFC3339&limit=N`, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "access",
    params(
        ("policy" = Option<String>, Query, description = "Only this policy's entries"),
        ("actor" = Option<String>, Query, description = "Only this caller's entries"),
        ("since" = Option<String>, Query, description = "RFC 3339 time"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 500"),
    ),
    responses((status = 200, description = "`{items: [entry]}`, newest first", body = Object), (status = 400, body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut q = AuditQuery {
        limit: 500,
        ..AuditQuery::default()
    };
    for (k, v) in query_pairs(query.as_deref(), &["policy", "actor", "since", "limit"])? {
        match k.as_str() {
            "policy" => q.policy = Some(v),
            "actor" => q.actor = Some(v),
            "since" => q.since = Some(request::since_param(&v)?),
            _ => q.limit = request::limit_param(&v)?,
        }
    }
    Ok(Json(json!({"items": state.store.audit(&q).await?})).into_response())
}

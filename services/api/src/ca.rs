//! `/api/v1/ca`: the certificate authority's public side, and a forced
//! rotation of every workload certificate. No key ever leaves the store
//! through here: the response has certificates only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// The CA certificate, trust bundle, and rotation number.
#[utoipa::path(get, path = "/api/v1/ca", tag = "mtls",
    responses((status = 200, body = Object), (status = 404, description = "No CA configured", body = ErrorBody)))]
pub async fn get(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(row) = state.store.ca().await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no certificate authority is configured; start a replica with --ca-key-file",
        ));
    };
    Ok(Json(json!({
        "trustDomain": row.trust_domain,
        "source": row.source,
        "rotation": row.rotation,
        "caCertificate": row.cert_pem,
        "trustBundle": row.trust_bundle_pem,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }))
    .into_response())
}

/// Replaces every workload certificate now (audited). Envoys receive the
/// new ones over SDS without a restart.
#[utoipa::path(post, path = "/api/v1/ca/rotate", tag = "mtls",
    responses((status = 200, body = Object), (status = 404, description = "No CA configured", body = ErrorBody)))]
pub async fn rotate(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rotation = state
        .store
        .rotate_workload_certs(&crate::auth::caller().actor)
        .await?;
    tracing::info!(rotation, "forced rotation of workload certificates");
    Ok(Json(json!({ "rotation": rotation })).into_response())
}

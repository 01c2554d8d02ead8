//! `/api/v1/providers`: DNS providers. The body is flat, as
//! `{"name": "aws-prod", "kind": "route53", "hostedZoneId": "...", ...}`;
//! everything but `name` and `kind` is the kind's configuration, in which
//! credentials are references (`{"env": NAME}` or `{"file": PATH}`), so
//! nothing secret is ever stored or returned.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_policy::provider::validate_provider;
use meridian_policy::FieldError;
use meridian_store::providers::ProviderRow;
use serde_json::{json, Map, Value};

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::request;
use crate::AppState;

fn to_json(row: ProviderRow) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(row.name));
    out.insert("kind".into(), json!(row.kind));
    if let Some(config) = row.config.0.as_object() {
        out.extend(config.clone());
    }
    out.insert("createdAt".into(), json!(row.created_at));
    out.insert("updatedAt".into(), json!(row.updated_at));
    Value::Object(out)
}

/// Splits a flat body into (name, kind, config) and validates it.
async fn body(headers: &HeaderMap, body: Body) -> Result<(String, String, Value), ApiError> {
    let value = request::json_value(headers, body, "application/json").await?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::invalid(vec![FieldError::new(
            "",
            "must be an object",
        )]));
    };
    map.remove("createdAt");
    map.remove("updatedAt");
    let take = |map: &mut Map<String, Value>, key: &str| {
        map.remove(key).and_then(|v| v.as_str().map(str::to_owned))
    };
    let name = take(&mut map, "name").unwrap_or_default();
    let kind = take(&mut map, "kind").unwrap_or_default();
    let config = Value::Object(map);
    validate_provider(&name, &kind, &config).map_err(invalid_provider)?;
    check_references(&config).map_err(invalid_provider)?;
    Ok((name, kind, config))
}

/// Every credential reference in the settings names what this replica's
/// rules allow (an env prefix, the secrets directories): a provider's
/// credentials go to the URL its writer chose, so a reference to anything
/// else would let an admin read the process's own secrets.
fn check_references(config: &Value) -> Result<(), Vec<FieldError>> {
    let errors: Vec<FieldError> = config
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| meridian_secrets::looks_like_reference(v))
        .filter_map(|(k, v)| {
            meridian_secrets::check(v)
                .err()
                .map(|e| FieldError::new(format!("config.{k}"), e.to_string()))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn invalid_provider(details: Vec<FieldError>) -> ApiError {
    ApiError::invalid_resource("provider", details)
}

/// Every DNS provider; credentials appear only as their references.
#[utoipa::path(get, path = "/api/v1/providers", tag = "providers",
    responses((status = 200, description = "`{items: [provider]}`", body = Object)))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let items: Vec<Value> = state
        .store
        .providers()
        .await?
        .into_iter()
        .map(to_json)
        .collect();
    Ok(Json(json!({"items": items})).into_response())
}

#[utoipa::path(get, path = "/api/v1/providers/{name}", tag = "providers", params(("name" = String, Path, description = "Provider name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(to_json(state.store.provider(&name).await?)).into_response())
}

/// Register a DNS provider (pdns, route53 or alidns).
#[utoipa::path(post, path = "/api/v1/providers", tag = "providers",
    request_body(content = Object, content_type = "application/json", description = "`{name, kind, ...}`: kind's settings, credentials as `{env}` or `{file}` references"),
    responses(
        (status = 201, body = Object),
        (status = 400, body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Invalid; every problem listed", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let (name, kind, config) = body(&headers, b).await?;
    let (row, _) = state
        .store
        .put_provider(&name, &kind, &config, true, &caller().actor)
        .await?;
    let mut response = (StatusCode::CREATED, Json(to_json(row))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/providers/{name}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// Create or replace a DNS provider.
#[utoipa::path(put, path = "/api/v1/providers/{name}", tag = "providers", params(("name" = String, Path, description = "Provider name")),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, body = Object),
        (status = 201, body = Object),
        (status = 400, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn replace(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let (name, kind, config) = body(&headers, b).await?;
    if name != path {
        return Err(ApiError::bad_request(format!(
            "name {name:?} does not match the path {path:?}"
        )));
    }
    let (row, created) = state
        .store
        .put_provider(&name, &kind, &config, false, &caller().actor)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(to_json(row))).into_response())
}

/// Delete a DNS provider no policy uses.
#[utoipa::path(delete, path = "/api/v1/providers/{name}", tag = "providers", params(("name" = String, Path, description = "Provider name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody), (status = 409, description = "Used by policies", body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.store.provider(&name).await?;
    let users = state.store.policies_using_provider(&name).await?;
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("DNS provider {name:?} is used by policies {}; change their zones' dns.provider first", users.join(", ")),
        ));
    }
    state.store.delete_provider(&name, &caller().actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

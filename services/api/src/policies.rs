//! `/api/v1/policies`: the policy resource.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_policy::{decode, merge_patch, validate, FieldError, Policy, Revision};
use meridian_store::{ListQuery, Write};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::request::{self, dry_run, dry_run_force, etag, precondition, query_pairs};
use crate::AppState;
use meridian_auth::Role;

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

const SOURCE: &str = "api";

#[derive(Serialize, ToSchema)]
pub struct PolicyList {
    pub items: Vec<Policy>,
    /// Pass as `continue` for the next page; null on the last page.
    #[serde(rename = "continue")]
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RevisionList {
    /// Newest first.
    pub items: Vec<Revision>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The revision whose spec becomes current again.
    pub revision: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query for OpenAPI; parsed by hand to refuse unknown names.
pub struct ListParams {
    /// `key=value`; repeat for several labels, all of which must match.
    label: Option<Vec<String>>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<u32>,
    /// Token from the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ForceParam {
    /// Validate and answer as the write would, storing nothing.
    #[serde(rename = "dryRun")]
    #[param(rename = "dryRun")]
    dry_run: Option<bool>,
    /// Write even though a GitOps source owns the policy; the source's
    /// next sync restores the repository's version.
    force: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DryRunParam {
    /// Validate and answer as the write would, storing nothing.
    #[serde(rename = "dryRun")]
    #[param(rename = "dryRun")]
    dry_run: Option<bool>,
}

fn write(actor: &str, dry_run: bool, force: bool) -> Write<'_> {
    Write {
        actor,
        source: SOURCE,
        dry_run,
        force,
    }
}

fn with_etag(status: StatusCode, policy: Policy, location: bool) -> Response {
    let mut response = (status, Json(&policy)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(&policy)) {
        headers.insert(header::ETAG, v);
    }
    if location {
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/policies/{}", policy.metadata.name))
        {
            headers.insert(header::LOCATION, v);
        }
    }
    response
}

fn checked(policy: Policy) -> Result<Policy, ApiError> {
    validate(&policy).map_err(ApiError::invalid)?;
    Ok(policy)
}

/// Create a policy.
#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", params(DryRunParam),
    request_body(content((Policy = "application/json"), (Policy = "application/yaml"))),
    responses(
        (status = 201, description = "Created; ETag is the resourceVersion", body = Policy),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "Name or host taken", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = ErrorBody),
        (status = 422, description = "Invalid; every problem listed", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let dry = dry_run(query.as_deref())?;
    let who = caller();
    let policy = checked(request::policy_body(&headers, body).await?)?;
    let stored = state
        .store
        .create(&policy, &write(&who.actor, dry, false))
        .await?;
    Ok(with_etag(StatusCode::CREATED, stored, true))
}

/// List policies, ordered by name.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", params(ListParams),
    responses(
        (status = 200, body = PolicyList),
        (status = 400, description = "Bad query", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut q = ListQuery {
        limit: DEFAULT_PAGE,
        ..ListQuery::default()
    };
    for (key, value) in query_pairs(query.as_deref(), &["label", "limit", "continue"])? {
        match key.as_str() {
            "label" => {
                for pair in value.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| {
                        ApiError::bad_request(format!("label selector {pair:?} must be key=value"))
                    })?;
                    q.labels.insert(k.to_owned(), v.to_owned());
                }
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be 1 to {MAX_PAGE}, not {value:?}"
                        ))
                    })?;
            }
            _ => q.after = Some(request::decode_continue(&value)?),
        }
    }
    let (items, next) = state.store.list(&q).await?;
    let next = next.as_deref().map(request::encode_continue);
    Ok(Json(PolicyList { items, next }).into_response())
}

/// Read one policy.
#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = Policy), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let policy = state.store.get(&name).await?;
    Ok(with_etag(StatusCode::OK, policy, false))
}

/// Replace a policy, or create it.
#[utoipa::path(put, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path, description = "Policy name"), ForceParam),
    request_body(content((Policy = "application/json"), (Policy = "application/yaml"))),
    responses(
        (status = 200, description = "Replaced", body = Policy),
        (status = 201, description = "Created", body = Policy),
        (status = 400, description = "Malformed, or the body's name is not the path's", body = ErrorBody),
        (status = 409, description = "Host taken, or owned by a GitOps source (pass force=true)", body = ErrorBody),
        (status = 412, description = "If-Match is stale", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn replace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (dry, force) = dry_run_force(query.as_deref())?;
    let who = caller();
    let pre = precondition(&headers)?;
    let policy = request::policy_body(&headers, body).await?;
    same_name(&name, &policy)?;
    let policy = checked(policy)?;
    let (stored, created) = state
        .store
        .replace(&policy, &pre, &write(&who.actor, dry, force))
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_etag(status, stored, created))
}

fn same_name(path: &str, policy: &Policy) -> Result<(), ApiError> {
    if policy.metadata.name == path {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the name in the path {path:?}; renaming is not supported",
            policy.metadata.name
        )))
    }
}

/// Change a policy with a JSON merge patch (RFC 7386).
#[utoipa::path(patch, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path, description = "Policy name"), ForceParam),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, body = Policy),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Owned by a GitOps source (pass force=true)", body = ErrorBody),
        (status = 412, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn patch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (dry, force) = dry_run_force(query.as_deref())?;
    let who = caller();
    let pre = precondition(&headers)?;
    let patch = request::json_value(&headers, body, "application/merge-patch+json").await?;
    let stored = state
        .store
        .modify(&name, &pre, &write(&who.actor, dry, force), |current| {
            let mut doc = serde_json::to_value(&current).expect("a policy serializes");
            merge_patch::apply(&mut doc, &patch);
            let mut patched = decode::from_value(doc)?;
            patched.metadata.clear_server_fields();
            same_name(&name, &patched)?;
            // Refused for what it changes before it is judged for how.
            if who.role < Role::Admin && !meridian_auth::operator_may_change(&current, &patched) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "{} has role {}: operators may change only canary weights; other changes need admin",
                        who.actor, who.role
                    ),
                ));
            }
            checked(patched)
        })
        .await?;
    Ok(with_etag(StatusCode::OK, stored, false))
}

/// Delete a policy.
#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path, description = "Policy name"), ForceParam),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Owned by a GitOps source (pass force=true)", body = ErrorBody),
        (status = 412, body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (dry, force) = dry_run_force(query.as_deref())?;
    let who = caller();
    let pre = precondition(&headers)?;
    state
        .store
        .delete(&name, &pre, &write(&who.actor, dry, force))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A policy's revisions, newest first.
#[utoipa::path(get, path = "/api/v1/policies/{name}/revisions", tag = "policies", params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = RevisionList), (status = 404, body = ErrorBody)))]
pub async fn revisions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let items = state.store.revisions(&name).await?;
    Ok(Json(RevisionList { items }).into_response())
}

/// Make an earlier revision's spec current again, as a new revision.
#[utoipa::path(post, path = "/api/v1/policies/{name}/rollback", tag = "policies", params(("name" = String, Path, description = "Policy name"), ForceParam),
    request_body(content = RollbackRequest, content_type = "application/json"),
    responses(
        (status = 200, body = Policy),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The old host is now used by another policy, or a GitOps source owns it (pass force=true)", body = ErrorBody),
        (status = 412, body = ErrorBody),
        (status = 422, description = "No such revision, or it no longer validates", body = ErrorBody),
    ))]
pub async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (dry, force) = dry_run_force(query.as_deref())?;
    let who = caller();
    let pre = precondition(&headers)?;
    let bytes = request::typed_body(&headers, body, "application/json").await?;
    let req: RollbackRequest = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(vec![FieldError::new("revision", e.to_string())])
        } else {
            ApiError::malformed_json(e)
        }
    })?;
    let target = state.store.revision(&name, req.revision).await?;
    let stored = state
        .store
        .modify(
            &name,
            &pre,
            &write(&who.actor, dry, force),
            |mut current| {
                current.spec = target.spec.clone();
                current.metadata.clear_server_fields();
                checked(current)
            },
        )
        .await?;
    Ok(with_etag(StatusCode::OK, stored, false))
}

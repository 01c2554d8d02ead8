//! `/api/v1/gitops`: policy repositories (sources), their status and sync
//! history, manual and webhook sync triggers, and the atomic apply of a
//! directory of policies (`meridian apply --prune`, `meridian diff`).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_gitops::plan::Planner;
use meridian_gitops::{apply, source};
use meridian_policy::{decode, validate, FieldError};
use meridian_store::gitops::Source;
use meridian_store::Write;
use serde_json::{json, Value};

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::request::{self, flags, query_pairs};
use crate::AppState;

/// A source as shown to callers: a credential left in the URL of a row
/// written before URLs were checked is masked (viewers read sources).
fn shown(mut s: Source) -> Source {
    s.url = source::redact_url(&s.url);
    s
}

fn invalid_source(details: Vec<FieldError>) -> ApiError {
    ApiError::invalid_resource("source", details)
}

async fn source_body(headers: &HeaderMap, body: Body) -> Result<Source, ApiError> {
    let value = request::json_value(headers, body, "application/json").await?;
    let source: Source = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        invalid_source(vec![FieldError::new(field, e.into_inner().to_string())])
    })?;
    source::validate(&source).map_err(invalid_source)?;
    Ok(source)
}

/// Every source, by name.
#[utoipa::path(get, path = "/api/v1/gitops/sources", tag = "gitops",
    responses((status = 200, description = "`{items: [source]}`", body = Object)))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let items: Vec<Source> = state
        .store
        .sources()
        .await?
        .into_iter()
        .map(shown)
        .collect();
    Ok(Json(json!({"items": items})).into_response())
}

/// Register a source; it syncs at once.
#[utoipa::path(post, path = "/api/v1/gitops/sources", tag = "gitops",
    request_body(content = Object, content_type = "application/json", description = "A source: name, url, branch, path, intervalSeconds, prune, adopt, auth, webhookSecret"),
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
    body: Body,
) -> Result<Response, ApiError> {
    let source = source_body(&headers, body).await?;
    let stored = state.store.create_source(&source, &caller().actor).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

#[utoipa::path(get, path = "/api/v1/gitops/sources/{name}", tag = "gitops", params(("name" = String, Path, description = "Source name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(shown(state.store.source(&name).await?)).into_response())
}

/// Create or replace a source; a changed source syncs at once.
#[utoipa::path(put, path = "/api/v1/gitops/sources/{name}", tag = "gitops", params(("name" = String, Path, description = "Source name")),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, body = Object),
        (status = 201, body = Object),
        (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn replace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let source = source_body(&headers, body).await?;
    if source.name != name {
        return Err(ApiError::bad_request(format!(
            "name {:?} does not match the name in the path {name:?}",
            source.name
        )));
    }
    let (stored, created) = state.store.replace_source(&source, &caller().actor).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)).into_response())
}

/// Unregister a source. Its policies stay and become API-managed.
#[utoipa::path(delete, path = "/api/v1/gitops/sources/{name}", tag = "gitops", params(("name" = String, Path, description = "Source name")),
    responses((status = 204, description = "Deleted; its policies stay, API-managed"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.store.delete_source(&name, &caller().actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ask for a sync now; a replica running the gitops role performs it
/// within a moment. Watch `/status` or `/syncs` for the result.
#[utoipa::path(post, path = "/api/v1/gitops/sources/{name}/sync", tag = "gitops", params(("name" = String, Path, description = "Source name")),
    responses((status = 202, body = Object), (status = 404, body = ErrorBody)))]
pub async fn sync(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.store.request_sync(&name, &caller().actor).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "sync requested"})),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/gitops/sources/{name}/status", tag = "gitops", params(("name" = String, Path, description = "Source name")),
    responses((status = 200, description = "Last fetched and applied commit, last sync with plan and errors", body = Object), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.store.source_status(&name).await?).into_response())
}

/// Syncs, newest first (`?limit=`, default 50, at most 500).
#[utoipa::path(get, path = "/api/v1/gitops/sources/{name}/syncs", tag = "gitops", params(("name" = String, Path, description = "Source name"), ("limit" = Option<u32>, Query, description = "1 to 500, default 50")),
    responses((status = 200, description = "`{items: [sync]}`, newest first", body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn syncs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut limit = 50;
    for (_, v) in query_pairs(query.as_deref(), &["limit"])? {
        limit = v
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to 500, not {v:?}")))?;
    }
    let items = state.store.syncs(&name, limit).await?;
    Ok(Json(json!({"items": items})).into_response())
}

/// A push webhook: GitHub (`X-Hub-Signature-256`, HMAC-SHA256 of the body)
/// or GitLab (`X-Gitlab-Token`), checked against the source's secret. Only
/// a verified request triggers a sync; anything else is 401 and changes
/// nothing.
#[utoipa::path(post, path = "/api/v1/gitops/webhook/{name}", tag = "gitops", params(("name" = String, Path, description = "Source name")),
    request_body(content = Object, description = "The push event, verified by X-Hub-Signature-256 or X-Gitlab-Token"),
    responses((status = 202, description = "Sync requested", body = Object), (status = 200, description = "Verified, but a push to another branch or a tag: ignored", body = Object), (status = 401, description = "Missing or wrong signature; nothing changed", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn webhook(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Verified, never stored: any bytes the sender signed.
    let bytes = request::read_raw_body(&headers, body).await?;
    let unauthorized =
        |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m.to_owned());
    let src = state.store.source(&name).await?;
    let Some(reference) = &src.webhook_secret else {
        return Err(unauthorized(
            "this source has no webhookSecret, so no webhook can be verified",
        ));
    };
    let secret = source::resolve(reference).map_err(|e| {
        tracing::error!(source = %name, error = %e, "webhook secret unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the webhook secret of this source cannot be read; see the server log",
        )
    })?;
    let secret = secret.expose().as_bytes();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let verified = match (header("x-hub-signature-256"), header("x-gitlab-token")) {
        (Some(sig), _) => source::verify_github(secret, &bytes, sig),
        (None, Some(token)) => source::verify_gitlab(secret, token),
        (None, None) => {
            return Err(unauthorized(
                "missing X-Hub-Signature-256 (GitHub) or X-Gitlab-Token (GitLab)",
            ))
        }
    };
    if !verified {
        tracing::warn!(source = %name, "webhook with a bad signature refused");
        return Err(unauthorized("webhook signature or token does not match"));
    }
    if let Err(reason) = source::webhook_concerns(&bytes, &src.branch) {
        return Ok(Json(json!({"status": "ignored", "reason": reason})).into_response());
    }
    // The webhook's sender proved it knows the source's secret; that
    // is all that is known of it.
    state
        .store
        .request_sync(&name, &format!("webhook:{name}"))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "sync requested"})),
    )
        .into_response())
}

/// Make the API-managed policies exactly `items` in one transaction
/// (`?prune=true` deletes the API-managed policies not listed), or with
/// `?dryRun=true` only show the plan. Policies owned by a GitOps source
/// are never touched: naming one is a 409. With `?source=NAME&dryRun=true`
/// it shows what a sync of that source would do if its repository held
/// `items` (the source's own prune and adopt settings apply): a preview
/// for a policy repository's pull requests.
#[utoipa::path(post, path = "/api/v1/gitops/apply", tag = "gitops",
    params(("prune" = Option<bool>, Query, description = "Delete API-managed policies not listed"), ("dryRun" = Option<bool>, Query, description = "Only plan"),
        ("source" = Option<String>, Query, description = "Plan as this GitOps source's sync would (dryRun only)")),
    request_body(content = Object, content_type = "application/json", description = "`{items: [policy]}`"),
    responses(
        (status = 200, description = "`{dryRun, plan}`", body = Object),
        (status = 409, description = "Names a GitOps-owned policy, or a host is taken", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn apply_set(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref(), &["dryRun", "prune", "source"])?;
    let as_source = pairs
        .iter()
        .find(|(k, _)| k == "source")
        .map(|(_, v)| v.clone());
    let rest: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "source").collect();
    let rest = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(rest)
        .finish();
    let f = flags(Some(&rest), &["dryRun", "prune"])?;
    let (dry_run, mut prune) = (f[0], f[1]);
    let source = match &as_source {
        Some(name) => {
            if !dry_run {
                return Err(ApiError::bad_request(
                    "a source's policies change only through its repository; \
                     pass dryRun=true to preview its sync",
                ));
            }
            let src = state.store.source(name).await?;
            prune = src.prune;
            Some(src)
        }
        None => None,
    };
    let value = request::json_value(&headers, body, "application/json").await?;
    let Some(items) = value.get("items").and_then(Value::as_array) else {
        return Err(ApiError::invalid(vec![FieldError::new(
            "items",
            "required: an array of policies",
        )]));
    };
    let mut desired = Vec::new();
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match decode::from_value(item.clone()) {
            Ok(mut p) => {
                p.metadata.clear_server_fields();
                match validate(&p) {
                    Ok(()) => desired.push(p),
                    Err(errs) => problems
                        .extend(errs.into_iter().map(|e| {
                            FieldError::new(format!("items[{i}].{}", e.field), e.message)
                        })),
                }
            }
            Err(decode::DecodeError::Invalid(e)) => problems.push(FieldError::new(
                format!("items[{i}].{}", e.field),
                e.message,
            )),
            Err(e) => problems.push(FieldError::new(format!("items[{i}]"), e.to_string())),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in desired.iter().enumerate() {
        if !seen.insert(p.metadata.name.as_str()) {
            problems.push(FieldError::new(
                format!("items[{i}].metadata.name"),
                format!("policy {:?} is listed twice", p.metadata.name),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let (actor, origin, planner) = match &source {
        Some(src) => (
            format!("gitops:{}", src.name),
            format!("{}preview", meridian_store::gitops_origin(&src.name)),
            Planner::Source {
                name: &src.name,
                adopt: src.adopt,
            },
        ),
        None => (caller().actor, "api".to_owned(), Planner::Api),
    };
    let w = Write {
        actor: &actor,
        source: &origin,
        dry_run,
        force: false,
    };
    match apply::apply(&state.store, planner, &desired, prune, &w).await {
        Ok(applied) => {
            if dry_run {
                applied.tx.rollback().await?;
            } else {
                applied.tx.commit().await?;
            }
            Ok(Json(json!({"dryRun": dry_run, "plan": applied.plan.summary()})).into_response())
        }
        Err(apply::Error::Conflicts(conflicts)) => {
            let details = conflicts
                .into_iter()
                .map(|c| FieldError::new(c.name, c.message))
                .collect();
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "gitops_managed",
                "some policies are owned by GitOps sources; change them in their repositories",
            );
            e.body.details = details;
            Err(e)
        }
        Err(apply::Error::Store(e)) => Err(e.into()),
    }
}

//! Failover endpoints: overrides, drains, per-policy status and events.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use meridian_policy::FieldError;
use serde::Deserialize;
use serde_json::json;

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::request::{self, query_pairs};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OverrideRequest {
    weights: BTreeMap<String, u32>,
    reason: String,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    /// Go ahead although fewer zones than `failover.minHealthyZones` would
    /// serve; `reason` is audited as the reason for forcing.
    #[serde(default)]
    force: bool,
}

async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = request::typed_body(headers, body, "application/json").await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::invalid(vec![FieldError::new("", e.to_string())])
        } else {
            ApiError::malformed_json(e)
        }
    })
}

/// Pin a policy's weights; wins over automation until cleared or expired.
#[utoipa::path(put, path = "/api/v1/policies/{name}/override", tag = "failover", params(("name" = String, Path, description = "Policy name")),
    request_body(content = Object, content_type = "application/json", description = "`{weights: {zone: weight}, reason, expiresAt?, force?}`: weights for every zone, summing to 100, each within the zone's capacityPercent; `force: true` goes past `minHealthyZones` (audited, with `reason`)"),
    responses(
        (status = 200, description = "The stored override", body = Object),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`guard_rail`: fewer zones than `failover.minHealthyZones` would serve", body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Invalid; every problem listed", body = ErrorBody),
    ))]
pub async fn set_override(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: OverrideRequest = json_body(&headers, body).await?;
    let policy = state.store.get(&name).await?;
    let ov = meridian_failover::decide::Override {
        weights: req.weights.clone(),
        reason: req.reason.clone(),
        expires_at_ms: req.expires_at.map(|t| t.timestamp_millis()),
    };
    let problems = meridian_failover::decide::override_request_problems(
        &policy.spec,
        &ov,
        Utc::now().timestamp_millis(),
    );
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let stored = state
        .store
        .set_override_forced(
            &name,
            &req.weights,
            &req.reason,
            req.expires_at,
            &caller().actor,
            req.force.then_some(req.reason.as_str()),
        )
        .await?;
    Ok(Json(stored).into_response())
}

#[utoipa::path(delete, path = "/api/v1/policies/{name}/override", tag = "failover", params(("name" = String, Path, description = "Policy name")),
    responses((status = 204, description = "Cleared"), (status = 404, description = "No such policy, or no override", body = ErrorBody)))]
pub async fn clear_override(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.store.get(&name).await?;
    if state.store.clear_override(&name, &caller().actor).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("policy {name:?} has no override"),
        ))
    }
}

/// Take a zone out of rotation; its weight goes to the other zones.
#[utoipa::path(post, path = "/api/v1/policies/{name}/zones/{zone}/drain", tag = "failover", params(("name" = String, Path, description = "Policy name"), ("zone" = String, Path, description = "Zone name"),
        ("force" = Option<bool>, Query, description = "Drain although fewer zones than `failover.minHealthyZones` would serve; needs `reason`"),
        ("reason" = Option<String>, Query, description = "Why the drain is forced; audited")),
    responses((status = 200, description = "`{policy, zone, drained, changed}`", body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`guard_rail`: fewer zones than `failover.minHealthyZones` would serve", body = ErrorBody),
        (status = 422, description = "`force` without a `reason`", body = ErrorBody)))]
pub async fn drain(
    state: State<AppState>,
    path: Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (mut force, mut reason) = (false, None);
    for (k, v) in query_pairs(query.as_deref(), &["force", "reason"])? {
        match k.as_str() {
            "force" => {
                force = v.parse().map_err(|_| {
                    ApiError::invalid(vec![FieldError::new("force", "must be true or false")])
                })?
            }
            _ => reason = Some(v),
        }
    }
    let reason = reason.filter(|r| !r.trim().is_empty());
    if force && reason.is_none() {
        return Err(ApiError::invalid(vec![FieldError::new(
            "reason",
            "say why the guard rail is forced",
        )]));
    }
    set_drain(state, path, true, reason.filter(|_| force)).await
}

/// Put a drained zone back into rotation.
#[utoipa::path(post, path = "/api/v1/policies/{name}/zones/{zone}/undrain", tag = "failover", params(("name" = String, Path, description = "Policy name"), ("zone" = String, Path, description = "Zone name")),
    responses((status = 200, description = "`{policy, zone, drained, changed}`", body = Object), (status = 404, body = ErrorBody)))]
pub async fn undrain(
    state: State<AppState>,
    path: Path<(String, String)>,
) -> Result<Response, ApiError> {
    set_drain(state, path, false, None).await
}

async fn set_drain(
    State(state): State<AppState>,
    Path((name, zone)): Path<(String, String)>,
    drained: bool,
    force: Option<String>,
) -> Result<Response, ApiError> {
    let policy = state.store.get(&name).await?;
    if !policy.spec.zones.iter().any(|z| z.name == zone) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("policy {name:?} has no zone {zone:?}"),
        ));
    }
    let changed = state
        .store
        .set_drain_forced(&name, &zone, drained, &caller().actor, force.as_deref())
        .await?;
    Ok(
        Json(json!({"policy": name, "zone": zone, "drained": drained, "changed": changed}))
            .into_response(),
    )
}

/// Where traffic goes now and why, zone by zone.
#[utoipa::path(get, path = "/api/v1/policies/{name}/status", tag = "failover", params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, description = "Effective weights, zone health, DNS state, predicted failover time", body = Object), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let policy = state.store.get(&name).await?;
    let status = state.store.policy_status(&name).await?;
    let mut body = json!(status);
    body["predictedFailover"] = json!(meridian_failover::timeline::predicted_failover_ms(
        &policy.spec,
        0
    ));
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SimulateRequest {
    /// Zones to make fail (stop answering).
    fail: Vec<String>,
}

/// What-if: the weights xDS and DNS would get if these zones stopped
/// answering now, the guard rails that would trip, and the time to shift.
/// Runs the leader's own decision on the stored reports, states, overrides
/// and drains, with the named zones silent; changes nothing.
#[utoipa::path(post, path = "/api/v1/policies/{name}/simulate", tag = "failover", params(("name" = String, Path, description = "Policy name")),
    request_body(content = Object, content_type = "application/json", description = "`{fail: [zone, ...]}`: the zones to make fail"),
    responses(
        (status = 200, description = "`{fail, xds: {zone: weight}, dns: [{zone, provider, target, weight}], cause, reasons, guardRails: [{rule, message}], critical?, events, predicted: {detectionMs, dnsMs, ttlMs, totalMs}}`", body = Object),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "A zone the policy does not have", body = ErrorBody),
    ))]
pub async fn simulate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SimulateRequest = json_body(&headers, body).await?;
    let (policies, rows) = state
        .store
        .failover_inputs(meridian_store::status::REPORT_FRESHNESS)
        .await?;
    let Some(policy) = policies.iter().find(|p| p.metadata.name == name) else {
        return Err(meridian_store::Error::NotFound { name }.into());
    };
    let input = rows
        .inputs(std::slice::from_ref(policy))
        .pop()
        .expect("one input per policy");
    let answer =
        meridian_failover::simulate::simulate(&input, &req.fail, Utc::now().timestamp_millis(), 0)
            .map_err(ApiError::invalid)?;
    Ok(Json(answer).into_response())
}

/// `GET /api/v1/events?policy=NAME&since=RFC3339&limit=N`, oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "failover",
    params(
        ("policy" = Option<String>, Query, description = "Only this policy's events"),
        ("since" = Option<String>, Query, description = "RFC 3339 time"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 500"),
    ),
    responses((status = 200, description = "`{items: [event]}`", body = Object), (status = 400, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (mut policy, mut since, mut limit) = (None, None, 500_i64);
    for (k, v) in query_pairs(query.as_deref(), &["policy", "since", "limit"])? {
        match k.as_str() {
            "policy" => policy = Some(v),
            "since" => since = Some(request::since_param(&v)?),
            _ => limit = request::limit_param(&v)?,
        }
    }
    let items = state.store.events(policy.as_deref(), since, limit).await?;
    Ok(Json(json!({"items": items})).into_response())
}

/// `GET /api/v1/events/stream?policy=NAME`: server-sent events, one per
/// stored event, from now on (or after `Last-Event-ID` when a client
/// reconnects, so it misses nothing). Ends when the server shuts down.
pub async fn event_stream(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    let mut policy = None;
    for (_, v) in query_pairs(query.as_deref(), &["policy"])? {
        policy = Some(v);
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let cursor = match resume {
        Some(id) => id,
        None => state.store.last_event_id().await?,
    };
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    // Events are rows, written by any replica; polling the table by id is
    // simple, ordered and resumable. Half a second is well inside what a
    // person watching an incident notices.
    let stream = futures::stream::unfold(
        (
            cursor,
            Vec::<meridian_store::failover::Event>::new().into_iter(),
        ),
        move |(mut cursor, mut pending)| {
            let (store, shutdown, policy) = (store.clone(), shutdown.clone(), policy.clone());
            async move {
                loop {
                    if let Some(e) = pending.next() {
                        cursor = e.id;
                        let sse = Sse::default()
                            .id(e.id.to_string())
                            .event(e.kind.clone())
                            .json_data(&e)
                            .ok()?;
                        return Some((Ok::<_, std::convert::Infallible>(sse), (cursor, pending)));
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    match store.events_after(cursor, policy.as_deref(), 500).await {
                        Ok(batch) => pending = batch.into_iter(),
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: cannot read events; retrying")
                        }
                    }
                }
            }
        },
    );
    // A comment first, so the response starts at once: some clients
    // (Firefox's fetch) report a stream open only when its first bytes
    // arrive, which would otherwise wait for the first event.
    let opened = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Sse::default().comment("stream open"))
    });
    Ok(
        axum::response::sse::Sse::new(futures::StreamExt::chain(opened, stream))
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

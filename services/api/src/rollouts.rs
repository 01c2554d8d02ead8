//! Rollout endpoints (issue 18): where each route's rollout is, and the
//! operators' actions on it, queued for the failover leader's next step.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_rollout::Action;
use serde_json::json;

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::request::query_pairs;
use crate::AppState;

/// The traffic series' bucket: a point every 10 s is what a person reads
/// off a chart of a few minutes, and 90 points at most for the longest.
const SERIES_BUCKET: Duration = Duration::from_secs(10);
/// Minutes of traffic a series may ask for: load reports are kept
/// `RETENTION` (15 min), so more would be a chart with a blank start.
const MAX_MINUTES: u32 = (meridian_store::load_reports::RETENTION.as_secs() / 60) as u32;

/// The stored status of every rollout of a policy, by route.
#[utoipa::path(get, path = "/api/v1/policies/{name}/rollouts", tag = "rollouts", params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, description = "`{route: status}`: phase, step, weights per zone, the last analysis with its numbers, and why (see docs/rollouts.md)", body = Object), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.store.get(&name).await?;
    let statuses = state.store.rollout_statuses(&name).await?;
    Ok(Json(statuses).into_response())
}

/// The route's stored rollout status, or 404 saying which is missing.
async fn rollout_status(
    state: &AppState,
    name: &str,
    route: &str,
) -> Result<meridian_rollout::Status, ApiError> {
    state.store.get(name).await?;
    state
        .store
        .rollout_statuses(name)
        .await?
        .remove(route)
        .ok_or_else(|| {
            meridian_store::Error::NoRollout {
                policy: name.to_owned(),
                route: route.to_owned(),
            }
            .into()
        })
}

/// `?minutes=N`: 1 to [`MAX_MINUTES`], default 5.
fn minutes_param(raw: Option<&str>) -> Result<u32, ApiError> {
    let mut minutes = 5;
    for (_, v) in query_pairs(raw, &["minutes"])? {
        minutes = v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_MINUTES).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_resource(
                    "query",
                    vec![meridian_policy::FieldError::new(
                        "minutes",
                        format!(
                            "must be a whole number of minutes from 1 to {MAX_MINUTES} (load reports are kept {MAX_MINUTES} minutes), not {v:?}"
                        ),
                    )],
                )
            })?;
    }
    Ok(minutes)
}

/// A rollout's traffic over time, for the dashboard's chart: requests and
/// failures of the canary's version and of every other version, in
/// 10-second buckets, from the load reports the data planes sent.
#[utoipa::path(get, path = "/api/v1/policies/{name}/rollouts/{route}/traffic", tag = "rollouts",
    params(("name" = String, Path, description = "Policy name"), ("route" = String, Path, description = "Route name"),
        ("minutes" = Option<u32>, Query, description = "How far back: 1 to 15 minutes (load reports are kept 15), default 5")),
    responses(
        (status = 200, description = "`{policy, route, version, fromMs, toMs, bucketSeconds, buckets: [{startMs, canary: {requests, failures}, stable: {requests, failures}}]}`, oldest first; buckets without reports are left out. Counts are of the route's own clusters where the data planes reported them (a route under a rollout), else of the policy's shared clusters per version.", body = Object),
        (status = 400, description = "Unknown query parameter", body = ErrorBody),
        (status = 404, description = "No such policy, or no rollout on the route", body = ErrorBody),
        (status = 422, description = "`minutes` out of range", body = ErrorBody),
    ))]
pub async fn traffic(
    State(state): State<AppState>,
    Path((name, route)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let minutes = minutes_param(query.as_deref())?;
    let status = rollout_status(&state, &name, &route).await?;
    let window = Duration::from_secs(u64::from(minutes) * 60);
    let to_ms = chrono::Utc::now().timestamp_millis();
    let buckets = state
        .store
        .version_series(&name, &route, &status.version, window, SERIES_BUCKET)
        .await?;
    let counts = |t: meridian_store::load_reports::LoadTotals| json!({"requests": t.requests, "failures": t.failures});
    let buckets: Vec<serde_json::Value> = buckets
        .into_iter()
        .map(|b| json!({"startMs": b.start_ms, "canary": counts(b.canary), "stable": counts(b.stable)}))
        .collect();
    Ok(Json(json!({
        "policy": name,
        "route": route,
        "version": status.version,
        "fromMs": to_ms - window.as_millis() as i64,
        "toMs": to_ms,
        "bucketSeconds": SERIES_BUCKET.as_secs(),
        "buckets": buckets,
    }))
    .into_response())
}

/// Pause, resume, promote or abort a route's rollout. Queued for the
/// failover leader's next step (within a second); audited.
#[utoipa::path(post, path = "/api/v1/policies/{name}/rollouts/{route}/{action}", tag = "rollouts",
    params(("name" = String, Path, description = "Policy name"), ("route" = String, Path, description = "Route name"),
        ("action" = String, Path, description = "`pause`, `resume`, `promote` or `abort`")),
    responses(
        (status = 202, description = "`{policy, route, action, changes}`: queued; `changes: false` when the rollout is already so", body = Object),
        (status = 404, description = "No such policy, or no rollout on the route", body = ErrorBody),
        (status = 409, description = "`conflict`: the action does not apply in the rollout's phase (resuming a failed rollout)", body = ErrorBody),
        (status = 422, description = "Unknown action", body = ErrorBody),
    ))]
pub async fn act(
    State(state): State<AppState>,
    Path((name, route, action)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let Ok(action) = serde_json::from_value::<Action>(json!(action)) else {
        return Err(ApiError::invalid(vec![meridian_policy::FieldError::new(
            "action",
            format!("unknown action {action:?}: use pause, resume, promote or abort"),
        )]));
    };
    let changes = state
        .store
        .request_rollout_action(&name, &route, action, &caller().actor)
        .await?
        .is_some();
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"policy": name, "route": route, "action": action.as_str(), "changes": changes}),
        ),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_one_to_the_retention() {
        for (raw, want) in [
            (None, Some(5)),
            (Some("minutes=1"), Some(1)),
            (Some("minutes=15"), Some(15)),
            (Some("minutes=0"), None),
            (Some("minutes=16"), None),
            (Some("minutes=-1"), None),
            (Some("minutes=2.5"), None),
            (Some("minutes="), None),
            (Some("minutes=abc"), None),
        ] {
            let got = minutes_param(raw);
            assert_eq!(got.as_ref().ok().copied(), want, "{raw:?}");
            if let Err(e) = got {
                assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{raw:?}");
                assert_eq!(e.body.details[0].field, "minutes");
            }
        }
        // An unknown parameter is the usual 400, not a silent default.
        let unknown = minutes_param(Some("mins=3")).unwrap_err();
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        assert_eq!(MAX_MINUTES, 15);
    }
}

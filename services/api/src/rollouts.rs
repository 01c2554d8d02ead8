//! Rollout endpoints (issue 18): where each route's rollout is, and the
//! operators' actions on it, queued for the failover leader's next step.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_rollout::Action;
use serde_json::json;

use crate::auth::caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

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

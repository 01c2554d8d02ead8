//! Meridian's REST API.
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; it binds
//! nothing, so tests can drive it in-process and the binary decides where
//! it listens.

mod ca;
pub mod error;
mod failover;
mod openapi;
mod policies;
mod providers;
pub mod request;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_store::Store;
use serde_json::json;
use tower_http::trace::TraceLayer;

pub use openapi::ApiDoc;

/// Lists this replica's connected xDS clients as JSON (from the xDS role).
pub type XdsClients = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Present when this process runs the xDS role.
    pub xds_clients: Option<XdsClients>,
    /// Every flag must be up before `/readyz` says ready (e.g. the first
    /// xDS snapshot is loaded), so a load balancer never sends clients to a
    /// replica that would serve them an empty config.
    pub ready: Vec<Arc<AtomicBool>>,
    /// Cancelled at shutdown: long-lived responses (event streams) end with it,
    /// so draining does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState {
            store,
            xds_clients: None,
            ready: Vec::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }
}

/// The REST API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/v1/policies",
            get(policies::list).post(policies::create),
        )
        .route(
            "/api/v1/policies/:name",
            get(policies::get)
                .put(policies::replace)
                .patch(policies::patch)
                .delete(policies::delete),
        )
        .route("/api/v1/policies/:name/revisions", get(policies::revisions))
        .route("/api/v1/policies/:name/rollback", post(policies::rollback))
        .route(
            "/api/v1/policies/:name/override",
            axum::routing::put(failover::set_override).delete(failover::clear_override),
        )
        .route(
            "/api/v1/policies/:name/zones/:zone/drain",
            post(failover::drain),
        )
        .route(
            "/api/v1/policies/:name/zones/:zone/undrain",
            post(failover::undrain),
        )
        .route("/api/v1/policies/:name/status", get(failover::status))
        .route(
            "/api/v1/providers",
            get(providers::list).post(providers::create),
        )
        .route(
            "/api/v1/providers/:name",
            get(providers::get)
                .put(providers::replace)
                .delete(providers::delete),
        )
        .route("/api/v1/events", get(failover::events))
        .route("/api/v1/events/stream", get(failover::event_stream))
        .route("/api/v1/xds/clients", get(xds_clients))
        .route("/api/v1/ca", get(ca::get))
        .route("/api/v1/ca/rotate", post(ca::rotate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::map_response(error::json_errors))
        // Our handlers read bodies through `request::read_body`, which
        // enforces the 1 MiB limit with our own error; this keeps axum's
        // extractors from applying their 2 MiB default instead.
        .layer(axum::extract::DefaultBodyLimit::max(request::MAX_BODY))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Alive: the process answers.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready: the roles have loaded their initial state and the database
/// answers within a second.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let unavailable = |message: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "unavailable", "message": message})),
        )
    };
    if !state.ready.iter().all(|flag| flag.load(Ordering::Acquire)) {
        return unavailable("still loading the initial configuration");
    }
    let ok = tokio::time::timeout(Duration::from_secs(1), state.store.ping())
        .await
        .unwrap_or(false);
    if ok {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        unavailable("the database does not answer")
    }
}

/// The xDS clients connected to this replica, with per-type versions sent,
/// ACKed and NACKed.
async fn xds_clients(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, error::ApiError> {
    match &state.xds_clients {
        Some(list) => Ok(Json(json!({"items": list()}))),
        None => Err(error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "role_not_running",
            "this replica does not run the xds role",
        )),
    }
}

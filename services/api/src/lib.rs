//! Meridian's REST API.
//!
//! [`router`] builds the whole HTTP surface from an [`AppState`]; it binds
//! nothing, so tests can drive it in-process and the binary decides where
//! it listens.

pub mod auth;
mod ca;
mod dashboard;
pub mod error;
mod failover;
pub(crate) mod gitops;
pub mod metrics;
mod openapi;
mod policies;
mod providers;
pub mod request;
mod rollouts;
mod tokens;

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
    /// Who may call; off (everyone is an anonymous admin) unless set.
    pub auth: Arc<meridian_auth::Authenticator>,
    /// Whether the API address serves `/metrics` (open, without
    /// credentials); `false` leaves it to the admin address.
    pub metrics_on_api: bool,
}

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState {
            store,
            xds_clients: None,
            ready: Vec::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            auth: Arc::new(meridian_auth::Authenticator::off()),
            metrics_on_api: true,
        }
    }
}

/// The REST API.
pub fn router(state: AppState) -> Router {
    let metrics: axum::routing::MethodRouter<AppState> = if state.metrics_on_api {
        get(metrics::serve)
    } else {
        get(|| async { StatusCode::NOT_FOUND })
    };
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
        .route("/api/v1/policies/:name/rollouts", get(rollouts::list))
        .route(
            "/api/v1/policies/:name/rollouts/:route/traffic",
            get(rollouts::traffic),
        )
        .route(
            "/api/v1/policies/:name/rollouts/:route/:action",
            post(rollouts::act),
        )
        .route("/api/v1/policies/:name/status", get(failover::status))
        .route("/api/v1/policies/:name/simulate", post(failover::simulate))
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
        .route(
            "/api/v1/gitops/sources",
            get(gitops::list).post(gitops::create),
        )
        .route(
            "/api/v1/gitops/sources/:name",
            get(gitops::get).put(gitops::replace).delete(gitops::delete),
        )
        .route("/api/v1/gitops/sources/:name/sync", post(gitops::sync))
        .route("/api/v1/gitops/sources/:name/status", get(gitops::status))
        .route("/api/v1/gitops/sources/:name/syncs", get(gitops::syncs))
        .route("/api/v1/gitops/webhook/:name", post(gitops::webhook))
        .route("/api/v1/gitops/apply", post(gitops::apply_set))
        .route("/api/v1/events", get(failover::events))
        .route("/api/v1/events/stream", get(failover::event_stream))
        .route("/api/v1/xds/clients", get(xds_clients))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/api/v1/tokens/:name",
            axum::routing::delete(tokens::revoke),
        )
        .route("/api/v1/audit", get(tokens::audit))
        .route("/api/v1/dashboard/overview", get(dashboard::overview))
        .route("/api/v1/dashboard/events", get(dashboard::recent_events))
        .route("/api/v1/ca", get(ca::get))
        .route("/api/v1/ca/rotate", post(ca::rotate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/readyz/xds", get(readyz_xds))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", metrics)
        // After routing, so it knows the route and so what the request needs.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        // Before authentication and any query: while the database is known
        // to be down, a request that needs it is answered 503 at once.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            database_gate,
        ))
        // Before authentication (route layers run outermost last-added):
        // text PostgreSQL cannot store never reaches a token lookup or a
        // handler.
        .route_layer(axum::middleware::from_fn(request::storable_uri))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::map_response(error::json_errors))
        // Our handlers read bodies through `request::read_body`, which
        // enforces the 1 MiB limit with our own error; this keeps axum's
        // extractors from applying their 2 MiB default instead.
        .layer(axum::extract::DefaultBodyLimit::max(request::MAX_BODY))
        // A bug must cost one request a 500, not the connection: a panic
        // would otherwise close it without an answer.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            internal_error,
        ))
        // Every response is started within this; streams (SSE) send their
        // headers at once and are not cut.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIME_LIMIT,
        ))
        .layer(TraceLayer::new_for_http())
        // Outermost, so it sees the final status (after json_errors) and
        // its span encloses every log line of the request. `Router::layer`
        // runs after routing, so the matched route template is known.
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// The operator's endpoints alone (`/metrics`, `/healthz`, `/readyz`), for
/// a replica that does not serve the REST API (`--admin-addr`).
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/readyz/xds", get(readyz_xds))
        .route("/metrics", get(metrics::serve))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

/// How long a request may take before it gets 408.
pub const REQUEST_TIME_LIMIT: Duration = Duration::from_secs(30);

fn internal_error(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked; answering 500");
    error::ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server log",
    )
    .into_response()
}

/// Alive: the process answers.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Routes that answer without the database: everything else waits for it.
fn needs_database(path: &str) -> bool {
    path.starts_with("/api/v1/") && path != "/api/v1/xds/clients"
}

/// While the database is known to be down (the store's checks, every
/// second), a request that needs it gets 503 with `Retry-After` at once,
/// rather than holding a connection slot for the pool's whole acquire
/// timeout first. A 503 that a handler met anyway prompts a check, so the
/// next requests learn of it without waiting for the monitor's tick.
async fn database_gate(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    if !needs_database(&path) {
        return next.run(request).await;
    }
    if state.store.is_down() {
        return error::ApiError::unavailable(
            "the database is not reachable; retry after the Retry-After interval",
        )
        .into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && response
            .headers()
            .contains_key(axum::http::header::RETRY_AFTER)
    {
        let store = state.store.clone();
        tokio::spawn(async move { store.check().await });
    }
    response
}

fn unavailable(message: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "unavailable", "message": message})),
    )
}

/// API readiness (`/readyz`): the roles have loaded their initial state
/// and the database answers. A load balancer in front of the REST or gRPC
/// API uses this: without the database those can only answer 503.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    // A draining replica stops taking new work: load balancers that still
    // hold a kept-alive connection to it move away.
    if state.shutdown.is_cancelled() {
        return unavailable("shutting down");
    }
    if !state.ready.iter().all(|flag| flag.load(Ordering::Acquire)) {
        return unavailable("still loading the initial configuration");
    }
    // A fresh check (at most CHECK_TIMEOUT), which also updates what the
    // database gate knows.
    if state.store.check().await {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        unavailable("the database does not answer")
    }
}

/// xDS readiness (`/readyz/xds`): the first snapshot is loaded and the
/// replica is not draining. The database is not asked: while it is down a
/// replica keeps serving its last snapshot, which is what Envoy should
/// get, so a load balancer in front of the xDS port (and a Kubernetes
/// readiness probe of replicas serving xDS) uses this, and a database blip
/// takes no replica out of service.
async fn readyz_xds(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        return unavailable("shutting down");
    }
    if state.xds_clients.is_none() {
        return unavailable("this replica does not run the xds role");
    }
    if !state.ready.iter().all(|flag| flag.load(Ordering::Acquire)) {
        return unavailable("the first xDS snapshot is not loaded yet");
    }
    let body =
        json!({"status": "ready", "database": if state.store.is_down() { "down" } else { "up" }});
    (StatusCode::OK, Json(body))
}

/// The xDS clients connected to this replica, with per-type versions sent,
/// ACKed and NACKed.
#[utoipa::path(get, path = "/api/v1/xds/clients", tag = "xds",
    responses(
        (status = 200, description = "`{items: [client]}`", body = Object),
        (status = 503, description = "This replica does not run the xds role", body = error::ErrorBody),
    ))]
pub(crate) async fn xds_clients(
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

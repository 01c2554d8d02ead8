//! The OpenAPI 3.1 document, generated from the handlers and types.

use axum::response::IntoResponse;
use axum::Json;
use utoipa::OpenApi;

use crate::{ca, dashboard, error, failover, gitops, policies, providers, rollouts, tokens};

#[derive(OpenApi)]
#[openapi(
    info(title = "Meridian", description = "Multi-cloud traffic governance control plane: GlobalTrafficPolicy API."),
    paths(
        policies::create,
        policies::list,
        policies::get,
        policies::replace,
        policies::patch,
        policies::delete,
        policies::revisions,
        policies::rollback,
        gitops::list,
        gitops::create,
        gitops::get,
        gitops::replace,
        gitops::delete,
        gitops::sync,
        gitops::status,
        gitops::syncs,
        gitops::webhook,
        gitops::apply_set,
        failover::status,
        failover::simulate,
        failover::set_override,
        failover::clear_override,
        failover::drain,
        failover::undrain,
        rollouts::list,
        rollouts::act,
        rollouts::traffic,
        failover::events,
        providers::list,
        providers::create,
        providers::get,
        providers::replace,
        providers::delete,
        tokens::list,
        tokens::create,
        tokens::revoke,
        tokens::audit,
        dashboard::overview,
        dashboard::recent_events,
        ca::get,
        ca::rotate,
        crate::xds_clients,
    ),
    components(schemas(error::ErrorBody, meridian_policy::FieldError)),
    tags(
        (name = "policies", description = "GlobalTrafficPolicy resources"),
        (name = "gitops", description = "Policy repositories synced atomically"),
        (name = "failover", description = "Where traffic goes and why; overrides and drains. The live event stream, `GET /api/v1/events/stream` (server-sent events, resumable with Last-Event-ID), is not described here: OpenAPI has no stream type."),
        (name = "rollouts", description = "Progressive delivery: where each route's canary rollout is, and pause, resume, promote or abort (docs/rollouts.md)."),
        (name = "providers", description = "DNS providers the failover leader reconciles"),
        (name = "access", description = "API tokens and the audit log (admin)"),
        (name = "dashboard", description = "Reads shaped for the SRE dashboard"),
        (name = "mtls", description = "The workload certificate authority"),
        (name = "xds", description = "xDS clients of this replica"),
    )
)]
pub struct ApiDoc;

pub async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every REST route the router serves under /api/v1 is in the document,
    /// so clients can be generated from it and schemathesis fuzzes it. Read
    /// from the router's source: axum cannot list its routes.
    #[test]
    fn every_api_route_is_documented() {
        let doc = ApiDoc::openapi();
        let documented: Vec<String> = doc.paths.paths.keys().cloned().collect();
        let source = include_str!("lib.rs");
        let (mut missing, mut seen) = (Vec::new(), 0);
        for piece in source.split(".route(").skip(1) {
            let Some(path) = piece.trim_start().strip_prefix('"') else {
                continue;
            };
            let path = &path[..path.find('"').unwrap()];
            // A stream has no OpenAPI form; its tag's description names it.
            if !path.starts_with("/api/v1/") || path == "/api/v1/events/stream" {
                continue;
            }
            let templated: String = path
                .split('/')
                .map(|seg| match seg.strip_prefix(':') {
                    Some(name) => format!("{{{name}}}"),
                    None => seg.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            seen += 1;
            if !documented.contains(&templated) {
                missing.push(templated);
            }
        }
        assert!(missing.is_empty(), "undocumented routes: {missing:?}");
        // The source was read: the router has this many API routes.
        assert!(seen >= 25, "found only {seen} routes in lib.rs");
    }

    /// The resilience and rollout fields are in the policy schema clients are
    /// generated from (utoipa collects nested schemas from the paths).
    #[test]
    fn the_policy_schema_has_the_resilience_fields() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("Spec", "outlierDetection"),
            ("Spec", "circuitBreakers"),
            ("Route", "timeoutMs"),
            ("Route", "retries"),
            ("Retries", "retryOn"),
            ("OutlierDetection", "consecutive5xx"),
            ("CircuitBreakers", "retryBudget"),
            ("Canary", "rollout"),
            ("Rollout", "steps"),
            ("Rollout", "zoneOrder"),
            ("RolloutAnalysis", "maxFailureRateIncreasePercent"),
            ("PrometheusQuery", "query"),
        ] {
            assert!(
                schemas[schema]["properties"].get(field).is_some(),
                "{schema}.{field} missing from the OpenAPI document"
            );
        }
        assert!(schemas["RetryOn"]
            .to_string()
            .contains("retriable-status-codes"));
    }
}

//! Request metrics, request ids, and the `/metrics` route.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_telemetry::{counter, histogram, Counter, Family, HistogramFamily, Labels};
use tracing::Instrument;

/// Header carrying the request id, taken from the client when it sends a
/// usable one (so a proxy's id follows the request), else generated.
pub const REQUEST_ID: &str = "x-request-id";

static REQUESTS: LazyLock<Family<Labels<3>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_http_requests",
        "REST requests by method, route template and status code.",
    )
});

static LATENCY: LazyLock<HistogramFamily<2>> = LazyLock::new(|| {
    histogram(
        "meridian_http_request_duration_seconds",
        "Time to the response head by method and route template (an event stream counts until its head is sent).",
        meridian_telemetry::LATENCY_SECONDS,
    )
});

/// Records every request by its route *template* (`/api/v1/policies/:name`),
/// never the raw path: one series per route, whatever names clients send.
/// Also gives each request a span with its id, so every log line a
/// request causes can be found by that id.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let id = request_id(request.headers().get(REQUEST_ID));
    // The `otel.*` and semantic-convention fields shape the exported span;
    // logs show them as ordinary fields.
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        request_id = %id,
        %method,
        %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    meridian_telemetry::traces::set_parent_from(&span, request.headers());
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let status = response.status().as_u16().to_string();
    REQUESTS
        .get_or_create(&[
            ("method", method.clone()),
            ("route", route.clone()),
            ("status", status),
        ])
        .inc();
    LATENCY
        .get_or_create(&[("method", method), ("route", route)])
        .observe(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The client's id when it is short printable ASCII; a new one otherwise.
fn request_id(given: Option<&HeaderValue>) -> String {
    if let Some(v) = given.and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_owned();
        }
    }
    // Unique per process and unlikely to repeat across replicas: start
    // time plus a counter, no randomness source needed.
    static START: LazyLock<u64> = LazyLock::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    });
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:x}-{:x}-{}",
        *START,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `GET /metrics`: every family of this process, OpenMetrics text.
pub async fn serve() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, meridian_telemetry::CONTENT_TYPE)],
        meridian_telemetry::render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_usable_and_made_otherwise() {
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&given)), "abc-123");
        let spaced = HeaderValue::from_static("has space");
        let a = request_id(Some(&spaced));
        let b = request_id(None);
        assert_ne!(a, "has space");
        assert_ne!(a, b, "generated ids must differ");
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert!(request_id(Some(&long)).len() < 100);
    }
}

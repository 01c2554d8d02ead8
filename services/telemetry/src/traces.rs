//! Trace export: the spans Meridian already makes for logs (a REST request,
//! a gRPC call, a store write, a GitOps sync, a failover decision) are also
//! sent to an OpenTelemetry collector over OTLP/gRPC when an endpoint is
//! configured.
//!
//! Two filters, because logs and traces answer different questions: the
//! log filter (`MERIDIAN_LOG`) picks what is printed, the trace filter what
//! is exported. Raising one never floods the other.
//!
//! A caller's W3C `traceparent` is honoured ([`set_parent_from`]), so a
//! request from a traced client shows up inside the client's trace.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How long one export may take. It bounds the flush at shutdown too, so a
/// collector that is down cannot hold up a SIGTERM for longer than this.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and what to export.
#[derive(Clone, Debug)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC address, `http://host:4317`.
    pub endpoint: String,
    /// Fraction of new traces kept, 0 to 1. A trace a caller started keeps
    /// the caller's decision (parent-based), so a trace is never cut in half.
    pub sample_ratio: f64,
    /// `EnvFilter` directives for exported spans.
    pub filter: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// `service.instance.id`: which replica made the span.
    pub instance: String,
}

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Endpoint(String),
    #[error("sample ratio {0} is not between 0 and 1")]
    SampleRatio(f64),
    #[error("trace filter: {0}")]
    Filter(String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Checks an OTLP endpoint before anything starts: plain `http://` with a
/// host. TLS to the collector is not built in; the usual deployment sends
/// to a collector agent on the same node or pod.
pub fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| Error::Endpoint(format!("{endpoint:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(Error::Endpoint(format!(
                "{endpoint:?}: TLS to the collector is not supported; send to a local collector agent over http://"
            )))
        }
        _ => {
            return Err(Error::Endpoint(format!(
                "{endpoint:?} must start with http:// (OTLP over gRPC)"
            )))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(Error::Endpoint(format!("{endpoint:?} has no host")));
    }
    Ok(())
}

/// Checks every setting; what [`provider`] and the binary's settings
/// validation share.
pub fn check(settings: &OtlpSettings) -> Result<(), Error> {
    check_endpoint(&settings.endpoint)?;
    if !(0.0..=1.0).contains(&settings.sample_ratio) {
        return Err(Error::SampleRatio(settings.sample_ratio));
    }
    tracing_subscriber::EnvFilter::try_new(&settings.filter)
        .map_err(|e| Error::Filter(e.to_string()))?;
    Ok(())
}

/// The tracer provider exporting in batches. Must be called inside a Tokio
/// runtime: the gRPC channel's connection runs on it, while the batching
/// itself has a thread of its own.
pub(crate) fn provider(settings: &OtlpSettings) -> Result<SdkTracerProvider, Error> {
    check(settings)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| Error::Exporter(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", settings.instance.clone()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The tracing layer that turns spans into OpenTelemetry spans.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("meridian"))
        // Span events carry the log lines inside a span; locations and
        // thread names would only add bytes.
        .with_location(false)
        .with_threads(false)
}

/// Reads trace context from HTTP headers (REST) or gRPC metadata, which
/// tonic hands over as the same `HeaderMap`.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a child of the caller's trace when the request carries a
/// valid `traceparent`; otherwise it stays a root. Also records the trace
/// id in the span's `trace_id` field (when it has one), so log lines can be
/// joined to traces. Without trace export this does nothing.
pub fn set_parent_from(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        span.set_parent(parent);
    }
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: &str) -> OtlpSettings {
        OtlpSettings {
            endpoint: endpoint.into(),
            sample_ratio: 1.0,
            filter: "info".into(),
            service_name: "meridian".into(),
            instance: "test".into(),
        }
    }

    #[test]
    fn endpoints_must_be_plain_http_with_a_host() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("http://otel-collector.observability:4317").is_ok());
        for bad in [
            "",
            "127.0.0.1:4317",
            "grpc://x:4317",
            "http://",
            "not a url",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?} was accepted");
        }
        let tls = check_endpoint("https://collector:4317").unwrap_err();
        assert!(tls.to_string().contains("TLS"), "{tls}");
    }

    #[test]
    fn ratio_and_filter_are_checked() {
        assert!(check(&settings("http://c:4317")).is_ok());
        let mut s = settings("http://c:4317");
        s.sample_ratio = 1.5;
        assert!(matches!(check(&s), Err(Error::SampleRatio(_))));
        s.sample_ratio = 0.5;
        s.filter = "info,[".into();
        assert!(matches!(check(&s), Err(Error::Filter(_))));
    }

    #[test]
    fn a_traceparent_makes_the_span_a_child_of_the_callers_trace() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            let span = tracing::info_span!("http", trace_id = tracing::field::Empty);
            set_parent_from(&span, &headers);
            let context = span.context();
            let ids = context.span().span_context().clone();
            assert_eq!(
                ids.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );

            // A malformed header leaves the span a root of a new trace.
            headers.insert("traceparent", "00-zz-01".parse().unwrap());
            let other = tracing::info_span!("http", trace_id = tracing::field::Empty);
            set_parent_from(&other, &headers);
            let context = other.context();
            let fresh = context.span().span_context().trace_id();
            assert_ne!(fresh.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(fresh, opentelemetry::trace::TraceId::INVALID);
        });
    }
}

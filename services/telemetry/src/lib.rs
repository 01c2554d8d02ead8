//! Process-wide telemetry for every Meridian crate.
//!
//! Metrics: one registry per process, because Prometheus scrapes a process,
//! not a crate. A crate declares its families once, as statics, with the
//! helpers here:
//!
//! ```
//! use std::sync::LazyLock;
//! use meridian_telemetry::{counter, Counter, Family, Labels};
//!
//! static SYNCS: LazyLock<Family<Labels<2>, Counter>> =
//!     LazyLock::new(|| counter("meridian_gitops_syncs", "GitOps syncs by source and outcome."));
//!
//! SYNCS.get_or_create(&[("source", "repo-a".into()), ("outcome", "ok".into())]).inc();
//! assert!(meridian_telemetry::render().contains("meridian_gitops_syncs_total{source=\"repo-a\",outcome=\"ok\"} 1"));
//! ```
//!
//! A family is listed in `/metrics` once it has a first label set; a crate
//! that wants its series shown at zero from start-up creates them in an
//! `init()` that the binary calls.
//!
//! Logs and traces: [`init`] installs the `tracing` subscriber: log lines
//! human-readable or one JSON object per line, and spans exported over
//! OTLP when a collector is configured ([`traces`]).

pub mod traces;

use std::sync::{LazyLock, Mutex, MutexGuard};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::{Family, MetricConstructor};
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// A label set of `N` fixed names. Values are owned strings so that
/// families can be labelled by policy, zone or provider names.
pub type Labels<const N: usize> = [(&'static str, String); N];

/// A histogram family with fixed buckets.
pub type HistogramFamily<const N: usize> = Family<Labels<N>, Histogram, Buckets>;

/// Latency buckets in seconds, 1 ms to 10 s: covers a loopback database
/// write and a slow DNS provider alike.
pub const LATENCY_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Builds each histogram of a family with the same buckets.
#[derive(Clone, Copy, Debug)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;

struct Telemetry {
    registry: Registry,
    /// Run before every render: gauges that are cheaper to read on demand
    /// (pool sizes) than to keep current.
    hooks: Vec<Hook>,
}

static GLOBAL: LazyLock<Mutex<Telemetry>> = LazyLock::new(|| {
    Mutex::new(Telemetry {
        registry: Registry::default(),
        hooks: Vec::new(),
    })
});

fn global() -> MutexGuard<'static, Telemetry> {
    // A panic while holding the lock leaves the registry usable: it only
    // ever gains entries.
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `metric` under `name` in the process registry. Prefer the
/// typed helpers below; this is for metric kinds they do not cover.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    global().registry.register(name, help, metric);
}

/// A counter family. Prometheus shows it as `<name>_total`.
pub fn counter<const N: usize>(name: &str, help: &str) -> Family<Labels<N>, Counter> {
    let family = Family::default();
    register(name, help, family.clone());
    family
}

/// A gauge family.
pub fn gauge<const N: usize>(name: &str, help: &str) -> Family<Labels<N>, Gauge> {
    let family = Family::default();
    register(name, help, family.clone());
    family
}

/// A gauge of fractions (ratios, rates), which an integer gauge would round away.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A family of [`FloatGauge`]s.
pub fn float_gauge<const N: usize>(name: &str, help: &str) -> Family<Labels<N>, FloatGauge> {
    let family = Family::default();
    register(name, help, family.clone());
    family
}

/// One gauge without labels (a family with no labels would render `name{}`).
pub fn single_gauge(name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    register(name, help, gauge.clone());
    gauge
}

/// A histogram family with `buckets` (upper bounds, ascending).
pub fn histogram<const N: usize>(
    name: &str,
    help: &str,
    buckets: &'static [f64],
) -> HistogramFamily<N> {
    let family = Family::new_with_constructor(Buckets(buckets));
    register(name, help, family.clone());
    family
}

/// Runs `hook` before every [`render`], e.g. to copy a pool's size into a gauge.
pub fn on_render(hook: impl Fn() + Send + Sync + 'static) {
    global().hooks.push(Box::new(hook));
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every registered family in the OpenMetrics text format.
pub fn render() -> String {
    let telemetry = global();
    for hook in &telemetry.hooks {
        hook();
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &telemetry.registry);
    out
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the enclosing spans
    /// (request id, xDS node id), for a log pipeline.
    Json,
}

/// Keeps trace export running; [`Guard::shutdown`] flushes what is
/// batched. Dropping it without a shutdown loses the last batch.
#[must_use = "spans are exported only while the guard lives"]
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Guard {
    /// Sends the spans still batched, waiting at most
    /// [`traces::EXPORT_TIMEOUT`], and stops exporting. Call it while the
    /// Tokio runtime that [`init`] ran in is still alive.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "could not flush traces at shutdown");
            }
        }
    }
}

/// Installs the global `tracing` subscriber: log lines to standard error,
/// filtered by `log_filter` (an `EnvFilter` directive such as
/// `info,sqlx=warn`), and, with `otlp`, spans exported to a collector under
/// their own filter. With `otlp`, call it inside a Tokio runtime.
pub fn init(
    format: LogFormat,
    log_filter: &str,
    otlp: Option<&traces::OtlpSettings>,
) -> Result<Guard, traces::Error> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry};

    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt.with_filter(EnvFilter::new(log_filter)).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .with_filter(EnvFilter::new(log_filter))
            .boxed(),
    };
    let (provider, spans) = match otlp {
        Some(settings) => {
            let provider = traces::provider(settings)?;
            let filter = EnvFilter::try_new(&settings.filter)
                .map_err(|e| traces::Error::Filter(e.to_string()))?;
            let layer = traces::layer(&provider).with_filter(filter);
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Guard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_labels_and_move() {
        let requests = counter::<1>("test_requests", "Requests.");
        let latency = histogram::<1>("test_latency_seconds", "Latency.", LATENCY_SECONDS);
        let depth = single_gauge("test_depth", "Depth.");
        let before = render();
        assert!(!before.contains("test_requests_total{"), "{before}");

        requests.get_or_create(&[("route", "/a".into())]).inc();
        requests.get_or_create(&[("route", "/a".into())]).inc();
        latency
            .get_or_create(&[("route", "/a".into())])
            .observe(0.003);
        depth.set(7);

        let after = render();
        assert!(
            after.contains("test_requests_total{route=\"/a\"} 2"),
            "{after}"
        );
        assert!(
            after.contains("test_latency_seconds_bucket{le=\"0.005\",route=\"/a\"} 1"),
            "{after}"
        );
        assert!(
            after.contains("test_latency_seconds_bucket{le=\"0.0025\",route=\"/a\"} 0"),
            "{after}"
        );
        assert!(after.contains("test_depth 7"), "{after}");
        assert!(after.ends_with("# EOF\n"));
    }

    #[test]
    fn hooks_run_before_each_render() {
        let seen = single_gauge("test_hooked", "Set by a hook.");
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let (g, c) = (seen.clone(), counter.clone());
        on_render(move || {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            g.set(n);
        });
        let first = render();
        let second = render();
        let value = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("test_hooked "))
                .and_then(|v| v.parse::<i64>().ok())
        };
        let (a, b) = (value(&first), value(&second));
        assert!(a.is_some() && b > a, "{a:?} then {b:?}");
    }
}

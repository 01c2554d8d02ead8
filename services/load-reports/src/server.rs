//! The LRS tonic service and the flusher that writes its tallies.

use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use meridian_store::{LoadRow, Store};
use meridian_telemetry::{counter, Counter, Family, Labels};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use xds_api::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};

use crate::tally::{initial_response, merge, tally, Tallies, REPORT_INTERVAL};

/// How often a replica writes what its streams reported.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How often old buckets are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

static REPORTS: LazyLock<Family<Labels<1>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_load_reports",
        "Load reports (LRS) this replica received, by outcome (counted, or ignored when they named no Meridian cluster).",
    )
});

static REQUESTS: LazyLock<Family<Labels<2>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_load_reported_requests",
        "Requests clients reported through LRS to this replica, by policy and outcome (ok or failed).",
    )
});

/// The Load Reporting Service of one replica; cheap to clone.
#[derive(Clone)]
pub struct Service {
    pending: Arc<Mutex<Tallies>>,
    shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Service {
    /// A service whose counts [`Service::run_flusher`] writes.
    pub fn new(shutdown: CancellationToken) -> Service {
        for outcome in ["counted", "ignored"] {
            REPORTS
                .get_or_create(&[("outcome", outcome.into())])
                .inc_by(0);
        }
        Service {
            pending: Arc::default(),
            shutdown,
        }
    }

    /// The tonic service, to add to the xDS port's routes.
    pub fn server(&self) -> LoadReportingServiceServer<Service> {
        LoadReportingServiceServer::new(self.clone())
    }

    /// Adds one report's counts to what the next flush writes.
    pub fn record(&self, report: &LoadStatsRequest) {
        let counts = tally(report);
        let outcome = if counts.is_empty() {
            "ignored"
        } else {
            "counted"
        };
        REPORTS.get_or_create(&[("outcome", outcome.into())]).inc();
        for (key, c) in &counts {
            REQUESTS
                .get_or_create(&[("policy", key.policy.clone()), ("outcome", "ok".into())])
                .inc_by(c.requests - c.failures);
            REQUESTS
                .get_or_create(&[("policy", key.policy.clone()), ("outcome", "failed".into())])
                .inc_by(c.failures);
        }
        if !counts.is_empty() {
            merge(&mut self.pending.lock().unwrap(), counts);
        }
    }

    /// Writes the pending counts as `reporter` every [`FLUSH_EVERY`], and
    /// prunes old buckets now and then, until shutdown (then flushes once
    /// more). A failed write keeps the counts for the next one.
    pub async fn run_flusher(self, store: Store, reporter: String) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = self.shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            self.flush(&store, &reporter).await;
            if stopping {
                return;
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = store.prune_load_reports().await {
                    tracing::warn!(error = %e, "pruning old load reports");
                }
            }
        }
    }

    /// Writes what is pending now; on failure puts it back.
    pub async fn flush(&self, store: &Store, reporter: &str) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        if batch.is_empty() {
            return;
        }
        let rows: Vec<LoadRow> = batch
            .iter()
            .map(|(k, c)| LoadRow {
                policy: k.policy.clone(),
                zone: k.zone.clone(),
                version: k.version.clone(),
                route: k.route.clone(),
                requests: c.requests,
                failures: c.failures,
            })
            .collect();
        if let Err(e) = store.add_load_reports(reporter, &rows).await {
            tracing::warn!(error = %e, "writing load reports; keeping them for the next flush");
            merge(&mut self.pending.lock().unwrap(), batch);
        }
    }
}

#[tonic::async_trait]
impl LoadReportingService for Service {
    type StreamLoadStatsStream = BoxStream<LoadStatsResponse>;

    /// One client's reports. The first message identifies the node and is
    /// answered with what to report and how often; every later one is
    /// counted. The stream ends with the client, or at shutdown.
    /// <https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/load_stats/v3/lrs.proto>
    async fn stream_load_stats(
        &self,
        request: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let service = self.clone();
        tokio::spawn(async move {
            let mut answered = false;
            loop {
                let report = tokio::select! {
                    _ = service.shutdown.cancelled() => break,
                    msg = inbound.message() => match msg {
                        Ok(Some(report)) => report,
                        // A client hanging up is routine.
                        Ok(None) | Err(_) => break,
                    },
                };
                // Every message may carry stats (Envoy's first does not).
                service.record(&report);
                if !answered {
                    answered = true;
                    let node = report.node.as_ref().map(|n| n.id.as_str()).unwrap_or("");
                    tracing::debug!(node, "load reporting stream opened");
                    if tx
                        .send(Ok(initial_response(REPORT_INTERVAL)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            // Dropping `tx` ends the response stream.
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

//! The health role: probes every endpoint of every zone and reports.
//!
//! One task per endpoint probes on the policy's interval with its timeout
//! (HTTP status in `expectedStatus`, TCP connect, or the gRPC health
//! service). Results land in a sliding window per policy and zone; every
//! [`Config::report_every`] this checker's tallies are upserted to the
//! store, where the failover leader combines the reports of every checker.
//! The prober decides nothing: a replica with its own network trouble only
//! casts one vote.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use meridian_failover::endpoints::EndpointTally;
use meridian_failover::health::{tally, Sample, Window};
use meridian_policy::{validate::status_ranges, HealthCheck, HealthProtocol, Policy};
use meridian_store::failover::ReportRow;
use meridian_store::Store;
use meridian_telemetry::{
    counter, float_gauge, histogram, Counter, Family, FloatGauge, HistogramFamily, Labels,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

static PROBES: LazyLock<Family<Labels<3>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_health_probes",
        "Probes this replica sent, by policy, zone and result (ok or fail).",
    )
});

static PROBE_SECONDS: LazyLock<HistogramFamily<1>> = LazyLock::new(|| {
    histogram(
        "meridian_health_probe_duration_seconds",
        "Probe round trip by protocol (http, tcp, grpc); a timeout counts as its limit.",
        meridian_telemetry::LATENCY_SECONDS,
    )
});

static FAILURE_RATIO: LazyLock<Family<Labels<2>, FloatGauge>> = LazyLock::new(|| {
    float_gauge(
        "meridian_health_zone_failure_ratio",
        "Share of failed probes in the zone's window as this replica sees it (0 to 1), by policy and zone.",
    )
});

#[derive(Clone, Debug)]
pub struct Config {
    /// This checker's name in the reports (unique per replica).
    pub checker: String,
    pub report_every: Duration,
    /// How often the set of endpoints is re-read from the store.
    pub refresh_every: Duration,
    /// Local address HTTP and TCP probes leave from (`--probe-source`): on a
    /// host with several interfaces, the path this checker vouches for.
    pub source: Option<IpAddr>,
}

/// One endpoint to probe, and how. Equal targets keep their running task.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Target {
    policy: String,
    zone: String,
    address: String,
    port: u32,
    check: CheckKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CheckKey {
    protocol: HealthProtocol,
    path: String,
    interval_ms: u32,
    timeout_ms: u32,
    expected_status: String,
}

impl From<&HealthCheck> for CheckKey {
    fn from(h: &HealthCheck) -> Self {
        CheckKey {
            protocol: h.protocol,
            path: h.path.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            expected_status: h.expected_status.clone(),
        }
    }
}

struct Outcome {
    policy: String,
    zone: String,
    /// `address:port` of the endpoint probed.
    endpoint: String,
    sample: Sample,
    error: Option<String>,
    /// The endpoint answered, rightly or wrongly (a failure may still be
    /// an answer: HTTP 503, gRPC NOT_SERVING).
    answered: bool,
}

/// The windows of one zone as this checker saw it.
struct ZoneWindow {
    window: Window,
    last_error: Option<String>,
    /// Endpoint → its probes in a row that got no answer at all. The zone
    /// is silent for as many rounds as its least silent endpoint.
    silent: BTreeMap<String, u32>,
    /// Endpoint → its own window and failed probes in a row, reported
    /// beside the zone's so the leader can mark one endpoint unhealthy.
    endpoints: BTreeMap<String, (Window, u32)>,
}

impl ZoneWindow {
    fn new(window_seconds: u32) -> ZoneWindow {
        ZoneWindow {
            window: Window::new(window_seconds),
            last_error: None,
            silent: BTreeMap::new(),
            endpoints: BTreeMap::new(),
        }
    }

    /// Each endpoint's window and failing run, pruned to `now_ms`.
    fn endpoint_tallies(&mut self, now_ms: i64) -> BTreeMap<String, EndpointTally> {
        self.endpoints
            .iter_mut()
            .map(|(e, (w, run))| {
                w.prune(now_ms);
                let failures = w.samples().filter(|s| !s.ok).count();
                let t = EndpointTally {
                    samples: w.len().min(u32::MAX as usize) as u32,
                    failures: failures.min(u32::MAX as usize) as u32,
                    failing_run: *run,
                };
                (e.clone(), t)
            })
            .collect()
    }

    fn unanswered_rounds(&self) -> u32 {
        self.silent.values().copied().min().unwrap_or(0)
    }
}

pub struct Prober {
    store: Store,
    config: Config,
}

impl Prober {
    pub fn new(store: Store, config: Config) -> Prober {
        Prober { store, config }
    }

    /// Probes until `shutdown`; every probe task stops with it.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<Outcome>(4096);
        let http = probe_http_client(self.config.source);
        let client = ProbeClient {
            http,
            source: self.config.source,
        };
        let mut tasks: HashMap<Target, JoinHandle<()>> = HashMap::new();
        let mut windows: BTreeMap<(String, String), ZoneWindow> = BTreeMap::new();
        let mut refresh = tokio::time::interval(self.config.refresh_every);
        let mut report = tokio::time::interval(self.config.report_every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = refresh.tick() => match self.store.all().await {
                    Ok(policies) => reconcile(&policies, &mut tasks, &mut windows, &tx, &client, &shutdown),
                    Err(e) => tracing::warn!(error = %e, "health: cannot read policies; probing the last known set"),
                },
                Some(o) = rx.recv() => {
                    if let Some(w) = windows.get_mut(&(o.policy, o.zone)) {
                        w.window.insert(o.sample);
                        let window_seconds = (w.window.window_ms() / 1000) as u32;
                        let (ew, failing) = w
                            .endpoints
                            .entry(o.endpoint.clone())
                            .or_insert_with(|| (Window::new(window_seconds), 0));
                        ew.insert(o.sample);
                        *failing = if o.sample.ok { 0 } else { failing.saturating_add(1) };
                        let run = w.silent.entry(o.endpoint).or_default();
                        *run = if o.answered { 0 } else { run.saturating_add(1) };
                        if o.error.is_some() {
                            w.last_error = o.error;
                        }
                    }
                }
                _ = report.tick() => {
                    let now = chrono::Utc::now().timestamp_millis();
                    let rows: Vec<_> = windows
                        .iter_mut()
                        .map(|((p, z), w)| {
                            w.window.prune(now);
                            let t = tally(&w.window, &self.config.checker);
                            let ratio = match t.samples {
                                0 => 0.0,
                                n => f64::from(t.failures) / f64::from(n),
                            };
                            FAILURE_RATIO
                                .get_or_create(&[("policy", p.clone()), ("zone", z.clone())])
                                .set(ratio);
                            ReportRow {
                                policy: p.clone(),
                                zone: z.clone(),
                                samples: t.samples as i32,
                                failures: t.failures as i32,
                                unanswered_rounds: w.unanswered_rounds().min(i32::MAX as u32) as i32,
                                last_error: w.last_error.clone(),
                                endpoints: w.endpoint_tallies(now),
                            }
                        })
                        .collect();
                    if let Err(e) = self.store.report_health_rounds(&self.config.checker, &rows).await {
                        tracing::warn!(error = %e, "health: cannot report; will retry next round");
                    }
                }
            }
        }
        for (_, task) in tasks {
            task.abort();
        }
    }
}

/// Starts tasks for new endpoints, stops those of removed or changed ones.
fn reconcile(
    policies: &[Policy],
    tasks: &mut HashMap<Target, JoinHandle<()>>,
    windows: &mut BTreeMap<(String, String), ZoneWindow>,
    tx: &mpsc::Sender<Outcome>,
    client: &ProbeClient,
    shutdown: &CancellationToken,
) {
    let mut wanted = HashSet::new();
    let mut zones = BTreeMap::new();
    for p in policies {
        for z in &p.spec.zones {
            zones.insert(
                (p.metadata.name.clone(), z.name.clone()),
                p.spec.failover.window_seconds,
            );
            for e in &z.endpoints {
                let t = Target {
                    policy: p.metadata.name.clone(),
                    zone: z.name.clone(),
                    address: e.address.clone(),
                    port: e.port,
                    check: CheckKey::from(&p.spec.health_check),
                };
                wanted.insert(t);
            }
        }
    }
    tasks.retain(|t, task| {
        let keep = wanted.contains(t);
        if !keep {
            task.abort();
        }
        keep
    });
    for t in &wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(t.clone()) {
            let t = slot.key().clone();
            slot.insert(tokio::spawn(probe_loop(
                t,
                tx.clone(),
                client.clone(),
                shutdown.clone(),
            )));
        }
    }
    let endpoints: HashSet<(String, String, String)> = wanted
        .iter()
        .map(|t| {
            (
                t.policy.clone(),
                t.zone.clone(),
                authority(&t.address, t.port),
            )
        })
        .collect();
    for ((p, z), w) in windows.iter_mut() {
        // A removed endpoint's silence must not hold the zone down.
        w.silent
            .retain(|e, _| endpoints.contains(&(p.clone(), z.clone(), e.clone())));
        w.endpoints
            .retain(|e, _| endpoints.contains(&(p.clone(), z.clone(), e.clone())));
    }
    windows.retain(|k, _| {
        let keep = zones.contains_key(k);
        if !keep {
            // A deleted zone's rate would otherwise stay frozen in /metrics.
            FAILURE_RATIO.remove(&[("policy", k.0.clone()), ("zone", k.1.clone())]);
        }
        keep
    });
    for (k, secs) in zones {
        let w = windows.entry(k).or_insert_with(|| ZoneWindow::new(secs));
        if w.window.window_ms() != i64::from(secs) * 1000 {
            *w = ZoneWindow::new(secs);
        }
    }
}

async fn probe_loop(
    t: Target,
    tx: mpsc::Sender<Outcome>,
    client: ProbeClient,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(t.check.interval_ms)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(u64::from(t.check.timeout_ms));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, probe(&t, &client)).await {
            Ok(r) => r,
            Err(_) => Err(Failed::silent(format!(
                "no answer within {} ms",
                t.check.timeout_ms
            ))),
        };
        PROBE_SECONDS
            .get_or_create(&[("protocol", protocol_label(t.check.protocol).into())])
            .observe(started.elapsed().as_secs_f64());
        PROBES
            .get_or_create(&[
                ("policy", t.policy.clone()),
                ("zone", t.zone.clone()),
                ("result", if result.is_ok() { "ok" } else { "fail" }.into()),
            ])
            .inc();
        let at_ms = chrono::Utc::now().timestamp_millis();
        let outcome = Outcome {
            policy: t.policy.clone(),
            zone: t.zone.clone(),
            endpoint: authority(&t.address, t.port),
            sample: Sample {
                at_ms,
                ok: result.is_ok(),
            },
            answered: result.as_ref().map_or_else(|e| e.answered, |_| true),
            error: result
                .err()
                .map(|e| format!("{}:{}: {}", t.address, t.port, e.message)),
        };
        if tx.send(outcome).await.is_err() {
            return;
        }
    }
}

fn protocol_label(p: HealthProtocol) -> &'static str {
    match p {
        HealthProtocol::Http => "http",
        HealthProtocol::Tcp => "tcp",
        HealthProtocol::Grpc => "grpc",
    }
}

/// The same names the leader and EDS use for endpoints.
fn authority(address: &str, port: u32) -> String {
    meridian_failover::endpoints::authority(address, port)
}

/// The HTTP client of probes. Redirects are not followed: a backend's
/// answer is judged as it is (a 3xx against `expectedStatus`), so a
/// backend cannot steer Meridian's probes to other addresses.
fn probe_http_client(source: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        // A fresh connection per probe: a pooled one can hide a listener that is gone.
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source)
        .build()
        .expect("HTTP client")
}

/// What probes go out with: one HTTP client (no pooling) and the source address.
#[derive(Clone)]
struct ProbeClient {
    http: reqwest::Client,
    source: Option<IpAddr>,
}

/// Why a probe failed, and whether the endpoint answered at all.
struct Failed {
    message: String,
    /// False for silence (refused, reset, timed out): the signal that
    /// fails a zone within seconds, whatever its window says.
    answered: bool,
}

impl Failed {
    fn silent(message: impl std::fmt::Display) -> Failed {
        Failed {
            message: message.to_string(),
            answered: false,
        }
    }

    fn answer(message: impl std::fmt::Display) -> Failed {
        Failed {
            message: message.to_string(),
            answered: true,
        }
    }
}

async fn probe(t: &Target, client: &ProbeClient) -> Result<(), Failed> {
    let http = &client.http;
    let authority = authority(&t.address, t.port);
    match t.check.protocol {
        HealthProtocol::Tcp => {
            let addr = tokio::net::lookup_host(&authority)
                .await
                .map_err(Failed::silent)?
                .next()
                .ok_or_else(|| Failed::silent(format!("{authority} resolves to nothing")))?;
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(Failed::silent)?;
            if let Some(source) = client.source {
                socket
                    .bind((source, 0).into())
                    .map_err(|e| Failed::silent(format!("binding {source}: {e}")))?;
            }
            socket.connect(addr).await.map(drop).map_err(Failed::silent)
        }
        HealthProtocol::Http => {
            let response = http
                .get(format!("http://{authority}{}", t.check.path))
                .send()
                .await
                // No response at all: refused, reset, timed out.
                .map_err(Failed::silent)?;
            let status = response.status().as_u16();
            let ranges = status_ranges(&t.check.expected_status).unwrap_or_default();
            if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) {
                Ok(())
            } else {
                Err(Failed::answer(format!(
                    "HTTP {status}, expected {}",
                    t.check.expected_status
                )))
            }
        }
        HealthProtocol::Grpc => {
            use tonic_health::pb::{
                health_check_response::ServingStatus, health_client::HealthClient,
                HealthCheckRequest,
            };
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
                .map_err(Failed::silent)?
                .connect()
                .await
                .map_err(Failed::silent)?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|s| Failed::answer(format!("{}: {}", s.code(), s.message())))?;
            match reply.into_inner().status() {
                ServingStatus::Serving => Ok(()),
                other => Err(Failed::answer(format!("gRPC health {other:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod redirect_tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers every request with `response`, counting requests.
    async fn server(response: String) -> (u16, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf).await;
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        (port, hits)
    }

    #[tokio::test]
    async fn probes_do_not_follow_redirects() {
        let (elsewhere, hits) =
            server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into())
                .await;
        let (backend, _) = server(format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{elsewhere}/internal\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ))
        .await;
        let client = super::probe_http_client(None);
        let r = client
            .get(format!("http://127.0.0.1:{backend}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 302);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "the probe followed the redirect"
        );
    }
}

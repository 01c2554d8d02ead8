//! HTTP backends that stand for a zone's endpoints: each answers any
//! request with its zone, its version and the request headers it got, so
//! tests can count where traffic went and what it carried. A path
//! with `/sleep/<ms>` in it answers after that long.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub struct Backend {
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: JoinHandle<()>,
    failing: Arc<Failing>,
}

/// A share of requests answered 503, spread evenly: request n fails when
/// floor((n+1)·share) > floor(n·share). `/healthz` is never failed, so
/// probes see a healthy zone while its real traffic fails.
#[derive(Default)]
struct Failing {
    per_mille: AtomicU32,
    served: AtomicU64,
    /// `/healthz` answers 503 to this share, at random (noise, not a
    /// pattern): what a health endpoint that is mostly fine looks like.
    health_per_mille: AtomicU32,
    /// xorshift64 state for the health failures; seeded, so a run can be
    /// repeated.
    rng: AtomicU64,
    /// Every request but `/healthz` answers this much later: a slow
    /// version, for latency analysis.
    delay_ms: AtomicU64,
}

impl Failing {
    fn next_fails(&self) -> bool {
        let share = u64::from(self.per_mille.load(Ordering::SeqCst));
        if share == 0 {
            return false;
        }
        let n = self.served.fetch_add(1, Ordering::SeqCst);
        (n + 1) * share / 1000 > n * share / 1000
    }

    fn health_fails(&self) -> bool {
        let share = u64::from(self.health_per_mille.load(Ordering::SeqCst));
        if share == 0 {
            return false;
        }
        let mut x = self.rng.load(Ordering::SeqCst).max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::SeqCst);
        x % 1000 < share
    }
}

impl Backend {
    /// Serves on `ip:port` (port 0 picks one). Use a distinct loopback
    /// address per zone (127.0.0.2, 127.0.0.3, ...) to tell zones apart.
    pub async fn start(ip: &str, port: u16, zone: &str, version: &str) -> Backend {
        Self::start_failing_for(ip, port, zone, version, None).await
    }

    /// Like [`Backend::start`], but answers 503 to every request that comes
    /// from `failing_peer`: one client's broken path to a healthy zone.
    pub async fn start_failing_for(
        ip: &str,
        port: u16,
        zone: &str,
        version: &str,
        failing_peer: Option<std::net::IpAddr>,
    ) -> Backend {
        let listener = tokio::net::TcpListener::bind((ip, port))
            .await
            .unwrap_or_else(|e| panic!("bind backend {ip}:{port}: {e}"));
        let addr = listener.local_addr().unwrap();
        let who = json!({"zone": zone, "version": version, "addr": addr.to_string()});
        let failing = Arc::new(Failing::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state((who, failing_peer, failing.clone()))
            .into_make_service_with_connect_info::<SocketAddr>();
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
                .ok();
        });
        Backend {
            addr,
            stop,
            task,
            failing,
        }
    }

    /// From now on answers 503 to `per_mille` of every 1000 requests (but
    /// never to `/healthz`): a zone failing part of its real traffic.
    pub fn fail_share(&self, per_mille: u32) {
        self.failing
            .per_mille
            .store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// From now on answers every request but `/healthz` `ms` later: a
    /// version that is slow, not broken.
    pub fn delay(&self, ms: u64) {
        self.failing.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on `/healthz` answers 503 to `per_mille` of probes, drawn at
    /// random from a generator seeded with `seed`; other requests are not
    /// affected. A zone whose health is noisy rather than bad.
    pub fn fail_health_randomly(&self, per_mille: u32, seed: u64) {
        self.failing.rng.store(seed.max(1), Ordering::SeqCst);
        self.failing
            .health_per_mille
            .store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// From now on `/healthz` answers 503 (`true`) or 200 (`false`) while
    /// real requests are still served: an endpoint only the control
    /// plane's checks can tell is bad.
    pub fn fail_health(&self, down: bool) {
        self.fail_health_randomly(if down { 1000 } else { 0 }, 1);
    }

    /// Stops like a crashed zone: no new connections, and the open ones
    /// (Envoy's pooled keep-alives included) are closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Answering = (Value, Option<std::net::IpAddr>, Arc<Failing>);

async fn answer(
    State((who, failing_peer, failing)): State<Answering>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Json<Value>, axum::http::StatusCode> {
    if failing_peer == Some(peer.ip()) {
        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }
    // `.../sleep/<ms>...`: a slow backend, for timeouts and circuit breakers.
    if let Some(ms) = uri
        .path()
        .split_once("/sleep/")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let delay = failing.delay_ms.load(Ordering::SeqCst);
    if delay > 0 && uri.path() != "/healthz" {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if uri.path() != "/healthz" && failing.next_fails() {
        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }
    if uri.path() == "/healthz" && failing.health_fails() {
        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = who;
    body["headers"] = json!(headers);
    Ok(Json(body))
}

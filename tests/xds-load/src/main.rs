//! `xds-load`: opens many ADS streams against Meridian, every one subscribed
//! to the endpoints (EDS) of one policy, half state-of-the-world and half
//! delta, one HTTP/2 connection each as sidecars would. Then it changes that
//! policy through the REST API several times and reports, over every stream
//! and change, how long after the REST write returned the stream received
//! the new version. It also reports the server's memory per idle stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Parser)]
struct Args {
    /// Meridian's xDS address.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    xds: String,
    /// Meridian's REST API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Policy whose endpoints every stream subscribes to, and that is changed.
    #[arg(long, default_value = "bench-hot")]
    policy: String,
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Policy changes to time.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Meridian's process id, to read its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Create (PUT) this many policies `bench-0000`.. and the hot one, then exit.
    #[arg(long)]
    seed: Option<usize>,
}

/// What one stream has seen: how many responses, and when each arrived.
#[derive(Default)]
struct Seen {
    arrivals: Mutex<Vec<Instant>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.seed {
        return seed(&args.api, &args.policy, n).await;
    }
    let rss_before = args.server_pid.map(rss_kib).transpose()?;
    let ready = Arc::new(AtomicUsize::new(0));
    let mut seen = Vec::with_capacity(args.streams);
    let started = Instant::now();
    // Connect in waves so the server's accept queue is not the thing measured.
    for wave in (0..args.streams).collect::<Vec<_>>().chunks(250) {
        let mut joins = Vec::new();
        for &i in wave {
            let s = Arc::new(Seen::default());
            seen.push(s.clone());
            let (xds, policy, ready) = (args.xds.clone(), args.policy.clone(), ready.clone());
            joins.push(tokio::spawn(async move {
                stream(i, xds, policy, s, ready).await
            }));
        }
        for j in joins {
            j.await?.context("opening a stream")?;
        }
    }
    wait_for(
        || ready.load(Ordering::Relaxed) >= args.streams,
        Duration::from_secs(120),
    )
    .await
    .context("not every stream got its first response")?;
    println!(
        "streams: {} ({} SotW, {} delta), all subscribed in {:.1} s",
        args.streams,
        args.streams.div_ceil(2),
        args.streams / 2,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let (Some(pid), Some(before)) = (args.server_pid, rss_before) {
        let after = rss_kib(pid)?;
        println!("server memory: {} MiB before streams, {} MiB with them idle: {:.1} KiB per idle stream",
            before / 1024, after / 1024, (after.saturating_sub(before)) as f64 / args.streams as f64);
    }

    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    for change in 0..args.changes {
        let counts: Vec<usize> = seen
            .iter()
            .map(|s| s.arrivals.lock().unwrap().len())
            .collect();
        let weight = 10 + (change % 80) as u32;
        let patch = serde_json::json!({"spec": {"zones": [
            {"name": "a", "weight": weight, "endpoints": [{"address": "127.0.9.1", "port": 80}]},
            {"name": "b", "weight": 100 - weight, "endpoints": [{"address": "127.0.9.2", "port": 80}]}]}});
        let r = http
            .patch(format!("{}/api/v1/policies/{}", args.api, args.policy))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await?;
        let written = Instant::now();
        if !r.status().is_success() {
            bail!("PATCH failed: {} {}", r.status(), r.text().await?);
        }
        let all = || {
            seen.iter()
                .zip(&counts)
                .all(|(s, &n)| s.arrivals.lock().unwrap().len() > n)
        };
        wait_for(all, Duration::from_secs(60))
            .await
            .context("a change did not reach every stream")?;
        for (s, &n) in seen.iter().zip(&counts) {
            let at = s.arrivals.lock().unwrap()[n];
            latencies.push(at.saturating_duration_since(written));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "push after REST write returned, {} changes x {} streams: p50 {:?}  p99 {:?}  max {:?}",
        args.changes,
        args.streams,
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}

async fn wait_for(mut done: impl FnMut() -> bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One ADS stream on its own connection; records every response and ACKs it.
async fn stream(
    i: usize,
    xds: String,
    policy: String,
    seen: Arc<Seen>,
    ready: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(xds)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let node = Some(Node {
        id: format!("load-{i}"),
        cluster: "bench".into(),
        ..Default::default()
    });
    if i.is_multiple_of(2) {
        let (tx, rx) = mpsc::channel(4);
        // A SotW request always names the whole subscription, ACKs included.
        let names = vec![policy];
        tx.send(DiscoveryRequest {
            node,
            type_url: EDS.into(),
            resource_names: names.clone(),
            ..Default::default()
        })
        .await?;
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tokio::spawn(async move {
            let mut first = true;
            while let Some(Ok(r)) = responses.next().await {
                seen.arrivals.lock().unwrap().push(Instant::now());
                if std::mem::take(&mut first) {
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                let ack = DiscoveryRequest {
                    type_url: r.type_url,
                    version_info: r.version_info,
                    response_nonce: r.nonce,
                    resource_names: names.clone(),
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        });
    } else {
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest {
            node,
            type_url: EDS.into(),
            resource_names_subscribe: vec![policy],
            ..Default::default()
        })
        .await?;
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tokio::spawn(async move {
            let mut first = true;
            while let Some(Ok(r)) = responses.next().await {
                seen.arrivals.lock().unwrap().push(Instant::now());
                if std::mem::take(&mut first) {
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                let ack = DeltaDiscoveryRequest {
                    type_url: r.type_url,
                    response_nonce: r.nonce,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

fn policy_body(name: &str, host: &str, weight: u32) -> String {
    serde_json::json!({"metadata": {"name": name, "labels": {"team": "bench"}}, "spec": {
        "host": host, "port": 8080, "zones": [
            {"name": "a", "weight": weight, "endpoints": [{"address": "127.0.9.1", "port": 80}]},
            {"name": "b", "weight": 100 - weight, "endpoints": [{"address": "127.0.9.2", "port": 80}]}]}})
    .to_string()
}

/// PUTs `n` policies with 16 requests in flight, then the hot policy.
async fn seed(api: &str, hot: &str, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, next, api) = (http.clone(), next.clone(), api.to_owned());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let name = format!("bench-{i:04}");
                let r = http
                    .put(format!("{api}/api/v1/policies/{name}"))
                    .header("content-type", "application/json")
                    .body(policy_body(&name, &format!("{name}.example.com"), 50))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("PUT {name}: {} {}", r.status(), r.text().await?);
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let r = http
        .put(format!("{api}/api/v1/policies/{hot}"))
        .header("content-type", "application/json")
        .body(policy_body(hot, "hot.example.com", 50))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {hot}: {}", r.status());
    }
    println!(
        "seeded {n} policies and {hot} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

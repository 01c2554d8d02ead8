//! `xds-load`: opens many ADS streams that behave like the README's Envoy
//! bootstrap: wildcard CDS and LDS, then EDS for every cluster and RDS for
//! every route configuration they receive, every response ACKed; half of
//! them state-of-the-world and half delta, multiplexed over a fixed number
//! of HTTP/2 connections. It times the initial sync of all streams, then
//! changes one cluster's endpoint weights several times (Meridian: a REST
//! PATCH of a policy; `xds-minimal`: a line on its control port) and
//! reports how long after the change was accepted each stream had it, the
//! server's CPU per change, and its memory per idle stream.
//!
//! `--seed N` instead creates N policies (two zones each, on 50 ports).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::config::listener::v3::{filter, Listener};
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_api::pb::google::protobuf::value::Kind;
use xds_api::pb::google::protobuf::{Any, ListValue, Struct, Value};

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Parser)]
struct Args {
    /// The xDS server's address.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    xds: String,
    /// Meridian's REST API (changes are PATCHes of `--hot`).
    #[arg(long)]
    api: Option<String>,
    /// `xds-minimal`'s control address (changes are a line `change`).
    #[arg(long)]
    control: Option<String>,
    /// The cluster (Meridian: the policy) whose weights change.
    #[arg(long, default_value = "bench-0000")]
    hot: String,
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Changes to time.
    #[arg(long, default_value_t = 4)]
    changes: usize,
    /// The server's process id, to read its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label for the result line.
    #[arg(long, default_value = "server")]
    label: String,
    /// Create (PUT) this many policies `bench-0000`.., then exit.
    #[arg(long)]
    seed: Option<usize>,
    /// Ports the seeded policies spread over.
    #[arg(long, default_value_t = 50)]
    ports: u32,
    /// Scoped streams: each names this many hosts in its node metadata
    /// (`meridian.hosts`), stream i those of policies i*N to i*N+N-1 (modulo
    /// `--scope-pool`). 0: wildcard, as the README's bootstrap.
    #[arg(long, default_value_t = 0)]
    scoped: usize,
    /// The seeded policies the scoped streams' hosts are drawn from.
    #[arg(long, default_value_t = 10_000)]
    scope_pool: usize,
    /// With `--scoped`: a policy no stream names, changed once to check
    /// that the change sends nothing.
    #[arg(long)]
    unnamed: Option<String>,
}

/// The policy names stream `i` calls when scoped (none: wildcard).
fn scope_of(args: &Args, i: usize) -> Vec<String> {
    (0..args.scoped)
        .map(|k| {
            format!(
                "bench-{:04}",
                (i * args.scoped + k) % args.scope_pool.max(1)
            )
        })
        .collect()
}

/// What one stream has seen.
#[derive(Default)]
struct Seen {
    /// When a response carrying the hot cluster's endpoints arrived.
    hot: Mutex<Vec<Instant>>,
    /// The clusters it holds.
    clusters: Mutex<BTreeSet<String>>,
    /// Responses received, of every type.
    responses: AtomicUsize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.seed {
        let api = args.api.as_deref().context("--seed needs --api")?;
        return seed(api, n, args.ports).await;
    }
    let rss_before = args.server_pid.map(rss_kib).transpose()?;
    let synced = Arc::new(AtomicUsize::new(0));
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(args.xds.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let mut seen = Vec::with_capacity(args.streams);
    // Where the sync's time goes: the server's CPU and this client's.
    let server_cpu_before = args.server_pid.map(cpu_ms_of).transpose()?;
    let client_cpu_before = cpu_ms_of(std::process::id())?;
    let started = Instant::now();
    for i in 0..args.streams {
        let s = Arc::new(Seen::default());
        seen.push(s.clone());
        let channel = channels[i % channels.len()].clone();
        let (hot, synced) = (args.hot.clone(), synced.clone());
        let hosts = scope_of(&args, i);
        if i % 2 == 0 {
            tokio::spawn(sotw(node(i, &hosts), channel, hot, s, synced));
        } else {
            tokio::spawn(delta(node(i, &hosts), channel, hot, s, synced));
        }
    }
    wait_for(
        || synced.load(Ordering::Relaxed) >= args.streams,
        Duration::from_secs(300),
    )
    .await
    .with_context(|| {
        format!(
            "only {} of {} streams synced",
            synced.load(Ordering::Relaxed),
            args.streams
        )
    })?;
    let sync_s = started.elapsed().as_secs_f64();
    let client_sync_cpu_s = (cpu_ms_of(std::process::id())? - client_cpu_before) / 1000.0;
    let server_sync_cpu_s = match (args.server_pid, server_cpu_before) {
        (Some(pid), Some(before)) => (cpu_ms_of(pid)? - before) / 1000.0,
        _ => f64::NAN,
    };
    println!(
        "[{}] {} streams ({} SotW, {} delta) on {} connections: all synced (CDS, EDS for every cluster, LDS, RDS for every route) in {:.2} s; CPU meanwhile: server {:.1} s, this client {:.1} s",
        args.label,
        args.streams,
        args.streams.div_ceil(2),
        args.streams / 2,
        channels.len(),
        sync_s,
        server_sync_cpu_s,
        client_sync_cpu_s
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut kib_per_stream = f64::NAN;
    if let (Some(pid), Some(before)) = (args.server_pid, rss_before) {
        let after = rss_kib(pid)?;
        kib_per_stream = after.saturating_sub(before) as f64 / args.streams as f64;
        println!(
            "[{}] server memory: {} MiB before the streams, {} MiB with them idle: {:.1} KiB per idle stream",
            args.label,
            before / 1024,
            after / 1024,
            kib_per_stream
        );
    }

    let http = reqwest::Client::new();
    // The streams a change of the hot policy must reach.
    let mut targets: Vec<&Arc<Seen>> = seen.iter().collect();
    if args.scoped > 0 {
        targets = scoped_checks(&args, &http, &seen).await?;
    }
    let mut control = match &args.control {
        Some(addr) => Some(Control::connect(addr).await?),
        None => None,
    };
    let mut latencies = Vec::new();
    let mut cpu_ms = 0.0;
    for change in 0..args.changes {
        let counts: Vec<usize> = targets
            .iter()
            .map(|s| s.hot.lock().unwrap().len())
            .collect();
        let cpu_before = args.server_pid.map(cpu_ms_of).transpose()?;
        let written = match (&args.api, control.as_mut()) {
            (Some(api), _) => patch(&http, api, &args.hot, change).await?,
            (None, Some(c)) => c.change().await?,
            (None, None) => bail!("give --api or --control"),
        };
        let all = || {
            targets
                .iter()
                .zip(&counts)
                .all(|(s, &n)| s.hot.lock().unwrap().len() > n)
        };
        wait_for(all, Duration::from_secs(120))
            .await
            .context("a change did not reach every stream")?;
        if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
            cpu_ms += cpu_ms_of(pid)? - before;
        }
        for (s, &n) in targets.iter().zip(&counts) {
            let at = s.hot.lock().unwrap()[n];
            latencies.push(at.saturating_duration_since(written));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "[{}] change reaches every stream, {} changes x {} streams: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms; server CPU {:.0} ms per change",
        args.label,
        args.changes,
        targets.len(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1]),
        cpu_ms / args.changes as f64,
    );
    // One line for scripts.
    println!(
        "RESULT label={} streams={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} sync_s={:.2} sync_server_cpu_s={:.2} sync_client_cpu_s={:.2} cpu_ms_per_change={:.1} kib_per_stream={:.1}",
        args.label,
        args.streams,
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1]),
        sync_s,
        server_sync_cpu_s,
        client_sync_cpu_s,
        cpu_ms / args.changes as f64,
        kib_per_stream
    );
    std::process::exit(0);
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

/// The name (field 1) of an encoded Listener, RouteConfiguration, Cluster
/// or ClusterLoadAssignment, without decoding the rest.
fn name_of(bytes: &[u8]) -> Option<String> {
    let mut b = bytes;
    while !b.is_empty() {
        let key = prost::encoding::decode_varint(&mut b).ok()?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut b).ok()?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = prost::encoding::decode_varint(&mut b).ok()? as usize;
                let (v, rest) = (b.get(..len)?, b.get(len..)?);
                if field == 1 {
                    return String::from_utf8(v.to_vec()).ok();
                }
                b = rest;
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    None
}

/// The route configurations a listener reads over RDS.
fn routes_of(any: &Any) -> Vec<String> {
    let Ok(l) = Listener::decode(any.value.as_slice()) else {
        return Vec::new();
    };
    l.filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => {
                HttpConnectionManager::decode(a.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|h| match h.route_specifier {
            Some(RouteSpecifier::Rds(r)) => Some(r.route_config_name),
            _ => None,
        })
        .collect()
}

/// What an Envoy-like client holds and wants, per stream.
#[derive(Default)]
struct Client {
    clusters: BTreeSet<String>,
    routes: BTreeSet<String>,
    eds_have: BTreeSet<String>,
    rds_have: BTreeSet<String>,
    got_cds: bool,
    got_lds: bool,
    synced: bool,
}

impl Client {
    fn check_synced(&mut self, synced: &AtomicUsize) {
        if !self.synced
            && self.got_cds
            && self.got_lds
            && self.clusters.iter().all(|c| self.eds_have.contains(c))
            && self.routes.iter().all(|r| self.rds_have.contains(r))
        {
            self.synced = true;
            synced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The node of stream `i`; scoped to `policies`' hosts when there are any.
fn node(i: usize, policies: &[String]) -> Option<Node> {
    let metadata = (!policies.is_empty()).then(|| {
        let hosts = policies
            .iter()
            .map(|p| Value {
                kind: Some(Kind::StringValue(format!("{p}.example.com"))),
            })
            .collect();
        Struct {
            fields: [(
                "meridian.hosts".to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: hosts })),
                },
            )]
            .into(),
        }
    });
    Some(Node {
        id: format!("load-{i}"),
        cluster: "bench".into(),
        user_agent_name: "envoy".into(),
        metadata,
        ..Default::default()
    })
}

/// Scoped streams hold only what they name, and a change to a policy none
/// names sends nothing. Returns the streams that name the hot policy.
async fn scoped_checks<'a>(
    args: &Args,
    http: &reqwest::Client,
    seen: &'a [Arc<Seen>],
) -> anyhow::Result<Vec<&'a Arc<Seen>>> {
    let api = args.api.as_deref().context("--scoped needs --api")?;
    let mut outside = 0;
    let mut held = Vec::new();
    let mut targets = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        let want: BTreeSet<String> = scope_of(args, i).into_iter().collect();
        let clusters = s.clusters.lock().unwrap();
        held.push(clusters.len());
        outside += clusters.difference(&want).count();
        if want.contains(&args.hot) {
            targets.push(s);
        }
    }
    println!(
        "[{}] {} streams each naming {} hosts of {} policies hold {}..{} clusters each; clusters held outside a stream's hosts: {}",
        args.label,
        seen.len(),
        args.scoped,
        args.scope_pool,
        held.iter().min().unwrap_or(&0),
        held.iter().max().unwrap_or(&0),
        outside
    );
    if let Some(unnamed) = &args.unnamed {
        let before: usize = seen
            .iter()
            .map(|s| s.responses.load(Ordering::Relaxed))
            .sum();
        let cpu_before = args.server_pid.map(cpu_ms_of).transpose()?;
        patch(http, api, unnamed, 0).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after: usize = seen
            .iter()
            .map(|s| s.responses.load(Ordering::Relaxed))
            .sum();
        let cpu = match (args.server_pid, cpu_before) {
            (Some(pid), Some(b)) => cpu_ms_of(pid)? - b,
            _ => f64::NAN,
        };
        println!(
            "[{}] a change to {unnamed}, which no stream names: {} responses in the 2 s after it (server CPU {:.0} ms)",
            args.label,
            after - before,
            cpu
        );
    }
    if targets.is_empty() {
        bail!("no scoped stream names {}", args.hot);
    }
    Ok(targets)
}

/// A SotW stream: every request names the whole subscription of its type.
async fn sotw(
    node: Option<Node>,
    channel: tonic::transport::Channel,
    hot: String,
    seen: Arc<Seen>,
    synced: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    for ty in [CDS, LDS] {
        tx.send(DiscoveryRequest {
            node: node.clone(),
            type_url: ty.into(),
            ..Default::default()
        })
        .await?;
    }
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut c = Client::default();
    // Per type: (version, nonce) of the last response, for ACKs and new names.
    let mut last: std::collections::HashMap<String, (String, String)> = Default::default();
    while let Some(Ok(r)) = responses.next().await {
        seen.responses.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = r
            .resources
            .iter()
            .filter_map(|a| name_of(&a.value))
            .collect();
        let mut follow = None;
        match r.type_url.as_str() {
            CDS => {
                c.got_cds = true;
                let now: BTreeSet<String> = names.iter().cloned().collect();
                if now != c.clusters {
                    c.clusters = now;
                    seen.clusters.lock().unwrap().clone_from(&c.clusters);
                    follow = Some(EDS);
                }
            }
            LDS => {
                c.got_lds = true;
                let now: BTreeSet<String> = r.resources.iter().flat_map(routes_of).collect();
                if now != c.routes {
                    c.routes = now;
                    follow = Some(RDS);
                }
            }
            EDS => {
                if names.contains(&hot) {
                    seen.hot.lock().unwrap().push(Instant::now());
                }
                c.eds_have.extend(names);
            }
            RDS => c.rds_have.extend(names),
            _ => {}
        }
        last.insert(
            r.type_url.clone(),
            (r.version_info.clone(), r.nonce.clone()),
        );
        let subscription = |ty: &str, c: &Client| -> Vec<String> {
            match ty {
                EDS => c.clusters.iter().cloned().collect(),
                RDS => c.routes.iter().cloned().collect(),
                _ => Vec::new(),
            }
        };
        // ACK.
        tx.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info,
            response_nonce: r.nonce,
            resource_names: subscription(&r.type_url, &c),
            ..Default::default()
        })
        .await?;
        if let Some(ty) = follow {
            let (version, nonce) = last.get(ty).cloned().unwrap_or_default();
            tx.send(DiscoveryRequest {
                type_url: ty.into(),
                version_info: version,
                response_nonce: nonce,
                resource_names: subscription(ty, &c),
                ..Default::default()
            })
            .await?;
        }
        c.check_synced(&synced);
    }
    Ok(())
}

/// A delta stream: subscribes to what CDS and LDS bring, ACKs everything.
async fn delta(
    node: Option<Node>,
    channel: tonic::transport::Channel,
    hot: String,
    seen: Arc<Seen>,
    synced: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    for ty in [CDS, LDS] {
        tx.send(DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: ty.into(),
            ..Default::default()
        })
        .await?;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut c = Client::default();
    while let Some(Ok(r)) = responses.next().await {
        seen.responses.fetch_add(1, Ordering::Relaxed);
        let names: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
        let mut subscribe: Option<(&str, Vec<String>, Vec<String>)> = None;
        match r.type_url.as_str() {
            CDS => {
                c.got_cds = true;
                let mut now = c.clusters.clone();
                now.extend(names.iter().cloned());
                for n in &r.removed_resources {
                    now.remove(n);
                }
                let add: Vec<String> = now.difference(&c.clusters).cloned().collect();
                let drop: Vec<String> = c.clusters.difference(&now).cloned().collect();
                c.clusters = now;
                seen.clusters.lock().unwrap().clone_from(&c.clusters);
                if !add.is_empty() || !drop.is_empty() {
                    subscribe = Some((EDS, add, drop));
                }
            }
            LDS => {
                c.got_lds = true;
                let now: BTreeSet<String> = c
                    .routes
                    .iter()
                    .cloned()
                    .chain(
                        r.resources
                            .iter()
                            .filter_map(|x| x.resource.as_ref())
                            .flat_map(routes_of),
                    )
                    .collect();
                let add: Vec<String> = now.difference(&c.routes).cloned().collect();
                c.routes = now;
                if !add.is_empty() {
                    subscribe = Some((RDS, add, Vec::new()));
                }
            }
            EDS => {
                if names.contains(&hot) {
                    seen.hot.lock().unwrap().push(Instant::now());
                }
                c.eds_have.extend(names);
            }
            RDS => c.rds_have.extend(names),
            _ => {}
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await?;
        if let Some((ty, add, drop)) = subscribe {
            tx.send(DeltaDiscoveryRequest {
                type_url: ty.into(),
                resource_names_subscribe: add,
                resource_names_unsubscribe: drop,
                ..Default::default()
            })
            .await?;
        }
        c.check_synced(&synced);
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

/// User + system CPU time of a process, in ms (clock ticks are 1/100 s here).
fn cpu_ms_of(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks * 10.0)
}

fn zones(weight: u32, i: usize) -> serde_json::Value {
    let a = format!("127.0.{}.{}", 10 + i / 250, 1 + i % 250);
    let b = format!("127.1.{}.{}", 10 + i / 250, 1 + i % 250);
    serde_json::json!([
        {"name": "a", "weight": weight, "endpoints": [{"address": a, "port": 80}]},
        {"name": "b", "weight": 100 - weight, "endpoints": [{"address": b, "port": 80}]}])
}

/// PATCHes the hot policy's weights; returns when the write returned.
async fn patch(
    http: &reqwest::Client,
    api: &str,
    policy: &str,
    change: usize,
) -> anyhow::Result<Instant> {
    // Never the seeded weight of bench-0000 (10): every change is a change.
    let weight = 20 + (change as u32 * 7) % 60;
    let patch = serde_json::json!({"spec": {"zones": zones(weight, 0)}});
    let r = http
        .patch(format!("{api}/api/v1/policies/{policy}"))
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .await?;
    let written = Instant::now();
    if !r.status().is_success() {
        bail!("PATCH failed: {} {}", r.status(), r.text().await?);
    }
    Ok(written)
}

/// `xds-minimal`'s control connection.
struct Control {
    w: tokio::net::tcp::OwnedWriteHalf,
    r: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
}

impl Control {
    async fn connect(addr: &str) -> anyhow::Result<Control> {
        let (r, w) = tokio::net::TcpStream::connect(addr).await?.into_split();
        Ok(Control {
            w,
            r: BufReader::new(r).lines(),
        })
    }

    async fn change(&mut self) -> anyhow::Result<Instant> {
        self.w.write_all(b"change\n").await?;
        self.r.next_line().await?.context("control closed")?;
        Ok(Instant::now())
    }
}

/// PUTs `n` policies `bench-0000`.. (two zones each, spread over `ports`
/// ports) with 16 requests in flight.
async fn seed(api: &str, n: usize, ports: u32) -> anyhow::Result<()> {
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
                let body = serde_json::json!({"metadata": {"name": name, "labels": {"team": "bench"}}, "spec": {
                    "host": format!("{name}.example.com"), "port": 8000 + (i as u32 % ports.max(1)),
                    "zones": zones(10 + (i % 80) as u32, i)}});
                let r = http
                    .put(format!("{api}/api/v1/policies/{name}"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
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
    println!(
        "seeded {n} policies in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

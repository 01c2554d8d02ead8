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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use prost::bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::ProstCodec;
use tonic::codegen::http::uri::PathAndQuery;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::config::listener::v3::{filter, Listener};
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use xds_api::pb::google::protobuf::value::Kind;
use xds_api::pb::google::protobuf::{ListValue, Struct, Value};

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
    /// The clusters it holds, by [`name_hash`].
    clusters: Mutex<Vec<u64>>,
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
        let (hot, synced) = (name_hash(args.hot.as_bytes()), synced.clone());
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

/// The first length-delimited field `field` of an encoded message, as a
/// slice of it (no copy).
fn field_of(bytes: &Bytes, field: u64) -> Option<Bytes> {
    let mut b = &bytes[..];
    while !b.is_empty() {
        let key = prost::encoding::decode_varint(&mut b).ok()?;
        match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut b).ok()?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = prost::encoding::decode_varint(&mut b).ok()? as usize;
                let v = b.get(..len)?;
                if key >> 3 == field {
                    return Some(bytes.slice_ref(v));
                }
                b = &b[len..];
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    None
}

/// The name (field 1) of an encoded Listener, RouteConfiguration, Cluster
/// or ClusterLoadAssignment, without decoding the rest.
fn name_of(resource: &Bytes) -> Option<Bytes> {
    field_of(resource, 1)
}

/// The resource inside an encoded `Any` (its field 2, `value`).
fn value_of(any: &Bytes) -> Option<Bytes> {
    field_of(any, 2)
}

/// The route configurations an encoded Listener reads over RDS.
fn routes_of(listener: &[u8]) -> Vec<Bytes> {
    let Ok(l) = Listener::decode(listener) else {
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
            Some(RouteSpecifier::Rds(r)) => Some(Bytes::from(r.route_config_name)),
            _ => None,
        })
        .collect()
}

/// A resource name's identity in this client: an FNV-1a hash of its bytes.
/// A client holding 10,000 streams' names as hashes keeps none of the
/// responses' buffers alive (a collision among a few thousand names is
/// improbable enough for a benchmark).
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Hashes are their own hash.
#[derive(Default, Clone, Copy)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Names = HashSet<u64, std::hash::BuildHasherDefault<Identity>>;

/// A SotW subscription list (the names of the clusters or route configs a
/// response brought), shared by every stream that received the same, with
/// its `resource_names` field encoded once: an Envoy-like SotW client names
/// all of them in every EDS or RDS request.
struct NameList {
    hashes: Vec<u64>,
    encoded: Bytes,
}

/// Lists by a hash of their names' hashes.
static LISTS: Mutex<Option<HashMap<u64, Arc<NameList>>>> = Mutex::new(None);

/// The shared list of `names` (in the order received).
fn name_list(names: &[Bytes]) -> Arc<NameList> {
    let hashes: Vec<u64> = names.iter().map(|n| name_hash(n)).collect();
    let key = hashes
        .iter()
        .fold(names.len() as u64, |h, n| h.rotate_left(7) ^ n);
    let mut lists = LISTS.lock().unwrap();
    let lists = lists.get_or_insert_with(HashMap::new);
    if let Some(l) = lists.get(&key).filter(|l| l.hashes == hashes) {
        return l.clone();
    }
    let mut encoded = Vec::new();
    for n in names {
        prost::encoding::bytes::encode(3, n, &mut encoded);
    }
    let list = Arc::new(NameList {
        hashes,
        encoded: encoded.into(),
    });
    lists.insert(key, list.clone());
    list
}

/// What an Envoy-like client holds and wants, per stream.
#[derive(Default)]
struct Client {
    clusters: Names,
    routes: Names,
    eds_have: Names,
    rds_have: Names,
    got_cds: bool,
    got_lds: bool,
    synced: bool,
}

impl Client {
    fn check_synced(&mut self, synced: &AtomicUsize) {
        if !self.synced
            && self.got_cds
            && self.got_lds
            && self.eds_have.len() >= self.clusters.len()
            && self.rds_have.len() >= self.routes.len()
            && self.clusters.iter().all(|c| self.eds_have.contains(c))
            && self.routes.iter().all(|r| self.rds_have.contains(r))
        {
            self.synced = true;
            synced.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// The messages as this client reads and writes them: the fields of
// xds-api's DiscoveryRequest/Response and their delta forms that an
// Envoy-like client uses, same tags and wire types, with resources and
// names kept as slices of the received bytes. The bytes on the wire are
// what prost's full types give; only the client's own CPU differs (it
// shares the cores with the server under test).

/// `DiscoveryRequest { version_info = 1, node = 2, resource_names = 3,
/// type_url = 4, response_nonce = 5 }`, its names encoded once per list.
#[derive(Clone, Debug, Default)]
struct SotwRequest {
    version_info: String,
    node: Option<Node>,
    names: Option<Arc<NameList>>,
    type_url: String,
    response_nonce: String,
}

impl std::fmt::Debug for NameList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} names", self.hashes.len())
    }
}

impl prost::Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{message, string};
        if !self.version_info.is_empty() {
            string::encode(1, &self.version_info, buf);
        }
        if let Some(node) = &self.node {
            message::encode(2, node, buf);
        }
        if let Some(names) = &self.names {
            buf.put_slice(&names.encoded);
        }
        string::encode(4, &self.type_url, buf);
        if !self.response_nonce.is_empty() {
            string::encode(5, &self.response_nonce, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded by this client.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{message, string};
        (if self.version_info.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.version_info)
        }) + self.node.as_ref().map_or(0, |n| message::encoded_len(2, n))
            + self.names.as_ref().map_or(0, |n| n.encoded.len())
            + string::encoded_len(4, &self.type_url)
            + (if self.response_nonce.is_empty() {
                0
            } else {
                string::encoded_len(5, &self.response_nonce)
            })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct SotwResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    /// Encoded `Any`s.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaRequest {
    #[prost(message, optional, tag = "1")]
    node: Option<Node>,
    #[prost(string, tag = "2")]
    type_url: String,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    resource_names_subscribe: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    resource_names_unsubscribe: Vec<Bytes>,
    #[prost(string, tag = "6")]
    response_nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    removed_resources: Vec<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResource {
    /// Encoded `Any`.
    #[prost(bytes = "bytes", tag = "2")]
    resource: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    name: Bytes,
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Opens an ADS stream of `Req`s and `Resp`s on `channel`.
async fn open<Req, Resp>(
    channel: tonic::transport::Channel,
    path: &'static str,
    first: Vec<Req>,
) -> anyhow::Result<(mpsc::Sender<Req>, tonic::Streaming<Resp>)>
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let (tx, rx) = mpsc::channel(16);
    for r in first {
        tx.send(r).await?;
    }
    let responses = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(path),
            ProstCodec::<Req, Resp>::default(),
        )
        .await?
        .into_inner();
    Ok((tx, responses))
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
        let names = scope_of(args, i);
        let want: HashSet<u64> = names.iter().map(|n| name_hash(n.as_bytes())).collect();
        let clusters = s.clusters.lock().unwrap();
        held.push(clusters.len());
        outside += clusters.iter().filter(|c| !want.contains(c)).count();
        if names.contains(&args.hot) {
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
    hot: u64,
    seen: Arc<Seen>,
    synced: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let first = [CDS, LDS].map(|ty| SotwRequest {
        node: node.clone(),
        type_url: ty.into(),
        ..Default::default()
    });
    let (tx, mut responses) =
        open::<SotwRequest, SotwResponse>(channel, SOTW_PATH, first.into()).await?;
    let mut c = Client::default();
    let (mut eds_names, mut rds_names) = (None::<Arc<NameList>>, None::<Arc<NameList>>);
    // Per type: (version, nonce) of the last response, for ACKs and new names.
    let mut last: HashMap<String, (String, String)> = HashMap::new();
    while let Some(Ok(r)) = responses.next().await {
        seen.responses.fetch_add(1, Ordering::Relaxed);
        let values = r.resources.iter().filter_map(value_of);
        let mut follow = None;
        match r.type_url.as_str() {
            CDS => {
                c.got_cds = true;
                let names: Vec<Bytes> = values.filter_map(|v| name_of(&v)).collect();
                let list = name_list(&names);
                if !eds_names.as_ref().is_some_and(|l| Arc::ptr_eq(l, &list)) {
                    c.clusters = list.hashes.iter().copied().collect();
                    *seen.clusters.lock().unwrap() = list.hashes.clone();
                    eds_names = Some(list);
                    follow = Some(EDS);
                }
            }
            LDS => {
                c.got_lds = true;
                let mut names: Vec<Bytes> = values.flat_map(|v| routes_of(&v)).collect();
                names.sort();
                names.dedup();
                let list = name_list(&names);
                if !rds_names.as_ref().is_some_and(|l| Arc::ptr_eq(l, &list)) {
                    c.routes = list.hashes.iter().copied().collect();
                    rds_names = Some(list);
                    follow = Some(RDS);
                }
            }
            EDS => {
                let mut hot_here = false;
                for name in values.filter_map(|v| name_of(&v)) {
                    let h = name_hash(&name);
                    hot_here |= h == hot;
                    c.eds_have.insert(h);
                }
                if hot_here {
                    seen.hot.lock().unwrap().push(Instant::now());
                }
            }
            RDS => c
                .rds_have
                .extend(values.filter_map(|v| name_of(&v)).map(|n| name_hash(&n))),
            _ => {}
        }
        let subscription = |ty: &str| match ty {
            EDS => eds_names.clone(),
            RDS => rds_names.clone(),
            _ => None,
        };
        // ACK.
        tx.send(SotwRequest {
            version_info: r.version_info.clone(),
            names: subscription(&r.type_url),
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            node: None,
        })
        .await?;
        last.insert(r.type_url, (r.version_info, r.nonce));
        if let Some(ty) = follow {
            let (version, nonce) = last.get(ty).cloned().unwrap_or_default();
            tx.send(SotwRequest {
                version_info: version,
                names: subscription(ty),
                type_url: ty.into(),
                response_nonce: nonce,
                node: None,
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
    hot: u64,
    seen: Arc<Seen>,
    synced: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let first = [CDS, LDS].map(|ty| DeltaRequest {
        node: node.clone(),
        type_url: ty.into(),
        ..Default::default()
    });
    let (tx, mut responses) =
        open::<DeltaRequest, DeltaResponse>(channel, DELTA_PATH, first.into()).await?;
    let mut c = Client::default();
    while let Some(Ok(r)) = responses.next().await {
        seen.responses.fetch_add(1, Ordering::Relaxed);
        let mut subscribe: Option<(&str, Vec<Bytes>, Vec<Bytes>)> = None;
        match r.type_url.as_str() {
            CDS => {
                c.got_cds = true;
                let add: Vec<Bytes> = r
                    .resources
                    .iter()
                    .filter(|x| c.clusters.insert(name_hash(&x.name)))
                    .map(|x| x.name.clone())
                    .collect();
                let drop: Vec<Bytes> = r
                    .removed_resources
                    .iter()
                    .filter(|n| c.clusters.remove(&name_hash(n)))
                    .cloned()
                    .collect();
                *seen.clusters.lock().unwrap() = c.clusters.iter().copied().collect();
                if !add.is_empty() || !drop.is_empty() {
                    subscribe = Some((EDS, add, drop));
                }
            }
            LDS => {
                c.got_lds = true;
                let mut add: Vec<Bytes> = r
                    .resources
                    .iter()
                    .filter_map(|x| value_of(&x.resource))
                    .flat_map(|v| routes_of(&v))
                    .filter(|n| c.routes.insert(name_hash(n)))
                    .collect();
                add.sort();
                if !add.is_empty() {
                    subscribe = Some((RDS, add, Vec::new()));
                }
            }
            EDS => {
                let mut hot_here = false;
                for x in &r.resources {
                    let h = name_hash(&x.name);
                    hot_here |= h == hot;
                    c.eds_have.insert(h);
                }
                if hot_here {
                    seen.hot.lock().unwrap().push(Instant::now());
                }
            }
            RDS => c
                .rds_have
                .extend(r.resources.iter().map(|x| name_hash(&x.name))),
            _ => {}
        }
        tx.send(DeltaRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        })
        .await?;
        if let Some((ty, add, drop)) = subscribe {
            tx.send(DeltaRequest {
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

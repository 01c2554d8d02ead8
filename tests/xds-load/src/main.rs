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
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::ProstCodec;
use tonic::codegen::http::uri::PathAndQuery;
use xds_api::pb::envoy::config::core::v3::Node;
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

/// Every length-delimited field `field` of an encoded message, in order,
/// read by tag without decoding the rest.
fn fields(mut b: &[u8], field: u64) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        while !b.is_empty() {
            let key = prost::encoding::decode_varint(&mut b).ok()?;
            match key & 7 {
                0 => {
                    prost::encoding::decode_varint(&mut b).ok()?;
                }
                1 => b = b.get(8..)?,
                2 => {
                    let len = prost::encoding::decode_varint(&mut b).ok()? as usize;
                    let (v, rest) = (b.get(..len)?, b.get(len..)?);
                    b = rest;
                    if key >> 3 == field {
                        return Some(v);
                    }
                }
                5 => b = b.get(4..)?,
                _ => return None,
            }
        }
        None
    })
}

/// The first length-delimited field `field` of an encoded message.
fn field(b: &[u8], n: u64) -> Option<&[u8]> {
    fields(b, n).next()
}

/// A string field, empty when absent.
fn string(b: &[u8], n: u64) -> &str {
    field(b, n)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_default()
}

/// The name (field 1) of the resource in an encoded `Any` (its `value`,
/// field 2): a Listener, RouteConfiguration, Cluster or
/// ClusterLoadAssignment.
fn name_in_any(any: &[u8]) -> Option<&[u8]> {
    field(field(any, 2)?, 1)
}

const HCM: &[u8] =
    b"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The route configurations the Listener in an encoded `Any` reads over
/// RDS: `Listener.filter_chains` (3), `FilterChain.filters` (3),
/// `Filter.typed_config` (4, an `Any` of an HttpConnectionManager), its
/// `rds` (3), `Rds.route_config_name` (2).
fn routes_in_any(any: &[u8]) -> Vec<&[u8]> {
    let Some(listener) = field(any, 2) else {
        return Vec::new();
    };
    fields(listener, 3)
        .flat_map(|chain| fields(chain, 3))
        .filter_map(|filter| field(filter, 4))
        .filter(|typed| field(typed, 1) == Some(HCM))
        .filter_map(|typed| field(typed, 2))
        .flat_map(|hcm| fields(hcm, 3))
        .filter_map(|rds| field(rds, 2))
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
fn name_list(names: &[&[u8]]) -> Arc<NameList> {
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
        // `resource_names` and `resource_names_subscribe` are both field 3.
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut encoded);
        prost::encoding::encode_varint(n.len() as u64, &mut encoded);
        encoded.extend_from_slice(n);
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

// The messages as this client writes them: the fields of xds-api's
// DiscoveryRequest and DeltaDiscoveryRequest that an Envoy-like client
// uses, same tags and wire types, with name lists encoded once (see
// [`NameList`]). Responses are read by tag from the received bytes (see
// [`fields`]). The bytes on the wire are what prost's generated types
// give; only the client's own CPU differs, and it shares the cores with
// the server it measures.

/// `DiscoveryRequest { version_info = 1, node = 2, resource_names = 3,
/// type_url = 4, response_nonce = 5 }`.
#[derive(Clone, Debug, Default)]
struct SotwRequest {
    version_info: String,
    node: Option<Node>,
    names: Option<Arc<NameList>>,
    type_url: String,
    response_nonce: String,
}

/// `DeltaDiscoveryRequest { node = 1, type_url = 2,
/// resource_names_subscribe = 3, resource_names_unsubscribe = 4,
/// response_nonce = 6 }`.
#[derive(Clone, Debug, Default)]
struct DeltaRequest {
    node: Option<Node>,
    type_url: String,
    subscribe: Option<Arc<NameList>>,
    unsubscribe: Vec<Bytes>,
    response_nonce: String,
}

impl std::fmt::Debug for NameList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} names", self.hashes.len())
    }
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag)
            + prost::encoding::encoded_len_varint(s.len() as u64)
            + s.len()
    }
}

fn put_string(tag: u32, s: &str, buf: &mut impl prost::bytes::BufMut) {
    if !s.is_empty() {
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

/// Only ever encoded by this client.
macro_rules! encode_only {
    () => {
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: prost::encoding::WireType,
            buf: &mut impl prost::bytes::Buf,
            ctx: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    };
}

impl prost::Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        put_string(1, &self.version_info, buf);
        if let Some(node) = &self.node {
            prost::encoding::message::encode(2, node, buf);
        }
        if let Some(names) = &self.names {
            buf.put_slice(&names.encoded);
        }
        put_string(4, &self.type_url, buf);
        put_string(5, &self.response_nonce, buf);
    }

    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self
                .node
                .as_ref()
                .map_or(0, |n| prost::encoding::message::encoded_len(2, n))
            + self.names.as_ref().map_or(0, |n| n.encoded.len())
            + string_len(4, &self.type_url)
            + string_len(5, &self.response_nonce)
    }

    encode_only!();
}

impl prost::Message for DeltaRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        if let Some(node) = &self.node {
            prost::encoding::message::encode(1, node, buf);
        }
        put_string(2, &self.type_url, buf);
        if let Some(names) = &self.subscribe {
            buf.put_slice(&names.encoded);
        }
        prost::encoding::bytes::encode_repeated(4, &self.unsubscribe, buf);
        put_string(6, &self.response_nonce, buf);
    }

    fn encoded_len(&self) -> usize {
        self.node
            .as_ref()
            .map_or(0, |n| prost::encoding::message::encoded_len(1, n))
            + string_len(2, &self.type_url)
            + self.subscribe.as_ref().map_or(0, |n| n.encoded.len())
            + prost::encoding::bytes::encoded_len_repeated(4, &self.unsubscribe)
            + string_len(6, &self.response_nonce)
    }

    encode_only!();
}

/// Requests encoded by prost; each response handed over as its bytes.
struct RawCodec<Req>(std::marker::PhantomData<Req>);

struct RawDecoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl<Req: prost::Message + Send + 'static> tonic::codec::Codec for RawCodec<Req> {
    type Encode = Req;
    type Decode = Bytes;
    type Encoder = <ProstCodec<Req, ()> as tonic::codec::Codec>::Encoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<Req, ()>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Opens an ADS stream of `Req`s on `channel`; the responses as bytes.
async fn open<Req: prost::Message + Send + 'static>(
    channel: tonic::transport::Channel,
    path: &'static str,
    first: Vec<Req>,
) -> anyhow::Result<(mpsc::Sender<Req>, tonic::Streaming<Bytes>)> {
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
            RawCodec::<Req>(std::marker::PhantomData),
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
    let (tx, mut responses) = open(channel, SOTW_PATH, first.into()).await?;
    let mut c = Client::default();
    let (mut eds_names, mut rds_names) = (None::<Arc<NameList>>, None::<Arc<NameList>>);
    // Per type: (version, nonce) of the last response, for ACKs and new names.
    let mut last: HashMap<String, (String, String)> = HashMap::new();
    while let Some(Ok(r)) = responses.next().await {
        seen.responses.fetch_add(1, Ordering::Relaxed);
        // DiscoveryResponse { version_info = 1, resources = 2 (Any),
        // type_url = 4, nonce = 5 }.
        let (version, ty, nonce) = (string(&r, 1), string(&r, 4), string(&r, 5));
        let resources = fields(&r, 2);
        let mut follow = None;
        match ty {
            CDS => {
                c.got_cds = true;
                let names: Vec<&[u8]> = resources.filter_map(name_in_any).collect();
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
                let mut names: Vec<&[u8]> = resources.flat_map(routes_in_any).collect();
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
                c.eds_have.reserve(c.clusters.len());
                let mut hot_here = false;
                for h in resources.filter_map(name_in_any).map(name_hash) {
                    hot_here |= h == hot;
                    c.eds_have.insert(h);
                }
                if hot_here {
                    seen.hot.lock().unwrap().push(Instant::now());
                }
            }
            RDS => c
                .rds_have
                .extend(resources.filter_map(name_in_any).map(name_hash)),
            _ => {}
        }
        let subscription = |ty: &str| match ty {
            EDS => eds_names.clone(),
            RDS => rds_names.clone(),
            _ => None,
        };
        // ACK.
        tx.send(SotwRequest {
            version_info: version.into(),
            names: subscription(ty),
            type_url: ty.into(),
            response_nonce: nonce.into(),
            node: None,
        })
        .await?;
        last.insert(ty.into(), (version.into(), nonce.into()));
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
    let (tx, mut responses) = open(channel, DELTA_PATH, first.into()).await?;
    let mut c = Client::default();
    while let Some(Ok(r)) = responses.next().await {
        seen.responses.fetch_add(1, Ordering::Relaxed);
        // DeltaDiscoveryResponse { resources = 2 (Resource { resource = 2,
        // name = 3 }), type_url = 4, nonce = 5, removed_resources = 6 }.
        let (ty, nonce) = (string(&r, 4), string(&r, 5));
        let names = || fields(&r, 2).filter_map(|x| field(x, 3));
        let mut subscribe: Option<DeltaRequest> = None;
        match ty {
            CDS => {
                c.got_cds = true;
                let add: Vec<&[u8]> = names()
                    .filter(|n| c.clusters.insert(name_hash(n)))
                    .collect();
                let drop: Vec<Bytes> = fields(&r, 6)
                    .filter(|n| c.clusters.remove(&name_hash(n)))
                    .map(Bytes::copy_from_slice)
                    .collect();
                *seen.clusters.lock().unwrap() = c.clusters.iter().copied().collect();
                if !add.is_empty() || !drop.is_empty() {
                    subscribe = Some(DeltaRequest {
                        type_url: EDS.into(),
                        subscribe: (!add.is_empty()).then(|| name_list(&add)),
                        unsubscribe: drop,
                        ..Default::default()
                    });
                }
            }
            LDS => {
                c.got_lds = true;
                let mut add: Vec<&[u8]> = fields(&r, 2)
                    .filter_map(|x| field(x, 2))
                    .flat_map(routes_in_any)
                    .filter(|n| c.routes.insert(name_hash(n)))
                    .collect();
                add.sort();
                if !add.is_empty() {
                    subscribe = Some(DeltaRequest {
                        type_url: RDS.into(),
                        subscribe: Some(name_list(&add)),
                        ..Default::default()
                    });
                }
            }
            EDS => {
                c.eds_have.reserve(c.clusters.len());
                let mut hot_here = false;
                for h in names().map(name_hash) {
                    hot_here |= h == hot;
                    c.eds_have.insert(h);
                }
                if hot_here {
                    seen.hot.lock().unwrap().push(Instant::now());
                }
            }
            RDS => c.rds_have.extend(names().map(name_hash)),
            _ => {}
        }
        tx.send(DeltaRequest {
            type_url: ty.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        })
        .await?;
        if let Some(request) = subscribe {
            tx.send(request).await?;
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

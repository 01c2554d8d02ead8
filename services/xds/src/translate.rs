//! Pure translation of policies into Envoy resources.
//!
//! # Naming
//!
//! * Clusters (CDS) and their load assignments (EDS): `<policy>` is the
//!   *stable* cluster, holding every endpoint whose version is not a canary
//!   version of one of the policy's routes; `<policy>@<version>` holds the
//!   endpoints of one canary version. A route with a `canary.rollout` has
//!   its own pair, `<policy>@<version>~<route>` and `<policy>~<route>`,
//!   whose locality weights carry each zone's canary percent as its
//!   rollout's status says ([`Rollouts`], [`zone_split`], [`route_split`]).
//!   All are EDS clusters over ADS with locality-weighted round robin;
//!   `grpc` policies talk HTTP/2 upstream (through the deprecated
//!   `http2_protocol_options`, because xds-api 0.2 does not ship `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`).
//! * Zone weights come from [`Weights`] when the policy is in it (failover
//!   rewrites them), else from the spec. A zone with weight 0, or with no
//!   endpoint in a cluster, is left out of that cluster's assignment.
//! * Envoy sidecars: one egress listener `egress_<port>` per distinct policy
//!   port, bound on `127.0.0.1:<port>`, with an HTTP connection manager
//!   reading RouteConfiguration `egress_<port>` over ADS; that route
//!   configuration has one virtual host per policy on the port. A node may
//!   ask for another bind address through node metadata key
//!   [`EGRESS_ADDRESS_METADATA_KEY`]; that is applied per stream (see
//!   [`egress_listener`]), so the shared translation never depends on a node.
//! * Proxyless gRPC: listeners `<host>` and `<host>:<port>` carrying an
//!   `api_listener` (HTTP connection manager reading `grpc_<policy>`), and
//!   RouteConfiguration `grpc_<policy>` with the policy's one virtual host.
//!   These listeners are never part of a wildcard LDS subscription: Envoy
//!   rejects api_listeners over LDS.
//!
//! # Canary headers
//!
//! A canary route splits with `weighted_clusters`; the canary share gets
//! `<header>: true` (overwriting whatever the client sent) and the stable
//! share has the policy's canary headers removed. Every other route removes
//! all canary header names of the policy, so no non-canary request carries
//! one, not even a spoofed one.
//!
//! # Versions
//!
//! Each resource's version is a 64-bit FNV-1a of its encoded bytes, and
//! policies are processed in name order, so replicas given the same policies
//! serve identical bytes and versions.
//!
//! # Cost
//!
//! Linear in the size of the policies (one pass, maps keyed by name). The
//! ignored test `perf_15k_policies` (15,000 policies, 2 zones x 2 endpoints,
//! one canary route each) measured 1.67 s on 2 cores in the *dev* profile
//! (this crate unoptimised); release is expected to be several times faster
//! but was not measured.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use meridian_policy::{MtlsMode, Policy, Protocol};
use prost::Message;
use serde_json::{json, Value};
use xds_api::pb::envoy::config::cluster::v3::{
    circuit_breakers,
    cluster::{
        self, common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, DiscoveryType,
        LbPolicy,
    },
    CircuitBreakers, Cluster, OutlierDetection,
};
use xds_api::pb::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, socket_address, Address, HeaderValue,
    HeaderValueOption, HealthStatus, Http2ProtocolOptions, Locality, SocketAddress,
    TrafficDirection,
};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::envoy::config::listener::v3::{
    filter, listener_filter, ApiListener, Filter, FilterChain, FilterChainMatch, Listener,
    ListenerFilter,
};
use xds_api::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route, route_action, route_action::ClusterSpecifier,
    route_match::PathSpecifier, weighted_cluster::ClusterWeight, HeaderMatcher, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
    },
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use xds_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use xds_api::pb::envoy::r#type::v3::Percent;
use xds_api::pb::google::protobuf::{Any, Duration, UInt32Value};

use crate::envoy::{ads, any_of, this_server};
use crate::tls::{self, Consumer, Peers};
use meridian_xds_engine::{Entry, ResourceType};

/// Effective zone weights: policy name -> zone name -> weight. A policy not
/// in the map uses the weights of its spec.
pub type Weights = HashMap<String, BTreeMap<String, u32>>;

/// Endpoints marked unhealthy by the failover leader: policy name -> zone
/// name -> `ip:port` (see `meridian_failover::endpoints`). EDS serves them
/// with health status UNHEALTHY, so no client sends them traffic.
pub type EndpointHealth = HashMap<String, BTreeMap<String, BTreeSet<String>>>;

/// What a route's rollout serves now, from the failover leader's stored
/// status (docs/rollouts.md): the version it delivers and its canary
/// percent per zone. Only statuses that serve a split (progressing, paused,
/// completed) are given; a route with a rollout and no such status (not
/// started, failed, aborted) serves 0 % canary over its own clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedRollout {
    /// The version the status is for.
    pub version: String,
    /// Canary percent per zone; a zone not named gets 0.
    pub weights: BTreeMap<String, u32>,
}

/// The rollouts of one policy: route name -> what it serves.
pub type RolloutWeights = BTreeMap<String, ServedRollout>;

/// Every policy's rollouts: policy name -> its routes' rollouts.
pub type Rollouts = HashMap<String, RolloutWeights>;

/// The locality weights of one zone of a route under a rollout: (canary,
/// stable) = (s·c, s·(100 − c)) for the zone's effective weight `s` and
/// canary percent `c` (clamped to 100). The zone keeps `100·s` in all,
/// its failover share, and `c` % of it goes to the canary; 0 means the
/// locality is left out of that cluster.
pub fn zone_split(effective: u32, canary_percent: u32) -> (u32, u32) {
    let c = canary_percent.min(100);
    (
        effective.saturating_mul(c),
        effective.saturating_mul(100 - c),
    )
}

/// The route's split between its per-route canary and stable clusters:
/// each side's sum of the locality weights it serves (Envoy and gRPC pick
/// a cluster by weight over the sum, and a zone within it by locality
/// weight, so zone z gets exactly `s·c` canary and `s·(100 − c)` stable).
/// A side at 0 is left out; when both are 0 (no zone has weight and
/// endpoints) the stable side alone is served with weight 1, because a
/// split summing to 0 is refused by gRPC.
pub fn route_split(canary_total: u32, stable_total: u32) -> Vec<(Side, u32)> {
    match (canary_total, stable_total) {
        (0, 0) => vec![(Side::Stable, 1)],
        (0, s) => vec![(Side::Stable, s)],
        (c, 0) => vec![(Side::Canary, c)],
        (c, s) => vec![(Side::Canary, c), (Side::Stable, s)],
    }
}

/// Which side of a canary split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Canary,
    Stable,
}

/// How the leader names an endpoint: `ip:port`, `[ip6]:port`.
fn endpoint_key(address: &str, port: u32) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

/// Node metadata key through which a sidecar asks for another bind address
/// of its egress listeners (an IP address; anything else is ignored).
pub const EGRESS_ADDRESS_METADATA_KEY: &str = "meridian.egress_address";
/// Default bind address of egress listeners.
pub const DEFAULT_EGRESS_ADDRESS: &str = "127.0.0.1";

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
const CONNECT_TIMEOUT_SECONDS: i64 = 5;

/// The terminal HTTP filter every listener's connection manager ends with.
fn router_filter() -> HttpFilter {
    HttpFilter {
        name: ROUTER_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any_of(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

/// Name of the stable cluster of a policy.
pub fn stable_cluster_name(policy: &str) -> String {
    policy.to_owned()
}

/// Name of the cluster of one canary version of a policy.
pub fn canary_cluster_name(policy: &str, version: &str) -> String {
    format!("{policy}@{version}")
}

/// Name of the stable cluster of one route under a rollout. `~` cannot
/// appear in policy, version or route names (DNS labels), so the name
/// parses back (see `meridian_load_reports::tally`).
pub fn route_stable_cluster_name(policy: &str, route: &str) -> String {
    format!("{policy}~{route}")
}

/// Name of the canary cluster of one route under a rollout.
pub fn route_canary_cluster_name(policy: &str, version: &str, route: &str) -> String {
    format!("{policy}@{version}~{route}")
}

/// The policy a cluster of the translation belongs to: the name up to its
/// first `@` (canary version) or `~` (route under a rollout).
pub fn policy_of_cluster_name(cluster: &str) -> &str {
    cluster.split(['@', '~']).next().unwrap_or(cluster)
}

/// Name of the egress listener and of its RouteConfiguration for a port.
pub fn egress_name(port: u32) -> String {
    format!("egress_{port}")
}

/// Name of the RouteConfiguration a proxyless gRPC client reads for a policy.
pub fn grpc_route_name(policy: &str) -> String {
    format!("grpc_{policy}")
}

/// What one policy contributes, typed, before encoding.
#[derive(Debug, Default)]
pub(crate) struct TypedPiece {
    /// (the cluster Envoy gets, the variant a proxyless gRPC client gets when it differs)
    pub(crate) clusters: Vec<(Cluster, Option<Cluster>)>,
    pub(crate) assignments: Vec<ClusterLoadAssignment>,
    /// The proxyless gRPC api_listeners (`<host>`, `<host>:<port>`).
    pub(crate) listeners: Vec<Listener>,
    /// `grpc_<policy>`.
    pub(crate) route: RouteConfiguration,
    /// The policy's virtual host in its port's egress route.
    pub(crate) vhost: VirtualHost,
    /// Its clusters' names: what its routes reference.
    pub(crate) refs: Vec<String>,
}

/// Policy label that scopes a policy to one namespace: only nodes whose
/// SPIFFE ID is in that namespace (`spiffe://<td>/ns/<namespace>/...`) get
/// its resources. A policy without it is visible to every node.
pub const NAMESPACE_LABEL: &str = "meridian.io/namespace";

/// The namespace of a SPIFFE ID (`None` when it is not one).
pub fn namespace_of(spiffe_id: &str) -> Option<String> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns.to_owned()),
        _ => None,
    }
}

/// Default SPIFFE trust domain (`--trust-domain`).
pub const DEFAULT_TRUST_DOMAIN: &str = "meridian.local";

/// Mesh-wide security inputs of the translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mesh {
    /// SPIFFE trust domain: `strict` policies with no `allowedSans` accept
    /// any identity under it, and clients check servers against it.
    pub trust_domain: String,
    /// The CA bundle served as [`tls::TRUST_BUNDLE_SECRET`]; `None` without a CA.
    pub trust_bundle_pem: Option<String>,
    /// Workload certificates by SPIFFE ID: (certificate chain PEM, key PEM).
    /// Only connected identities are here; each node is served its own.
    pub workload_certs: BTreeMap<String, (String, String)>,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            trust_bundle_pem: None,
            workload_certs: BTreeMap::new(),
        }
    }
}

/// What a sidecar's inbound listener for a policy needs; the bind and
/// workload addresses come from the node (see [`crate::node::MeridianNode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundTemplate {
    pub mode: MtlsMode,
    /// Who may call under `strict`/`permissive` mTLS.
    pub peers: Peers,
    pub protocol: Protocol,
}

/// Typed JSON rendering of what the translation produces, for debugging
/// (`meridian xds render`). With `policy_filter`, only that policy is
/// translated, so shared egress resources show its share alone.
pub fn render(
    policies: &[Policy],
    weights: &Weights,
    rollouts: &Rollouts,
    policy_filter: Option<&str>,
) -> Value {
    let mut selected: Vec<&Policy> = policies
        .iter()
        .filter(|p| policy_filter.is_none_or(|f| p.metadata.name == f))
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mesh = Mesh::default();
    let to_json = |v: Result<Value, serde_json::Error>| {
        let mut v = v.unwrap_or_else(|e| json!({"error": e.to_string()}));
        drop_empty_any_values(&mut v);
        v
    };
    let (mut listeners, mut routes, mut clusters, mut assignments) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut egress: BTreeMap<u32, Vec<VirtualHost>> = BTreeMap::new();
    for p in selected {
        let name = &p.metadata.name;
        let t = typed_piece(p, weights.get(name), None, rollouts.get(name), &mesh);
        listeners.extend(t.listeners.iter().map(|l| to_json(serde_json::to_value(l))));
        routes.push(to_json(serde_json::to_value(&t.route)));
        clusters.extend(
            t.clusters
                .iter()
                .map(|(c, _)| to_json(serde_json::to_value(c))),
        );
        assignments.extend(
            t.assignments
                .iter()
                .map(|a| to_json(serde_json::to_value(a))),
        );
        egress.entry(p.spec.port).or_default().push(t.vhost);
    }
    for (port, vhosts) in egress {
        listeners.push(to_json(serde_json::to_value(egress_listener(
            port,
            DEFAULT_EGRESS_ADDRESS,
        ))));
        routes.push(to_json(serde_json::to_value(RouteConfiguration {
            name: egress_name(port),
            virtual_hosts: vhosts,
            ..Default::default()
        })));
    }
    json!({
        "listeners": listeners,
        "routeConfigurations": routes,
        "clusters": clusters,
        "clusterLoadAssignments": assignments,
    })
}

/// pbjson prints an `Any` whose type it cannot expand as `{"@type", "value": [bytes]}`.
/// For an empty message (the router filter's config) that `value` is `[]`,
/// which Envoy's JSON loader rejects; an empty message is just its `@type`.
fn drop_empty_any_values(v: &mut Value) {
    match v {
        Value::Object(map) => {
            // TLS contexts pbjson could not expand: expand them here.
            let expanded = match (map.get("@type"), map.get("value")) {
                (Some(Value::String(t)), Some(Value::Array(bytes))) => {
                    let bytes: Vec<u8> = bytes
                        .iter()
                        .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect();
                    tls::expand_json(t, &bytes)
                }
                (Some(Value::String(t)), Some(Value::String(b64))) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .ok()
                        .and_then(|bytes| tls::expand_json(t, &bytes))
                }
                _ => None,
            };
            if let Some(Value::Object(e)) = expanded {
                *map = e;
                return;
            }
            if map.contains_key("@type")
                && map
                    .get("value")
                    .is_some_and(|x| x.as_array().is_some_and(Vec::is_empty))
            {
                map.remove("value");
            }
            map.values_mut().for_each(drop_empty_any_values);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty_any_values),
        _ => {}
    }
}

/// Encodes a message into a shared entry: the one encoding every stream sends.
pub(crate) fn entry<M: Message>(name: impl Into<Arc<str>>, ty: ResourceType, m: &M) -> Entry {
    Entry::new(name, ty, m.encode_to_vec())
}

/// Translates one policy: a pure function of the policy, its stored
/// effective weights, its endpoint marks, its routes' rollouts and the mesh.
pub(crate) fn typed_piece(
    p: &Policy,
    zone_weights: Option<&BTreeMap<String, u32>>,
    unhealthy: Option<&BTreeMap<String, BTreeSet<String>>>,
    rollouts: Option<&RolloutWeights>,
    mesh: &Mesh,
) -> TypedPiece {
    let name = p.metadata.name.as_str();
    let canary_versions: BTreeSet<&str> = p
        .spec
        .routes
        .iter()
        .filter_map(|r| r.canary.as_ref().map(|c| c.version.as_str()))
        .collect();
    // A stored decision that does not name exactly the policy's zones was
    // made for another zone set (a zone renamed, added or removed since):
    // applying it would give an unnamed zone weight 0 and black-hole it,
    // so the spec weights apply until the leader decides again.
    let zone_weights = zone_weights.filter(|w| decision_matches_zones(p, w));
    let zone_weight = |zone: &str, spec: u32| -> u32 {
        zone_weights
            .and_then(|w| w.get(zone).copied())
            .unwrap_or(spec)
    };

    let mut typed = TypedPiece::default();
    // Stable cluster first, then one per canary version, each with the
    // zones' effective weights as locality weights.
    type PerRoute<'a> = Option<(Option<&'a ServedRollout>, &'a str, Side)>;
    let mut clusters: Vec<(String, Option<&str>, PerRoute<'_>)> =
        vec![(stable_cluster_name(name), None, None)];
    clusters.extend(
        canary_versions
            .iter()
            .map(|v| (canary_cluster_name(name, v), Some(*v), None)),
    );
    // Then, per route with a rollout, its own pair, whose locality weights
    // carry the canary percent of each zone (docs/rollouts.md, "Weight per
    // zone"). The pair exists as long as the spec has the rollout, before
    // the first step too (all stable then): a cluster Envoy has not warmed
    // yet answers 503, so the first step must change weights, not clusters.
    let mut splits: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for r in &p.spec.routes {
        let Some(c) = r.canary.as_ref().filter(|c| c.rollout.is_some()) else {
            continue;
        };
        let served = served_rollout(r, rollouts);
        let v = c.version.as_str();
        let canary = route_canary_cluster_name(name, v, &r.name);
        let stable = route_stable_cluster_name(name, &r.name);
        clusters.push((canary.clone(), Some(v), Some((served, v, Side::Canary))));
        clusters.push((stable.clone(), None, Some((served, v, Side::Stable))));
        splits.insert(r.name.as_str(), (canary, stable));
    }
    let mut totals: BTreeMap<String, u32> = BTreeMap::new();
    for (cluster_name, version, split) in &clusters {
        let plain = Cluster {
            outlier_detection: p.spec.outlier_detection.as_ref().map(outlier_detection),
            circuit_breakers: p.spec.circuit_breakers.as_ref().map(circuit_breakers),
            ..cluster(cluster_name, p.spec.protocol)
        };
        // Only `strict` makes clients use mTLS: under `permissive` the
        // endpoints may still lack a sidecar, and plaintext reaches both.
        if p.spec.mtls.mode == MtlsMode::Strict {
            let server = Peers::TrustDomain(mesh.trust_domain.clone());
            let with = |consumer| Cluster {
                transport_socket: Some(tls::upstream_socket(consumer, &server, &p.spec.host)),
                ..plain.clone()
            };
            typed
                .clusters
                .push((with(Consumer::Envoy), Some(with(Consumer::ProxylessGrpc))));
        } else {
            typed.clusters.push((plain, None));
        }
        let mut cla = ClusterLoadAssignment {
            cluster_name: cluster_name.clone(),
            ..Default::default()
        };
        // (zone, its endpoints in this cluster, effective weight, locality weight)
        let mut served: Vec<(&meridian_policy::Zone, Vec<LbEndpoint>, u32, u32)> = Vec::new();
        for z in &p.spec.zones {
            let s = zone_weight(&z.name, z.weight);
            if s == 0 {
                continue;
            }
            let w = match split {
                None => s,
                Some((served, version, side)) => {
                    // A zone without the canary's endpoints cannot serve
                    // its canary share: it stays stable, in the zone.
                    let runs = z.endpoints.iter().any(|e| e.version == *version);
                    let c = match (runs, served) {
                        (true, Some(served)) => served.weights.get(&z.name).copied().unwrap_or(0),
                        _ => 0,
                    };
                    let (canary, stable) = zone_split(s, c);
                    match side {
                        Side::Canary => canary,
                        Side::Stable => stable,
                    }
                }
            };
            let lb_endpoints: Vec<LbEndpoint> = z
                .endpoints
                .iter()
                .filter(|e| match version {
                    Some(v) => e.version == *v,
                    None => !canary_versions.contains(e.version.as_str()),
                })
                .map(|e| {
                    let down = unhealthy
                        .and_then(|u| u.get(&z.name))
                        .is_some_and(|set| set.contains(&endpoint_key(&e.address, e.port)));
                    LbEndpoint {
                        health_status: if down {
                            HealthStatus::Unhealthy as i32
                        } else {
                            HealthStatus::Unknown as i32
                        },
                        ..lb_endpoint(&e.address, e.port)
                    }
                })
                .collect();
            if !lb_endpoints.is_empty() {
                served.push((z, lb_endpoints, s, w));
            }
        }
        // Only the localities served count in the route's split: a side's
        // traffic never moves to a zone it was not meant for.
        let total = served
            .iter()
            .fold(0u32, |t, (_, _, _, w)| t.saturating_add(*w));
        totals.insert(cluster_name.clone(), total);
        // A side at 0 is left out of the route, but its cluster keeps its
        // endpoints at the zones' effective weights: EDS reaches a client
        // before the route that stops using the side, and an empty cluster
        // would answer 503 ("no healthy upstream") in between.
        let unused = split.is_some() && total == 0;
        for (z, lb_endpoints, s, w) in served {
            let weight = if unused { s } else { w };
            if weight == 0 {
                continue;
            }
            cla.endpoints.push(LocalityLbEndpoints {
                locality: Some(Locality {
                    region: z.region.clone().unwrap_or_default(),
                    zone: z.name.clone(),
                    sub_zone: String::new(),
                }),
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                ..Default::default()
            });
        }
        typed.assignments.push(cla);
    }
    let route_splits: RouteSplits = splits
        .into_iter()
        .map(|(route, (canary, stable))| {
            let total = |c: &str| totals.get(c).copied().unwrap_or(0);
            let split = route_split(total(&canary), total(&stable))
                .into_iter()
                .map(|(side, w)| match side {
                    Side::Canary => (side, canary.clone(), w),
                    Side::Stable => (side, stable.clone(), w),
                })
                .collect();
            (route.to_owned(), split)
        })
        .collect();

    typed.vhost = virtual_host(p, &route_splits, Consumer::Envoy);
    typed.refs = clusters.into_iter().map(|(n, _, _)| n).collect();
    let grpc_route = grpc_route_name(name);
    for lname in [
        p.spec.host.clone(),
        format!("{}:{}", p.spec.host, p.spec.port),
    ] {
        typed.listeners.push(api_listener(&lname, &grpc_route));
    }
    typed.route = RouteConfiguration {
        name: grpc_route,
        virtual_hosts: vec![virtual_host(p, &route_splits, Consumer::ProxylessGrpc)],
        ..Default::default()
    };
    typed
}

/// Per route under a rollout: its weighted clusters (side, cluster, weight).
type RouteSplits = BTreeMap<String, Vec<(Side, String, u32)>>;

/// The rollout a route serves now: its status, when the spec's route still
/// has a `rollout` for the status's version. A route without a status yet
/// (the leader has not stepped it), or whose status is for another version
/// (a new rollout about to start), serves 0 % canary (the spec's weight
/// under a rollout); a route whose spec dropped `rollout` is served by
/// `canary.weight` over the shared clusters.
fn served_rollout<'a>(
    r: &meridian_policy::Route,
    rollouts: Option<&'a RolloutWeights>,
) -> Option<&'a ServedRollout> {
    let c = r.canary.as_ref()?;
    c.rollout.as_ref()?;
    let served = rollouts?.get(&r.name)?;
    (served.version == c.version).then_some(served)
}

/// Whether a stored effective-weights decision names exactly the policy's
/// current zones (no more, no fewer).
pub fn decision_matches_zones(p: &Policy, weights: &BTreeMap<String, u32>) -> bool {
    weights.len() == p.spec.zones.len()
        && p.spec.zones.iter().all(|z| weights.contains_key(&z.name))
}

fn cluster(name: &str, protocol: Protocol) -> Cluster {
    #[allow(deprecated)]
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: CONNECT_TIMEOUT_SECONDS,
            nanos: 0,
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        common_lb_config: Some(cluster::CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                cluster::common_lb_config::LocalityWeightedLbConfig {},
            )),
            ..Default::default()
        }),
        http2_protocol_options: match protocol {
            Protocol::Grpc => Some(Http2ProtocolOptions::default()),
            Protocol::Http => None,
        },
        // Proxyless gRPC clients report each zone's calls to the xDS server
        // they got this cluster from, so failover can decide on real traffic.
        lrs_server: Some(this_server()),
        ..Default::default()
    }
}

fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn lb_endpoint(address: &str, port: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(address, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn header_add(name: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: "true".to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Milliseconds as a protobuf duration.
fn millis(ms: u32) -> Duration {
    Duration {
        seconds: i64::from(ms / 1000),
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn u32_value(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// A policy's `outlierDetection`. Every rule Meridian does not turn on is
/// turned off explicitly: Envoy enforces success-rate ejection by default,
/// and a policy that does not ask for it must not get it.
pub(crate) fn outlier_detection(od: &meridian_policy::OutlierDetection) -> OutlierDetection {
    let on = |enabled: bool| u32_value(if enabled { 100 } else { 0 });
    let sr = od.success_rate.as_ref();
    OutlierDetection {
        consecutive_5xx: (od.consecutive_5xx > 0).then_some(UInt32Value {
            value: od.consecutive_5xx,
        }),
        enforcing_consecutive_5xx: on(od.consecutive_5xx > 0),
        consecutive_gateway_failure: (od.consecutive_gateway_errors > 0).then_some(UInt32Value {
            value: od.consecutive_gateway_errors,
        }),
        enforcing_consecutive_gateway_failure: on(od.consecutive_gateway_errors > 0),
        interval: Some(millis(od.interval_ms)),
        base_ejection_time: Some(millis(od.base_ejection_time_ms)),
        max_ejection_percent: u32_value(od.max_ejection_percent),
        enforcing_success_rate: on(sr.is_some()),
        success_rate_minimum_hosts: sr.and_then(|s| u32_value(s.minimum_hosts)),
        success_rate_request_volume: sr.and_then(|s| u32_value(s.request_volume)),
        // Envoy reads the factor in thousandths.
        success_rate_stdev_factor: sr
            .and_then(|s| u32_value((s.stdev_factor * 1000.0).round() as u32)),
        ..Default::default()
    }
}

/// A policy's `circuitBreakers`, as the default-priority thresholds.
pub(crate) fn circuit_breakers(cb: &meridian_policy::CircuitBreakers) -> CircuitBreakers {
    let limit = |n: Option<u32>| n.map(|value| UInt32Value { value });
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: limit(cb.max_connections),
            max_pending_requests: limit(cb.max_pending_requests),
            max_requests: limit(cb.max_requests),
            max_retries: limit(cb.max_retries),
            retry_budget: cb.retry_budget.as_ref().map(|b| {
                circuit_breakers::thresholds::RetryBudget {
                    budget_percent: Some(Percent {
                        value: f64::from(b.budget_percent),
                    }),
                    min_retry_concurrency: u32_value(b.min_retry_concurrency),
                }
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route's `retries`. Envoy and gRPC read the same policy; gRPC ignores
/// the HTTP conditions and `per_try_timeout` (gRFC A44).
pub(crate) fn retry_policy(r: &meridian_policy::Retries) -> RetryPolicy {
    RetryPolicy {
        retry_on: r
            .retry_on
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(","),
        num_retries: u32_value(r.attempts),
        per_try_timeout: r.per_try_timeout_ms.map(millis),
        retriable_status_codes: r.retriable_status_codes.clone(),
        ..Default::default()
    }
}

/// The timeout, retries and target of one route, for `consumer`: Envoy
/// honours the route `timeout`; proxyless gRPC ignores it and honours
/// `max_stream_duration` instead (gRFC A31), so each gets only the field
/// it reads (Envoy acts on both, and the promised answer is the 504 of the
/// route timeout).
fn route_action(
    cluster_specifier: ClusterSpecifier,
    r: Option<&meridian_policy::Route>,
    consumer: Consumer,
) -> RouteAction {
    let timeout_ms = r.and_then(|r| r.timeout_ms);
    let (timeout, max_stream_duration) = match consumer {
        Consumer::Envoy => (timeout_ms.map(millis), None),
        Consumer::ProxylessGrpc => (
            None,
            timeout_ms
                .filter(|&t| t > 0)
                .map(|t| route_action::MaxStreamDuration {
                    max_stream_duration: Some(millis(t)),
                    ..Default::default()
                }),
        ),
    };
    RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout,
        max_stream_duration,
        retry_policy: r.and_then(|r| r.retries.as_ref()).map(retry_policy),
        ..Default::default()
    }
}

fn virtual_host(p: &Policy, splits: &RouteSplits, consumer: Consumer) -> VirtualHost {
    let name = p.metadata.name.as_str();
    let stable = stable_cluster_name(name);
    // Sorted and deduplicated so the output does not depend on route order.
    let canary_headers: Vec<String> = p
        .spec
        .routes
        .iter()
        .filter_map(|r| r.canary.as_ref().map(|c| c.header.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut routes = Vec::with_capacity(p.spec.routes.len() + 1);
    for r in &p.spec.routes {
        let matcher = RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(r.matcher.path_prefix.clone())),
            headers: r
                .matcher
                .headers
                .iter()
                .map(|h| HeaderMatcher {
                    name: h.name.clone(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(h.exact.clone())),
                            ignore_case: false,
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let (action, remove) = match &r.canary {
            None => (
                ClusterSpecifier::Cluster(stable.clone()),
                canary_headers.clone(),
            ),
            Some(c) => {
                let split = splits.get(&r.name).cloned().unwrap_or_else(|| {
                    let weight = c.weight.min(100);
                    let mut split = Vec::with_capacity(2);
                    if weight > 0 {
                        let canary = canary_cluster_name(name, &c.version);
                        split.push((Side::Canary, canary, weight));
                    }
                    if weight < 100 {
                        split.push((Side::Stable, stable.clone(), 100 - weight));
                    }
                    split
                });
                let entries = split
                    .into_iter()
                    .map(|(side, cluster, weight)| match side {
                        Side::Canary => ClusterWeight {
                            name: cluster,
                            weight: Some(UInt32Value { value: weight }),
                            request_headers_to_add: vec![header_add(&c.header)],
                            // Other canary markers of this policy would be spoofed here.
                            request_headers_to_remove: canary_headers
                                .iter()
                                .filter(|h| **h != c.header)
                                .cloned()
                                .collect(),
                            ..Default::default()
                        },
                        Side::Stable => ClusterWeight {
                            name: cluster,
                            weight: Some(UInt32Value { value: weight }),
                            request_headers_to_remove: canary_headers.clone(),
                            ..Default::default()
                        },
                    })
                    .collect();
                (
                    ClusterSpecifier::WeightedClusters(WeightedCluster {
                        clusters: entries,
                        ..Default::default()
                    }),
                    Vec::new(),
                )
            }
        };
        routes.push(Route {
            name: r.name.clone(),
            r#match: Some(matcher),
            action: Some(route::Action::Route(route_action(
                action,
                Some(r),
                consumer,
            ))),
            request_headers_to_remove: remove,
            ..Default::default()
        });
    }
    routes.push(Route {
        name: "default".to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(route_action(
            ClusterSpecifier::Cluster(stable),
            None,
            consumer,
        ))),
        request_headers_to_remove: canary_headers,
        ..Default::default()
    });
    VirtualHost {
        name: name.to_owned(),
        domains: vec![
            p.spec.host.clone(),
            format!("{}:{}", p.spec.host, p.spec.port),
        ],
        routes,
        ..Default::default()
    }
}

fn hcm(stat_prefix: &str, route_config_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config_name.to_owned(),
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    }
}

/// The egress listener of a port, bound on `bind_address`. Public so a
/// per-node view can rebind it without re-translating every policy.
pub fn egress_listener(port: u32, bind_address: &str) -> Listener {
    let name = egress_name(port);
    Listener {
        name: name.clone(),
        address: Some(socket(bind_address, port)),
        stat_prefix: name.clone(),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any_of(&hcm(&name, &name)))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Encoded egress listener entry of a port, bound on `bind_address`.
pub(crate) fn egress_entry(port: u32, bind_address: &str) -> Entry {
    let l = egress_listener(port, bind_address);
    let mut e = entry(l.name.clone(), ResourceType::Listener, &l);
    e.refs = Box::new([Arc::from(egress_name(port))]);
    e
}

/// The port of an egress listener name (`egress_<port>`).
pub(crate) fn egress_port(name: &str) -> Option<u32> {
    name.strip_prefix("egress_")?.parse().ok()
}

fn api_listener(name: &str, route_config_name: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any_of(&hcm(route_config_name, route_config_name))),
        }),
        ..Default::default()
    }
}

pub(crate) fn inbound_template(p: &Policy, mesh: &Mesh) -> InboundTemplate {
    InboundTemplate {
        mode: p.spec.mtls.mode,
        peers: if p.spec.mtls.allowed_sans.is_empty() {
            Peers::TrustDomain(mesh.trust_domain.clone())
        } else {
            Peers::Exact(p.spec.mtls.allowed_sans.clone())
        },
        protocol: p.spec.protocol,
    }
}

/// Name of a sidecar's inbound listener for a policy.
pub fn inbound_listener_name(policy: &str) -> String {
    format!("inbound_{policy}")
}

/// Name of the cluster that points at the workload behind a sidecar.
pub fn inbound_cluster_name(policy: &str) -> String {
    format!("inbound|{policy}")
}

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

/// The HTTP connection manager of an inbound listener: everything goes to
/// the local workload. Under TLS it sets `x-forwarded-client-cert` to the
/// verified client's URI SAN (SANITIZE_SET), so the workload learns the
/// caller's SPIFFE ID and a client can never forge that header; without TLS
/// the header is removed.
fn inbound_hcm(policy: &str, tls: bool) -> HttpConnectionManager {
    let cluster = inbound_cluster_name(policy);
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: inbound_listener_name(policy),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: inbound_listener_name(policy),
            virtual_hosts: vec![VirtualHost {
                name: "inbound".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![Route {
                    name: "workload".to_owned(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        forward_client_cert_details: if tls {
            ForwardClientCertDetails::SanitizeSet as i32
        } else {
            ForwardClientCertDetails::Sanitize as i32
        },
        set_current_client_cert_details: tls.then_some(SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        }),
        http_filters: vec![router_filter()],
        ..Default::default()
    }
}

fn hcm_chain(policy: &str, tls: bool) -> FilterChain {
    FilterChain {
        filters: vec![Filter {
            name: HCM_FILTER.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(any_of(&inbound_hcm(
                policy, tls,
            )))),
        }],
        ..Default::default()
    }
}

/// A sidecar's inbound listener in front of its workload, by `mtls.mode`:
/// `strict` has one TLS chain that requires a client certificate of an
/// allowed identity (a plaintext client fails the handshake); `permissive`
/// adds a plaintext chain, told apart by the TLS inspector; `disabled` is
/// plaintext only.
pub fn inbound_listener(
    policy: &str,
    template: &InboundTemplate,
    consumer: Consumer,
    bind_address: &str,
    port: u32,
) -> Listener {
    let tls_chain = || FilterChain {
        transport_socket: Some(tls::downstream_socket(consumer, &template.peers)),
        ..hcm_chain(policy, true)
    };
    let (chains, inspector) = match template.mode {
        MtlsMode::Strict => (vec![tls_chain()], false),
        MtlsMode::Permissive => (
            vec![
                FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        transport_protocol: "tls".to_owned(),
                        ..Default::default()
                    }),
                    ..tls_chain()
                },
                hcm_chain(policy, false),
            ],
            true,
        ),
        MtlsMode::Disabled => (vec![hcm_chain(policy, false)], false),
    };
    Listener {
        name: inbound_listener_name(policy),
        address: Some(socket(bind_address, port)),
        stat_prefix: inbound_listener_name(policy),
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: chains,
        listener_filters: if inspector {
            vec![ListenerFilter {
                name: TLS_INSPECTOR.to_owned(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
                    type_url: TLS_INSPECTOR_TYPE.to_owned(),
                    value: Vec::new(),
                })),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// Prefix of the listener name a proxyless gRPC xDS server asks for; the
/// rest is its listening address. Its bootstrap must set
/// `server_listener_resource_name_template` to this followed by `%s`.
pub const GRPC_SERVER_LISTENER_PREFIX: &str = "grpc/server?xds.resource.listening_address=";

/// The listener of a proxyless gRPC xDS server that is an endpoint of a
/// policy: under `strict` it requires mTLS from allowed identities
/// (certificate-provider form); otherwise plaintext (gRPC servers cannot
/// tell TLS from plaintext on one port, so `permissive` is plaintext here).
/// Routes use `non_forwarding_action`, which gRPC servers require.
pub fn grpc_server_listener(
    name: &str,
    policy: &str,
    template: &InboundTemplate,
    ip: &str,
    port: u32,
) -> Listener {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: inbound_listener_name(policy),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: inbound_listener_name(policy),
            virtual_hosts: vec![VirtualHost {
                name: "inbound".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::NonForwardingAction(
                        xds_api::pb::envoy::config::route::v3::NonForwardingAction {},
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    Listener {
        name: name.to_owned(),
        address: Some(socket(ip, port)),
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM_FILTER.to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any_of(&hcm))),
            }],
            transport_socket: (template.mode == MtlsMode::Strict)
                .then(|| tls::downstream_socket(Consumer::ProxylessGrpc, &template.peers)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The listening address a proxyless gRPC server's listener name carries.
pub(crate) fn grpc_server_address(name: &str) -> Option<std::net::SocketAddr> {
    name.strip_prefix(GRPC_SERVER_LISTENER_PREFIX)?.parse().ok()
}

/// Encoded listener for a proxyless gRPC server that asked for `name`,
/// an endpoint of `policy`.
pub(crate) fn grpc_server_entry(
    name: &str,
    addr: std::net::SocketAddr,
    policy: &str,
    template: &InboundTemplate,
) -> Entry {
    let l = grpc_server_listener(
        name,
        policy,
        template,
        &addr.ip().to_string(),
        u32::from(addr.port()),
    );
    let mut e = entry(name.to_owned(), ResourceType::Listener, &l);
    e.wildcard = false;
    e
}

/// The static cluster of the workload behind a sidecar.
pub fn inbound_cluster(policy: &str, protocol: Protocol, address: &str, port: u32) -> Cluster {
    let name = inbound_cluster_name(policy);
    #[allow(deprecated)]
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(Duration {
            seconds: CONNECT_TIMEOUT_SECONDS,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(address, port)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        http2_protocol_options: match protocol {
            Protocol::Grpc => Some(Http2ProtocolOptions::default()),
            Protocol::Http => None,
        },
        ..Default::default()
    }
}

/// Encoded inbound listener and cluster of a node (per-node variant).
pub(crate) fn inbound_entries(
    policy: &str,
    template: &InboundTemplate,
    consumer: Consumer,
    listen: (&str, u32),
    workload: (&str, u32),
) -> (Entry, Entry) {
    let l = inbound_listener(policy, template, consumer, listen.0, listen.1);
    let c = inbound_cluster(policy, template.protocol, workload.0, workload.1);
    let mut le = entry(l.name.clone(), ResourceType::Listener, &l);
    // The route is inline; nothing to make-before-break against.
    le.refs = Box::new([]);
    let ce = entry(c.name.clone(), ResourceType::Cluster, &c);
    (le, ce)
}

#[cfg(test)]
pub(crate) mod tests;

//! Per-stream xDS protocol state machines, free of I/O.
//!
//! [`SotwStream`] implements `StreamAggregatedResources` and [`DeltaStream`]
//! implements `DeltaAggregatedResources`, following
//! <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>.
//! Both take requests and snapshots and return the responses to send, in
//! make-before-break order (CDS, EDS, LDS, RDS).
//!
//! # Make before break
//!
//! Additions are safe by ordering alone: within one snapshot change clusters
//! and endpoints are sent before the routes that use them. Removals are
//! ACK-driven: a cluster (and its load assignment) that disappeared from the
//! snapshot stays in this stream's CDS/EDS as long as a RouteConfiguration
//! the client may still be using references it — either one it has ACKed, or
//! one sent and not yet answered. Once the client ACKs routes that no longer
//! reference it, the next CDS/EDS response drops it (SotW: omitted from the
//! full state; delta: listed in `removed_resources`).
//!
//! # NACKs
//!
//! A NACKed version is recorded and never resent: what was sent counts as
//! known to the client, so only a snapshot that produces a different version
//! causes another response (no resend loop).

mod delta;
mod sotw;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::google::protobuf::value::Kind;

pub use delta::DeltaStream;
pub use sotw::SotwStream;

use crate::resources::{Entry, ResourceType, Resources};
use crate::tls::{Consumer, TRUST_BUNDLE_SECRET, WORKLOAD_SECRET};
use crate::translate::{
    egress_entry, inbound_entries, DEFAULT_EGRESS_ADDRESS, EGRESS_ADDRESS_METADATA_KEY,
};

/// Node metadata key naming the policy whose workload a sidecar fronts.
pub const INBOUND_POLICY_METADATA_KEY: &str = "meridian.inbound_policy";
/// Node metadata key: `ip:port` the sidecar's inbound listener binds
/// (where the policy's endpoint points).
pub const INBOUND_ADDRESS_METADATA_KEY: &str = "meridian.inbound_address";
/// Node metadata key: `ip:port` of the workload behind the sidecar.
pub const WORKLOAD_ADDRESS_METADATA_KEY: &str = "meridian.workload_address";
/// Node metadata key through which a node claims a SPIFFE ID. Honoured only
/// when the xDS port does not authenticate clients (`--xds-client-auth none`).
pub const SPIFFE_ID_METADATA_KEY: &str = "meridian.spiffe_id";

/// A sidecar's inbound side: which policy, where to listen, where the workload is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub policy: String,
    pub listen: (String, u32),
    pub workload: (String, u32),
}

/// What is per node rather than shared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// `None` means the default (`127.0.0.1`).
    pub egress_address: Option<String>,
    /// The node's SPIFFE ID, as decided by the server (certificate URI SAN,
    /// or the claim when clients are not authenticated). Without one the
    /// node gets no workload certificate.
    pub identity: Option<String>,
    /// The identity the node claims in its metadata.
    pub claimed_identity: Option<String>,
    /// Set for a sidecar in front of a workload.
    pub inbound: Option<Inbound>,
    /// A proxyless gRPC client: gets certificate-provider TLS, not SDS.
    pub proxyless: bool,
}

fn metadata_string(node: Option<&Node>, key: &str) -> Option<String> {
    node.and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(key))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.trim().to_owned()),
            _ => None,
        })
}

fn socket_addr(s: &str) -> Option<(String, u32)> {
    let a: std::net::SocketAddr = s.parse().ok()?;
    Some((a.ip().to_string(), u32::from(a.port())))
}

impl NodeView {
    /// Reads node metadata key `meridian.egress_address`. Only an IP address
    /// is accepted: anything else would make Envoy reject the listener.
    ///
    /// Also reads the inbound keys (`meridian.inbound_policy`,
    /// `meridian.inbound_address`, `meridian.workload_address`; all three or
    /// none), the claimed `meridian.spiffe_id`, and whether the node is a
    /// proxyless gRPC client (its user agent is not Envoy).
    pub fn from_node(node: Option<&Node>) -> Self {
        let addr = metadata_string(node, EGRESS_ADDRESS_METADATA_KEY)
            .filter(|s| s.parse::<IpAddr>().is_ok() && s != DEFAULT_EGRESS_ADDRESS);
        let inbound = match (
            metadata_string(node, INBOUND_POLICY_METADATA_KEY),
            metadata_string(node, INBOUND_ADDRESS_METADATA_KEY).and_then(|s| socket_addr(&s)),
            metadata_string(node, WORKLOAD_ADDRESS_METADATA_KEY).and_then(|s| socket_addr(&s)),
        ) {
            (Some(policy), Some(listen), Some(workload)) => Some(Inbound {
                policy,
                listen,
                workload,
            }),
            _ => None,
        };
        let proxyless = node.is_some_and(|n| {
            !n.user_agent_name.is_empty() && !n.user_agent_name.eq_ignore_ascii_case("envoy")
        });
        NodeView {
            egress_address: addr,
            identity: None,
            claimed_identity: metadata_string(node, SPIFFE_ID_METADATA_KEY),
            inbound,
            proxyless,
        }
    }

    fn variant(&self, e: &Arc<Entry>) -> Arc<Entry> {
        match (&self.egress_address, e.egress_port) {
            (Some(addr), Some(port)) => Arc::new(egress_entry(port, addr)),
            _ => match (&e.proxyless, self.proxyless) {
                (Some(p), true) => p.clone(),
                _ => e.clone(),
            },
        }
    }

    fn consumer(&self) -> Consumer {
        if self.proxyless {
            Consumer::ProxylessGrpc
        } else {
            Consumer::Envoy
        }
    }

    /// The node's inbound listener and workload cluster, if it fronts a
    /// policy that exists.
    fn inbound_entries(&self, res: &Resources) -> Option<(Arc<Entry>, Arc<Entry>)> {
        let inb = self.inbound.as_ref()?;
        let template = res.inbound(&inb.policy)?;
        let (l, c) = inbound_entries(
            &inb.policy,
            template,
            self.consumer(),
            (&inb.listen.0, inb.listen.1),
            (&inb.workload.0, inb.workload.1),
        );
        Some((Arc::new(l), Arc::new(c)))
    }
}

/// A stream's subscription to one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    /// SotW only: wildcard because the first request named nothing, which
    /// later empty requests keep.
    legacy: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The version the client rejected.
    pub version: String,
    pub message: String,
    pub at_ms: u64,
}

/// What the client holds (or was last sent) of one resource.
#[derive(Clone, Debug)]
pub(crate) struct Known {
    version: Arc<str>,
    /// `None` for versions a delta client declared on reconnect.
    entry: Option<Arc<Entry>>,
}

#[derive(Debug, Default)]
pub(crate) struct TypeState {
    sub: Subscription,
    known: BTreeMap<Arc<str>, Known>,
    nonce: Option<String>,
    sent_version: Option<String>,
    acked_version: Option<String>,
    last_nack: Option<Nack>,
    /// Whether the last response was NACKed (rather than ACKed or pending).
    nacked: bool,
    pending: bool,
    /// SotW: the version_info of the first request, for cheap reconnects.
    client_version: Option<String>,
}

/// Per-type status, for the registry and CSDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeReport {
    pub resource_type: ResourceType,
    pub wildcard: bool,
    pub subscribed_names: usize,
    pub resources: usize,
    pub last_sent_version: Option<String>,
    pub last_acked_version: Option<String>,
    pub last_nack: Option<Nack>,
    pub status: ResourceStatus,
}

/// Config status of what was sent for a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceStatus {
    /// Nothing sent yet.
    NotSent,
    /// Sent, no answer yet.
    Sent,
    Acked,
    Nacked,
}

/// One resource a client holds, for CSDS.
#[derive(Clone, Debug)]
pub struct KnownResource {
    pub resource_type: ResourceType,
    pub name: String,
    pub version: String,
    pub entry: Option<Arc<Entry>>,
    pub status: ResourceStatus,
}

pub(crate) enum AckOutcome {
    None,
    Stale,
    Ack,
    Nack,
}

/// State shared by both variants.
#[derive(Debug, Default)]
pub(crate) struct Core {
    node: NodeView,
    types: [Option<TypeState>; 5],
    nonce_seq: u64,
    /// The RouteConfigurations the client has ACKed, by name.
    acked_routes: BTreeMap<Arc<str>, Arc<Entry>>,
    /// The client's answer in the last request, if it was an ACK or NACK
    /// of the current response: for metrics, taken by the I/O layer.
    answer: Option<(ResourceType, Answer)>,
}

/// How a client answered a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Nack,
}

impl Core {
    fn new(node: NodeView) -> Self {
        Core {
            node,
            ..Default::default()
        }
    }

    /// The ACK or NACK carried by the last request, once.
    pub(crate) fn take_answer(&mut self) -> Option<(ResourceType, Answer)> {
        self.answer.take()
    }

    fn state(&self, ty: ResourceType) -> Option<&TypeState> {
        self.types[ty.index()].as_ref()
    }

    fn state_mut(&mut self, ty: ResourceType) -> Option<&mut TypeState> {
        self.types[ty.index()].as_mut()
    }

    /// Interprets `response_nonce` / `error_detail`
    /// (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-and-nack-semantics-summary>).
    fn ack_or_nack(
        &mut self,
        ty: ResourceType,
        nonce: &str,
        error: Option<&str>,
        now_ms: u64,
    ) -> AckOutcome {
        let Some(st) = self.types[ty.index()].as_mut() else {
            return AckOutcome::None;
        };
        if nonce.is_empty() {
            return AckOutcome::None;
        }
        if st.nonce.as_deref() != Some(nonce) {
            return AckOutcome::Stale;
        }
        st.pending = false;
        match error {
            Some(message) => {
                st.nacked = true;
                self.answer = Some((ty, Answer::Nack));
                st.last_nack = Some(Nack {
                    version: st.sent_version.clone().unwrap_or_default(),
                    message: message.to_owned(),
                    at_ms: now_ms,
                });
                AckOutcome::Nack
            }
            None => {
                st.nacked = false;
                self.answer = Some((ty, Answer::Ack));
                st.acked_version = st.sent_version.clone();
                if ty == ResourceType::RouteConfiguration {
                    self.acked_routes = st
                        .known
                        .iter()
                        .filter_map(|(n, k)| k.entry.clone().map(|e| (n.clone(), e)))
                        .collect();
                }
                AckOutcome::Ack
            }
        }
    }

    /// Forgets ACKed routes the client unsubscribed from: it no longer uses them.
    fn drop_unsubscribed_routes(&mut self) {
        let Some(st) = self.types[ResourceType::RouteConfiguration.index()].as_ref() else {
            return;
        };
        let sub = st.sub.clone();
        self.acked_routes.retain(|n, _| sub.covers(n));
    }

    /// Whether a route the client may still be using references `cluster`.
    fn referenced(&self, cluster: &str) -> bool {
        let hit = |e: &Entry| {
            self.route_in_use(&e.name) && e.refs.binary_search_by(|r| (**r).cmp(cluster)).is_ok()
        };
        if self.acked_routes.values().any(|e| hit(e)) {
            return true;
        }
        self.state(ResourceType::RouteConfiguration)
            .is_some_and(|st| {
                st.known
                    .values()
                    .any(|k| k.entry.as_deref().is_some_and(hit))
            })
    }

    /// A route config is in use while a listener this client holds names it.
    /// Without this, a route whose listener was removed (its policy deleted)
    /// is never superseded by an ACKed replacement, and would pin its
    /// clusters forever. A stream with no LDS state (RDS only) keeps all.
    fn route_in_use(&self, route: &str) -> bool {
        let Some(lds) = self.state(ResourceType::Listener) else {
            return true;
        };
        lds.known.values().any(|k| {
            k.entry
                .as_deref()
                .is_some_and(|l| l.refs.iter().any(|r| &**r == route))
        })
    }

    /// What the subscription selects from a snapshot, for this node, plus
    /// removed clusters kept for make-before-break.
    fn select(&self, ty: ResourceType, res: &Resources) -> BTreeMap<Arc<str>, Arc<Entry>> {
        let mut out = BTreeMap::new();
        let Some(st) = self.state(ty) else {
            return out;
        };
        if ty == ResourceType::Secret {
            // Only the two well-known names resolve; the workload secret is
            // this node's own, so no name reaches another identity's key.
            let wants = |n: &str| st.sub.wildcard || st.sub.names.contains(n);
            if wants(WORKLOAD_SECRET) {
                if let Some(e) = self
                    .node
                    .identity
                    .as_deref()
                    .and_then(|id| res.workload_secret(id))
                {
                    out.insert(e.name.clone(), e.clone());
                }
            }
            if wants(TRUST_BUNDLE_SECRET) {
                if let Some(e) = res.get(ty, TRUST_BUNDLE_SECRET) {
                    out.insert(e.name.clone(), e.clone());
                }
            }
            return out;
        }
        if matches!(ty, ResourceType::Listener | ResourceType::Cluster) {
            if let Some((l, c)) = self.node.inbound_entries(res) {
                let e = if ty == ResourceType::Listener { l } else { c };
                if st.sub.covers(&e.name) {
                    out.insert(e.name.clone(), e);
                }
            }
        }
        if ty == ResourceType::Listener {
            for n in &st.sub.names {
                if let Some(e) = crate::translate::grpc_server_entry(n, res) {
                    out.insert(e.name.clone(), Arc::new(e));
                }
            }
        }
        if st.sub.wildcard {
            for e in res.iter(ty).filter(|e| e.wildcard) {
                out.insert(e.name.clone(), self.node.variant(e));
            }
        }
        for n in &st.sub.names {
            if let Some(e) = res.get(ty, n) {
                out.insert(e.name.clone(), self.node.variant(e));
            }
        }
        if matches!(
            ty,
            ResourceType::Cluster | ResourceType::ClusterLoadAssignment
        ) {
            for (name, k) in &st.known {
                if out.contains_key(name) || res.get(ty, name).is_some() || !st.sub.covers(name) {
                    continue;
                }
                if let Some(e) = &k.entry {
                    if self.referenced(name) {
                        out.insert(name.clone(), e.clone());
                    }
                }
            }
        }
        out
    }

    fn reports(&self) -> Vec<TypeReport> {
        ResourceType::ALL
            .iter()
            .filter_map(|t| self.state(*t).map(|st| (*t, st)))
            .map(|(t, st)| TypeReport {
                resource_type: t,
                wildcard: st.sub.wildcard,
                subscribed_names: st.sub.names.len(),
                resources: st.known.len(),
                last_sent_version: st.sent_version.clone(),
                last_acked_version: st.acked_version.clone(),
                last_nack: st.last_nack.clone(),
                status: type_status(st),
            })
            .collect()
    }

    fn known_resources(&self) -> Vec<KnownResource> {
        let mut out = Vec::new();
        for t in ResourceType::ALL {
            let Some(st) = self.state(t) else { continue };
            let status = type_status(st);
            for (n, k) in &st.known {
                out.push(KnownResource {
                    resource_type: t,
                    name: n.to_string(),
                    version: k.version.to_string(),
                    entry: k.entry.clone(),
                    status,
                });
            }
        }
        out
    }
}

fn type_status(st: &TypeState) -> ResourceStatus {
    if st.sent_version.is_none() {
        ResourceStatus::NotSent
    } else if st.pending {
        ResourceStatus::Sent
    } else if st.nacked {
        ResourceStatus::Nacked
    } else {
        ResourceStatus::Acked
    }
}

fn to_known(sel: &BTreeMap<Arc<str>, Arc<Entry>>) -> BTreeMap<Arc<str>, Known> {
    sel.iter()
        .map(|(n, e)| {
            (
                n.clone(),
                Known {
                    version: e.version.clone(),
                    entry: Some(e.clone()),
                },
            )
        })
        .collect()
}

/// Read access to a stream's state, for the registry and CSDS.
pub trait StreamState {
    /// Per-type status.
    fn reports(&self) -> Vec<TypeReport>;
    /// Every resource the client holds or was last sent.
    fn known_resources(&self) -> Vec<KnownResource>;
}

#[cfg(test)]
mod tests;

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
use crate::translate::{egress_entry, DEFAULT_EGRESS_ADDRESS, EGRESS_ADDRESS_METADATA_KEY};

/// What is per node rather than shared: the bind address of egress listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// `None` means the default (`127.0.0.1`).
    pub egress_address: Option<String>,
}

impl NodeView {
    /// Reads node metadata key `meridian.egress_address`. Only an IP address
    /// is accepted: anything else would make Envoy reject the listener.
    pub fn from_node(node: Option<&Node>) -> Self {
        let addr = node
            .and_then(|n| n.metadata.as_ref())
            .and_then(|m| m.fields.get(EGRESS_ADDRESS_METADATA_KEY))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.trim().to_owned()),
                _ => None,
            })
            .filter(|s| s.parse::<IpAddr>().is_ok() && s != DEFAULT_EGRESS_ADDRESS);
        NodeView {
            egress_address: addr,
        }
    }

    fn variant(&self, e: &Arc<Entry>) -> Arc<Entry> {
        match (&self.egress_address, e.egress_port) {
            (Some(addr), Some(port)) => Arc::new(egress_entry(port, addr)),
            _ => e.clone(),
        }
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

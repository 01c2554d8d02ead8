//! Registry of connected xDS streams, for `GET /api/v1/xds/clients` and CSDS.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use xds_api::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};

use crate::protocol::{
    DeltaStream, KnownResource, ResourceStatus, SotwStream, StreamState, TypeReport,
};

/// The protocol machine of one stream, shared with the registry so that
/// status reads need no copy of per-resource state.
#[derive(Debug)]
pub(crate) enum Machine {
    Sotw(SotwStream),
    Delta(DeltaStream),
}

impl Machine {
    /// The ACK or NACK carried by the last handled request, once.
    pub(crate) fn take_answer(
        &mut self,
    ) -> Option<(crate::resources::ResourceType, crate::protocol::Answer)> {
        match self {
            Machine::Sotw(s) => s.take_answer(),
            Machine::Delta(d) => d.take_answer(),
        }
    }

    fn state(&self) -> &dyn StreamState {
        match self {
            Machine::Sotw(s) => s,
            Machine::Delta(d) => d,
        }
    }

    fn state_mut(&mut self) -> &mut dyn StreamState {
        match self {
            Machine::Sotw(s) => s,
            Machine::Delta(d) => d,
        }
    }

    /// Per-type status.
    pub(crate) fn reports(&self) -> Vec<TypeReport> {
        self.state().reports()
    }

    /// See [`StreamState::rejected_routes`].
    pub(crate) fn rejected_routes(&self) -> Vec<crate::protocol::RejectedRoute> {
        self.state().rejected_routes()
    }
}

#[derive(Debug)]
pub(crate) struct ClientSlot {
    pub(crate) id: u64,
    pub(crate) node: Node,
    pub(crate) variant: &'static str,
    pub(crate) connected_since_ms: u64,
    /// The SPIFFE ID the server settled on for this stream.
    pub(crate) identity: Option<String>,
    pub(crate) machine: Mutex<Machine>,
}

impl ClientSlot {
    pub(crate) fn machine(&self) -> MutexGuard<'_, Machine> {
        // A panic elsewhere must not take status reads down with it.
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Tracks every connected stream; cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    /// The identities of connected streams: the snapshot writer issues
    /// certificates for exactly these.
    identities: Arc<watch::Sender<BTreeSet<String>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Arc::default(),
            identities: Arc::new(watch::channel(BTreeSet::new()).0),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    clients: BTreeMap<u64, Arc<ClientSlot>>,
}

impl Inner {
    fn identities(&self) -> BTreeSet<String> {
        self.clients
            .values()
            .filter_map(|c| c.identity.clone())
            .collect()
    }
}

/// Removes its stream from the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Registry,
    pub(crate) slot: Arc<ClientSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.clients.remove(&self.slot.id);
        if self.slot.identity.is_some() {
            self.registry.publish_identities(&inner);
        }
        crate::metrics::CLIENTS
            .get_or_create(&[("variant", self.slot.variant.into())])
            .dec();
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_identities(&self, inner: &Inner) {
        let now = inner.identities();
        self.identities.send_if_modified(|cur| {
            if *cur == now {
                return false;
            }
            *cur = now;
            true
        });
    }

    /// Follows the set of identities of connected streams.
    pub fn identities(&self) -> watch::Receiver<BTreeSet<String>> {
        self.identities.subscribe()
    }

    pub(crate) fn register(
        &self,
        node: Node,
        variant: &'static str,
        identity: Option<String>,
        machine: Machine,
    ) -> Registration {
        let mut inner = self.lock();
        inner.next_id += 1;
        let slot = Arc::new(ClientSlot {
            id: inner.next_id,
            node,
            variant,
            connected_since_ms: now_ms(),
            identity,
            machine: Mutex::new(machine),
        });
        inner.clients.insert(slot.id, slot.clone());
        if slot.identity.is_some() {
            self.publish_identities(&inner);
        }
        drop(inner);
        crate::metrics::CLIENTS
            .get_or_create(&[("variant", variant.into())])
            .inc();
        Registration {
            registry: self.clone(),
            slot,
        }
    }

    pub(crate) fn slots(&self) -> Vec<Arc<ClientSlot>> {
        self.lock().clients.values().cloned().collect()
    }

    /// Number of connected streams.
    pub fn len(&self) -> usize {
        self.lock().clients.len()
    }

    /// Whether no stream is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Status of every connected stream.
    pub fn clients(&self) -> Vec<ClientStatus> {
        self.slots()
            .iter()
            .map(|s| {
                let reports = s.machine().state().reports();
                ClientStatus::new(s, &reports)
            })
            .collect()
    }

    pub(crate) fn known_resources(slot: &ClientSlot) -> Vec<KnownResource> {
        slot.machine().state_mut().known_resources()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One connected stream, as served by `GET /api/v1/xds/clients`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    pub stream_id: u64,
    pub node_id: String,
    pub node_cluster: String,
    pub user_agent_name: String,
    pub user_agent_version: String,
    /// The node's SPIFFE ID (from its client certificate, or claimed when
    /// the xDS port does not authenticate clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// `sotw` or `delta`.
    pub xds_variant: String,
    /// UNIX milliseconds.
    pub connected_since_ms: u64,
    pub resources: Vec<TypeStatus>,
}

/// Per resource type status of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    pub type_url: String,
    /// `lds`, `rds`, `cds`, `eds` or `sds`.
    pub r#type: String,
    pub wildcard: bool,
    pub subscribed_names: usize,
    pub resource_count: usize,
    pub last_sent_version: Option<String>,
    pub last_acked_version: Option<String>,
    pub last_nack: Option<NackStatus>,
    /// `not_sent`, `sent`, `acked` or `nacked`: the answer to the last response.
    pub status: String,
}

/// The last rejected response of a type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NackStatus {
    pub version: String,
    pub message: String,
    /// UNIX milliseconds.
    pub at_ms: u64,
}

pub(crate) fn status_name(s: ResourceStatus) -> &'static str {
    match s {
        ResourceStatus::NotSent => "not_sent",
        ResourceStatus::Sent => "sent",
        ResourceStatus::Acked => "acked",
        ResourceStatus::Nacked => "nacked",
    }
}

impl ClientStatus {
    fn new(s: &ClientSlot, reports: &[TypeReport]) -> Self {
        let version = match &s.node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                .unwrap_or_default(),
            None => String::new(),
        };
        ClientStatus {
            stream_id: s.id,
            node_id: s.node.id.clone(),
            node_cluster: s.node.cluster.clone(),
            user_agent_name: s.node.user_agent_name.clone(),
            user_agent_version: version,
            spiffe_id: s.identity.clone(),
            xds_variant: s.variant.to_owned(),
            connected_since_ms: s.connected_since_ms,
            resources: reports
                .iter()
                .map(|r| TypeStatus {
                    type_url: r.resource_type.type_url().to_owned(),
                    r#type: r.resource_type.short_name().to_owned(),
                    wildcard: r.wildcard,
                    subscribed_names: r.subscribed_names,
                    resource_count: r.resources,
                    last_sent_version: r.last_sent_version.clone(),
                    last_acked_version: r.last_acked_version.clone(),
                    last_nack: r.last_nack.as_ref().map(|n| NackStatus {
                        version: n.version.clone(),
                        message: n.message.clone(),
                        at_ms: n.at_ms,
                    }),
                    status: status_name(r.status).to_owned(),
                })
                .collect(),
        }
    }
}

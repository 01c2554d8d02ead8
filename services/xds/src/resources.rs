//! Resource types and the encoded, content-versioned resource set.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Name;
use xds_api::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_api::pb::google::protobuf::Any;

use crate::translate::InboundTemplate;

/// The xDS resource types Meridian serves over ADS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Listener,
    RouteConfiguration,
    Cluster,
    ClusterLoadAssignment,
    Secret,
}

impl ResourceType {
    /// Every type, in index order.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Secret,
    ];

    /// Make-before-break order: clusters and their endpoints reach a client
    /// before the listeners and routes that point at them.
    pub const PUSH_ORDER: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
        ResourceType::Secret,
    ];

    /// The `type.googleapis.com/...` URL of this type.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// Parses a type URL; `None` for types Meridian does not serve.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short conventional name (`lds`, `rds`, `cds`, `eds`, `sds`).
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Listener => "lds",
            ResourceType::RouteConfiguration => "rds",
            ResourceType::Cluster => "cds",
            ResourceType::ClusterLoadAssignment => "eds",
            ResourceType::Secret => "sds",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// LDS and CDS responses carry the full state of the subscription; RDS
    /// and EDS carry only what was asked for
    /// (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#grouping-resources-into-responses>).
    pub fn is_full_state(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

// Keep the hand-written URLs honest against the generated messages.
#[allow(dead_code)]
fn generated_type_url(t: ResourceType) -> String {
    match t {
        ResourceType::Listener => Listener::type_url(),
        ResourceType::RouteConfiguration => RouteConfiguration::type_url(),
        ResourceType::Cluster => Cluster::type_url(),
        ResourceType::ClusterLoadAssignment => ClusterLoadAssignment::type_url(),
        ResourceType::Secret => Secret::type_url(),
    }
}

/// One encoded resource, shared by every stream that sends it.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub name: Arc<str>,
    /// Content hash of `any.value`: equal bytes give equal versions on every replica.
    pub version: Arc<str>,
    pub any: Any,
    /// For a RouteConfiguration: the clusters it routes to, sorted. Drives
    /// make-before-break of cluster removals.
    pub refs: Box<[Arc<str>]>,
    /// Whether a wildcard subscription receives it. Only the proxyless gRPC
    /// api_listeners are not: Envoy rejects api_listeners sent over LDS.
    pub wildcard: bool,
    /// For an egress listener: its port, so a per-node view can rebind it.
    pub egress_port: Option<u32>,
    /// What a proxyless gRPC client gets instead, when it differs (an mTLS
    /// cluster names the bootstrap's certificate providers rather than SDS).
    pub proxyless: Option<Arc<Entry>>,
}

impl Entry {
    /// Wraps an encoded message; the version is derived from its bytes.
    pub fn new(name: impl Into<Arc<str>>, any: Any) -> Self {
        let version: Arc<str> = hex64(fnv64(&any.value)).into();
        Entry {
            name: name.into(),
            version,
            any,
            refs: Box::new([]),
            wildcard: true,
            egress_port: None,
            proxyless: None,
        }
    }
}

/// The complete encoded resource set: per type, name -> entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    maps: [BTreeMap<Arc<str>, Arc<Entry>>; 5],
    /// Per policy: what a sidecar's inbound listener for it needs.
    inbound: BTreeMap<Arc<str>, Arc<InboundTemplate>>,
    /// Per SPIFFE ID: the workload secret (named `meridian/workload`),
    /// served only to a node of that identity.
    workload_secrets: BTreeMap<Arc<str>, Arc<Entry>>,
    /// Endpoint `ip:port` -> policy, for proxyless gRPC servers, which ask
    /// for their listener by listening address.
    endpoint_policies: BTreeMap<String, Arc<str>>,
}

impl Resources {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a resource.
    pub fn insert(&mut self, ty: ResourceType, entry: Entry) {
        self.maps[ty.index()].insert(entry.name.clone(), Arc::new(entry));
    }

    /// Looks one resource up by name.
    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Arc<Entry>> {
        self.maps[ty.index()].get(name)
    }

    /// All resources of a type, ordered by name.
    pub fn iter(&self, ty: ResourceType) -> impl Iterator<Item = &Arc<Entry>> + '_ {
        self.maps[ty.index()].values()
    }

    /// The map of one type.
    pub fn map(&self, ty: ResourceType) -> &BTreeMap<Arc<str>, Arc<Entry>> {
        &self.maps[ty.index()]
    }

    /// Number of resources of a type.
    pub fn len(&self, ty: ResourceType) -> usize {
        self.maps[ty.index()].len()
    }

    /// Whether there is no resource at all.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty) && self.workload_secrets.is_empty()
    }

    /// Records the inbound template of a policy.
    pub fn insert_inbound(&mut self, policy: &str, template: InboundTemplate) {
        self.inbound.insert(Arc::from(policy), Arc::new(template));
    }

    /// The inbound template of a policy.
    pub fn inbound(&self, policy: &str) -> Option<&Arc<InboundTemplate>> {
        self.inbound.get(policy)
    }

    /// Records that `ip:port` is an endpoint of `policy`.
    /// The first policy recorded for an address keeps it.
    pub fn insert_endpoint(&mut self, address: String, policy: &str) {
        self.endpoint_policies
            .entry(address)
            .or_insert_with(|| Arc::from(policy));
    }

    /// The policy an endpoint address belongs to.
    pub fn endpoint_policy(&self, address: &str) -> Option<&Arc<str>> {
        self.endpoint_policies.get(address)
    }

    /// Records the workload secret of an identity.
    pub fn insert_workload_secret(&mut self, spiffe_id: &str, entry: Entry) {
        self.workload_secrets
            .insert(Arc::from(spiffe_id), Arc::new(entry));
    }

    /// The workload secret of an identity.
    pub fn workload_secret(&self, spiffe_id: &str) -> Option<&Arc<Entry>> {
        self.workload_secrets.get(spiffe_id)
    }
}

/// 64-bit FNV-1a: stable across processes and releases, unlike `DefaultHasher`.
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(bytes);
    h.0
}

pub(crate) struct Fnv(pub(crate) u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

pub(crate) fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

/// Version of a set of resources: a hash of the (name, version) pairs in
/// name order, so it depends on content only.
pub(crate) fn set_version<'a>(entries: impl Iterator<Item = &'a Arc<Entry>>) -> String {
    let mut h = Fnv::new();
    for e in entries {
        h.write(e.name.as_bytes());
        h.write(&[0]);
        h.write(e.version.as_bytes());
        h.write(&[0]);
    }
    hex64(h.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_match_generated() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(t.type_url(), generated_type_url(t));
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x.Y"), None);
        assert_eq!(ResourceType::from_type_url(""), None);
    }

    #[test]
    fn versions_depend_on_bytes_only() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"", b"", true),
        ];
        for (a, b, same) in cases {
            assert_eq!(fnv64(a) == fnv64(b), *same, "{a:?} vs {b:?}");
        }
        // Reference value of FNV-1a 64 for "a".
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

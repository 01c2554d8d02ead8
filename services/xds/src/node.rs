//! What each node gets: Meridian's [`Selector`] for the xDS engine.
//!
//! A node reads the view of its identity's namespace (see
//! [`crate::assemble`]); a sidecar may rebind its egress listeners; a
//! proxyless gRPC client gets certificate-provider TLS instead of SDS; a
//! sidecar in front of a workload gets its inbound listener and workload
//! cluster; a proxyless gRPC server gets its listener by listening address;
//! a node with an identity gets its own workload certificate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use meridian_xds_engine::resources::{Fnv, ResourceType};
use meridian_xds_engine::{Entry, NodeView, Resources, Selector, Subscription};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::google::protobuf::value::Kind;

use crate::assemble::{egress_route, Ext, Piece};
use crate::tls::{Consumer, WORKLOAD_SECRET};
use crate::translate::{
    egress_entry, egress_port, grpc_server_address, grpc_server_entry, inbound_entries,
    namespace_of, InboundTemplate, DEFAULT_EGRESS_ADDRESS, EGRESS_ADDRESS_METADATA_KEY,
};

/// Node metadata key naming the policy whose workload a sidecar fronts.
pub const INBOUND_POLICY_METADATA_KEY: &str = "meridian.inbound_policy";
/// Node metadata key: `ip:port` the sidecar's inbound listener binds
/// (where the policy's endpoint points).
pub const INBOUND_ADDRESS_METADATA_KEY: &str = "meridian.inbound_address";
/// Node metadata key: `ip:port` of the workload behind the sidecar.
pub const WORKLOAD_ADDRESS_METADATA_KEY: &str = "meridian.workload_address";
/// Node metadata key through which a node claims a SPIFFE ID. Honoured only
/// when the xDS port does not authenticate clients (`--xds-client-auth none`)
/// and the server trusts claims (`--xds-trust-claimed-identities`, loopback
/// only): the identity picks the namespace view and the workload key.
pub const SPIFFE_ID_METADATA_KEY: &str = "meridian.spiffe_id";
/// Node metadata key listing the hosts a node calls (a list of strings, or
/// one string of comma-separated hosts). A node that sets it gets only
/// those policies' listeners, routes, clusters and endpoints; without it a
/// node gets every policy of its view.
pub const HOSTS_METADATA_KEY: &str = "meridian.hosts";

/// What a scoped node may see, read from the view by [`NodeView::refresh`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    policies: BTreeSet<Arc<str>>,
    ports: BTreeSet<u32>,
    /// The scoped policies by port, for the node's egress routes.
    by_port: BTreeMap<u32, Vec<Arc<Piece>>>,
}

impl Scope {
    fn of(hosts: &BTreeSet<String>, ext: &Ext) -> Scope {
        let mut s = Scope::default();
        for h in hosts {
            if let Some(p) = ext.hosts.get(h) {
                s.policies.insert(p.name.clone());
                s.ports.insert(p.port);
                s.by_port.entry(p.port).or_default().push(p.clone());
            }
        }
        for v in s.by_port.values_mut() {
            v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        s
    }

    /// Same visibility: the same policies and ports. (A changed virtual
    /// host changes its port's shared egress route too, so the node's form
    /// of it is rebuilt through the ordinary comparison.)
    fn same(&self, other: &Scope) -> bool {
        self.policies == other.policies && self.ports == other.ports
    }
}

/// A sidecar's inbound side: which policy, where to listen, where the workload is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub policy: String,
    pub listen: (String, u32),
    pub workload: (String, u32),
}

/// Meridian's node selector.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeridianSelector;

impl Selector for MeridianSelector {
    fn claimed_identity(&self, node: &Node) -> Option<String> {
        metadata_string(Some(node), SPIFFE_ID_METADATA_KEY)
    }

    fn node_view(&self, node: &Node, identity: Option<&str>) -> Box<dyn NodeView> {
        let mut view = MeridianNode::from_node(Some(node));
        view.identity = identity.map(str::to_owned);
        view.namespace = identity.and_then(namespace_of);
        Box::new(view)
    }
}

/// What is per node rather than shared.
#[derive(Clone, Debug, Default)]
pub struct MeridianNode {
    /// `None` means the default (`127.0.0.1`).
    pub egress_address: Option<String>,
    /// The node's SPIFFE ID, as decided by the server (certificate URI SAN,
    /// or the claim when clients are not authenticated). Without one the
    /// node gets no workload certificate.
    pub identity: Option<String>,
    /// The namespace view it reads (from its identity).
    pub namespace: Option<String>,
    /// Set for a sidecar in front of a workload.
    pub inbound: Option<Inbound>,
    /// A proxyless gRPC client: gets certificate-provider TLS, not SDS.
    pub proxyless: bool,
    /// The hosts the node calls (`meridian.hosts`); `None`: every policy.
    pub hosts: Option<BTreeSet<String>>,
    /// What those hosts resolve to in the view last read.
    pub(crate) scope: Scope,
    /// Per-node encodings, reused while their inputs stay the same:
    /// name -> (inputs, entry).
    pub(crate) memo: HashMap<String, (String, Arc<Entry>)>,
}

fn metadata_string(node: Option<&Node>, key: &str) -> Option<String> {
    node.and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(key))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.trim().to_owned()),
            _ => None,
        })
}

/// A metadata value that is a list of strings or a comma-separated string.
fn metadata_list(node: Option<&Node>, key: &str) -> Option<BTreeSet<String>> {
    let v = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(key))?;
    let items: Vec<String> = match &v.kind {
        Some(Kind::StringValue(s)) => s.split(',').map(str::to_owned).collect(),
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    Some(
        items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

fn socket_addr(s: &str) -> Option<(String, u32)> {
    let a: std::net::SocketAddr = s.parse().ok()?;
    Some((a.ip().to_string(), u32::from(a.port())))
}

impl MeridianNode {
    /// Reads node metadata key `meridian.egress_address`. Only an IP address
    /// is accepted: anything else would make Envoy reject the listener.
    ///
    /// Also reads the inbound keys (`meridian.inbound_policy`,
    /// `meridian.inbound_address`, `meridian.workload_address`; all three or
    /// none), and whether the node is a proxyless gRPC client (its user
    /// agent is not Envoy).
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
        MeridianNode {
            egress_address: addr,
            inbound,
            proxyless,
            hosts: metadata_list(node, HOSTS_METADATA_KEY),
            ..Default::default()
        }
    }

    fn consumer(&self) -> Consumer {
        if self.proxyless {
            Consumer::ProxylessGrpc
        } else {
            Consumer::Envoy
        }
    }

    /// A per-node entry, encoded again only when `inputs` change.
    fn memo(&mut self, name: &str, inputs: String, make: impl FnOnce() -> Entry) -> Arc<Entry> {
        match self.memo.get(name) {
            Some((i, e)) if *i == inputs => e.clone(),
            _ => {
                let e = Arc::new(make());
                self.memo.insert(name.to_owned(), (inputs, e.clone()));
                e
            }
        }
    }

    fn inbound_entry(
        &mut self,
        ty: ResourceType,
        template: &InboundTemplate,
    ) -> Option<Arc<Entry>> {
        let inb = self.inbound.clone()?;
        let consumer = self.consumer();
        let key = format!("{ty:?}/{template:?}/{consumer:?}");
        let name = match ty {
            ResourceType::Listener => crate::translate::inbound_listener_name(&inb.policy),
            _ => crate::translate::inbound_cluster_name(&inb.policy),
        };
        Some(self.memo(&name, key, || {
            let (l, c) = inbound_entries(
                &inb.policy,
                template,
                consumer,
                (&inb.listen.0, inb.listen.1),
                (&inb.workload.0, inb.workload.1),
            );
            if ty == ResourceType::Listener {
                l
            } else {
                c
            }
        }))
    }
}

impl NodeView for MeridianNode {
    fn view(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn has_variants(&self, ty: ResourceType) -> bool {
        (ty == ResourceType::Listener && self.egress_address.is_some())
            || (ty == ResourceType::Cluster && self.proxyless)
            || (ty == ResourceType::RouteConfiguration && self.hosts.is_some())
    }

    fn visible(&self, ty: ResourceType, e: &Entry) -> bool {
        if self.hosts.is_none() {
            return true;
        }
        let scope = &self.scope;
        let policy_named = |name: &str| scope.policies.contains(name);
        match ty {
            ResourceType::Cluster | ResourceType::ClusterLoadAssignment => {
                // `<policy>`, `<policy>@<canary version>`, and a route's
                // own pair under a rollout (`…~<route>`).
                policy_named(crate::translate::policy_of_cluster_name(&e.name))
            }
            ResourceType::Listener => match egress_port(&e.name) {
                Some(port) if e.wildcard => scope.ports.contains(&port),
                // `<host>` and `<host>:<port>`: proxyless listeners.
                _ => self.hosts.as_ref().is_some_and(|h| {
                    h.contains(&*e.name)
                        || e.name
                            .rsplit_once(':')
                            .is_some_and(|(host, _)| h.contains(host))
                }),
            },
            ResourceType::RouteConfiguration => match egress_port(&e.name) {
                Some(port) => scope.ports.contains(&port),
                None => e.name.strip_prefix("grpc_").is_some_and(policy_named),
            },
            ResourceType::Secret => true,
        }
    }

    fn refresh(&mut self, res: &Resources) -> bool {
        let (Some(hosts), Some(ext)) = (&self.hosts, res.extension::<Ext>()) else {
            return false;
        };
        let scope = Scope::of(hosts, ext);
        let changed = !scope.same(&self.scope);
        self.scope = scope;
        changed
    }

    fn variant(&mut self, ty: ResourceType, e: &Arc<Entry>) -> Arc<Entry> {
        match ty {
            ResourceType::Listener => match (&self.egress_address, egress_port(&e.name)) {
                (Some(addr), Some(port)) if e.wildcard => {
                    let addr = addr.clone();
                    self.memo(&e.name, addr.clone(), || egress_entry(port, &addr))
                }
                _ => e.clone(),
            },
            ResourceType::Cluster if self.proxyless => {
                e.alternate.clone().unwrap_or_else(|| e.clone())
            }
            // A scoped node's egress route holds only its hosts' virtual hosts.
            ResourceType::RouteConfiguration if self.hosts.is_some() => {
                let Some(port) = egress_port(&e.name) else {
                    return e.clone();
                };
                let Some(pieces) = self.scope.by_port.get(&port).cloned() else {
                    return e.clone();
                };
                let inputs = pieces
                    .iter()
                    .map(|p| format!("{:p}", Arc::as_ptr(p)))
                    .collect::<Vec<_>>()
                    .join(",");
                let name = e.name.clone();
                self.memo(&name, inputs, || egress_route(&name, pieces.iter()))
            }
            _ => e.clone(),
        }
    }

    fn variant_key(&self) -> u64 {
        let mut h = Fnv::new();
        h.field(self.egress_address.as_deref().unwrap_or(""));
        h.field(if self.proxyless { "proxyless" } else { "" });
        for host in self.hosts.iter().flatten() {
            h.field(host);
        }
        h.0
    }

    fn extras(&mut self, ty: ResourceType, res: &Resources, sub: &Subscription) -> Vec<Arc<Entry>> {
        let Some(ext) = res.extension::<Ext>() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match ty {
            ResourceType::Listener | ResourceType::Cluster => {
                if let Some(inb) = &self.inbound {
                    if let Some(template) = ext.inbound(&inb.policy).cloned() {
                        if let Some(e) = self.inbound_entry(ty, &template) {
                            if sub.covers_name(&e.name) {
                                out.push(e);
                            }
                        }
                    }
                }
                if ty == ResourceType::Listener {
                    for n in sub.names.iter() {
                        let Some(addr) = grpc_server_address(n) else {
                            continue;
                        };
                        let Some(piece) = ext.endpoint_policy(addr) else {
                            continue;
                        };
                        let key = format!("{}/{:?}", piece.name, piece.inbound);
                        let (name, policy, template) =
                            (n.to_string(), piece.name.clone(), piece.inbound.clone());
                        out.push(self.memo(&name, key, || {
                            grpc_server_entry(&name, addr, &policy, &template)
                        }));
                    }
                }
            }
            // Only the well-known name resolves, to this node's own
            // certificate: no name reaches another identity's key.
            ResourceType::Secret if sub.covers_name(WORKLOAD_SECRET) => {
                if let Some(e) = self
                    .identity
                    .as_deref()
                    .and_then(|id| ext.workload_secret(id))
                {
                    out.push(e.clone());
                }
            }
            _ => {}
        }
        out
    }
}

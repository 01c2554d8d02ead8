//! Incremental translation: the snapshot's views assembled from per-policy
//! pieces.
//!
//! Each policy is translated and encoded on its own into a [`Piece`] (its
//! clusters, load assignments, proxyless listeners and route, and its
//! virtual host for the egress route of its port). A view is the union of
//! its policies' pieces plus, per port, the egress listener and the egress
//! RouteConfiguration, which is framed from the pieces' encoded virtual
//! hosts (no re-encoding). A change to one policy re-translates that policy
//! and rebuilds only its port's egress route, and only when its virtual host
//! or clusters changed: a weight change touches one load assignment.
//!
//! # Views
//!
//! The unscoped view holds the policies without [`NAMESPACE_LABEL`]; each
//! namespace named by that label has a view with the unscoped policies plus
//! its own. A node reads the view of its identity's namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use meridian_policy::Policy;
use meridian_xds_engine::resources::{Fnv, ResourceType};
use meridian_xds_engine::{CowMap, Entry, Resources};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use crate::tls;
use crate::translate::{
    egress_entry, egress_name, entry, inbound_template, typed_piece, EndpointHealth,
    InboundTemplate, Mesh, RolloutWeights, Rollouts, Weights, DEFAULT_EGRESS_ADDRESS,
    NAMESPACE_LABEL,
};

/// What one policy contributes to every view that holds it, encoded once.
#[derive(Debug)]
pub struct Piece {
    pub name: Arc<str>,
    pub host: String,
    pub port: u32,
    pub namespace: Option<String>,
    clusters: Vec<Arc<Entry>>,
    assignments: Vec<Arc<Entry>>,
    listeners: Vec<Arc<Entry>>,
    route: Arc<Entry>,
    /// The encoded VirtualHost of the egress route.
    vhost: Bytes,
    /// Its clusters, sorted: what the egress route references for it.
    refs: Vec<Arc<str>>,
    pub inbound: Arc<InboundTemplate>,
    /// Endpoints given by IP address (for proxyless gRPC servers).
    pub endpoints: Vec<SocketAddr>,
    /// Hash of what per-node resources read (template, endpoints).
    ext_hash: u64,
    /// Left out of its port's egress route, because a client refused the
    /// route with it (see [`crate::nack`]); its other resources stay.
    excluded: bool,
}

impl Piece {
    /// Translates and encodes one policy.
    pub fn new(
        p: &Policy,
        weights: Option<&BTreeMap<String, u32>>,
        unhealthy: Option<&BTreeMap<String, BTreeSet<String>>>,
        rollouts: Option<&RolloutWeights>,
        mesh: &Mesh,
    ) -> Piece {
        let typed = typed_piece(p, weights, unhealthy, rollouts, mesh);
        let name: Arc<str> = Arc::from(p.metadata.name.as_str());
        let mut refs: Vec<Arc<str>> = typed.refs.iter().map(|r| Arc::from(r.as_str())).collect();
        refs.sort();
        refs.dedup();
        let clusters = typed
            .clusters
            .iter()
            .map(|(c, proxyless)| {
                let mut e = entry(c.name.clone(), ResourceType::Cluster, c);
                e.alternate = proxyless
                    .as_ref()
                    .map(|g| Arc::new(entry(g.name.clone(), ResourceType::Cluster, g)));
                Arc::new(e)
            })
            .collect();
        let assignments = typed
            .assignments
            .iter()
            .map(|a| {
                Arc::new(entry(
                    a.cluster_name.clone(),
                    ResourceType::ClusterLoadAssignment,
                    a,
                ))
            })
            .collect();
        let route_name: Arc<str> = Arc::from(typed.route.name.as_str());
        let listeners = typed
            .listeners
            .iter()
            .map(|l| {
                let mut e = entry(l.name.clone(), ResourceType::Listener, l);
                // Envoy rejects api_listeners over LDS: named requests only.
                e.wildcard = false;
                e.refs = Box::new([route_name.clone()]);
                Arc::new(e)
            })
            .collect();
        let mut route = entry(
            typed.route.name.clone(),
            ResourceType::RouteConfiguration,
            &typed.route,
        );
        route.refs = refs.clone().into_boxed_slice();
        let endpoints: Vec<SocketAddr> = p
            .spec
            .zones
            .iter()
            .flat_map(|z| &z.endpoints)
            .filter_map(|e| {
                let ip = e.address.parse::<IpAddr>().ok()?;
                Some(SocketAddr::new(ip, u16::try_from(e.port).ok()?))
            })
            .collect();
        let inbound = inbound_template(p, mesh);
        let mut h = Fnv::new();
        h.field(&name);
        h.field(&p.spec.host);
        h.field(&p.spec.port.to_string());
        h.field(&format!("{inbound:?}"));
        for e in &endpoints {
            h.field(&e.to_string());
        }
        Piece {
            name,
            host: p.spec.host.clone(),
            port: p.spec.port,
            namespace: p.metadata.labels.get(NAMESPACE_LABEL).cloned(),
            clusters,
            assignments,
            listeners,
            route: Arc::new(route),
            vhost: typed.vhost.encode_to_vec().into(),
            refs,
            inbound: Arc::new(inbound),
            endpoints,
            ext_hash: h.0,
            excluded: false,
        }
    }

    fn entries(&self) -> impl Iterator<Item = (ResourceType, &Arc<Entry>)> + '_ {
        self.clusters
            .iter()
            .map(|e| (ResourceType::Cluster, e))
            .chain(
                self.assignments
                    .iter()
                    .map(|e| (ResourceType::ClusterLoadAssignment, e)),
            )
            .chain(self.listeners.iter().map(|e| (ResourceType::Listener, e)))
            .chain(std::iter::once((
                ResourceType::RouteConfiguration,
                &self.route,
            )))
    }

    /// Whether the egress route of the port reads the same from both.
    fn same_egress_share(&self, other: &Piece) -> bool {
        self.port == other.port
            && self.vhost == other.vhost
            && self.refs == other.refs
            && self.excluded == other.excluded
    }
}

/// Per-view data the node views read: the view's policies (inbound
/// templates, endpoints) and the workload certificates by identity.
#[derive(Debug, Default)]
pub struct Ext {
    pub members: CowMap<Arc<str>, Arc<Piece>>,
    /// The view's policies by host (scoping by `meridian.hosts`).
    pub hosts: CowMap<String, Arc<Piece>>,
    pub workload_secrets: Arc<BTreeMap<String, Arc<Entry>>>,
}

impl Ext {
    /// The inbound template of a policy of this view.
    pub fn inbound(&self, policy: &str) -> Option<&Arc<InboundTemplate>> {
        self.members.get(policy).map(|p| &p.inbound)
    }

    /// The policy an endpoint address belongs to: the first in name order.
    /// A scan, for the rare proxyless gRPC server asking for its listener.
    pub fn endpoint_policy(&self, addr: SocketAddr) -> Option<&Arc<Piece>> {
        self.members.values().find(|p| p.endpoints.contains(&addr))
    }

    /// The workload secret of an identity.
    pub fn workload_secret(&self, spiffe_id: &str) -> Option<&Arc<Entry>> {
        self.workload_secrets.get(spiffe_id)
    }
}

/// One view being maintained.
#[derive(Clone, Debug, Default)]
struct View {
    res: Resources,
    /// What was last output: the new output is sealed against it.
    last: Resources,
    ports: BTreeMap<u32, BTreeMap<Arc<str>, Arc<Piece>>>,
    /// Shared with the published snapshot's [`Ext`]: copied per chunk
    /// edited, not whole (15,000 policies made that the cost of a change).
    members: CowMap<Arc<str>, Arc<Piece>>,
    hosts: CowMap<String, Arc<Piece>>,
    ext_sum: u64,
    /// Namespace views: how many of its members are its own.
    own: usize,
    dirty: BTreeSet<u32>,
}

impl View {
    fn remove(&mut self, p: &Piece, egress: bool) {
        for (ty, e) in p.entries() {
            self.res.remove(ty, &e.name);
        }
        if let Some(m) = self.ports.get_mut(&p.port) {
            m.remove(&p.name);
        }
        if egress {
            self.dirty.insert(p.port);
        }
        self.members.remove(&p.name);
        if self.hosts.get(&p.host).is_some_and(|h| h.name == p.name) {
            self.hosts.remove(&p.host);
        }
        self.ext_sum = self.ext_sum.wrapping_sub(p.ext_hash);
    }

    fn add(&mut self, p: &Arc<Piece>, egress: bool) {
        for (ty, e) in p.entries() {
            self.res.insert_shared(ty, e.clone());
        }
        self.ports
            .entry(p.port)
            .or_default()
            .insert(p.name.clone(), p.clone());
        if egress {
            self.dirty.insert(p.port);
        }
        self.members.insert(p.name.clone(), p.clone());
        self.hosts.insert(p.host.clone(), p.clone());
        self.ext_sum = self.ext_sum.wrapping_add(p.ext_hash);
    }

    /// Rebuilds the egress listener and route of the ports that changed.
    fn finish(&mut self) {
        for port in std::mem::take(&mut self.dirty) {
            let name = egress_name(port);
            match self.ports.get(&port).filter(|m| !m.is_empty()) {
                Some(members) => {
                    self.res.insert(
                        ResourceType::RouteConfiguration,
                        egress_route(&name, members.values()),
                    );
                    if self.res.get(ResourceType::Listener, &name).is_none() {
                        self.res.insert(
                            ResourceType::Listener,
                            egress_entry(port, DEFAULT_EGRESS_ADDRESS),
                        );
                    }
                }
                None => {
                    self.ports.remove(&port);
                    self.res.remove(ResourceType::RouteConfiguration, &name);
                    self.res.remove(ResourceType::Listener, &name);
                }
            }
        }
    }

    fn output(&mut self, trust_bundle: Option<&Arc<Entry>>, secrets: &Secrets) -> Resources {
        match trust_bundle {
            Some(b) => {
                if self.res.get(ResourceType::Secret, &b.name) != Some(b) {
                    self.res.insert_shared(ResourceType::Secret, b.clone());
                }
            }
            None => {
                self.res
                    .remove(ResourceType::Secret, tls::TRUST_BUNDLE_SECRET);
            }
        }
        let ext = Ext {
            members: self.members.clone(),
            hosts: self.hosts.clone(),
            workload_secrets: secrets.workload.clone(),
        };
        self.res
            .set_extension(Arc::new(ext), self.ext_sum ^ secrets.hash);
        self.res.seal_against(&self.last);
        self.res.seal();
        self.last = self.res.clone();
        self.res.clone()
    }
}

/// The egress RouteConfiguration of a port: its policies' virtual hosts in
/// name order, framed from their encodings (`name` = 1, `virtual_hosts` = 2).
pub(crate) fn egress_route<'a>(
    name: &str,
    members: impl Iterator<Item = &'a Arc<Piece>> + Clone,
) -> Entry {
    let members = members.filter(|p| !p.excluded);
    let len: usize = members.clone().map(|p| p.vhost.len() + 10).sum();
    let mut buf = Vec::with_capacity(name.len() + 10 + len);
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(name.len() as u64, &mut buf);
    buf.extend_from_slice(name.as_bytes());
    let mut refs: Vec<Arc<str>> = Vec::new();
    for p in members {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(p.vhost.len() as u64, &mut buf);
        buf.extend_from_slice(&p.vhost);
        refs.extend(p.refs.iter().cloned());
    }
    refs.sort();
    refs.dedup();
    let mut e = Entry::new(name, ResourceType::RouteConfiguration, buf);
    e.refs = refs.into_boxed_slice();
    e
}

#[derive(Debug, Default)]
struct Secrets {
    trust_bundle: Option<Arc<Entry>>,
    workload: Arc<BTreeMap<String, Arc<Entry>>>,
    hash: u64,
}

/// Keeps the translation of every policy and assembles the views; the
/// snapshot writer's one stateful piece of the translation.
#[derive(Debug, Default)]
pub struct Translator {
    mesh: Mesh,
    /// Endpoints the leader marked unhealthy; read on every (re)translation.
    health: EndpointHealth,
    /// What each route's rollout serves; read like `health`.
    rollouts: Rollouts,
    /// Policies left out of the egress routes (a client refused them).
    excluded: BTreeSet<String>,
    pieces: BTreeMap<Arc<str>, Arc<Piece>>,
    unscoped: View,
    scoped: BTreeMap<String, View>,
    secrets: Secrets,
}

impl Translator {
    /// An empty translation for `mesh`.
    pub fn new(mesh: Mesh) -> Self {
        let mut t = Translator {
            mesh: Mesh::default(),
            ..Default::default()
        };
        t.set_mesh(mesh);
        t
    }

    /// Takes new mesh inputs. Returns true when every policy must be
    /// translated again (the trust domain changed); certificates alone
    /// change only the secrets.
    pub fn set_mesh(&mut self, mesh: Mesh) -> bool {
        let retranslate = mesh.trust_domain != self.mesh.trust_domain;
        if mesh.trust_bundle_pem != self.mesh.trust_bundle_pem
            || mesh.workload_certs != self.mesh.workload_certs
            || self.secrets.hash == 0
        {
            self.secrets = secrets(&mesh);
        }
        self.mesh = mesh;
        retranslate
    }

    /// Takes the endpoints marked unhealthy. Applied to the policies
    /// translated from now on: call [`Translator::update`] with the
    /// policies whose marks changed (or [`Translator::rebuild`]).
    pub fn set_endpoint_health(&mut self, health: EndpointHealth) {
        self.health = health;
    }

    /// Takes what each route's rollout serves (the leader's stored
    /// statuses). Applied like [`Translator::set_endpoint_health`].
    pub fn set_rollouts(&mut self, rollouts: Rollouts) {
        self.rollouts = rollouts;
    }

    /// Takes the policies to leave out of their port's egress route.
    /// Applied like [`Translator::set_endpoint_health`].
    pub fn set_excluded(&mut self, excluded: BTreeSet<String>) {
        self.excluded = excluded;
    }

    /// Whether a policy is left out of its egress route now.
    pub fn is_excluded(&self, policy: &str) -> bool {
        self.excluded.contains(policy)
    }

    /// Translates every policy afresh.
    pub fn rebuild<'a>(
        &mut self,
        policies: impl IntoIterator<Item = &'a Policy>,
        weights: &Weights,
    ) {
        self.pieces.clear();
        self.unscoped = View::default();
        self.scoped.clear();
        let mut pieces: Vec<Arc<Piece>> = policies
            .into_iter()
            .map(|p| {
                let name = &p.metadata.name;
                let mut piece = Piece::new(
                    p,
                    weights.get(name),
                    self.health.get(name),
                    self.rollouts.get(name),
                    &self.mesh,
                );
                piece.excluded = self.excluded.contains(name);
                Arc::new(piece)
            })
            .collect();
        pieces.sort_by(|a, b| a.name.cmp(&b.name));
        for p in &pieces {
            self.pieces.insert(p.name.clone(), p.clone());
            if p.namespace.is_none() {
                self.unscoped.add(p, true);
            }
        }
        for p in &pieces {
            if let Some(ns) = &p.namespace {
                let view = self
                    .scoped
                    .entry(ns.clone())
                    .or_insert_with(|| fresh_scoped(&self.unscoped));
                view.add(p, true);
                view.own += 1;
            }
        }
        self.unscoped.finish();
        for v in self.scoped.values_mut() {
            v.finish();
        }
    }

    /// Translates again only the named policies; `current` gives a policy's
    /// present state (`None`: deleted).
    pub fn update<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        current: impl Fn(&str) -> Option<&'a Policy>,
        weights: &Weights,
    ) {
        for name in names {
            let old = self.pieces.remove(name);
            let new = current(name).map(|p| {
                let mut piece = Piece::new(
                    p,
                    weights.get(name),
                    self.health.get(name),
                    self.rollouts.get(name),
                    &self.mesh,
                );
                piece.excluded = self.excluded.contains(name);
                Arc::new(piece)
            });
            let same_egress = match (&old, &new) {
                (Some(o), Some(n)) => o.same_egress_share(n) && o.namespace == n.namespace,
                _ => false,
            };
            if let Some(o) = &old {
                for v in self.views_of(o.namespace.as_deref()) {
                    v.remove(o, !same_egress);
                }
                if let Some(ns) = &o.namespace {
                    if let Some(v) = self.scoped.get_mut(ns) {
                        v.own -= 1;
                    }
                }
            }
            if let Some(n) = &new {
                if let Some(ns) = &n.namespace {
                    if !self.scoped.contains_key(ns) {
                        let view = fresh_scoped(&self.unscoped);
                        self.scoped.insert(ns.clone(), view);
                    }
                    if let Some(v) = self.scoped.get_mut(ns) {
                        v.own += 1;
                    }
                }
                for v in self.views_of(n.namespace.as_deref()) {
                    v.add(n, !same_egress);
                }
                self.pieces.insert(n.name.clone(), n.clone());
            }
        }
        self.scoped.retain(|_, v| v.own > 0);
        self.unscoped.finish();
        for v in self.scoped.values_mut() {
            v.finish();
        }
    }

    /// The views a policy of `namespace` belongs to.
    fn views_of(&mut self, namespace: Option<&str>) -> Vec<&mut View> {
        match namespace {
            None => std::iter::once(&mut self.unscoped)
                .chain(self.scoped.values_mut())
                .collect(),
            Some(ns) => self.scoped.get_mut(ns).into_iter().collect(),
        }
    }

    /// The unscoped view and one view per namespace, sealed against what
    /// was output last (so unchanged types are shared and changed ones
    /// list what changed).
    pub fn output(&mut self) -> (Resources, BTreeMap<String, Resources>) {
        let bundle = self.secrets.trust_bundle.clone();
        let unscoped = self.unscoped.output(bundle.as_ref(), &self.secrets);
        let scoped = self
            .scoped
            .iter_mut()
            .map(|(ns, v)| (ns.clone(), v.output(bundle.as_ref(), &self.secrets)))
            .collect();
        (unscoped, scoped)
    }

    /// Number of policies translated.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether no policy is translated.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }
}

/// A new namespace view: the unscoped policies to start with.
fn fresh_scoped(unscoped: &View) -> View {
    View {
        res: unscoped.res.clone(),
        last: Resources::default(),
        ports: unscoped.ports.clone(),
        members: unscoped.members.clone(),
        hosts: unscoped.hosts.clone(),
        ext_sum: unscoped.ext_sum,
        own: 0,
        // Ports the unscoped view has yet to rebuild are this one's too.
        dirty: unscoped.dirty.clone(),
    }
}

fn secrets(mesh: &Mesh) -> Secrets {
    let mut h = Fnv::new();
    let trust_bundle = mesh.trust_bundle_pem.as_ref().map(|b| {
        let s = tls::trust_bundle_secret(b);
        let e = Arc::new(entry(s.name.clone(), ResourceType::Secret, &s));
        h.field(&e.version);
        e
    });
    let workload = mesh
        .workload_certs
        .iter()
        .map(|(id, (chain, key))| {
            let s = tls::workload_secret(chain, key);
            let e = Arc::new(entry(s.name.clone(), ResourceType::Secret, &s));
            h.field(id);
            h.field(&e.version);
            (id.clone(), e)
        })
        .collect();
    Secrets {
        trust_bundle,
        workload: Arc::new(workload),
        hash: h.0 | 1,
    }
}

/// Translates policies into the encoded resource set every stream reads,
/// with the default [`Mesh`] (no CA).
pub fn translate(policies: &[Policy], weights: &Weights) -> Resources {
    translate_mesh(policies, weights, &Mesh::default())
}

/// Translates policies, secrets and inbound templates into the unscoped view.
pub fn translate_mesh(policies: &[Policy], weights: &Weights, mesh: &Mesh) -> Resources {
    let mut t = Translator::new(mesh.clone());
    // Every policy in the one view, whatever its namespace label.
    let unlabelled: Vec<Policy> = policies
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.metadata.labels.remove(NAMESPACE_LABEL);
            p
        })
        .collect();
    t.rebuild(&unlabelled, weights);
    t.output().0
}

/// Translates each namespace's view: the unscoped policies for nodes
/// without a namespace, and per namespace named by a [`NAMESPACE_LABEL`],
/// the unscoped policies plus that namespace's.
pub fn translate_scoped(
    policies: &[Policy],
    weights: &Weights,
    mesh: &Mesh,
) -> (Resources, BTreeMap<String, Resources>) {
    let mut t = Translator::new(mesh.clone());
    t.rebuild(policies, weights);
    t.output()
}

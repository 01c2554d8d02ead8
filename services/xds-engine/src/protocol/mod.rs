//! Per-stream xDS protocol state machines, free of I/O.
//!
//! [`SotwStream`] implements `StreamAggregatedResources` and [`DeltaStream`]
//! implements `DeltaAggregatedResources`, following
//! <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>.
//! Both take requests and snapshots and return the responses to send, in
//! make-before-break order (CDS, EDS, LDS, RDS).
//!
//! # What a stream remembers
//!
//! Per type: its subscription (the names it asked for, interned with the
//! snapshot's names), and an `Arc` to the snapshot's [`TypeSet`] it last
//! sent, plus the few entries that are this node's own (see
//! [`NodeView::extras`]) and the clusters kept for make-before-break. What
//! the client holds is "the sent set, as far as the subscription covers
//! it", so a stream costs a pointer per type, not a copy of every name and
//! version. On a new snapshot the stream compares only the names the set
//! records as changed since the one it sent (see
//! [`TypeSet::changed_since`]); it compares in full only when it fell more
//! than a few snapshots behind.
//!
//! # Only what changed
//!
//! SotW LDS and CDS responses carry the full state of the subscription, as
//! the protocol requires; SotW RDS and EDS responses carry only the
//! resources whose version changed for this stream (the protocol allows it
//! for these types: the client keeps what a response omits). Delta sends
//! only what changed and lists removals in `removed_resources`.
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
use std::fmt;
use std::sync::Arc;

use xds_api::pb::envoy::config::core::v3::Node;

pub use delta::DeltaStream;
pub use sotw::SotwStream;

use crate::resources::{hex64, Entry, Fnv, ResourceType, Resources, TypeSet};
use crate::wire::NamesHash;

/// What one node gets beyond the shared snapshot: which view it reads, its
/// own form of shared resources, and resources that are its alone. The
/// translator implements it; the engine never looks inside.
pub trait NodeView: Send + fmt::Debug {
    /// Key of the snapshot view this node reads (`None`: the default view).
    fn view(&self) -> Option<&str> {
        None
    }

    /// Whether [`NodeView::variant`] may change entries of `ty` for this node.
    fn has_variants(&self, _ty: ResourceType) -> bool {
        false
    }

    /// This node's form of a shared entry. It must depend only on the entry
    /// and the node: the stream compares shared entries to decide what
    /// changed.
    fn variant(&mut self, _ty: ResourceType, entry: &Arc<Entry>) -> Arc<Entry> {
        entry.clone()
    }

    /// Hash of what makes this node's variants differ from the shared
    /// entries; part of SotW versions, so two nodes that get different bytes
    /// never share a version.
    fn variant_key(&self) -> u64 {
        0
    }

    /// Whether this node may get a shared entry at all (scoping: a node
    /// that named the services it calls sees only theirs). Like
    /// [`NodeView::variant`], it must depend only on the entry and on what
    /// [`NodeView::refresh`] last read.
    fn visible(&self, _ty: ResourceType, _entry: &Entry) -> bool {
        true
    }

    /// Reads what the node's selection depends on from a new view; true
    /// when it changed, so that every type is compared in full (entries
    /// that did not change may have become visible or hidden).
    fn refresh(&mut self, _res: &Resources) -> bool {
        false
    }

    /// Resources of `ty` only this node gets (an inbound listener, its own
    /// certificate, ...), given the view it reads and its subscription.
    fn extras(
        &mut self,
        _ty: ResourceType,
        _res: &Resources,
        _sub: &Subscription,
    ) -> Vec<Arc<Entry>> {
        Vec::new()
    }
}

/// Chooses what each node gets: the engine's one hook into the translator
/// (like go-control-plane's `NodeHash`).
pub trait Selector: Send + Sync + 'static {
    /// The identity a node claims for itself (e.g. in its metadata); the
    /// server decides whether to believe it (see [`crate::decide_identity`]).
    fn claimed_identity(&self, _node: &Node) -> Option<String> {
        None
    }

    /// The view of a new stream's node, once its identity is settled.
    fn node_view(&self, node: &Node, identity: Option<&str>) -> Box<dyn NodeView>;
}

/// The node view of a client that gets the default view and nothing of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultView;

impl NodeView for DefaultView {}

impl Selector for DefaultView {
    fn node_view(&self, _node: &Node, _identity: Option<&str>) -> Box<dyn NodeView> {
        Box::new(DefaultView)
    }
}

/// A stream's subscription to one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    /// SotW only: wildcard because the first request named nothing, which
    /// later empty requests keep.
    legacy: bool,
    /// Interned with the snapshot's names where they exist, and the set
    /// itself shared by every stream that names the same (see [`share_names`]).
    pub names: Arc<BTreeSet<Arc<str>>>,
}

impl Subscription {
    /// Whether the subscription selects this entry.
    pub fn covers(&self, e: &Entry) -> bool {
        (self.wildcard && e.wildcard) || self.names.contains(&*e.name)
    }

    /// Whether the subscription names this resource or is a wildcard.
    pub fn covers_name(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// A hash of the names alone: the key they are shared under (see
    /// [`share_names`]), and with the wildcard flag what the SotW version
    /// depends on.
    fn names_hash(&self) -> u64 {
        let mut h = NamesHash::default();
        for n in self.names.iter() {
            h.name(n.as_bytes());
        }
        h.0
    }
}

/// Name sets in use, by hash: every Envoy of a mesh names the same clusters
/// in EDS and the same route configurations in RDS, so 10,000 streams hold
/// one copy of each set instead of 10,000 (a set of 500 names is ~12 KiB).
static SHARED_NAMES: std::sync::Mutex<SharedNames> = std::sync::Mutex::new(SharedNames {
    sets: BTreeMap::new(),
    inserts: 0,
});

struct SharedNames {
    sets: BTreeMap<u64, std::sync::Weak<BTreeSet<Arc<str>>>>,
    /// Since the last sweep of sets no stream holds any more.
    inserts: usize,
}

/// The shared copy of a name set: an equal one some stream holds already,
/// or this one, remembered for the next stream. Small sets are kept as
/// they are (not worth the lock).
fn share_names(names: Arc<BTreeSet<Arc<str>>>, hash: u64) -> Arc<BTreeSet<Arc<str>>> {
    // Taken from the shared map or another subscription: shared already.
    if names.len() < 8 || Arc::strong_count(&names) > 1 {
        return names;
    }
    let mut shared = SHARED_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = shared.sets.get(&hash).and_then(std::sync::Weak::upgrade) {
        if existing == names {
            return existing;
        }
    }
    shared.sets.insert(hash, Arc::downgrade(&names));
    shared.inserts += 1;
    // Sweep once as many sets were added as are remembered: amortised
    // constant per insert, and the map stays within twice the live sets.
    if shared.inserts > shared.sets.len() / 2 + 64 {
        shared.sets.retain(|_, w| w.strong_count() > 0);
        shared.inserts = 0;
    }
    names
}

/// The shared set that holds exactly `names`, given in order (sorted,
/// without repeats, as Envoy sends them) with their [`NamesHash`]: a new
/// stream's subscription without building, interning and comparing a set
/// of its own. `None` when no stream holds it or the names are not in order.
pub(super) fn shared_names_for(hash: u64, names: &[&str]) -> Option<Arc<BTreeSet<Arc<str>>>> {
    if names.len() < 8 {
        return None;
    }
    let set = SHARED_NAMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sets
        .get(&hash)
        .and_then(std::sync::Weak::upgrade)?;
    (set.len() == names.len() && set.iter().zip(names).all(|(a, b)| &**a == *b)).then_some(set)
}

/// Interns a client's resource name with the snapshot's copy when it exists.
fn intern(name: &str, set: Option<&TypeSet>) -> Arc<str> {
    set.and_then(|s| s.key(name))
        .cloned()
        .unwrap_or_else(|| Arc::from(name))
}

/// A rejected response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The version the client rejected.
    pub version: String,
    pub message: String,
    pub at_ms: u64,
}

/// What was last sent of one type: counts as what the client holds.
#[derive(Debug)]
struct Sent {
    /// The snapshot's set; the client holds what the subscription covers.
    set: Arc<TypeSet>,
    /// This node's own entries, by name.
    extras: Vec<Arc<Entry>>,
    /// Entries gone from the snapshot, kept for make-before-break, by name.
    kept: Vec<Arc<Entry>>,
}

/// Names to compare in full at the next build.
#[derive(Debug, Default)]
enum Force {
    #[default]
    Nothing,
    /// Newly subscribed: the client does not hold them whatever was sent.
    Names(Vec<Arc<str>>),
    /// Everything the subscription covers.
    All,
}

#[derive(Debug, Default)]
pub(crate) struct TypeState {
    sub: Subscription,
    sub_hash: u64,
    sent: Option<Sent>,
    force: Force,
    /// Delta reconnect: the versions the client declared, until the first build.
    initial: Option<BTreeMap<String, String>>,
    nonce: u64,
    sent_version: Option<String>,
    acked_version: Option<String>,
    last_nack: Option<Nack>,
    /// Whether the last response was NACKed (rather than ACKed or pending).
    nacked: bool,
    pending: bool,
    /// SotW: the version_info of the first request, for cheap reconnects.
    client_version: Option<String>,
    /// SotW: a hash of the last applied request's names, in order. An ACK
    /// naming the same list (Envoy's EDS ACKs name every cluster) keeps the
    /// subscription without comparing each name.
    last_names: Option<u64>,
}

impl TypeState {
    fn set_sub(&mut self, mut sub: Subscription) {
        // One pass over the names serves both the version and the sharing.
        let names = sub.names_hash();
        self.sub_hash = names.rotate_left(1) ^ u64::from(sub.wildcard);
        sub.names = share_names(sub.names, names);
        self.sub = sub;
    }

    fn nonce_matches(&self, nonce: &str) -> bool {
        self.nonce != 0 && nonce.parse::<u64>().ok() == Some(self.nonce)
    }
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

/// How a client answered a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Nack,
}

/// What changed of one type for one stream.
struct Changes {
    set: Arc<TypeSet>,
    /// To send, by name (this node's form).
    updated: Vec<Arc<Entry>>,
    /// Names the client holds that are gone.
    removed: Vec<Arc<str>>,
    extras: Vec<Arc<Entry>>,
    kept: Vec<Arc<Entry>>,
    /// Nothing was sent of this type before.
    first: bool,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

/// Calls `f` with every entry of `set` that `names` names, in name order.
fn named<'a>(set: &'a TypeSet, names: &BTreeSet<Arc<str>>, mut f: impl FnMut(&'a Arc<Entry>)) {
    lookup_sorted(set, names, |_, e| {
        if let Some(e) = e {
            f(e)
        }
    });
}

/// Calls `f` with each of `names` (in name order, without repeats) and the
/// entry of `set` by that name, if any. Subscription names are interned
/// with the snapshot's (see [`intern`]), so a walk of both sorted sequences
/// mostly compares pointers; a lookup per name is cheaper when the names
/// are few.
fn lookup_sorted<'a, 'n, I>(
    set: &'a TypeSet,
    names: I,
    mut f: impl FnMut(&'n Arc<str>, Option<&'a Arc<Entry>>),
) where
    I: IntoIterator<Item = &'n Arc<str>>,
    I::IntoIter: ExactSizeIterator,
{
    let names = names.into_iter();
    if names.len().saturating_mul(8) < set.len() {
        names.for_each(|n| f(n, set.get(n)));
        return;
    }
    let mut entries = set.iter().peekable();
    for n in names {
        let mut found = None;
        while let Some(e) = entries.peek() {
            let order = if Arc::ptr_eq(&e.name, n) {
                std::cmp::Ordering::Equal
            } else {
                (*e.name).cmp(&**n)
            };
            match order {
                std::cmp::Ordering::Less => {
                    entries.next();
                }
                std::cmp::Ordering::Equal => {
                    found = entries.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        f(n, found);
    }
}

/// Sorts entries by name and keeps, of each name, the one pushed last.
fn by_name_last_wins(mut entries: Vec<Arc<Entry>>) -> Vec<Arc<Entry>> {
    // Usually pushed in order, once each: nothing to do.
    if entries.is_sorted_by(|a, b| a.name < b.name) {
        return entries;
    }
    // Reversed, a stable sort puts the last pushed of a name first, which
    // `dedup_by` keeps. Entries pushed in name order sort in linear time.
    entries.reverse();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|a, b| a.name == b.name);
    entries
}

/// State shared by both variants.
pub(crate) struct Core {
    node: Box<dyn NodeView>,
    types: [Option<TypeState>; 5],
    nonce_seq: u64,
    /// The RouteConfigurations set the client last ACKed.
    acked_routes: Option<Arc<TypeSet>>,
    /// The client's answer in the last request, if it was an ACK or NACK
    /// of the current response: for metrics, taken by the I/O layer.
    answer: Option<(ResourceType, Answer)>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn new(node: Box<dyn NodeView>) -> Self {
        Core {
            node,
            types: Default::default(),
            nonce_seq: 0,
            acked_routes: None,
            answer: None,
        }
    }

    /// The ACK or NACK carried by the last request, once.
    pub(crate) fn take_answer(&mut self) -> Option<(ResourceType, Answer)> {
        self.answer.take()
    }

    /// Lets the node view read a new view; compares everything in full
    /// when its selection changed.
    fn refresh(&mut self, res: &Resources) {
        if self.node.refresh(res) {
            for st in self.types.iter_mut().flatten() {
                st.force = Force::All;
            }
        }
    }

    fn state(&self, ty: ResourceType) -> Option<&TypeState> {
        self.types[ty.index()].as_ref()
    }

    fn state_mut(&mut self, ty: ResourceType) -> Option<&mut TypeState> {
        self.types[ty.index()].as_mut()
    }

    fn next_nonce(&mut self) -> u64 {
        self.nonce_seq += 1;
        self.nonce_seq
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
        if !st.nonce_matches(nonce) {
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
                    self.acked_routes = st.sent.as_ref().map(|s| s.set.clone());
                }
                AckOutcome::Ack
            }
        }
    }

    pub(crate) fn rejected_routes(&self) -> Vec<RejectedRoute> {
        let Some(st) = self.state(ResourceType::RouteConfiguration) else {
            return Vec::new();
        };
        let Some(sent) = &st.sent else {
            return Vec::new();
        };
        sent.set
            .iter()
            .filter(|e| st.sub.covers(e))
            .filter_map(|e| {
                let accepted = self
                    .acked_routes
                    .as_ref()
                    .and_then(|a| a.get(&e.name))
                    .cloned();
                let changed = accepted.as_ref().is_none_or(|a| a.version != e.version);
                changed.then(|| RejectedRoute {
                    rejected: e.clone(),
                    accepted,
                })
            })
            .collect()
    }

    /// Whether a route the client may still be using references `cluster`.
    fn referenced(&self, cluster: &str) -> bool {
        let Some(rds) = self.state(ResourceType::RouteConfiguration) else {
            return false;
        };
        let hit = |e: &Entry| {
            rds.sub.covers(e)
                && e.refs.binary_search_by(|r| (**r).cmp(cluster)).is_ok()
                && self.route_in_use(&e.name)
        };
        let sets = self
            .acked_routes
            .iter()
            .chain(rds.sent.as_ref().map(|s| &s.set));
        for set in sets {
            let found = if rds.sub.wildcard {
                set.iter().any(|e| hit(e))
            } else {
                rds.sub
                    .names
                    .iter()
                    .filter_map(|n| set.get(n))
                    .any(|e| hit(e))
            };
            if found {
                return true;
            }
        }
        false
    }

    /// A route config is in use while a listener this client holds names it.
    /// Without this, a route whose listener was removed (its policy deleted)
    /// is never superseded by an ACKed replacement, and would pin its
    /// clusters forever. A stream with no LDS state (RDS only) keeps all.
    fn route_in_use(&self, route: &str) -> bool {
        let Some(lds) = self.state(ResourceType::Listener) else {
            return true;
        };
        let Some(sent) = &lds.sent else {
            return false;
        };
        let names = |l: &Entry| l.refs.iter().any(|r| &**r == route);
        sent.extras.iter().any(|l| names(l))
            || if lds.sub.wildcard {
                sent.set.iter().any(|l| lds.sub.covers(l) && names(l))
            } else {
                lds.sub
                    .names
                    .iter()
                    .filter_map(|n| sent.set.get(n))
                    .any(|l| names(l))
            }
    }

    /// Compares what the client holds of `ty` with what `res` holds for it.
    fn changes(&mut self, ty: ResourceType, res: &Resources) -> Option<Changes> {
        let new = res.set(ty).clone();
        let st = self.types[ty.index()].as_mut()?;
        let mut extras = self.node.extras(ty, res, &st.sub);
        extras.sort_by(|a, b| a.name.cmp(&b.name));
        extras.dedup_by(|a, b| a.name == b.name);
        let force = std::mem::take(&mut st.force);
        let initial = st.initial.take();
        let st = self.types[ty.index()].as_ref()?;
        let sub = &st.sub;

        // To send, in any order, possibly twice: sorted by name at the end,
        // the last pushed of a name winning. (A Vec, not a map: a new
        // stream's first build pushes every entry it selects, and 10,000
        // streams syncing do that 10,000 times.)
        let mut updated: Vec<Arc<Entry>> = Vec::new();
        // Gone from the set: (name, the entry the client holds, if known).
        let mut gone: Vec<(Arc<str>, Option<Arc<Entry>>)> = Vec::new();
        let node = &self.node;
        let covered = |e: &Arc<Entry>| sub.covers(e) && node.visible(ty, e);
        let full_new = |updated: &mut Vec<Arc<Entry>>, skip: &dyn Fn(&Arc<Entry>) -> bool| {
            if sub.wildcard {
                updated.extend(new.iter().filter(|e| covered(e) && !skip(e)).cloned());
            } else {
                // Named entries are covered by construction.
                named(&new, &sub.names, |e| {
                    if node.visible(ty, e) && !skip(e) {
                        updated.push(e.clone());
                    }
                });
            }
        };
        match (&st.sent, initial) {
            (Some(sent), _) => {
                let names = match &force {
                    Force::All => None,
                    _ => new.changed_since(&sent.set),
                };
                match names {
                    Some(names) => {
                        for n in names {
                            let a = new.get(n).filter(|e| covered(e));
                            let b = sent.set.get(n).filter(|e| covered(e));
                            match (a, b) {
                                (Some(a), Some(b)) if a.version == b.version => {}
                                (Some(a), _) => updated.push(a.clone()),
                                (None, Some(b)) => gone.push((b.name.clone(), Some(b.clone()))),
                                (None, None) => {}
                            }
                        }
                        if let Force::Names(forced) = &force {
                            for n in forced {
                                if let Some(a) = new.get(n).filter(|e| covered(e)) {
                                    updated.push(a.clone());
                                }
                            }
                        }
                    }
                    None => {
                        let forced: BTreeSet<&str> = match &force {
                            Force::Names(n) => n.iter().map(|n| &**n).collect(),
                            _ => BTreeSet::new(),
                        };
                        let all = matches!(force, Force::All);
                        full_new(&mut updated, &|e| {
                            !all && !forced.contains(&*e.name)
                                && sent
                                    .set
                                    .get(&e.name)
                                    .is_some_and(|b| covered(b) && b.version == e.version)
                        });
                        let held: Box<dyn Iterator<Item = &Arc<Entry>> + '_> = if sub.wildcard {
                            Box::new(sent.set.iter())
                        } else {
                            Box::new(sub.names.iter().filter_map(|n| sent.set.get(n)))
                        };
                        for b in held {
                            if covered(b) && new.get(&b.name).filter(|e| covered(e)).is_none() {
                                gone.push((b.name.clone(), Some(b.clone())));
                            }
                        }
                    }
                }
                // Kept entries: back in the snapshot, still needed, or gone.
                for k in &sent.kept {
                    match new.get(&k.name).filter(|e| covered(e)) {
                        Some(a) => {
                            if a.version != k.version {
                                updated.push(a.clone());
                            }
                        }
                        None => gone.push((k.name.clone(), Some(k.clone()))),
                    }
                }
            }
            (None, Some(declared)) => {
                // Delta reconnect: what the client declared is not resent.
                full_new(&mut updated, &|e| {
                    declared.get(&*e.name).map(String::as_str) == Some(&*e.version)
                });
                for n in declared.keys() {
                    let present = new.get(n.as_str()).is_some_and(&covered)
                        || extras.iter().any(|e| &*e.name == n.as_str());
                    if !present && sub.covers_name(n) {
                        gone.push((Arc::from(n.as_str()), None));
                    }
                }
            }
            (None, None) => full_new(&mut updated, &|_| false),
        }
        // This node's own entries.
        let old_extras: &[Arc<Entry>] = st.sent.as_ref().map_or(&[][..], |s| s.extras.as_slice());
        for e in &extras {
            let same = old_extras
                .binary_search_by(|o| o.name.cmp(&e.name))
                .is_ok_and(|i| old_extras[i].version == e.version);
            if !same {
                updated.push(e.clone());
            }
        }
        for o in old_extras {
            let still = extras.binary_search_by(|e| e.name.cmp(&o.name)).is_ok()
                || new.get(&o.name).is_some_and(&covered);
            if !still {
                gone.push((o.name.clone(), None));
            }
        }
        let first = st.sent.is_none();

        // Make before break: clusters still referenced stay.
        let mbb = matches!(
            ty,
            ResourceType::Cluster | ResourceType::ClusterLoadAssignment
        );
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (name, held) in gone {
            match held {
                Some(e) if mbb && sub.covers_name(&name) && self.referenced(&name) => kept.push(e),
                _ => removed.push(name),
            }
        }
        kept.sort_by(|a, b| a.name.cmp(&b.name));
        removed.sort();
        removed.dedup();

        let has_variants = self.node.has_variants(ty);
        let updated = by_name_last_wins(updated)
            .into_iter()
            .map(|e| {
                if has_variants && !extras.iter().any(|x| Arc::ptr_eq(x, &e)) {
                    self.node.variant(ty, &e)
                } else {
                    e
                }
            })
            .collect();
        Some(Changes {
            set: new,
            updated,
            removed,
            extras,
            kept,
            first,
        })
    }

    /// Records what a build decided the client now holds.
    fn commit(&mut self, ty: ResourceType, ch: &Changes) {
        if let Some(st) = self.state_mut(ty) {
            st.sent = Some(Sent {
                set: ch.set.clone(),
                extras: ch.extras.clone(),
                kept: ch.kept.clone(),
            });
        }
    }

    /// Everything the subscription selects now (this node's form): the full
    /// state of a SotW LDS/CDS response.
    fn full_state(&mut self, ty: ResourceType, ch: &Changes) -> Vec<Arc<Entry>> {
        let Some(st) = self.types[ty.index()].as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Entry>> = Vec::new();
        let node = &self.node;
        if st.sub.wildcard {
            let covered = |e: &Entry| st.sub.covers(e) && node.visible(ty, e);
            out.extend(ch.set.iter().filter(|e| covered(e)).cloned());
        } else {
            named(&ch.set, &st.sub.names, |e| {
                if node.visible(ty, e) {
                    out.push(e.clone());
                }
            });
        }
        if self.node.has_variants(ty) {
            for e in out.iter_mut() {
                *e = self.node.variant(ty, e);
            }
        }
        out.extend(ch.kept.iter().chain(&ch.extras).cloned());
        by_name_last_wins(out)
    }

    /// A SotW `version_info`: content-derived, so a client reconnecting to
    /// another replica with what it holds gets nothing new.
    fn sotw_version(&self, ty: ResourceType, ch: &Changes) -> String {
        let mut h = Fnv::new();
        h.field(ch.set.version());
        h.write(&self.state(ty).map_or(0, |s| s.sub_hash).to_le_bytes());
        h.write(&self.node.variant_key().to_le_bytes());
        for e in ch.extras.iter().chain(&ch.kept) {
            h.field(&e.name);
            h.field(&e.version);
        }
        hex64(h.0)
    }

    fn reports(&self) -> Vec<TypeReport> {
        ResourceType::ALL
            .iter()
            .filter_map(|t| self.state(*t).map(|st| (*t, st)))
            .map(|(t, st)| TypeReport {
                resource_type: t,
                wildcard: st.sub.wildcard,
                subscribed_names: st.sub.names.len(),
                resources: held(st, &*self.node, t).count(),
                last_sent_version: st.sent_version.clone(),
                last_acked_version: st.acked_version.clone(),
                last_nack: st.last_nack.clone(),
                status: type_status(st),
            })
            .collect()
    }

    fn known_resources(&mut self) -> Vec<KnownResource> {
        let mut out = Vec::new();
        for t in ResourceType::ALL {
            let Some(st) = self.state(t) else { continue };
            let status = type_status(st);
            let entries: Vec<Arc<Entry>> = held(st, &*self.node, t).cloned().collect();
            let variants = self.node.has_variants(t);
            for e in entries {
                let e = if variants {
                    self.node.variant(t, &e)
                } else {
                    e
                };
                out.push(KnownResource {
                    resource_type: t,
                    name: e.name.to_string(),
                    version: e.version.to_string(),
                    entry: Some(e),
                    status,
                });
            }
        }
        out
    }
}

/// What the client holds of a type (shared form).
fn held<'a>(
    st: &'a TypeState,
    node: &'a dyn NodeView,
    ty: ResourceType,
) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
    st.sent.iter().flat_map(move |s| {
        let shared: Box<dyn Iterator<Item = &Arc<Entry>> + '_> = if st.sub.wildcard {
            Box::new(
                s.set
                    .iter()
                    .filter(move |e| st.sub.covers(e) && node.visible(ty, e)),
            )
        } else {
            Box::new(
                st.sub
                    .names
                    .iter()
                    .filter_map(move |n| s.set.get(n))
                    .filter(move |e| node.visible(ty, e)),
            )
        };
        shared.chain(s.kept.iter()).chain(s.extras.iter())
    })
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

/// Read access to a stream's state, for the registry and CSDS.
pub trait StreamState {
    /// Per-type status.
    fn reports(&self) -> Vec<TypeReport>;
    /// Every resource the client holds or was last sent.
    fn known_resources(&mut self) -> Vec<KnownResource>;
    /// After a NACK of route configurations: each route of the rejected
    /// response that differs from what the client last ACKed.
    fn rejected_routes(&self) -> Vec<RejectedRoute>;
}

/// A route configuration a client rejected, with the form of it the client
/// last accepted (`None`: it never accepted one): what changed between
/// them is what the client refused.
#[derive(Clone, Debug)]
pub struct RejectedRoute {
    pub rejected: Arc<Entry>,
    pub accepted: Option<Arc<Entry>>,
}

#[cfg(test)]
mod tests;

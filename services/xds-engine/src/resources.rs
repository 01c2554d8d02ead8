//! Resource types and the encoded, content-versioned resource set.
//!
//! A [`Resources`] holds one [`TypeSet`] per type behind an `Arc`. Sealing a
//! set against the previous snapshot's (see [`Resources::seal_against`])
//! shares every type set whose content did not change, and records for the
//! others which names changed since the previous set. Streams keep an `Arc`
//! to the set they last sent, so "what changed for this stream" is usually a
//! pointer comparison or that recorded list, never a per-stream copy of every
//! name and version.

use std::any::Any as StdAny;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use prost::Name;
use xds_api::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_api::pb::google::protobuf::Any;

use crate::cow_map::CowMap;

/// The xDS resource types served over ADS.
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

    /// Parses a type URL; `None` for types this engine does not serve.
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
    /// and EDS responses in SotW may carry only the resources that changed
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

/// One encoded resource, shared by every stream that sends it: it is
/// encoded once per version, and responses reuse [`Entry::bytes`].
#[derive(PartialEq)]
pub struct Entry {
    pub name: Arc<str>,
    /// Content hash of the encoded message: equal bytes give equal versions
    /// on every replica.
    pub version: Arc<str>,
    /// The `type.googleapis.com/...` URL of the message.
    pub type_url: &'static str,
    /// The encoded message (the `value` of its `Any`), shared.
    pub bytes: Bytes,
    /// Resources this one points at: for a listener its route
    /// configurations, for a route configuration its clusters (sorted).
    /// Drives make-before-break of cluster removals.
    pub refs: Box<[Arc<str>]>,
    /// Whether a wildcard subscription receives it.
    pub wildcard: bool,
    /// Another form of the same resource, for nodes whose
    /// [`crate::NodeView::variant`] asks for it (e.g. proxyless gRPC).
    pub alternate: Option<Arc<Entry>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// Wraps an encoded message; the version is derived from its bytes.
    pub fn new(name: impl Into<Arc<str>>, ty: ResourceType, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let version: Arc<str> = hex64(fnv64(&bytes)).into();
        Entry {
            name: name.into(),
            version,
            type_url: ty.type_url(),
            bytes,
            refs: Box::new([]),
            wildcard: true,
            alternate: None,
        }
    }

    /// Wraps an `Any` (its type URL must be one of [`ResourceType`]'s).
    pub fn from_any(name: impl Into<Arc<str>>, any: Any) -> Self {
        let ty = ResourceType::from_type_url(&any.type_url).unwrap_or(ResourceType::Secret);
        Entry::new(name, ty, any.value)
    }

    /// The resource as a protobuf `Any` (a copy of the shared bytes).
    pub fn any(&self) -> Any {
        Any {
            type_url: self.type_url.to_owned(),
            value: self.bytes.to_vec(),
        }
    }
}

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// Every resource of one type in one view, immutable once published.
#[derive(Debug, Default)]
pub struct TypeSet {
    /// Shared with the sets this one was cloned from, chunk by chunk: the
    /// writer's next set copies only what it edits (see [`CowMap`]).
    map: CowMap<Arc<str>, Arc<Entry>>,
    /// Wrapping sum of [`entry_hash`] over the entries, kept up to date by
    /// every edit, so the version costs nothing to compute at 30,000 entries.
    sum: u64,
    /// [`TypeSet::sum`] and the size, in hex: content only, equal on every replica.
    version: Arc<str>,
    /// Unique per sealed set; what [`TypeSet::changed_since`] compares.
    id: u64,
    /// The sets this one replaced, newest first (at most [`HISTORY`]), each
    /// with the names that differ from it (added, changed or removed): a
    /// stream that skipped a few snapshots still compares only those.
    prev: Vec<(u64, Box<[Arc<str>]>)>,
}

/// How many replaced sets a set remembers its differences from.
const HISTORY: usize = 8;

impl Clone for TypeSet {
    fn clone(&self) -> Self {
        // A clone is about to be modified: it is a new set. The map's
        // chunks stay shared until edited.
        TypeSet {
            map: self.map.clone(),
            sum: self.sum,
            version: Arc::from(""),
            id: 0,
            prev: Vec::new(),
        }
    }
}

/// One entry's share of its set's version.
fn entry_hash(e: &Entry) -> u64 {
    let mut h = Fnv::new();
    h.field(&e.name);
    h.field(&e.version);
    h.0
}

impl TypeSet {
    /// Looks one resource up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.map.get(name)
    }

    /// The shared name of a resource, to intern a client's string.
    pub(crate) fn key(&self, name: &str) -> Option<&Arc<str>> {
        self.map.get_key_value(name).map(|(k, _)| k)
    }

    /// All resources, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> + '_ {
        self.map.values()
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Content hash of the whole set.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The names that may differ from `older`: `Some(names)` when this set
    /// directly replaced `older`, `None` when that is unknown (the caller
    /// compares in full).
    pub(crate) fn changed_since(&self, older: &TypeSet) -> Option<&[Arc<str>]> {
        if self.id == older.id && self.id != 0 {
            return Some(&[]);
        }
        if older.id == 0 {
            return None;
        }
        self.prev
            .iter()
            .find(|(id, _)| *id == older.id)
            .map(|(_, names)| &**names)
    }

    /// Whether both hold the same names at the same versions. Cheap when
    /// one was derived from the other: shared chunks are skipped.
    fn same_content(&self, other: &TypeSet) -> bool {
        if self.id != 0 && self.id == other.id {
            return true;
        }
        self.map.len() == other.map.len()
            && self.sum == other.sum
            && self
                .map
                .diff(&other.map, |a, b| a.version == b.version, |_| false)
    }

    /// The names that differ between two sets.
    fn diff(&self, older: &TypeSet) -> Box<[Arc<str>]> {
        let mut out = Vec::new();
        self.map.diff(
            &older.map,
            |a, b| a.version == b.version,
            |name| {
                out.push(name.clone());
                true
            },
        );
        out.into_boxed_slice()
    }

    fn insert(&mut self, entry: Arc<Entry>) {
        self.id = 0;
        self.prev.clear();
        self.sum = self.sum.wrapping_add(entry_hash(&entry));
        if let Some(old) = self.map.insert(entry.name.clone(), entry) {
            self.sum = self.sum.wrapping_sub(entry_hash(&old));
        }
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Entry>> {
        let old = self.map.remove(name)?;
        self.id = 0;
        self.prev.clear();
        self.sum = self.sum.wrapping_sub(entry_hash(&old));
        Some(old)
    }

    fn seal(&mut self) {
        if self.id == 0 {
            self.version = format!("{:016x}-{}", self.sum, self.map.len()).into();
            self.id = NEXT_SET_ID.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Translator-specific data a view carries beside its resources (for
/// per-node resources), with a content hash so that an unchanged one does
/// not wake streams.
#[derive(Clone)]
pub struct Extension {
    pub data: Arc<dyn StdAny + Send + Sync>,
    pub version: u64,
}

impl fmt::Debug for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extension({:016x})", self.version)
    }
}

/// One view of the resources: per type, name -> entry.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    sets: [Arc<TypeSet>; 5],
    ext: Option<Extension>,
}

impl PartialEq for Resources {
    fn eq(&self, other: &Self) -> bool {
        self.sets
            .iter()
            .zip(&other.sets)
            .all(|(a, b)| Arc::ptr_eq(a, b) || a.same_content(b))
            && self.ext.as_ref().map(|e| e.version) == other.ext.as_ref().map(|e| e.version)
    }
}

impl Resources {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a resource.
    pub fn insert(&mut self, ty: ResourceType, entry: Entry) {
        self.insert_shared(ty, Arc::new(entry));
    }

    /// Adds or replaces a resource that is already shared.
    pub fn insert_shared(&mut self, ty: ResourceType, entry: Arc<Entry>) {
        Arc::make_mut(&mut self.sets[ty.index()]).insert(entry);
    }

    /// Removes a resource.
    pub fn remove(&mut self, ty: ResourceType, name: &str) -> Option<Arc<Entry>> {
        if !self.sets[ty.index()].map.contains_key(name) {
            return None;
        }
        Arc::make_mut(&mut self.sets[ty.index()]).remove(name)
    }

    /// Looks one resource up by name.
    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Arc<Entry>> {
        self.sets[ty.index()].map.get(name)
    }

    /// All resources of a type, ordered by name.
    pub fn iter(&self, ty: ResourceType) -> impl Iterator<Item = &Arc<Entry>> + '_ {
        self.sets[ty.index()].map.values()
    }

    /// The shared set of one type.
    pub fn set(&self, ty: ResourceType) -> &Arc<TypeSet> {
        &self.sets[ty.index()]
    }

    /// Number of resources of a type.
    pub fn len(&self, ty: ResourceType) -> usize {
        self.sets[ty.index()].map.len()
    }

    /// Whether there is no resource at all.
    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(|s| s.map.is_empty())
    }

    /// Attaches translator data (see [`Extension`]).
    pub fn set_extension(&mut self, data: Arc<dyn StdAny + Send + Sync>, version: u64) {
        self.ext = Some(Extension { data, version });
    }

    /// The translator data, if it is a `T`.
    pub fn extension<T: StdAny>(&self) -> Option<&T> {
        self.ext.as_ref().and_then(|e| e.data.downcast_ref())
    }

    /// Computes versions (once per set): makes the set ready to serve.
    pub fn seal(&mut self) {
        for s in &mut self.sets {
            if s.id == 0 {
                Arc::make_mut(s).seal();
            }
        }
    }

    /// Seals against the set this one replaces: a type whose content did
    /// not change shares `prev`'s set (streams see the same pointer and do
    /// nothing); a changed one records which names differ. Types sealed
    /// already are left as they are.
    pub fn seal_against(&mut self, prev: &Resources) {
        for (s, p) in self.sets.iter_mut().zip(&prev.sets) {
            // A set sealed already keeps what its producer recorded.
            if Arc::ptr_eq(s, p) || s.id != 0 {
                continue;
            }
            if s.same_content(p) {
                *s = p.clone();
                continue;
            }
            let diff = s.diff(p);
            let set = Arc::make_mut(s);
            set.seal();
            if p.id != 0 {
                let mut prev = Vec::with_capacity(HISTORY);
                for (id, names) in p.prev.iter().take(HISTORY - 1) {
                    let mut all: Vec<Arc<str>> = names.iter().chain(diff.iter()).cloned().collect();
                    all.sort();
                    all.dedup();
                    prev.push((*id, all.into_boxed_slice()));
                }
                prev.insert(0, (p.id, diff));
                set.prev = prev;
            }
        }
    }
}

/// 64-bit FNV-1a: stable across processes and releases, unlike `DefaultHasher`.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(bytes);
    h.0
}

/// An incremental 64-bit FNV-1a.
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// Writes a string and a separator, so that ("ab","c") != ("a","bc").
    pub fn field(&mut self, s: &str) {
        self.write(s.as_bytes());
        self.write(&[0]);
    }
}

/// Lower-case 16-digit hex.
pub fn hex64(v: u64) -> String {
    format!("{v:016x}")
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

    fn unsealed(items: &[(&str, &str)]) -> Resources {
        let mut r = Resources::new();
        for (n, body) in items {
            r.insert(
                ResourceType::Cluster,
                Entry::new(*n, ResourceType::Cluster, body.as_bytes().to_vec()),
            );
        }
        r
    }

    fn set(items: &[(&str, &str)]) -> Resources {
        let mut r = unsealed(items);
        r.seal();
        r
    }

    #[test]
    fn sealing_against_the_previous_set_shares_or_records_the_changed_names() {
        let a = set(&[("x", "1"), ("y", "1")]);
        // Same content: the previous set is shared.
        let mut b = unsealed(&[("x", "1"), ("y", "1")]);
        b.seal_against(&a);
        assert!(Arc::ptr_eq(
            a.set(ResourceType::Cluster),
            b.set(ResourceType::Cluster)
        ));
        // (new content, names that changed)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (&[("x", "2"), ("y", "1")], &["x"]),
            (&[("y", "1")], &["x"]),
            (&[("w", "1"), ("x", "1"), ("y", "1")], &["w"]),
            (&[("x", "1"), ("z", "1")], &["y", "z"]),
        ];
        for (items, want) in cases {
            let mut c = unsealed(items);
            c.seal_against(&a);
            let got = c
                .set(ResourceType::Cluster)
                .changed_since(a.set(ResourceType::Cluster))
                .expect("direct successor");
            let got: Vec<&str> = got.iter().map(|n| &**n).collect();
            assert_eq!(got, *want, "{items:?}");
            // Unrelated sets: unknown, compare in full.
            let d = set(items);
            assert!(d
                .set(ResourceType::Cluster)
                .changed_since(a.set(ResourceType::Cluster))
                .is_none());
        }
    }
}

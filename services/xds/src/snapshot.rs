//! The published resource set and its single writer.
//!
//! Streams only read: they hold a [`Subscriber`] and are woken by the watch
//! channel, which coalesces bursts (a slow stream skips to the newest).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::resources::Resources;

/// One immutable published state.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Shared by every stream; entries are `Arc`s, so nothing is copied per stream.
    pub resources: Arc<Resources>,
    /// 0 until the first publish; streams wait for it before answering, so
    /// a replica that has not loaded its policies never serves an empty config.
    pub generation: u64,
    /// When the writer learned of the first change this snapshot carries;
    /// streams measure push latency from it. `None` for a full reload.
    pub changed_at: Option<Instant>,
    /// Per namespace: what a node of that namespace sees (the unscoped
    /// policies plus the namespace's own). `resources` holds the unscoped
    /// policies only, for nodes without a namespace.
    pub scoped: BTreeMap<String, Arc<Resources>>,
}

impl Snapshot {
    /// The resource set a node of `namespace` reads.
    pub fn view(&self, namespace: Option<&str>) -> &Resources {
        namespace
            .and_then(|ns| self.scoped.get(ns))
            .map_or(&*self.resources, |r| &**r)
    }
}

/// The single writer of snapshots.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
}

/// A read handle on the latest snapshot; cheap to clone.
#[derive(Clone, Debug)]
pub struct Subscriber {
    rx: watch::Receiver<Arc<Snapshot>>,
}

/// Creates the snapshot channel; it starts empty with generation 0.
pub fn snapshot_channel() -> (Publisher, Subscriber) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    (Publisher { tx }, Subscriber { rx })
}

impl Publisher {
    /// Publishes a new resource set and returns its generation. Publishing a
    /// set equal to the current one is a no-op (streams are not woken).
    pub fn publish(&self, resources: Resources) -> u64 {
        self.publish_scoped(resources, BTreeMap::new(), None)
    }

    /// Like [`Publisher::publish`], for a change first seen at `changed_at`.
    pub fn publish_change(&self, resources: Resources, changed_at: Option<Instant>) -> u64 {
        self.publish_scoped(resources, BTreeMap::new(), changed_at)
    }

    /// Publishes the unscoped set and one set per namespace (see
    /// [`Snapshot::scoped`]), for a change first seen at `changed_at`.
    pub fn publish_scoped(
        &self,
        resources: Resources,
        scoped: BTreeMap<String, Resources>,
        changed_at: Option<Instant>,
    ) -> u64 {
        let mut generation = 0;
        self.tx.send_if_modified(|cur| {
            let same_scoped = cur.scoped.len() == scoped.len()
                && cur
                    .scoped
                    .iter()
                    .zip(&scoped)
                    .all(|((a, ra), (b, rb))| a == b && **ra == *rb);
            if cur.generation > 0 && *cur.resources == resources && same_scoped {
                generation = cur.generation;
                return false;
            }
            generation = cur.generation + 1;
            *cur = Arc::new(Snapshot {
                resources: Arc::new(resources),
                generation,
                changed_at,
                scoped: scoped.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            });
            true
        });
        crate::metrics::GENERATION.set(i64::try_from(generation).unwrap_or(i64::MAX));
        generation
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> Subscriber {
        Subscriber {
            rx: self.tx.subscribe(),
        }
    }
}

impl Subscriber {
    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    pub(crate) fn receiver(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Entry, ResourceType};
    use xds_api::pb::google::protobuf::Any;

    fn res(v: &[u8]) -> Resources {
        let mut r = Resources::new();
        r.insert(
            ResourceType::Cluster,
            Entry::new(
                "a",
                Any {
                    type_url: ResourceType::Cluster.type_url().into(),
                    value: v.to_vec(),
                },
            ),
        );
        r
    }

    #[tokio::test]
    async fn publish_bumps_generation_only_on_change() {
        let (p, s) = snapshot_channel();
        let mut rx = s.receiver();
        assert_eq!(s.current().generation, 0);
        assert_eq!(p.publish(res(b"1")), 1);
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        assert_eq!(p.publish(res(b"1")), 1);
        assert!(!rx.has_changed().unwrap_or(true));
        assert_eq!(p.publish(res(b"2")), 2);
        assert_eq!(s.current().generation, 2);
    }
}

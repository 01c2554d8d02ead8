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
    /// The default view: what a node that names no view reads.
    pub resources: Arc<Resources>,
    /// 0 until the first publish; streams wait for it before answering, so
    /// a replica that has not loaded its configuration never serves an
    /// empty one.
    pub generation: u64,
    /// When the writer learned of the first change this snapshot carries;
    /// streams measure push latency from it. `None` for a full reload.
    pub changed_at: Option<Instant>,
    /// Further views by key (see [`crate::NodeView::view`]); a node whose
    /// key is not here reads [`Snapshot::resources`].
    pub views: BTreeMap<String, Arc<Resources>>,
}

impl Snapshot {
    /// The resource set a node reading view `key` gets.
    pub fn view(&self, key: Option<&str>) -> &Arc<Resources> {
        key.and_then(|k| self.views.get(k))
            .unwrap_or(&self.resources)
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
        self.publish_views(resources, BTreeMap::new(), None)
    }

    /// Like [`Publisher::publish`], for a change first seen at `changed_at`.
    pub fn publish_change(&self, resources: Resources, changed_at: Option<Instant>) -> u64 {
        self.publish_views(resources, BTreeMap::new(), changed_at)
    }

    /// Publishes the default view and the keyed views, for a change first
    /// seen at `changed_at`. Each view is sealed against the current
    /// snapshot's view of the same key, so unchanged types are shared and
    /// changed ones list what changed (see [`Resources::seal_against`]).
    pub fn publish_views(
        &self,
        mut resources: Resources,
        views: BTreeMap<String, Resources>,
        changed_at: Option<Instant>,
    ) -> u64 {
        let cur = self.tx.borrow().clone();
        resources.seal_against(&cur.resources);
        resources.seal();
        let views: BTreeMap<String, Resources> = views
            .into_iter()
            .map(|(k, mut v)| {
                if let Some(p) = cur.views.get(&k) {
                    v.seal_against(p);
                }
                v.seal();
                (k, v)
            })
            .collect();
        let mut generation = 0;
        self.tx.send_if_modified(|cur| {
            let same_views = cur.views.len() == views.len()
                && cur
                    .views
                    .iter()
                    .zip(&views)
                    .all(|((a, ra), (b, rb))| a == b && **ra == *rb);
            if cur.generation > 0 && *cur.resources == resources && same_views {
                generation = cur.generation;
                return false;
            }
            generation = cur.generation + 1;
            *cur = Arc::new(Snapshot {
                resources: Arc::new(resources),
                generation,
                changed_at,
                views: views.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
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

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
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

    fn res(v: &[u8]) -> Resources {
        let mut r = Resources::new();
        r.insert(
            ResourceType::Cluster,
            Entry::new("a", ResourceType::Cluster, v.to_vec()),
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

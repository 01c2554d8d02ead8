//! Policy watches: one feed per replica follows the store's change log and
//! fans out to every watcher; each watcher first catches up from the log on
//! its own, so it can start (or resume) from any resource version.
//!
//! The feed and every catch-up read only up to the store's *settled*
//! version (see `meridian_store::watch`), so a change that commits out of
//! version order is never skipped. A watcher forwards a change only when its
//! version is above the last one it sent: the overlap between its catch-up
//! and the live feed is dropped, and nothing between them is lost because it
//! subscribed to the feed before catching up.

use std::sync::Arc;
use std::time::Duration;

use meridian_store::notify::Event;
use meridian_store::watch::Change;
use meridian_store::Store;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Changes buffered for slow watchers; one that falls further behind
/// catches up from the database instead.
const FANOUT_BUFFER: usize = 4096;
/// Log page size for catch-up reads.
const PAGE: i64 = 1000;
/// Re-read the log this often even without a notification: a NOTIFY can be
/// lost with a dropped connection (the listener then reports a resync).
const SAFETY_POLL: Duration = Duration::from_secs(2);

/// The per-replica feed of committed policy changes.
#[derive(Clone)]
pub struct Feed {
    store: Store,
    tx: broadcast::Sender<Arc<Change>>,
    /// Up once the feed knows where it starts: a watcher catching up to a
    /// version below that point would miss what lies in between.
    started: watch::Sender<bool>,
}

impl Feed {
    pub fn new(store: Store) -> Feed {
        let (tx, _) = broadcast::channel(FANOUT_BUFFER);
        let (started, _) = watch::channel(false);
        Feed { store, tx, started }
    }

    /// Follows the change log until `stop`: woken by NOTIFY, reads what
    /// settled since the last pass and broadcasts it in version order.
    pub async fn run(self, stop: CancellationToken) {
        let mut cursor = None;
        let mut listener = None;
        while !stop.is_cancelled() {
            if listener.is_none() {
                match self.store.listen().await {
                    Ok(l) => listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "watch feed: cannot listen; polling"),
                }
            }
            // Subscribe (above) before reading, so nothing falls in between.
            match self.pass(cursor).await {
                Ok(next) => {
                    cursor = Some(next);
                    self.started.send_replace(true);
                }
                Err(e) => tracing::warn!(error = %e, "watch feed: cannot read the change log"),
            }
            let wake = async {
                match listener.as_mut() {
                    Some(l) => match l.next().await {
                        Ok(Event::Changed(_) | Event::Resync) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "watch feed: listener failed");
                            listener = None;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake => {}
                _ = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
    }

    /// Broadcasts the changes after `cursor` up to the settled version and
    /// returns the new cursor. The first pass only finds the starting point.
    async fn pass(&self, cursor: Option<i64>) -> Result<i64, meridian_store::Error> {
        let settled = self.store.settled_version().await?;
        let Some(mut cursor) = cursor else {
            return Ok(settled);
        };
        loop {
            let page = self.store.changes(cursor, settled, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for change in page {
                cursor = change.resource_version;
                // No receivers is fine: nobody is watching.
                let _ = self.tx.send(Arc::new(change));
            }
            if !full {
                return Ok(settled);
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// What a watcher sends its client.
#[derive(Debug)]
pub enum Item {
    /// A policy that existed when the watch started from nothing.
    Existing(Box<meridian_policy::Policy>),
    /// The existing policies are all sent; the state is at this version.
    Synced(i64),
    Change(Arc<Change>),
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// Every existing policy, then changes.
    Snapshot,
    /// Changes after this version.
    After(i64),
}

/// Runs one watcher: sends into `out` until the client goes away, the
/// server stops, or the database fails (the error is the stream's last item).
pub async fn watch(
    feed: Feed,
    start: Start,
    name: Option<String>,
    out: mpsc::Sender<Result<Item, meridian_store::Error>>,
    stop: CancellationToken,
) {
    let wanted = |c: &Change| name.as_deref().is_none_or(|n| c.policy.metadata.name == n);
    let mut live = feed.subscribe();
    let mut started = feed.started.subscribe();
    let result = async {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = started.wait_for(|s| *s) => {}
        }
        let mut sent = match start {
            Start::After(v) => v,
            Start::Snapshot => {
                let (at, policies) = feed.store().snapshot().await?;
                for p in policies {
                    if name.as_deref().is_none_or(|n| p.metadata.name == n)
                        && out.send(Ok(Item::Existing(Box::new(p)))).await.is_err()
                    {
                        return Ok(());
                    }
                }
                if out.send(Ok(Item::Synced(at))).await.is_err() {
                    return Ok(());
                }
                at
            }
        };
        let Some(caught_up) = catch_up(&feed, &mut sent, &wanted, &out).await? else {
            return Ok(());
        };
        sent = caught_up;
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = out.closed() => return Ok(()),
                received = live.recv() => received,
            };
            match change {
                Ok(c) => {
                    if c.resource_version <= sent {
                        continue;
                    }
                    sent = c.resource_version;
                    if wanted(&c) && out.send(Ok(Item::Change(c))).await.is_err() {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        "watcher fell behind the feed; catching up from the log"
                    );
                    match catch_up(&feed, &mut sent, &wanted, &out).await? {
                        Some(v) => sent = v,
                        None => return Ok(()),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = out.send(Err(e)).await;
    }
}

/// Sends the logged changes after `*sent` up to the settled version; returns
/// that version, or `None` when the client went away.
async fn catch_up(
    feed: &Feed,
    sent: &mut i64,
    wanted: &impl Fn(&Change) -> bool,
    out: &mpsc::Sender<Result<Item, meridian_store::Error>>,
) -> Result<Option<i64>, meridian_store::Error> {
    let settled = feed.store().settled_version().await?;
    loop {
        let page = feed.store().changes(*sent, settled, PAGE).await?;
        let full = page.len() as i64 == PAGE;
        for c in page {
            *sent = c.resource_version;
            if wanted(&c) && out.send(Ok(Item::Change(Arc::new(c)))).await.is_err() {
                return Ok(None);
            }
        }
        if !full {
            return Ok(Some(settled.max(*sent)));
        }
    }
}

//! The snapshot writer: the one place that turns what PostgreSQL holds into
//! this replica's xDS snapshot.
//!
//! It subscribes to the store's change feed *before* loading, so no commit
//! falls between the load and the subscription; then for every burst of
//! changes (coalesced for [`Config::debounce`]) it re-reads only the named
//! policies, translates the whole set (a pure function), and publishes.
//! After a lost connection the feed says `Resync` and the writer reloads
//! everything, because a notification sent while it was away is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_policy::Policy;
use meridian_store::notify::Event;
use meridian_store::Store;
use meridian_xds::{translate, Publisher, Weights};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Config {
    /// How long to gather a burst of changes before one snapshot is built.
    pub debounce: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            debounce: Duration::from_millis(50),
        }
    }
}

/// What the writer knows: the policies as last read from the store.
pub struct Writer {
    store: Store,
    publisher: Publisher,
    config: Config,
    policies: BTreeMap<String, Policy>,
    /// Decided by the failover leader; a policy without a decision uses its spec weights.
    weights: Weights,
    ready: Arc<AtomicBool>,
}

impl Writer {
    pub fn new(store: Store, publisher: Publisher, config: Config) -> Writer {
        Writer {
            store,
            publisher,
            config,
            policies: BTreeMap::new(),
            weights: Weights::new(),
            ready: Arc::default(),
        }
    }

    /// True once the first snapshot from the store has been published: a
    /// replica must not be ready (nor push an empty config) before that.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Runs until `shutdown`. Database outages are retried with backoff;
    /// the snapshot being served stays as it was meanwhile.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.follow(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "xDS snapshot writer lost the store; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Subscribe, load everything, then apply changes until shutdown.
    async fn follow(&mut self, shutdown: &CancellationToken) -> Result<(), meridian_store::Error> {
        let mut listener = self.store.listen().await?;
        self.reload().await?;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = listener.next() => event?,
            };
            let mut burst = Burst {
                first_at: Some(Instant::now()),
                ..Burst::default()
            };
            burst.add(first);
            // Coalesce: everything that arrives within the window joins this snapshot.
            let deadline = tokio::time::Instant::now() + self.config.debounce;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    event = listener.next() => burst.add(event?),
                }
            }
            self.apply(burst).await?;
        }
    }

    async fn reload(&mut self) -> Result<(), meridian_store::Error> {
        let started = Instant::now();
        let all = self.store.all().await?;
        let weights = self.store.effective_weights().await?;
        self.weights = weights.into_iter().map(|(p, w)| (p, w.weights)).collect();
        let load_ms = started.elapsed().as_millis() as u64;
        self.policies = all
            .into_iter()
            .map(|p| (p.metadata.name.clone(), p))
            .collect();
        let built = Instant::now();
        self.publish(None);
        tracing::info!(
            policies = self.policies.len(),
            load_ms,
            build_ms = built.elapsed().as_millis() as u64,
            "xDS snapshot loaded from the store"
        );
        Ok(())
    }

    /// One bounded step: re-read only the changed policies, then publish.
    async fn apply(&mut self, burst: Burst) -> Result<(), meridian_store::Error> {
        if burst.resync {
            return self.reload().await;
        }
        let names: Vec<String> = burst.names.into_iter().collect();
        // A burst may hold policy writes and weight decisions alike
        // (both are announced under the policy's name): re-read both.
        let fresh = self.store.get_many(&names).await?;
        let weights = self.store.effective_weights_of(&names).await?;
        for name in &names {
            self.policies.remove(name);
            self.weights.remove(name);
        }
        self.weights
            .extend(weights.into_iter().map(|(p, w)| (p, w.weights)));
        for p in fresh {
            self.policies.insert(p.metadata.name.clone(), p);
        }
        self.publish(burst.first_at);
        Ok(())
    }

    /// `changed_at`: when the first change of this burst was heard of, so
    /// streams can measure push latency from it.
    fn publish(&mut self, changed_at: Option<Instant>) {
        let started = Instant::now();
        let policies: Vec<Policy> = self.policies.values().cloned().collect();
        let resources = translate(&policies, &self.weights);
        let generation = self.publisher.publish_change(resources, changed_at);
        self.ready.store(true, Ordering::Release);
        tracing::debug!(
            policies = policies.len(),
            generation,
            took_ms = started.elapsed().as_millis() as u64,
            "published xDS snapshot"
        );
    }
}

#[derive(Default)]
struct Burst {
    names: BTreeSet<String>,
    resync: bool,
    first_at: Option<Instant>,
}

impl Burst {
    fn add(&mut self, event: Event) {
        match event {
            Event::Changed(c) => {
                self.names.insert(c.name);
            }
            Event::Resync => self.resync = true,
        }
    }
}

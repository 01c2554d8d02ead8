//! The snapshot writer: the one place that turns what PostgreSQL holds into
//! this replica's xDS snapshot.
//!
//! It subscribes to the store's change feed *before* loading, so no commit
//! falls between the load and the subscription; then for every burst of
//! changes (see [`burst_end`]: a lone change goes out within
//! [`QUIET`], a storm at most once per [`Config::debounce`]) it re-reads only the named
//! policies, translates only those again (the [`Translator`] keeps every
//! policy's encoding and rebuilds only the egress route of a changed
//! policy's port), and publishes.
//! After a lost connection the feed says `Resync` and the writer reloads
//! everything, because a notification sent while it was away is lost.

mod ca;

pub use ca::{bootstrap, Issuer, Source};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_policy::Policy;
use meridian_store::notify::Event;
use meridian_store::Store;
use meridian_xds::{
    EndpointHealth, Mesh, Publisher, Rollouts, RouteNack, ServedRollout, Translator, Weights,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What stops the writer for a while (it retries).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] meridian_store::Error),
    /// The CA could not open its key or issue.
    #[error("CA: {0}")]
    Ca(#[from] meridian_ca::Error),
    /// The stored CA belongs to another trust domain than `--trust-domain`.
    #[error("the stored CA is for trust domain {stored:?}, not {configured:?}")]
    TrustDomainMismatch { stored: String, configured: String },
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The longest a burst of changes is gathered before one snapshot is
    /// built, and the shortest time between two snapshots of changes.
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
    /// What each route's rollout serves, by policy (from the leader's
    /// stored statuses); read like the weights.
    rollouts: Rollouts,
    /// Endpoints the leader marked unhealthy, read like the weights.
    health: EndpointHealth,
    /// Policies left out of their egress route because a client refused
    /// it with them (at their current version).
    rejected: BTreeSet<String>,
    /// NACKs of route configurations heard by this replica's xDS server.
    route_nacks: Option<mpsc::UnboundedReceiver<RouteNack>>,
    ready: Arc<AtomicBool>,
    mesh: Mesh,
    security: Option<Security>,
    translator: Translator,
    /// When the last burst was applied: the next waits until `debounce`
    /// after it.
    last_applied: Option<tokio::time::Instant>,
}

/// Certificate issuing for connected identities.
struct Security {
    issuer: Issuer,
    identities: watch::Receiver<BTreeSet<String>>,
    next_renewal: Option<chrono::DateTime<chrono::Utc>>,
}

impl Writer {
    pub fn new(store: Store, publisher: Publisher, config: Config) -> Writer {
        Writer {
            store,
            publisher,
            config,
            policies: BTreeMap::new(),
            weights: Weights::new(),
            rollouts: Rollouts::new(),
            health: EndpointHealth::new(),
            rejected: BTreeSet::new(),
            route_nacks: None,
            ready: Arc::default(),
            mesh: Mesh::default(),
            security: None,
            translator: Translator::new(Mesh::default()),
            last_applied: None,
        }
    }

    /// Sets the trust domain and, with a CA, issues certificates for the
    /// identities in `identities` (the xDS registry's connected nodes).
    pub fn with_security(
        mut self,
        trust_domain: &str,
        issuer: Option<(Issuer, watch::Receiver<BTreeSet<String>>)>,
    ) -> Self {
        self.mesh.trust_domain = trust_domain.to_owned();
        self.security = issuer.map(|(issuer, identities)| Security {
            issuer,
            identities,
            next_renewal: None,
        });
        self
    }

    /// Blames each NACK of a shared route configuration on one policy and
    /// records it, so every replica leaves that policy out of the route
    /// (see `meridian_xds::nack`).
    pub fn with_route_nacks(mut self, nacks: mpsc::UnboundedReceiver<RouteNack>) -> Self {
        self.route_nacks = Some(nacks);
        self
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
    async fn follow(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut listener = self.store.listen().await?;
        let mut ca_listener = match self.security {
            Some(_) => Some(self.store.listen_ca().await?),
            None => None,
        };
        self.refresh_certs().await?;
        self.reload().await?;
        loop {
            let renewal = self.renewal_sleep();
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                event = listener.next() => event?,
                // Identities came or went, a rotation was forced, or a
                // certificate reached half life: certificates only.
                changed = identities_changed(&mut self.security) => {
                    changed?;
                    self.refresh_certs().await?;
                    self.publish(None);
                    continue;
                }
                ca = async { match ca_listener.as_mut() { Some(l) => l.next().await, None => std::future::pending().await } } => {
                    ca?;
                    self.refresh_certs().await?;
                    self.publish(None);
                    continue;
                }
                nack = next_nack(&mut self.route_nacks) => {
                    self.blame(nack).await;
                    continue;
                }
                _ = tokio::time::sleep(renewal) => {
                    self.refresh_certs().await?;
                    self.publish(None);
                    continue;
                }
            };
            let first_at = tokio::time::Instant::now();
            let mut burst = Burst {
                first_at: Some(Instant::now()),
                ..Burst::default()
            };
            burst.add(first);
            let mut last_event = first_at;
            loop {
                let end = burst_end(
                    first_at,
                    last_event,
                    self.last_applied,
                    self.config.debounce,
                );
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    event = listener.next() => {
                        burst.add(event?);
                        last_event = tokio::time::Instant::now();
                    }
                }
            }
            self.apply(burst).await?;
            self.last_applied = Some(tokio::time::Instant::now());
        }
    }

    /// Until the next certificate reaches half life (at least a second, so
    /// a clock step cannot make this spin; a day when there is nothing).
    fn renewal_sleep(&self) -> Duration {
        let next = self.security.as_ref().and_then(|s| s.next_renewal);
        match next {
            Some(at) => (at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(1)),
            None => Duration::from_secs(86_400),
        }
    }

    /// Brings the workload certificates of connected identities up to date.
    async fn refresh_certs(&mut self) -> Result<(), Error> {
        let Some(sec) = self.security.as_mut() else {
            return Ok(());
        };
        let wanted = sec.identities.borrow_and_update().clone();
        let issued = sec.issuer.refresh(&self.store, &wanted).await?;
        sec.next_renewal = issued.next_renewal;
        self.mesh.trust_bundle_pem = Some(issued.trust_bundle_pem);
        self.mesh.workload_certs = issued.certs;
        Ok(())
    }

    async fn reload(&mut self) -> Result<(), meridian_store::Error> {
        let started = Instant::now();
        let all = self.store.all().await?;
        let weights = self.store.effective_weights().await?;
        self.weights = weights.into_iter().map(|(p, w)| (p, w.weights)).collect();
        self.health = self.store.endpoint_health().await?.into_iter().collect();
        self.rejected = self.store.xds_rejections(None).await?.into_keys().collect();
        self.rollouts = served(self.store.all_rollout_statuses().await?);
        let load_ms = started.elapsed().as_millis() as u64;
        self.policies = all
            .into_iter()
            .map(|p| (p.metadata.name.clone(), p))
            .collect();
        let built = Instant::now();
        self.translator.set_mesh(self.mesh.clone());
        self.translator.set_endpoint_health(self.health.clone());
        self.translator.set_excluded(self.rejected.clone());
        self.translator.set_rollouts(self.rollouts.clone());
        self.translator
            .rebuild(self.policies.values(), &self.weights);
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
        // A burst may hold policy writes, weight decisions and endpoint
        // marks alike (all announced under the policy's name): re-read all.
        let fresh = self.store.get_many(&names).await?;
        let weights = self.store.effective_weights_of(&names).await?;
        let health = self.store.endpoint_health_of(&names).await?;
        let rejected = self.store.xds_rejections(Some(&names)).await?;
        let rollouts = served(self.store.rollout_statuses_of(&names).await?);
        for name in &names {
            self.policies.remove(name);
            self.rollouts.remove(name);
            self.weights.remove(name);
            self.health.remove(name);
            self.rejected.remove(name);
        }
        self.rejected.extend(rejected.into_keys());
        self.translator.set_excluded(self.rejected.clone());
        self.weights
            .extend(weights.into_iter().map(|(p, w)| (p, w.weights)));
        self.health.extend(health);
        self.translator.set_endpoint_health(self.health.clone());
        self.rollouts.extend(rollouts);
        self.translator.set_rollouts(self.rollouts.clone());
        for p in fresh {
            self.policies.insert(p.metadata.name.clone(), p);
        }
        let translating = Instant::now();
        let policies = &self.policies;
        self.translator.update(
            names.iter().map(String::as_str),
            |n| policies.get(n),
            &self.weights,
        );
        let translate_us = translating.elapsed().as_micros() as u64;
        self.publish(burst.first_at);
        // The benchmark reads this line: the cost of one change, from the
        // NOTIFY (debounce and store read included) and translation alone.
        tracing::info!(
            policies = self.translator.len(),
            changed = names.len(),
            translate_us,
            translate_and_publish_us = translating.elapsed().as_micros() as u64,
            since_notify_ms = burst.first_at.map_or(0, |t| t.elapsed().as_millis() as u64),
            "xDS snapshot updated"
        );
        Ok(())
    }

    /// Publishes the translator's views. `changed_at`: when the first
    /// change of this burst was heard of, so streams can measure push
    /// latency from it. Certificates are taken from the mesh here: a change
    /// of them alone re-encodes only the secrets; a new trust domain
    /// translates every policy again.
    fn publish(&mut self, changed_at: Option<Instant>) {
        let started = Instant::now();
        if self.translator.set_mesh(self.mesh.clone()) {
            self.translator
                .rebuild(self.policies.values(), &self.weights);
        }
        let (resources, scoped) = self.translator.output();
        let generation = self.publisher.publish_views(resources, scoped, changed_at);
        self.ready.store(true, Ordering::Release);
        tracing::debug!(
            policies = self.translator.len(),
            generation,
            publish_us = started.elapsed().as_micros() as u64,
            "published xDS snapshot"
        );
    }
}

impl Writer {
    /// Records the policy to blame for a refused shared route, if one can
    /// be named. A store error is logged: the client's next NACK (of the
    /// next change) tries again.
    async fn blame(&mut self, nack: RouteNack) {
        for route in &nack.routes {
            let policies = &self.policies;
            let rejected = &self.rejected;
            let culprit = meridian_xds::nack::culprit(
                route,
                |n| {
                    policies
                        .get(n)
                        .and_then(|p| p.metadata.updated_at)
                        .map(|t| t.timestamp_millis())
                },
                |n| rejected.contains(n),
            );
            let Some(policy) = culprit else {
                tracing::warn!(node = %nack.node_id, route = %route.rejected.name, message = %nack.message,
                    "xDS client refused a route configuration; no one policy to blame");
                continue;
            };
            match self
                .store
                .record_xds_rejection(&policy, &route.rejected.name, &nack.node_id, &nack.message)
                .await
            {
                Ok(_) => {
                    tracing::warn!(node = %nack.node_id, route = %route.rejected.name, %policy,
                    message = %nack.message, "xDS client refused a route configuration; leaving the policy out of it")
                }
                Err(e) => tracing::warn!(error = %e, %policy, "recording an xDS rejection failed"),
            }
        }
    }
}

/// The next NACK report; never without a receiver.
async fn next_nack(nacks: &mut Option<mpsc::UnboundedReceiver<RouteNack>>) -> RouteNack {
    match nacks.as_mut() {
        Some(rx) => match rx.recv().await {
            Some(n) => n,
            // The xDS server is gone (shutting down): wait for the signal.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Resolves when the set of connected identities changes; never without security.
async fn identities_changed(security: &mut Option<Security>) -> Result<(), Error> {
    match security.as_mut() {
        Some(s) => {
            if s.identities.changed().await.is_err() {
                // The registry is gone (shutting down): wait for the shutdown signal.
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// What each stored rollout serves, by policy and route: the status's
/// canary percent per zone while it serves a split (progressing, paused,
/// completed). A failed or aborted rollout serves 0 everywhere, as a
/// route with a rollout and no status does: it is left out, and the
/// translation serves its route's own clusters at 0 % canary.
fn served(
    statuses: BTreeMap<String, BTreeMap<String, meridian_store::rollouts::Status>>,
) -> Rollouts {
    use meridian_rollout::Phase;
    statuses
        .into_iter()
        .map(|(policy, routes)| {
            let served = routes
                .into_iter()
                .filter(|(_, s)| {
                    matches!(
                        s.phase,
                        Phase::Progressing | Phase::Paused | Phase::Completed
                    )
                })
                .map(|(route, s)| {
                    let r = ServedRollout {
                        version: s.version,
                        weights: s.weights,
                    };
                    (route, r)
                })
                .collect();
            (policy, served)
        })
        .collect()
}

/// How long the feed must be silent before a burst is taken as complete.
/// A transaction's notifications arrive together at its commit, so a
/// GitOps commit of many policies lands in one snapshot; a lone change
/// waits only this long.
pub const QUIET: Duration = Duration::from_millis(3);

/// When a burst that began at `first` and last grew at `last` is applied:
/// once the feed has been [`QUIET`], but never sooner than `debounce` after
/// the previous burst was applied (so a storm of changes makes at most one
/// snapshot per `debounce` for every stream to take), and never later
/// than `debounce` after the burst began.
pub fn burst_end<T>(first: T, last: T, applied: Option<T>, debounce: Duration) -> T
where
    T: Copy + Ord + std::ops::Add<Duration, Output = T>,
{
    let quiet = last + QUIET;
    let earliest = applied.map_or(quiet, |a| a + debounce);
    quiet.max(earliest).min(first + debounce)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_when_quiet_but_not_sooner_than_debounce_after_the_last() {
        let ms = Duration::from_millis;
        // (first event, last event, previous burst applied, debounce, applied at), in ms
        let cases: &[(u64, u64, Option<u64>, u64, u64)] = &[
            // A lone change after a quiet time: out once the feed is quiet.
            (1000, 1000, None, 50, 1003),
            (1000, 1000, Some(100), 50, 1003),
            // Notifications of one commit arriving over 2 ms: one burst.
            (1000, 1002, Some(100), 50, 1005),
            // Right after a burst was applied: wait out the debounce.
            (1000, 1000, Some(990), 50, 1040),
            // A storm: gathered for at most the debounce.
            (1000, 1045, None, 50, 1048),
            (1000, 1049, None, 50, 1050),
            (1000, 1049, Some(999), 50, 1050),
            // No debounce: every change at once.
            (1000, 1000, Some(999), 0, 1000),
        ];
        for &(first, last, applied, debounce, want) in cases {
            let got = burst_end(ms(first), ms(last), applied.map(ms), ms(debounce));
            assert_eq!(got, ms(want), "{first} {last} {applied:?} {debounce}");
        }
    }
}

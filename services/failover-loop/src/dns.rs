//! The leader's DNS reconciler: desired records (pure, from the policy and
//! its effective weights) against what each provider holds, applying only
//! differences. It runs beside the decision loop, never inside it, so a
//! slow or failing provider delays neither xDS nor the other providers.
//!
//! **Fencing.** Every request that changes a provider is checked against
//! the failover lease right before it is sent, and cut off a margin before
//! the lease could expire ([`LeaseFence`], [`meridian_dns::submit`]); every
//! provider request is bounded by [`meridian_dns::provider::CALL_TIMEOUT`],
//! well inside the 5 s lease. A replica that lost the lease submits nothing.
//!
//! **Ownership and cleanup.** Records carry this installation's ownership
//! mark (owner id from the database) and records without it are never
//! touched. Every (provider, host) published is remembered in the database
//! before the first change; when no policy wants it any more (policy
//! deleted, zone removed or moved to another provider, host changed) the
//! reconciler removes this installation's records there, then forgets it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_dns::desired::{desired_records, fqdn, Owner, Record};
use meridian_dns::{reconcile_fenced, AnyProvider, Backoff, Fence, Provider};
use meridian_policy::provider::{ProviderConfig, SecretRef};
use meridian_store::providers::ProviderRow;
use meridian_store::Store;
use serde_json::json;
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{event, LEASE};

/// Longest a provider may take for one policy (reads, retries, submits and
/// waiting for Route 53 to sync) before it is reported failed. Each request
/// within is bounded much tighter (see the module docs).
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Longest the lease check before a submit may take.
const FENCE_CHECK_LIMIT: Duration = Duration::from_secs(1);

/// Longest error text copied into events and statuses: provider answers
/// can be long, and are not ours to store whole.
const MESSAGE_LIMIT: usize = 400;

/// The failover lease as the fence of DNS submits.
pub struct LeaseFence {
    store: Store,
    token: i64,
}

impl LeaseFence {
    pub fn new(store: Store, token: i64) -> Self {
        Self { store, token }
    }
}

impl Fence for LeaseFence {
    async fn check(&self) -> Result<tokio::time::Instant, meridian_dns::Error> {
        // The deadline counts from before the question: the database's
        // `expires_at - now()` is measured later, so this errs early.
        let asked = tokio::time::Instant::now();
        let fenced = |why: String| meridian_dns::Error::Fenced(why);
        match tokio::time::timeout(
            FENCE_CHECK_LIMIT,
            self.store.lease_remaining(LEASE, self.token),
        )
        .await
        {
            Ok(Ok(Some(left))) => Ok(asked + left),
            Ok(Ok(None)) => Err(fenced(format!(
                "the failover lease is no longer held with token {}",
                self.token
            ))),
            Ok(Err(e)) => Err(fenced(format!("cannot check the failover lease: {e}"))),
            Err(_) => Err(fenced(format!(
                "the failover lease check took over {FENCE_CHECK_LIMIT:?}"
            ))),
        }
    }
}

/// One reconcile of one host at one provider.
struct Job {
    policy: String,
    host: String,
    provider: String,
    records: Vec<Record>,
    /// No policy wants records here any more: remove ours.
    cleanup: bool,
}

/// Why a reconcile did not finish.
enum Failure {
    /// The lease is gone: another replica leads, and reports.
    Fenced(String),
    Failed(String),
}

/// What was last applied per (policy, provider): tells drift (the provider
/// changed while our desired state did not) from our own changes.
type Applied = BTreeMap<(String, String), Vec<Record>>;

pub struct Reconciler {
    store: Store,
    every: Duration,
    applied: Applied,
    /// Last error per (policy, provider), so a persisting failure is one event.
    failing: BTreeMap<(String, String), String>,
    /// This installation's owner id, read once.
    owner_id: Option<String>,
    /// (provider, host, policy) known to be remembered as published.
    remembered: BTreeSet<(String, String, String)>,
    /// Built providers by name.
    providers: BTreeMap<String, Cached>,
}

impl Reconciler {
    pub fn new(store: Store, every: Duration) -> Reconciler {
        Reconciler {
            store,
            every,
            applied: Applied::new(),
            failing: BTreeMap::new(),
            owner_id: None,
            remembered: BTreeSet::new(),
            providers: BTreeMap::new(),
        }
    }

    /// Reconciles while `leader` holds a token, every tick and at once when
    /// `decided` fires, until `shutdown`.
    pub async fn run(
        mut self,
        mut leader: watch::Receiver<Option<i64>>,
        decided: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = leader.changed() => {}
                _ = decided.notified() => {}
            }
            let token = *leader.borrow_and_update();
            if let Some(token) = token {
                if let Err(e) = self.step(token).await {
                    tracing::warn!(error = %e, "DNS reconcile step failed; retrying next tick");
                }
            }
        }
    }

    /// One pass over every policy that publishes in DNS, and over every
    /// host no policy publishes any more (cleanup).
    pub async fn step(&mut self, token: i64) -> Result<(), meridian_store::Error> {
        let owner_id = match &self.owner_id {
            Some(id) => id.clone(),
            None => {
                let id = self.store.dns_owner_id().await?;
                self.owner_id = Some(id.clone());
                id
            }
        };
        let policies = self.store.all().await?;
        let providers: BTreeMap<String, ProviderRow> = self
            .store
            .providers()
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let effective = self.store.effective_weights().await?;
        let published = self.store.dns_published().await?;
        let mut jobs = Vec::new();
        // (provider, host) some policy still publishes, or may: a policy
        // whose records cannot be computed keeps what it has.
        let mut wanted_keys = BTreeSet::new();
        for policy in policies
            .iter()
            .filter(|p| p.spec.zones.iter().any(|z| z.dns.is_some()))
        {
            let name = &policy.metadata.name;
            let host = fqdn(&policy.spec.host);
            let weights = effective
                .get(name)
                .map(|e| e.weights.clone())
                .unwrap_or_else(|| {
                    policy
                        .spec
                        .zones
                        .iter()
                        .map(|z| (z.name.clone(), z.weight))
                        .collect()
                });
            let wanted = match desired_records(policy, &weights) {
                Ok(w) => w,
                Err(e) => {
                    for zone in &policy.spec.zones {
                        if let Some(dns) = &zone.dns {
                            wanted_keys.insert((dns.provider.clone(), host.clone()));
                        }
                    }
                    self.fail(name, "*", &e.to_string()).await?;
                    continue;
                }
            };
            for (provider_name, records) in wanted {
                wanted_keys.insert((provider_name.clone(), host.clone()));
                jobs.push(Job {
                    policy: name.clone(),
                    host: host.clone(),
                    provider: provider_name,
                    records,
                    cleanup: false,
                });
            }
        }
        for p in published {
            if !wanted_keys.contains(&(p.provider.clone(), p.host.clone())) {
                jobs.push(Job {
                    policy: p.policy_name,
                    host: p.host,
                    provider: p.provider,
                    records: Vec::new(),
                    cleanup: true,
                });
            }
        }
        // The database fences decisions; provider calls it cannot, so check
        // the lease before the pass (and again before every submit).
        if jobs.is_empty() || !self.store.lease_held(LEASE, token).await? {
            return Ok(());
        }
        // Remember where records will be, before any can be written.
        for job in jobs.iter().filter(|j| !j.cleanup) {
            let key = (job.provider.clone(), job.host.clone(), job.policy.clone());
            if !self.remembered.contains(&key) {
                self.store
                    .mark_dns_published(&job.provider, &job.host, &job.policy)
                    .await?;
                self.remembered.insert(key);
            }
        }
        // A decision changed what a provider should hold: say so before
        // calling it (status pending), so an SRE sees the change in flight.
        for job in jobs.iter().filter(|j| !j.cleanup) {
            let (name, provider_name, records) = (&job.policy, &job.provider, &job.records);
            let key = (name.clone(), provider_name.clone());
            if self.applied.get(&key).is_some_and(|last| last != records) {
                self.store
                    .set_dns_status(name, provider_name, "pending", false, None)
                    .await?;
                let to: Vec<_> = records
                    .iter()
                    .map(|r| json!({"zone": r.set_id, "weight": r.weight, "target": r.target}))
                    .collect();
                let message = format!("{provider_name}: change submitted");
                let details = json!({"provider": provider_name, "records": to});
                self.store
                    .record_event(&event(
                        name,
                        "dns-change-submitted",
                        "info",
                        message,
                        details,
                    ))
                    .await?;
            }
        }
        // Every provider at once, each bounded by CALL_LIMIT: one slow or
        // failing provider delays neither the others nor the next decision.
        let fence = LeaseFence::new(self.store.clone(), token);
        self.refresh_providers(&providers);
        let (this, fence) = (&*self, &fence);
        let results = futures::future::join_all(jobs.iter().map(|job| {
            let (name, host, provider_name, records) =
                (&job.policy, &job.host, &job.provider, &job.records);
            // A reconcile that should change records is traced at info;
            // the periodic drift check, which usually changes nothing,
            // only at debug.
            let changing = job.cleanup
                || self
                    .applied
                    .get(&(name.clone(), provider_name.clone()))
                    .is_none_or(|last| last != records);
            let span = if changing {
                tracing::info_span!("dns.reconcile", otel.kind = "client", policy = %name, %host, provider = %provider_name, cleanup = job.cleanup, changes = tracing::field::Empty, otel.status_code = tracing::field::Empty)
            } else {
                tracing::debug_span!("dns.reconcile", otel.kind = "client", policy = %name, %host, provider = %provider_name, cleanup = job.cleanup, changes = tracing::field::Empty, otel.status_code = tracing::field::Empty)
            };
            let recorded = span.clone();
            let owner = Owner::new(owner_id.clone(), name.clone());
            async move {
                let result = match this.providers.get(provider_name) {
                    None => Err(Failure::Failed(format!(
                        "no DNS provider named {provider_name:?}"
                    ))),
                    Some(Cached {
                        provider: Err(why), ..
                    }) => Err(Failure::Failed(why.clone())),
                    Some(Cached {
                        provider: Ok(provider),
                        ..
                    }) => fenced(provider.as_ref(), host, records, &owner, fence).await,
                };
                match &result {
                    Ok(changes) => {
                        recorded.record("changes", changes);
                    }
                    // `fail` logs and reports it, once the round is over.
                    Err(_) => {
                        recorded.record("otel.status_code", "ERROR");
                    }
                }
                result
            }
            .instrument(span)
        }))
        .await;
        for (job, result) in jobs.into_iter().zip(results) {
            let Job {
                policy: name,
                host,
                provider: provider_name,
                records,
                cleanup,
            } = job;
            let name = &name;
            let key = (name.clone(), provider_name.clone());
            match result {
                Ok(changes) if cleanup => {
                    self.store
                        .forget_dns_published(&provider_name, &host)
                        .await?;
                    self.remembered
                        .retain(|(p, h, _)| !(p == &provider_name && h == &host));
                    self.applied.remove(&key);
                    self.failing.remove(&key);
                    if changes > 0 {
                        let message = format!(
                            "{provider_name}: {changes} records of {host} removed (no policy publishes them there any more)"
                        );
                        let details =
                            json!({"provider": provider_name, "host": host, "changes": changes});
                        self.store
                            .record_event(&event(
                                name,
                                "dns-records-removed",
                                "info",
                                message,
                                details,
                            ))
                            .await?;
                    }
                }
                Ok(changes) => {
                    let drift = changes > 0 && self.applied.get(&key) == Some(&records);
                    self.store
                        .set_dns_status(name, &provider_name, "synced", changes > 0, None)
                        .await?;
                    if self.failing.remove(&key).is_some() || changes > 0 {
                        let (kind, severity, message) = if drift {
                            (
                                "dns-drift-restored",
                                "warning",
                                format!("{provider_name}: records changed outside Meridian were restored ({changes} changes)"),
                            )
                        } else {
                            (
                                "dns-change-applied",
                                "info",
                                format!("{provider_name}: {changes} record changes applied"),
                            )
                        };
                        let details = json!({"provider": provider_name, "changes": changes});
                        self.store
                            .record_event(&event(name, kind, severity, message, details))
                            .await?;
                    }
                    self.applied.insert(key, records);
                }
                Err(Failure::Fenced(why)) => {
                    // Not a provider failure: the new leader reports.
                    tracing::info!(policy = %name, provider = %provider_name, %why, "DNS change not submitted");
                }
                Err(Failure::Failed(message)) => self.fail(name, &provider_name, &message).await?,
            }
        }
        Ok(())
    }

    async fn fail(
        &mut self,
        policy: &str,
        provider: &str,
        message: &str,
    ) -> Result<(), meridian_store::Error> {
        let message = &bounded(message);
        self.store
            .set_dns_status(policy, provider, "error", false, Some(message))
            .await?;
        let key = (policy.to_owned(), provider.to_owned());
        if self.failing.get(&key).map(String::as_str) != Some(message) {
            tracing::warn!(
                policy,
                provider,
                error = message,
                "DNS change failed; will retry"
            );
            let e = event(
                policy,
                "dns-change-failed",
                "warning",
                format!("{provider}: {message}"),
                json!({"provider": provider}),
            );
            self.store.record_event(&e).await?;
            self.failing.insert(key, message.to_owned());
        }
        Ok(())
    }

    /// Builds the providers the rows describe, keeping those already built
    /// from the same settings (clients, connection pools and Route 53's
    /// change lock live across passes). Each is rebuilt after
    /// [`PROVIDER_REFRESH`], so credentials rotated in their files or
    /// variables are picked up.
    fn refresh_providers(&mut self, rows: &BTreeMap<String, ProviderRow>) {
        self.providers.retain(|name, _| rows.contains_key(name));
        for (name, row) in rows {
            let config = ProviderConfig::parse(&row.kind, &row.config.0).map_err(|errors| {
                let fields: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect();
                format!("stored settings are invalid ({})", fields.join("; "))
            });
            // A provider that could not be built (say, its credential file
            // is missing) is tried again every pass.
            let fresh = self.providers.get(name).is_some_and(|c| {
                c.config == config && c.provider.is_ok() && c.built_at.elapsed() < PROVIDER_REFRESH
            });
            if fresh {
                continue;
            }
            let provider = config.as_ref().map_err(Clone::clone).and_then(|c| {
                AnyProvider::build(c, secret)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            });
            self.providers.insert(
                name.clone(),
                Cached {
                    config,
                    built_at: std::time::Instant::now(),
                    provider,
                },
            );
        }
    }
}

/// A provider built from its settings, or why it could not be.
struct Cached {
    config: Result<ProviderConfig, String>,
    built_at: std::time::Instant,
    provider: Result<Arc<AnyProvider>, String>,
}

/// How long a built provider is kept before it is built again.
const PROVIDER_REFRESH: Duration = Duration::from_secs(300);

/// One fenced reconcile, bounded by [`CALL_LIMIT`].
async fn fenced(
    provider: &impl Provider,
    host: &str,
    records: &[Record],
    owner: &Owner,
    fence: &LeaseFence,
) -> Result<usize, Failure> {
    let run = reconcile_fenced(provider, host, records, owner, fence, Backoff::default());
    match tokio::time::timeout(CALL_LIMIT, run).await {
        Ok(Ok(outcome)) => Ok(outcome.changes),
        Ok(Err(meridian_dns::Error::Fenced(why))) => Err(Failure::Fenced(why)),
        Ok(Err(e)) => Err(Failure::Failed(e.to_string())),
        Err(_) => Err(Failure::Failed(format!("no answer within {CALL_LIMIT:?}"))),
    }
}

/// `message` cut to [`MESSAGE_LIMIT`] characters, control characters
/// replaced: provider error bodies end up in events and statuses.
fn bounded(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MESSAGE_LIMIT)
        .collect();
    if message.chars().count() > MESSAGE_LIMIT {
        out.push('…');
    }
    out
}

/// Reads a credential from where its reference points, through the one
/// resolver every role shares (its rules say which variables and files a
/// reference may name). The value is never logged or stored; errors name
/// the reference and the rule, not the secret.
fn secret(reference: &SecretRef) -> Result<String, String> {
    meridian_secrets::resolve_reference(reference)
        .map(meridian_secrets::Secret::into_string)
        .map_err(|e| e.to_string())
}

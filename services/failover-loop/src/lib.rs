//! The failover leader: exactly one replica at a time (a PostgreSQL lease
//! with a fencing token) turns every checker's health reports, the
//! overrides and the drains into effective weights, with events.
//!
//! Each [`Leader::step`] reads the inputs, runs the pure health evaluation
//! and decision (crate `meridian-failover`) for every policy, and stores
//! only what changed, in one fenced transaction per policy; the store's
//! `NOTIFY` then moves every replica's xDS. A deposed leader's write is
//! refused by the fence, so a decision is never applied twice by two leaders.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_failover::step::{fmt_weights, step_policy, Update};
use meridian_store::failover::{NewEvent, WeightDecision};
use meridian_store::Store;
use serde_json::json;
use std::sync::{Arc, LazyLock};

use meridian_telemetry::{counter, single_gauge, Counter, Family, Gauge, Labels};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub mod dns;
mod rollouts;

static DECISIONS: LazyLock<Family<Labels<2>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_failover_decisions",
        "Effective weight changes this replica decided as leader, by policy and cause.",
    )
});

static STEPS: LazyLock<Family<Labels<1>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_failover_steps",
        "Decision passes this replica ran as leader, by outcome (ok or error).",
    )
});

static LEADER: LazyLock<Gauge> = LazyLock::new(|| {
    single_gauge(
        "meridian_failover_leader",
        "1 while this replica holds the failover lease, else 0.",
    )
});

/// Lists the failover families from start-up.
pub fn init_metrics() {
    LEADER.set(0);
    for outcome in ["ok", "error"] {
        STEPS
            .get_or_create(&[("outcome", outcome.into())])
            .inc_by(0);
    }
}

/// Name of the lease row.
pub const LEASE: &str = "failover";

#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's name as lease holder.
    pub holder: String,
    pub tick: Duration,
    /// A leader that stops renewing loses the lease after this long.
    pub lease_ttl: Duration,
    /// Reports older than this come from checkers that stopped, and are ignored.
    pub report_freshness: Duration,
}

impl Config {
    pub fn new(holder: String) -> Config {
        Config {
            holder,
            tick: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
            report_freshness: Duration::from_secs(10),
        }
    }
}

pub struct Leader {
    store: Store,
    config: Config,
    /// Wakes the DNS reconciler as soon as weights change, instead of at its
    /// next tick: DNS should follow a decision within a second.
    decided: Arc<Notify>,
    /// Asks Prometheus for rollout analyses (time-limited per query).
    http: reqwest::Client,
}

impl Leader {
    pub fn new(store: Store, config: Config) -> Leader {
        Leader {
            store,
            config,
            decided: Arc::default(),
            http: reqwest::Client::new(),
        }
    }

    /// Competes for the lease and decides while holding it, until `shutdown`;
    /// then gives the lease up so another replica takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held: Option<i64> = None;
        // The DNS reconciler follows the lease through this channel, in a task
        // of its own so provider latency never delays a decision.
        let (leading, following) = watch::channel(None);
        let reconciler = dns::Reconciler::new(self.store.clone(), Duration::from_secs(1));
        let dns_task =
            tokio::spawn(reconciler.run(following, self.decided.clone(), shutdown.clone()));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self
                .store
                .acquire_lease(LEASE, &self.config.holder, self.config.lease_ttl)
                .await
            {
                Ok(Some(token)) => {
                    if held != Some(token) {
                        tracing::info!(holder = %self.config.holder, token, "became failover leader");
                        let event = NewEvent {
                            policy_name: None,
                            kind: "leader-changed".into(),
                            severity: "info".into(),
                            message: format!(
                                "{} leads failover (token {token})",
                                self.config.holder
                            ),
                            details: json!({"holder": self.config.holder, "token": token}),
                        };
                        if let Err(e) = self.store.record_event(&event).await {
                            tracing::warn!(error = %e, "recording leader change");
                        }
                    }
                    held = Some(token);
                    LEADER.set(1);
                    leading.send_if_modified(|t| t.replace(token) != Some(token));
                    let outcome = match self.step(token).await {
                        Ok(()) => "ok",
                        Err(e) => {
                            tracing::warn!(error = %e, "failover step failed; retrying next tick");
                            "error"
                        }
                    };
                    STEPS.get_or_create(&[("outcome", outcome.into())]).inc();
                }
                Ok(None) => {
                    LEADER.set(0);
                    leading.send_if_modified(|t| t.take().is_some());
                    if held.take().is_some() {
                        tracing::warn!("lost the failover lease");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the store for the failover lease")
                }
            }
        }
        let _ = dns_task.await;
        if held.is_some() {
            match self.store.release_lease(LEASE, &self.config.holder).await {
                Ok(_) => {
                    tracing::info!(holder = %self.config.holder, "released the failover lease")
                }
                Err(e) => tracing::warn!(error = %e, "releasing the failover lease"),
            }
        }
        LEADER.set(0);
    }

    /// One bounded step over every policy, as leader with `token`: reads
    /// the inputs, runs the pure pass ([`meridian_failover::step`]) for each
    /// policy, and stores each policy's update in its own fenced
    /// transaction. A policy whose update fails is logged and retried next
    /// pass; the others are still decided. Only a lost lease ends the pass.
    pub async fn step(&self, token: i64) -> Result<(), meridian_store::Error> {
        let (policies, rows) = self
            .store
            .failover_inputs(self.config.report_freshness)
            .await?;
        let now = chrono::Utc::now().timestamp_millis();
        let inputs = rows.inputs(&policies);
        let mut failed = 0;
        for (input, policy) in inputs.iter().zip(&policies) {
            let update = step_policy(input, now);
            // The zones out after this tick's decision (failed over or
            // drained: effective weight 0) get no canary.
            let decided = match &update {
                Some(u) => Some(&u.decision.weights),
                None => rows.current.get(&policy.metadata.name).map(|c| &c.weights),
            };
            let unavailable = unavailable_zones(policy, decided);
            if let Some(update) = update.filter(|u| !u.is_empty()) {
                match self.store_update(token, &update).await {
                    Ok(()) => {}
                    Err(e @ meridian_store::Error::LeaseLost { .. }) => return Err(e),
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(policy = %update.policy, error = %e, "storing the failover decision failed; the other policies go on");
                    }
                }
            }
            match rollouts::step_policy(&self.store, &self.http, token, policy, &unavailable, now)
                .await
            {
                Ok(()) => {}
                Err(e @ meridian_store::Error::LeaseLost { .. }) => return Err(e),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(policy = %policy.metadata.name, error = %e, "stepping the rollouts failed; the other policies go on");
                }
            }
        }
        if failed > 0 {
            STEPS.get_or_create(&[("outcome", "error".into())]).inc();
        }
        Ok(())
    }

    async fn store_update(&self, token: i64, update: &Update) -> Result<(), meridian_store::Error> {
        let name = &update.policy;
        let cause = update.decision.cause.as_str();
        let changed_states: BTreeMap<String, serde_json::Value> = update
            .states
            .iter()
            .map(|(z, s)| (z.clone(), serde_json::to_value(s).unwrap_or_default()))
            .collect();
        let events: Vec<NewEvent> = update
            .events
            .iter()
            .map(|e| NewEvent {
                policy_name: Some(name.clone()),
                kind: e.kind.clone(),
                severity: e.severity.as_str().to_owned(),
                message: e.message.clone(),
                details: e.details.clone(),
            })
            .collect();
        let rails = serde_json::to_value(&update.decision.guard_rails).unwrap_or_default();
        let weights = update.weights_changed.then_some(WeightDecision {
            weights: &update.decision.weights,
            cause,
            reasons: &update.decision.reasons,
            guard_rails: &rails,
        });
        let span = tracing::info_span!(
            "failover.decide",
            policy = %name,
            %cause,
            weights_changed = update.weights_changed,
            events = events.len()
        );
        let stored = self
            .store
            .decide_with_endpoints(
                LEASE,
                token,
                name,
                &update.resource_version,
                weights,
                update.unhealthy.as_ref(),
                &changed_states,
                &events,
            )
            .instrument(span)
            .await?;
        if !stored {
            tracing::debug!(policy = %name, "policy changed while deciding; deciding again next pass");
            return Ok(());
        }
        if update.weights_changed {
            DECISIONS
                .get_or_create(&[("policy", name.clone()), ("cause", cause.to_owned())])
                .inc();
            self.decided.notify_one();
            tracing::info!(policy = %name, to = %fmt_weights(&update.decision.weights), %cause, "effective weights changed");
        }
        Ok(())
    }
}

/// The zones of `policy` at weight 0 in `decided` (the effective weights;
/// the spec's when none were decided).
fn unavailable_zones(
    policy: &meridian_policy::Policy,
    decided: Option<&BTreeMap<String, u32>>,
) -> BTreeSet<String> {
    policy
        .spec
        .zones
        .iter()
        .filter(|z| {
            decided
                .and_then(|d| d.get(&z.name))
                .copied()
                .unwrap_or(z.weight)
                == 0
        })
        .map(|z| z.name.clone())
        .collect()
}

pub(crate) fn event(
    policy: &str,
    kind: &str,
    severity: &str,
    message: String,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        policy_name: Some(policy.to_owned()),
        kind: kind.to_owned(),
        severity: severity.to_owned(),
        message,
        details,
    }
}

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

use meridian_failover::decide::{decide, Override};
use meridian_failover::health::{evaluate, Health, ZoneState, ZoneTally};
use meridian_policy::Policy;
use meridian_store::failover::{NewEvent, WeightDecision};
use meridian_store::Store;
use serde_json::json;
use std::sync::{Arc, LazyLock};

use meridian_telemetry::{counter, single_gauge, Counter, Family, Gauge, Labels};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub mod dns;

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
}

impl Leader {
    pub fn new(store: Store, config: Config) -> Leader {
        Leader {
            store,
            config,
            decided: Arc::default(),
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

    /// One bounded step over every policy, as leader with `token`.
    pub async fn step(&self, token: i64) -> Result<(), meridian_store::Error> {
        let policies = self.store.all().await?;
        let reports = self
            .store
            .health_reports(self.config.report_freshness)
            .await?;
        let states = self.store.zone_states().await?;
        let overrides = self.store.overrides().await?;
        let drains = self.store.drains().await?;
        let current = self.store.effective_weights().await?;
        let now = chrono::Utc::now().timestamp_millis();

        let mut tallies: BTreeMap<(String, String), Vec<ZoneTally>> = BTreeMap::new();
        for r in reports {
            tallies
                .entry((r.policy_name, r.zone))
                .or_default()
                .push(ZoneTally {
                    checker: r.checker,
                    samples: r.samples.max(0) as u32,
                    failures: r.failures.max(0) as u32,
                });
        }

        for p in &policies {
            let name = &p.metadata.name;
            let mut health = BTreeMap::new();
            let mut changed_states = BTreeMap::new();
            let mut events = Vec::new();
            for z in &p.spec.zones {
                let key = (name.clone(), z.name.clone());
                let prev: Option<ZoneState> = states
                    .get(&key)
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                let (state, verdict) = evaluate(
                    prev.as_ref(),
                    tallies.get(&key).map_or(&[][..], Vec::as_slice),
                    &p.spec.failover,
                    now,
                );
                let before = prev.as_ref().map(|s| s.health).unwrap_or(Health::Unknown);
                if before != state.health && state.health != Health::Unknown {
                    let (kind, severity) = match state.health {
                        Health::Unhealthy => ("zone-unhealthy", "warning"),
                        _ => ("zone-recovered", "info"),
                    };
                    if !(before == Health::Unknown && state.health == Health::Healthy) {
                        events.push(event(
                            name,
                            kind,
                            severity,
                            format!("zone {}: {}", z.name, verdict.reason),
                            json!({
                                "zone": z.name, "failureRatePercent": verdict.failure_rate_percent,
                                "samples": verdict.samples, "checkers": verdict.checkers,
                            }),
                        ));
                    }
                }
                if prev.as_ref() != Some(&state) {
                    changed_states.insert(
                        z.name.clone(),
                        serde_json::to_value(&state).unwrap_or_default(),
                    );
                }
                health.insert(z.name.clone(), state.health);
            }

            let ov = overrides.get(name).map(|o| Override {
                weights: o.weights.clone(),
                reason: o.reason.clone(),
                expires_at_ms: o.expires_at.map(|t| t.timestamp_millis()),
            });
            let drained: BTreeSet<String> =
                drains.get(name).into_iter().flatten().cloned().collect();
            let decision = decide(&p.spec, &health, ov.as_ref(), &drained, now);
            let cause = serde_json::to_value(decision.cause)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", decision.cause));

            let (was_weights, was_cause) = match current.get(name) {
                Some(e) => (e.weights.clone(), e.cause.clone()),
                None => (spec_weights(p), "spec".to_owned()),
            };
            let weights_changed = decision.weights != was_weights || cause != was_cause;
            if weights_changed {
                events.push(event(
                    name,
                    "weights-changed",
                    if decision.critical.is_some() { "critical" } else { "info" },
                    format!("weights {} -> {} ({cause})", fmt(&was_weights), fmt(&decision.weights)),
                    json!({"from": was_weights, "to": decision.weights, "cause": cause, "reasons": decision.reasons}),
                ));
                if let Some(critical) = &decision.critical {
                    events.push(event(
                        name,
                        "failover-critical",
                        "critical",
                        critical.clone(),
                        json!({}),
                    ));
                }
            }
            if weights_changed || !changed_states.is_empty() || !events.is_empty() {
                let weights = weights_changed.then_some(WeightDecision {
                    weights: &decision.weights,
                    cause: &cause,
                    reasons: &decision.reasons,
                });
                let span = tracing::info_span!(
                    "failover.decide",
                    policy = %name,
                    %cause,
                    weights_changed,
                    events = events.len()
                );
                self.store
                    .decide(LEASE, token, name, weights, &changed_states, &events)
                    .instrument(span)
                    .await?;
                if weights_changed {
                    DECISIONS
                        .get_or_create(&[("policy", name.clone()), ("cause", cause.clone())])
                        .inc();
                    self.decided.notify_one();
                    tracing::info!(policy = %name, from = %fmt(&was_weights), to = %fmt(&decision.weights), %cause, "effective weights changed");
                }
            }
        }
        Ok(())
    }
}

fn spec_weights(p: &Policy) -> BTreeMap<String, u32> {
    p.spec
        .zones
        .iter()
        .map(|z| (z.name.clone(), z.weight))
        .collect()
}

fn fmt(w: &BTreeMap<String, u32>) -> String {
    w.iter()
        .map(|(z, n)| format!("{z}={n}"))
        .collect::<Vec<_>>()
        .join(",")
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

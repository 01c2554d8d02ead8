//! Where a policy's traffic goes now and why, zone by zone: one read model
//! shared by the REST and gRPC APIs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::failover::Override;
use crate::providers::DnsStatus;
use crate::{Error, Store};

/// Reports older than this are from checkers that stopped (as the leader sees them).
pub const REPORT_FRESHNESS: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub policy: String,
    /// What set the effective weights: `spec` until the leader decides.
    pub cause: String,
    pub decided_at: Option<DateTime<Utc>>,
    pub zones: Vec<ZoneStatus>,
    #[serde(rename = "override")]
    pub override_: Option<Override>,
    pub dns: DnsProviders,
    /// Guard rails that shaped the effective weights (`{rule, message}`):
    /// capacity holding traffic on degraded zones, a failback under way.
    pub guard_rails: Vec<Value>,
    /// An xDS client refused a shared route configuration with this
    /// policy (at its current version) in it: the policy is left out of
    /// that route until it changes.
    pub xds_rejected: Option<crate::xds_rejections::XdsRejection>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsProviders {
    pub providers: Vec<DnsStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    pub name: String,
    /// `healthy`, `unhealthy`, `recovering` or `unknown`.
    pub health: String,
    pub failure_rate_percent: f64,
    pub samples: i64,
    pub checkers: Vec<CheckerReport>,
    pub last_report_at: Option<DateTime<Utc>>,
    pub spec_weight: u32,
    pub effective_weight: u32,
    pub drained: bool,
    pub reason: Option<String>,
    /// `capacityPercent`: the most this zone may take.
    pub capacity_percent: u32,
    /// Which evidence decides this zone's health now: `probes`, or
    /// `traffic` once the data planes report enough requests.
    pub decided_by: meridian_failover::Source,
    /// Probes of the checkers with an opinion, pooled: `{requests, failures}`.
    pub probes: meridian_failover::Evidence,
    /// Real requests the data planes reported over the window.
    pub traffic: meridian_failover::Evidence,
    /// Confidence bounds of the deciding evidence, in percent: failed over
    /// when the lower is above the threshold, back when the upper is below.
    pub lower_bound_percent: f64,
    pub upper_bound_percent: f64,
    /// The health verdict in words, as the leader would give it now.
    pub verdict: String,
    /// Endpoints (`ip:port`) the checkers see failing while the zone
    /// serves: EDS serves them as UNHEALTHY, and the zone is judged
    /// without them.
    pub unhealthy_endpoints: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckerReport {
    pub checker: String,
    pub samples: i32,
    pub failures: i32,
    pub last_error: Option<String>,
    pub reported_at: DateTime<Utc>,
}

impl Store {
    pub async fn policy_status(&self, name: &str) -> Result<PolicyStatus, Error> {
        let policy = self.get(name).await?;
        let reports = self.health_reports(REPORT_FRESHNESS).await?;
        let states = self.zone_states().await?;
        let effective = self
            .effective_weights_of(std::slice::from_ref(&policy.metadata.name))
            .await?
            .remove(name);
        let override_ = self.override_of(name).await?;
        let providers = self.dns_status(name).await?;
        let drains = self.drains().await?.remove(name).unwrap_or_default();
        let xds_rejected = self
            .xds_rejections(Some(std::slice::from_ref(&policy.metadata.name)))
            .await?
            .remove(name);
        let unhealthy = self
            .endpoint_health_of(std::slice::from_ref(&policy.metadata.name))
            .await?
            .remove(name)
            .unwrap_or_default();
        let window = Duration::from_secs(u64::from(policy.spec.failover.window_seconds));
        let mut traffic = self
            .traffic_tallies(&[(name.to_owned(), window)].into())
            .await?;
        let now = Utc::now().timestamp_millis();
        let zones = policy
            .spec
            .zones
            .iter()
            .map(|z| {
                let mine: Vec<_> = reports
                    .iter()
                    .filter(|r| r.policy_name == name && r.zone == z.name)
                    .collect();
                let samples: i64 = mine.iter().map(|r| i64::from(r.samples)).sum();
                let failures: i64 = mine.iter().map(|r| i64::from(r.failures)).sum();
                let state = states.get(&(name.to_owned(), z.name.clone()));
                let health = state
                    .and_then(|s| s.get("health"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                // The leader's own evaluation, on the same reports: what
                // it decides on, not a second opinion.
                let prev: Option<meridian_failover::ZoneState> =
                    state.and_then(|s| serde_json::from_value(s.clone()).ok());
                let tallies: Vec<meridian_failover::ZoneTally> =
                    mine.iter().map(|r| r.tally()).collect();
                let marked = unhealthy.get(&z.name).cloned().unwrap_or_default();
                let tallies = meridian_failover::endpoints::without(&tallies, &marked);
                let (_, verdict) = meridian_failover::evaluate(
                    prev.as_ref(),
                    &tallies,
                    traffic
                        .remove(&(name.to_owned(), z.name.clone()))
                        .unwrap_or_default()
                        .as_slice(),
                    &policy.spec.failover,
                    now,
                );
                ZoneStatus {
                    name: z.name.clone(),
                    health: health.to_owned(),
                    failure_rate_percent: if samples > 0 {
                        failures as f64 * 100.0 / samples as f64
                    } else {
                        0.0
                    },
                    samples,
                    checkers: mine
                        .iter()
                        .map(|r| CheckerReport {
                            checker: r.checker.clone(),
                            samples: r.samples,
                            failures: r.failures,
                            last_error: r.last_error.clone(),
                            reported_at: r.reported_at,
                        })
                        .collect(),
                    last_report_at: mine.iter().map(|r| r.reported_at).max(),
                    spec_weight: z.weight,
                    effective_weight: effective
                        .as_ref()
                        .and_then(|e| e.weights.get(&z.name).copied())
                        .unwrap_or(z.weight),
                    drained: drains.contains(&z.name),
                    reason: effective
                        .as_ref()
                        .and_then(|e| e.reasons.get(&z.name).cloned()),
                    capacity_percent: z.capacity(),
                    decided_by: verdict.decided_by,
                    probes: verdict.probes,
                    traffic: verdict.traffic,
                    lower_bound_percent: verdict.lower_bound_percent,
                    upper_bound_percent: verdict.upper_bound_percent,
                    verdict: verdict.reason,
                    unhealthy_endpoints: marked.into_iter().collect(),
                }
            })
            .collect();
        Ok(PolicyStatus {
            policy: name.to_owned(),
            cause: effective
                .as_ref()
                .map_or("spec", |e| e.cause.as_str())
                .to_owned(),
            decided_at: effective.as_ref().map(|e| e.decided_at),
            zones,
            override_,
            dns: DnsProviders { providers },
            guard_rails: effective
                .as_ref()
                .map(|e| e.guard_rails.clone())
                .unwrap_or_default(),
            xds_rejected,
        })
    }
}

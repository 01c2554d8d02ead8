//! Effective weights: what the data plane gets once zone health, operator
//! overrides and maintenance drains are applied to a policy's spec weights.
//!
//! The leader computes one [`Decision`] per policy and stores it; every
//! replica's xDS and DNS serve exactly those weights, so this is the one place
//! where the failover rules live.

use std::collections::{BTreeMap, BTreeSet};

use meridian_policy::{FailoverMode, Spec};
use serde::{Deserialize, Serialize};

use crate::health::Health;

/// An operator's explicit weights, in force until `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// Zone name → percent. Zones not listed get 0.
    pub weights: BTreeMap<String, u32>,
    pub reason: String,
    /// Milliseconds since the Unix epoch; `None` never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

impl Override {
    /// Whether the override is still in force at `now_ms` (it expires at
    /// `expires_at_ms` itself, not a millisecond later).
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// Why the effective weights are what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The policy's own weights (in `priority` mode: its preferred tier).
    Spec,
    /// Unhealthy zones lost their traffic to healthy ones.
    Failover,
    /// Every zone is unhealthy, so the spec weights are kept: sending traffic
    /// somewhere beats sending it nowhere.
    AllUnhealthyFailOpen,
    /// An operator override is in force.
    Override,
    /// Drained zones lost their traffic (and no zone is unhealthy).
    Drain,
    /// `manual` mode kept the weights although some zone is unhealthy.
    Manual,
}

impl Cause {
    /// The serialized name, e.g. `all-unhealthy-fail-open`, as stored in
    /// `effective_weights.cause`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Spec => "spec",
            Cause::Failover => "failover",
            Cause::AllUnhealthyFailOpen => "all-unhealthy-fail-open",
            Cause::Override => "override",
            Cause::Drain => "drain",
            Cause::Manual => "manual",
        }
    }
}

/// The effective weights of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Every zone of the spec → percent; the values sum to exactly 100.
    pub weights: BTreeMap<String, u32>,
    pub cause: Cause,
    /// Zone → why its weight differs from the spec, or why it is worth an
    /// event although it does not (an unhealthy zone under `manual` mode).
    pub reasons: BTreeMap<String, String>,
    /// Set when the decision needs a human now: every zone unhealthy, every
    /// zone drained, an invalid override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<String>,
}

/// Checks an override against the policy: every zone it names exists, each
/// weight is within 0..=100, and they sum to exactly 100. Lists every problem.
pub fn validate_override(spec: &Spec, o: &Override) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for (zone, &weight) in &o.weights {
        if !spec.zones.iter().any(|z| &z.name == zone) {
            errors.push(format!(
                "weights.{zone}: no zone of that name in the policy"
            ));
        }
        if weight > 100 {
            errors.push(format!("weights.{zone}: {weight} is over 100"));
        }
    }
    let sum: u64 = o.weights.values().map(|&w| u64::from(w)).sum();
    if sum != 100 {
        errors.push(format!("weights: sum to {sum}, must sum to 100"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Everything wrong with an operator's override request at `now_ms`, as
/// field errors named as in the REST API: the weights (see
/// [`validate_override`]), a reason, and an expiry in the future. Shared by
/// every edge that accepts an override, so they refuse the same things.
pub fn override_request_problems(
    spec: &Spec,
    o: &Override,
    now_ms: i64,
) -> Vec<meridian_policy::FieldError> {
    use meridian_policy::FieldError;
    let mut problems: Vec<FieldError> = validate_override(spec, o)
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|m| FieldError::new("weights", m))
        .collect();
    if o.reason.trim().is_empty() {
        problems.push(FieldError::new("reason", "say why the weights are pinned"));
    }
    if o.expires_at_ms.is_some_and(|t| t <= now_ms) {
        problems.push(FieldError::new("expiresAt", "must be in the future"));
    }
    problems
}

/// Splits `total` over `weights` in proportion, as integers summing to
/// exactly `total` (largest remainder; ties go to the earlier entry, i.e. the
/// earlier zone of the spec). All-zero weights split evenly, since the zones
/// left are the only place the traffic can go.
fn apportion(total: u32, weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let mut weights: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    if weights.iter().all(|&w| w == 0) {
        weights.iter_mut().for_each(|w| *w = 1);
    }
    let sum: u64 = weights.iter().sum();
    let total = u64::from(total);
    let mut shares: Vec<u64> = weights.iter().map(|w| total * w / sum).collect();
    let short = total - shares.iter().sum::<u64>();
    let mut by_remainder: Vec<(u64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (total * w % sum, i))
        .collect();
    by_remainder.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    // Remainders sum to short * sum and each is below sum, so more than
    // `short` entries have one: a zero weight never receives a unit.
    for &(_, i) in by_remainder.iter().take(short as usize) {
        shares[i] += 1;
    }
    shares
        .into_iter()
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
        .collect()
}

/// Weights by `mode` over the zones marked eligible; `None` when none is.
/// Manual and weighted spread over every eligible zone by spec weight;
/// priority only over the eligible zones of the best (lowest) priority.
fn plan(spec: &Spec, mode: FailoverMode, eligible: &[bool]) -> Option<Vec<u32>> {
    let zones = &spec.zones;
    let tier = match mode {
        FailoverMode::Priority => Some(
            zones
                .iter()
                .zip(eligible)
                .filter(|(_, &e)| e)
                .map(|(z, _)| z.priority)
                .min()?,
        ),
        FailoverMode::Weighted | FailoverMode::Manual => None,
    };
    let chosen: Vec<usize> = (0..zones.len())
        .filter(|&i| eligible[i] && tier.is_none_or(|t| zones[i].priority == t))
        .collect();
    if chosen.is_empty() {
        return None;
    }
    let shares = apportion(
        100,
        &chosen.iter().map(|&i| zones[i].weight).collect::<Vec<_>>(),
    );
    let mut weights = vec![0; zones.len()];
    for (&i, share) in chosen.iter().zip(shares) {
        weights[i] = share;
    }
    Some(weights)
}

/// The effective weights of a policy.
///
/// In order: an active, valid override wins outright. Drained zones get 0
/// and their share goes to the others, in every mode (drains are ignored, with
/// `critical` set, if they would cover every zone). `manual` mode stops
/// there: unhealthy zones only get a reason. `weighted` mode gives unhealthy
/// zones 0 and spreads their share over the rest by spec weight; `priority`
/// mode sends everything to the healthy zones of the lowest priority value
/// that has one. Unknown health counts as healthy (fail open). When no zone
/// that is not drained is healthy, the spec weights (minus drains) are kept
/// with [`Cause::AllUnhealthyFailOpen`]. Zones missing from `health` are
/// unknown; entries for zones not in the spec are ignored.
pub fn decide(
    spec: &Spec,
    health: &BTreeMap<String, Health>,
    overrides: Option<&Override>,
    drained: &BTreeSet<String>,
    now_ms: i64,
) -> Decision {
    let zones = &spec.zones;
    let unhealthy: Vec<bool> = zones
        .iter()
        .map(|z| health.get(&z.name) == Some(&Health::Unhealthy))
        .collect();
    let mut reasons = BTreeMap::new();
    let mut critical = Vec::new();
    let finish = |weights: Vec<u32>, cause, reasons, critical: Vec<String>| Decision {
        weights: zones.iter().map(|z| z.name.clone()).zip(weights).collect(),
        cause,
        reasons,
        critical: (!critical.is_empty()).then(|| critical.join("; ")),
    };

    if zones.is_empty() {
        critical.push("the policy has no zones".to_owned());
        return finish(Vec::new(), Cause::Spec, reasons, critical);
    }

    if let Some(o) = overrides.filter(|o| o.is_active(now_ms)) {
        match validate_override(spec, o) {
            Ok(()) => {
                let weights: Vec<u32> = zones
                    .iter()
                    .map(|z| o.weights.get(&z.name).copied().unwrap_or(0))
                    .collect();
                for (i, z) in zones.iter().enumerate() {
                    let w = weights[i];
                    let why = if w > 0 && unhealthy[i] {
                        format!("unhealthy, but the override gives it {w}%: {}", o.reason)
                    } else if w > 0 && drained.contains(&z.name) {
                        format!("drained, but the override gives it {w}%: {}", o.reason)
                    } else if w != z.weight {
                        format!("weight {} → {w} by override: {}", z.weight, o.reason)
                    } else {
                        continue;
                    };
                    reasons.insert(z.name.clone(), why);
                }
                return finish(weights, Cause::Override, reasons, critical);
            }
            Err(errors) => {
                critical.push(format!("override ignored, invalid: {}", errors.join(", ")));
            }
        }
    }

    let mut served: Vec<bool> = zones.iter().map(|z| !drained.contains(&z.name)).collect();
    if served.iter().all(|s| !s) {
        // Maintenance of every zone at once would black-hole the service.
        served.iter_mut().for_each(|s| *s = true);
        critical.push("every zone is drained; drains ignored so traffic keeps flowing".to_owned());
        for z in zones {
            reasons.insert(
                z.name.clone(),
                "drain ignored: every zone is drained".to_owned(),
            );
        }
    } else {
        for (z, _) in zones.iter().zip(&served).filter(|(_, &s)| !s) {
            reasons.insert(z.name.clone(), "drained for maintenance".to_owned());
        }
    }
    let any_drained = served.iter().any(|s| !s);
    let all_served_unhealthy = (0..zones.len()).all(|i| !served[i] || unhealthy[i]);
    let every = vec![true; zones.len()];
    // Fail open and manual mode both keep the spec weights, minus drains.
    let spec_minus_drains = || plan(spec, FailoverMode::Weighted, &served).unwrap_or_default();

    let (weights, cause) = if spec.failover.mode == FailoverMode::Manual {
        for (i, z) in zones.iter().enumerate() {
            if served[i] && unhealthy[i] {
                reasons.insert(
                    z.name.clone(),
                    "unhealthy; weight kept because failover mode is manual".to_owned(),
                );
            }
        }
        if all_served_unhealthy {
            critical.push("every zone is unhealthy (failover mode is manual)".to_owned());
        }
        let weights = spec_minus_drains();
        let cause = if weights != spec_minus_drains_of_all(spec) {
            Cause::Drain
        } else if unhealthy.iter().zip(&served).any(|(&u, &s)| u && s) {
            Cause::Manual
        } else {
            Cause::Spec
        };
        (weights, cause)
    } else if all_served_unhealthy {
        for (i, z) in zones.iter().enumerate() {
            if served[i] {
                reasons.insert(
                    z.name.clone(),
                    "unhealthy; still serving because every zone is unhealthy (fail open)"
                        .to_owned(),
                );
            }
        }
        critical.push(if any_drained {
            "every zone that is not drained is unhealthy; keeping spec weights (fail open)"
                .to_owned()
        } else {
            "every zone is unhealthy; keeping spec weights (fail open)".to_owned()
        });
        (spec_minus_drains(), Cause::AllUnhealthyFailOpen)
    } else {
        let mode = spec.failover.mode;
        let healthy: Vec<bool> = (0..zones.len())
            .map(|i| served[i] && !unhealthy[i])
            .collect();
        let weights = plan(spec, mode, &healthy).unwrap_or_default();
        let without_health = plan(spec, mode, &served).unwrap_or_default();
        let without_drains = plan(spec, mode, &every).unwrap_or_default();
        for (i, z) in zones.iter().enumerate() {
            if served[i] && unhealthy[i] {
                reasons.insert(z.name.clone(), "unhealthy; gets no traffic".to_owned());
            }
        }
        let cause = if weights != without_health {
            Cause::Failover
        } else if without_health != without_drains {
            Cause::Drain
        } else {
            Cause::Spec
        };
        (weights, cause)
    };

    explain_changes(spec, &weights, &mut reasons);
    finish(weights, cause, reasons, critical)
}

/// Spec weights apportioned over every zone: what manual mode serves when
/// nothing is drained, to tell whether a drain changed anything.
fn spec_minus_drains_of_all(spec: &Spec) -> Vec<u32> {
    plan(spec, FailoverMode::Weighted, &vec![true; spec.zones.len()]).unwrap_or_default()
}

/// Gives a reason to every zone whose weight moved and has none yet, naming
/// where its traffic came from or why it waits, so a dashboard never shows an
/// unexplained number.
fn explain_changes(spec: &Spec, weights: &[u32], reasons: &mut BTreeMap<String, String>) {
    let zones = &spec.zones;
    let donors: Vec<&str> = zones
        .iter()
        .zip(weights)
        .filter(|(z, &w)| w < z.weight)
        .map(|(z, _)| z.name.as_str())
        .collect();
    let serving_tier = zones
        .iter()
        .zip(weights)
        .filter(|(_, &w)| w > 0)
        .map(|(z, _)| z.priority)
        .min();
    for (z, &w) in zones.iter().zip(weights) {
        if w == z.weight || reasons.contains_key(&z.name) {
            continue;
        }
        let why = if w > z.weight {
            format!(
                "weight {} → {w}: takes over traffic from {}",
                z.weight,
                donors.join(", ")
            )
        } else if spec.failover.mode == FailoverMode::Priority && serving_tier != Some(z.priority) {
            format!(
                "weight {} → {w}: priority {} is on standby while priority {} serves",
                z.weight,
                z.priority,
                serving_tier.unwrap_or_default()
            )
        } else {
            format!("weight {} → {w}", z.weight)
        };
        reasons.insert(z.name.clone(), why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policy::{Failover, Zone};

    fn spec(mode: FailoverMode, zones: &[(&str, u32, u32)]) -> Spec {
        Spec {
            host: "svc.example.com".to_owned(),
            port: 8080,
            protocol: Default::default(),
            zones: zones
                .iter()
                .map(|&(name, weight, priority)| Zone {
                    name: name.to_owned(),
                    region: None,
                    weight,
                    priority,
                    endpoints: Vec::new(),
                    dns: None,
                })
                .collect(),
            routes: Vec::new(),
            health_check: Default::default(),
            failover: Failover {
                mode,
                ..Failover::default()
            },
            mtls: Default::default(),
            dns: Default::default(),
        }
    }

    fn weighted(zones: &[(&str, u32)]) -> Spec {
        let zones: Vec<_> = zones.iter().map(|&(n, w)| (n, w, 0)).collect();
        spec(FailoverMode::Weighted, &zones)
    }

    fn health(unhealthy: &[&str]) -> BTreeMap<String, Health> {
        unhealthy
            .iter()
            .map(|z| (z.to_string(), Health::Unhealthy))
            .collect()
    }

    fn set(zones: &[&str]) -> BTreeSet<String> {
        zones.iter().map(|z| z.to_string()).collect()
    }

    fn weights_of(spec: &Spec, d: &Decision) -> Vec<u32> {
        spec.zones.iter().map(|z| d.weights[&z.name]).collect()
    }

    #[test]
    fn apportion_table() {
        let cases: &[(&[u32], &[u32])] = &[
            (&[], &[]),
            (&[50, 30, 20], &[50, 30, 20]),
            (&[30, 20], &[60, 40]),
            (&[33, 34], &[49, 51]),
            (&[33, 33], &[50, 50]),
            (&[1, 1], &[50, 50]),
            (&[1, 1, 1], &[34, 33, 33]),
            (&[0, 0, 0], &[34, 33, 33]),
            (&[0, 5], &[0, 100]),
            (&[1, 98], &[1, 99]),
            (&[7], &[100]),
            (&[u32::MAX, u32::MAX, 1], &[50, 50, 0]),
        ];
        for &(weights, want) in cases {
            assert_eq!(apportion(100, weights), want, "apportion({weights:?})");
        }
    }

    #[test]
    fn weighted_table() {
        struct Case {
            name: &'static str,
            zones: &'static [(&'static str, u32)],
            unhealthy: &'static [&'static str],
            drained: &'static [&'static str],
            want: &'static [u32],
            cause: Cause,
        }
        let cases = [
            Case {
                name: "all healthy keeps the spec",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                unhealthy: &[],
                drained: &[],
                want: &[50, 30, 20],
                cause: Cause::Spec,
            },
            Case {
                name: "50/30/20 with the 50 failed",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                unhealthy: &["a"],
                drained: &[],
                want: &[0, 60, 40],
                cause: Cause::Failover,
            },
            Case {
                name: "33/33/34 with the first failed",
                zones: &[("a", 33), ("b", 33), ("c", 34)],
                unhealthy: &["a"],
                drained: &[],
                want: &[0, 49, 51],
                cause: Cause::Failover,
            },
            Case {
                name: "33/33/34 with the last failed: tie goes to the earlier zone",
                zones: &[("a", 33), ("b", 33), ("c", 34)],
                unhealthy: &["c"],
                drained: &[],
                want: &[50, 50, 0],
                cause: Cause::Failover,
            },
            Case {
                name: "70/30 with the 70 failed",
                zones: &[("a", 70), ("b", 30)],
                unhealthy: &["a"],
                drained: &[],
                want: &[0, 100],
                cause: Cause::Failover,
            },
            Case {
                name: "1/1/98 with the 98 failed",
                zones: &[("a", 1), ("b", 1), ("c", 98)],
                unhealthy: &["c"],
                drained: &[],
                want: &[50, 50, 0],
                cause: Cause::Failover,
            },
            Case {
                name: "1/1/98 with a 1 failed",
                zones: &[("a", 1), ("b", 1), ("c", 98)],
                unhealthy: &["a"],
                drained: &[],
                want: &[0, 1, 99],
                cause: Cause::Failover,
            },
            Case {
                name: "three zones with two failed",
                zones: &[("a", 20), ("b", 30), ("c", 50)],
                unhealthy: &["a", "c"],
                drained: &[],
                want: &[0, 100, 0],
                cause: Cause::Failover,
            },
            Case {
                name: "four zones, remaining weights round",
                zones: &[("a", 10), ("b", 10), ("c", 10), ("d", 70)],
                unhealthy: &["d"],
                drained: &[],
                want: &[34, 33, 33, 0],
                cause: Cause::Failover,
            },
            Case {
                name: "healthy zones with spec weight 0 split evenly",
                zones: &[("a", 100), ("b", 0), ("c", 0)],
                unhealthy: &["a"],
                drained: &[],
                want: &[0, 50, 50],
                cause: Cause::Failover,
            },
            Case {
                name: "unhealthy zone with weight 0 changes nothing",
                zones: &[("a", 100), ("b", 0)],
                unhealthy: &["b"],
                drained: &[],
                want: &[100, 0],
                cause: Cause::Spec,
            },
            Case {
                name: "every zone unhealthy fails open",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                unhealthy: &["a", "b", "c"],
                drained: &[],
                want: &[50, 30, 20],
                cause: Cause::AllUnhealthyFailOpen,
            },
            Case {
                name: "drain redistributes like a failure",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                unhealthy: &[],
                drained: &["a"],
                want: &[0, 60, 40],
                cause: Cause::Drain,
            },
            Case {
                name: "drain and failure together",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                unhealthy: &["b"],
                drained: &["a"],
                want: &[0, 0, 100],
                cause: Cause::Failover,
            },
            Case {
                name: "drained zone that is also unhealthy is just drained",
                zones: &[("a", 50), ("b", 50)],
                unhealthy: &["a"],
                drained: &["a"],
                want: &[0, 100],
                cause: Cause::Drain,
            },
            Case {
                name: "every zone drained keeps the spec",
                zones: &[("a", 50), ("b", 50)],
                unhealthy: &[],
                drained: &["a", "b"],
                want: &[50, 50],
                cause: Cause::Spec,
            },
            Case {
                name: "every zone drained still fails over",
                zones: &[("a", 50), ("b", 50)],
                unhealthy: &["a"],
                drained: &["a", "b"],
                want: &[0, 100],
                cause: Cause::Failover,
            },
            Case {
                name: "rest unhealthy after a drain fails open over the undrained",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                unhealthy: &["b", "c"],
                drained: &["a"],
                want: &[0, 60, 40],
                cause: Cause::AllUnhealthyFailOpen,
            },
            Case {
                name: "drains of unknown zones are ignored",
                zones: &[("a", 50), ("b", 50)],
                unhealthy: &["zz"],
                drained: &["zz"],
                want: &[50, 50],
                cause: Cause::Spec,
            },
        ];
        for case in cases {
            let s = weighted(case.zones);
            let d = decide(&s, &health(case.unhealthy), None, &set(case.drained), 0);
            assert_eq!(weights_of(&s, &d), case.want, "{}: {d:?}", case.name);
            assert_eq!(d.cause, case.cause, "{}: {d:?}", case.name);
            assert_eq!(d.weights.values().sum::<u32>(), 100, "{}", case.name);
            let critical_expected = case.cause == Cause::AllUnhealthyFailOpen
                || (case.drained.len() == case.zones.len() && !case.drained.is_empty());
            assert_eq!(
                d.critical.is_some(),
                critical_expected,
                "{}: {d:?}",
                case.name
            );
            for (z, w) in s.zones.iter().zip(case.want) {
                if *w != z.weight || case.unhealthy.contains(&z.name.as_str()) {
                    assert!(
                        d.reasons.contains_key(&z.name),
                        "{}: no reason for {}",
                        case.name,
                        z.name
                    );
                }
            }
        }
    }

    #[test]
    fn manual_table() {
        struct Case {
            name: &'static str,
            unhealthy: &'static [&'static str],
            drained: &'static [&'static str],
            want: &'static [u32],
            cause: Cause,
            critical: bool,
        }
        let cases = [
            Case {
                name: "healthy",
                unhealthy: &[],
                drained: &[],
                want: &[50, 30, 20],
                cause: Cause::Spec,
                critical: false,
            },
            Case {
                name: "unhealthy zone keeps its weight, with a reason",
                unhealthy: &["a"],
                drained: &[],
                want: &[50, 30, 20],
                cause: Cause::Manual,
                critical: false,
            },
            Case {
                name: "drain applies even in manual mode",
                unhealthy: &["b"],
                drained: &["a"],
                want: &[0, 60, 40],
                cause: Cause::Drain,
                critical: false,
            },
            Case {
                name: "every zone unhealthy is critical but moves nothing",
                unhealthy: &["a", "b", "c"],
                drained: &[],
                want: &[50, 30, 20],
                cause: Cause::Manual,
                critical: true,
            },
            Case {
                name: "every zone drained keeps the spec",
                unhealthy: &[],
                drained: &["a", "b", "c"],
                want: &[50, 30, 20],
                cause: Cause::Spec,
                critical: true,
            },
        ];
        let s = spec(
            FailoverMode::Manual,
            &[("a", 50, 0), ("b", 30, 0), ("c", 20, 0)],
        );
        for case in cases {
            let d = decide(&s, &health(case.unhealthy), None, &set(case.drained), 0);
            assert_eq!(weights_of(&s, &d), case.want, "{}: {d:?}", case.name);
            assert_eq!(d.cause, case.cause, "{}: {d:?}", case.name);
            assert_eq!(d.critical.is_some(), case.critical, "{}: {d:?}", case.name);
            for z in case.unhealthy.iter().filter(|z| !case.drained.contains(z)) {
                assert!(d.reasons[*z].contains("manual"), "{}: {d:?}", case.name);
            }
        }
    }

    #[test]
    fn priority_table() {
        struct Case {
            name: &'static str,
            zones: &'static [(&'static str, u32, u32)],
            unhealthy: &'static [&'static str],
            drained: &'static [&'static str],
            want: &'static [u32],
            cause: Cause,
        }
        const TIERS: &[(&str, u32, u32)] = &[
            ("p0a", 30, 0),
            ("p0b", 10, 0),
            ("p1a", 40, 1),
            ("p1b", 20, 1),
            ("p2", 0, 2),
        ];
        let cases = [
            Case {
                name: "healthy: the best tier takes everything, by spec weight",
                zones: TIERS,
                unhealthy: &[],
                drained: &[],
                want: &[75, 25, 0, 0, 0],
                cause: Cause::Spec,
            },
            Case {
                name: "one zone of the best tier down: the tier's other zone",
                zones: TIERS,
                unhealthy: &["p0a"],
                drained: &[],
                want: &[0, 100, 0, 0, 0],
                cause: Cause::Failover,
            },
            Case {
                name: "best tier down: the next tier",
                zones: TIERS,
                unhealthy: &["p0a", "p0b"],
                drained: &[],
                want: &[0, 0, 67, 33, 0],
                cause: Cause::Failover,
            },
            Case {
                name: "two tiers down: the last tier, weights all 0 split evenly",
                zones: TIERS,
                unhealthy: &["p0a", "p0b", "p1a", "p1b"],
                drained: &[],
                want: &[0, 0, 0, 0, 100],
                cause: Cause::Failover,
            },
            Case {
                name: "a down standby changes nothing",
                zones: TIERS,
                unhealthy: &["p1a", "p2"],
                drained: &[],
                want: &[75, 25, 0, 0, 0],
                cause: Cause::Spec,
            },
            Case {
                name: "best tier drained: the next tier",
                zones: TIERS,
                unhealthy: &[],
                drained: &["p0a", "p0b"],
                want: &[0, 0, 67, 33, 0],
                cause: Cause::Drain,
            },
            Case {
                name: "every zone down fails open to spec weights, not to a tier",
                zones: TIERS,
                unhealthy: &["p0a", "p0b", "p1a", "p1b", "p2"],
                drained: &[],
                want: &[30, 10, 40, 20, 0],
                cause: Cause::AllUnhealthyFailOpen,
            },
            Case {
                name: "tiers need not be contiguous or ordered in the spec",
                zones: &[("late", 50, 7), ("early", 50, 3)],
                unhealthy: &[],
                drained: &[],
                want: &[0, 100],
                cause: Cause::Spec,
            },
            Case {
                name: "a tier of zero-weight zones splits evenly",
                zones: &[("a", 0, 0), ("b", 0, 0), ("c", 0, 0), ("d", 100, 1)],
                unhealthy: &[],
                drained: &[],
                want: &[34, 33, 33, 0],
                cause: Cause::Spec,
            },
        ];
        for case in cases {
            let s = spec(FailoverMode::Priority, case.zones);
            let d = decide(&s, &health(case.unhealthy), None, &set(case.drained), 0);
            assert_eq!(weights_of(&s, &d), case.want, "{}: {d:?}", case.name);
            assert_eq!(d.cause, case.cause, "{}: {d:?}", case.name);
            assert_eq!(d.weights.values().sum::<u32>(), 100, "{}", case.name);
            for (z, w) in s.zones.iter().zip(case.want) {
                if *w != z.weight {
                    assert!(
                        d.reasons.contains_key(&z.name),
                        "{}: no reason for {}",
                        case.name,
                        z.name
                    );
                }
            }
        }
        let s = spec(FailoverMode::Priority, TIERS);
        let d = decide(&s, &health(&[]), None, &set(&[]), 0);
        assert!(d.reasons["p1a"].contains("standby"), "{d:?}");
    }

    fn ov(weights: &[(&str, u32)], expires_at_ms: Option<i64>) -> Override {
        Override {
            weights: weights.iter().map(|&(z, w)| (z.to_owned(), w)).collect(),
            reason: "incident 42".to_owned(),
            expires_at_ms,
        }
    }

    #[test]
    fn override_table() {
        struct Case {
            name: &'static str,
            o: Override,
            unhealthy: &'static [&'static str],
            drained: &'static [&'static str],
            now: i64,
            want: &'static [u32],
            cause: Cause,
            critical: bool,
        }
        let cases = [
            Case {
                name: "active override wins; unlisted zones get 0",
                o: ov(&[("a", 80), ("b", 20)], None),
                unhealthy: &[],
                drained: &[],
                now: 0,
                want: &[80, 20, 0],
                cause: Cause::Override,
                critical: false,
            },
            Case {
                name: "override wins over health and drains",
                o: ov(&[("a", 100)], Some(1_000)),
                unhealthy: &["a"],
                drained: &["a"],
                now: 999,
                want: &[100, 0, 0],
                cause: Cause::Override,
                critical: false,
            },
            Case {
                name: "override expires at expiresAt",
                o: ov(&[("a", 100)], Some(1_000)),
                unhealthy: &["b"],
                drained: &[],
                now: 1_000,
                want: &[71, 0, 29],
                cause: Cause::Failover,
                critical: false,
            },
            Case {
                name: "invalid override is ignored and critical",
                o: ov(&[("a", 60), ("nope", 40)], None),
                unhealthy: &[],
                drained: &[],
                now: 0,
                want: &[50, 30, 20],
                cause: Cause::Spec,
                critical: true,
            },
        ];
        let s = weighted(&[("a", 50), ("b", 30), ("c", 20)]);
        for case in cases {
            let d = decide(
                &s,
                &health(case.unhealthy),
                Some(&case.o),
                &set(case.drained),
                case.now,
            );
            assert_eq!(weights_of(&s, &d), case.want, "{}: {d:?}", case.name);
            assert_eq!(d.cause, case.cause, "{}: {d:?}", case.name);
            assert_eq!(d.critical.is_some(), case.critical, "{}: {d:?}", case.name);
        }
        let d = decide(
            &s,
            &health(&["a"]),
            Some(&ov(&[("a", 100)], None)),
            &set(&[]),
            0,
        );
        assert!(
            d.reasons["a"].contains("unhealthy, but the override"),
            "{d:?}"
        );
        assert!(d.reasons["b"].contains("incident 42"), "{d:?}");
    }

    #[test]
    fn validate_override_table() {
        let s = weighted(&[("a", 50), ("b", 50)]);
        let cases: &[(&str, Override, &[&str])] = &[
            ("valid", ov(&[("a", 70), ("b", 30)], None), &[]),
            ("one zone takes all", ov(&[("b", 100)], None), &[]),
            (
                "zeros are fine when the sum is 100",
                ov(&[("a", 0), ("b", 100)], Some(5)),
                &[],
            ),
            (
                "unknown zone",
                ov(&[("a", 50), ("x", 50)], None),
                &["weights.x: no zone of that name in the policy"],
            ),
            (
                "over 100 (and so the sum is wrong)",
                ov(&[("a", 101)], None),
                &[
                    "weights.a: 101 is over 100",
                    "weights: sum to 101, must sum to 100",
                ],
            ),
            (
                "sum below 100",
                ov(&[("a", 40), ("b", 40)], None),
                &["weights: sum to 80, must sum to 100"],
            ),
            (
                "empty",
                ov(&[], None),
                &["weights: sum to 0, must sum to 100"],
            ),
            (
                "huge weights do not overflow the sum",
                ov(&[("a", u32::MAX), ("b", u32::MAX)], None),
                &[
                    "weights.a: 4294967295 is over 100",
                    "weights.b: 4294967295 is over 100",
                    "weights: sum to 8589934590, must sum to 100",
                ],
            ),
        ];
        for (name, o, want) in cases {
            let got = validate_override(&s, o).err().unwrap_or_default();
            assert_eq!(got, *want, "{name}");
        }
    }

    /// Every weight vector of up to four zones in steps of 1..=100 would be
    /// slow; steps of 7 plus hand-picked awkward ones cover the rounding.
    #[test]
    fn sums_are_always_100() {
        let mut vectors: Vec<Vec<u32>> = Vec::new();
        for a in (0..=100).step_by(7) {
            vectors.push(vec![a, 100 - a]);
            for b in (0..=100 - a).step_by(7) {
                vectors.push(vec![a, b, 100 - a - b]);
                for c in (0..=100 - a - b).step_by(11) {
                    vectors.push(vec![a, b, c, 100 - a - b - c]);
                }
            }
        }
        vectors.extend([
            vec![100],
            vec![1, 1, 98],
            vec![33, 33, 34],
            vec![1, 1, 1, 97],
            vec![0, 0, 0, 100],
            vec![20, 20, 20, 20, 20],
            vec![1, 2, 3, 4, 90],
        ]);
        let mut checked = 0;
        for weights in &vectors {
            let names: Vec<String> = (0..weights.len()).map(|i| format!("z{i}")).collect();
            for mode in [
                FailoverMode::Weighted,
                FailoverMode::Priority,
                FailoverMode::Manual,
            ] {
                let zones: Vec<(&str, u32, u32)> = names
                    .iter()
                    .zip(weights)
                    .enumerate()
                    .map(|(i, (n, &w))| (n.as_str(), w, (i % 2) as u32))
                    .collect();
                let s = spec(mode, &zones);
                for mask in 0u32..(1 << weights.len()) {
                    let failed: Vec<&str> = (0..weights.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| names[i].as_str())
                        .collect();
                    let d = decide(&s, &health(&failed), None, &set(&[]), 0);
                    assert_eq!(
                        d.weights.values().sum::<u32>(),
                        100,
                        "{weights:?} {mode:?} {failed:?}"
                    );
                    assert_eq!(d.weights.len(), weights.len());
                    let fail_open = d.cause == Cause::AllUnhealthyFailOpen;
                    assert_eq!(
                        fail_open,
                        mode != FailoverMode::Manual && failed.len() == weights.len()
                    );
                    if mode != FailoverMode::Manual && !fail_open {
                        for z in &failed {
                            assert_eq!(d.weights[*z], 0, "{weights:?} {mode:?} {failed:?}");
                        }
                    }
                    if mode == FailoverMode::Weighted && !fail_open {
                        // Survivors never lose traffic to someone else's failure.
                        for (z, &w) in s.zones.iter().zip(weights) {
                            if !failed.contains(&z.name.as_str()) {
                                assert!(d.weights[&z.name] >= w, "{weights:?} {failed:?} {d:?}");
                            }
                        }
                    }
                    if mode == FailoverMode::Manual {
                        assert_eq!(weights_of(&s, &d), *weights);
                    }
                    // Draining one zone too keeps the sum and zeroes it.
                    let d = decide(&s, &health(&failed), None, &set(&["z0"]), 0);
                    assert_eq!(
                        d.weights.values().sum::<u32>(),
                        100,
                        "{weights:?} {mode:?} {failed:?} drained z0"
                    );
                    if weights.len() > 1 {
                        assert_eq!(
                            d.weights["z0"], 0,
                            "{weights:?} {mode:?} {failed:?} drained z0"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "only {checked} cases");
    }

    #[test]
    fn no_zones_is_critical() {
        let s = weighted(&[]);
        let d = decide(&s, &BTreeMap::new(), None, &BTreeSet::new(), 0);
        assert!(d.weights.is_empty());
        assert!(d.critical.is_some());
    }

    #[test]
    fn unknown_health_is_served() {
        let s = weighted(&[("a", 50), ("b", 50)]);
        let h: BTreeMap<String, Health> = [
            ("a".to_owned(), Health::Unknown),
            ("b".to_owned(), Health::Unhealthy),
        ]
        .into();
        let d = decide(&s, &h, None, &BTreeSet::new(), 0);
        assert_eq!(weights_of(&s, &d), [100, 0]);
        assert_eq!(d.cause, Cause::Failover);
    }

    #[test]
    fn serde_shapes() {
        for c in [
            Cause::Spec,
            Cause::Failover,
            Cause::AllUnhealthyFailOpen,
            Cause::Override,
            Cause::Drain,
            Cause::Manual,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        let o: Override = serde_json::from_value(serde_json::json!({
            "weights": {"a": 100}, "reason": "r", "expiresAtMs": 5
        }))
        .unwrap();
        assert_eq!(o, ov(&[("a", 100)], Some(5)).with_reason("r"));
        let s = weighted(&[("a", 50), ("b", 50)]);
        let d = decide(&s, &health(&["a"]), None, &BTreeSet::new(), 0);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["cause"], "failover");
        assert_eq!(json["weights"], serde_json::json!({"a": 0, "b": 100}));
        assert!(json.get("critical").is_none());
        assert_eq!(serde_json::from_value::<Decision>(json).unwrap(), d);
    }

    impl Override {
        fn with_reason(mut self, reason: &str) -> Self {
            self.reason = reason.to_owned();
            self
        }
    }
}

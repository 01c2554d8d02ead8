//! What-if: what the leader would decide if some zones stopped answering
//! now. It runs the leader's own pass ([`crate::step::step_policy`]) on
//! the stored inputs with those zones' evidence replaced by silence, so the
//! answer cannot drift from what the leader does.

use meridian_policy::{FieldError, Spec};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::decide::{Cause, GuardRail};
use crate::health::{ZoneTally, DOWN_ROUNDS};
use crate::step::{step_policy, Event, Input};
use crate::timeline::{predicted_failover_ms, PredictedFailover};

/// The weight a DNS record of a zone would get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsWeight {
    pub zone: String,
    pub provider: String,
    pub target: String,
    pub weight: u32,
}

/// The answer of [`simulate`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Simulation {
    /// The zones made to fail.
    pub fail: Vec<String>,
    /// Effective weights as xDS would serve them (every zone).
    pub xds: BTreeMap<String, u32>,
    /// Weights of the zones' DNS records (zones with `dns` only).
    pub dns: Vec<DnsWeight>,
    pub cause: Cause,
    pub reasons: BTreeMap<String, String>,
    /// Guard rails that would trip: capacity, minimum healthy zones.
    pub guard_rails: Vec<GuardRail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<String>,
    /// Events the leader would record.
    pub events: Vec<Event>,
    /// How long until traffic has moved, from the zones' first failed probe.
    pub predicted: PredictedFailover,
}

/// Weights of each zone's DNS record under `weights`.
pub fn dns_weights(spec: &Spec, weights: &BTreeMap<String, u32>) -> Vec<DnsWeight> {
    spec.zones
        .iter()
        .filter_map(|z| {
            let dns = z.dns.as_ref()?;
            Some(DnsWeight {
                zone: z.name.clone(),
                provider: dns.provider.clone(),
                target: dns.target.clone(),
                weight: weights.get(&z.name).copied().unwrap_or(z.weight),
            })
        })
        .collect()
}

/// Simulates the zones in `fail` going silent at `now_ms`: every checker
/// that reports them (or one, if none does yet) gets no answer for
/// [`DOWN_ROUNDS`] rounds, and their traffic stops. Unknown zone names are
/// field errors. `dns_propagation_ms` is the provider's time to serve a
/// change, as in `/status`.
pub fn simulate(
    input: &Input<'_>,
    fail: &[String],
    now_ms: i64,
    dns_propagation_ms: u64,
) -> Result<Simulation, Vec<FieldError>> {
    let Some(policy) = input.policy else {
        return Err(vec![FieldError::new("", "no policy")]);
    };
    let spec = &policy.spec;
    let problems: Vec<FieldError> = fail
        .iter()
        .enumerate()
        .filter(|(_, f)| !spec.zones.iter().any(|z| &&z.name == f))
        .map(|(i, f)| FieldError::new(format!("fail[{i}]"), format!("no zone {f:?} in the policy")))
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut what_if = input.clone();
    for zone in fail {
        let mut checkers: Vec<String> = what_if
            .probes
            .get(zone)
            .map(|t| t.iter().map(|t| t.checker.clone()).collect())
            .unwrap_or_default();
        checkers.sort();
        checkers.dedup();
        if checkers.is_empty() {
            checkers.push("simulated".to_owned());
        }
        let silent = checkers
            .into_iter()
            .map(|checker| ZoneTally {
                checker,
                samples: DOWN_ROUNDS,
                failures: DOWN_ROUNDS,
                unanswered_rounds: DOWN_ROUNDS,
                endpoints: Default::default(),
            })
            .collect();
        what_if.probes.insert(zone.clone(), silent);
        what_if.traffic.remove(zone);
    }
    let update = step_policy(&what_if, now_ms).expect("the input has a policy");
    let d = update.decision;
    Ok(Simulation {
        fail: fail.to_vec(),
        dns: dns_weights(spec, &d.weights),
        xds: d.weights,
        cause: d.cause,
        reasons: d.reasons,
        guard_rails: d.guard_rails,
        critical: d.critical,
        events: update.events,
        predicted: predicted_failover_ms(spec, dns_propagation_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Current;
    use meridian_policy::Policy;
    use serde_json::json;

    fn policy(zones: serde_json::Value) -> Policy {
        serde_json::from_value(json!({
            "apiVersion": "meridian/v1", "kind": "GlobalTrafficPolicy",
            "metadata": {"name": "web", "resourceVersion": "7"},
            "spec": {"host": "web.example.com", "port": 80, "zones": zones}
        }))
        .unwrap()
    }

    #[test]
    fn failing_a_zone_moves_its_share_within_capacity() {
        let p = policy(json!([
            {"name": "a", "weight": 50, "endpoints": [{"address": "127.0.0.2", "port": 80}],
             "dns": {"target": "192.0.2.1", "provider": "r53"}},
            {"name": "b", "weight": 30, "capacityPercent": 60,
             "endpoints": [{"address": "127.0.0.3", "port": 80}],
             "dns": {"target": "192.0.2.2", "provider": "r53"}},
            {"name": "c", "weight": 20, "capacityPercent": 30,
             "endpoints": [{"address": "127.0.0.4", "port": 80}]},
        ]));
        let input = Input {
            policy: Some(&p),
            ..Input::default()
        };
        let s = simulate(&input, &["a".to_owned()], 1_000, 500).unwrap();
        // b can take 60 and c 30: 10 stays on a, and the rail says so.
        assert_eq!(
            s.xds,
            [("a".into(), 10), ("b".into(), 60), ("c".into(), 30)].into()
        );
        assert_eq!(s.cause, Cause::Failover);
        assert!(
            s.guard_rails.iter().any(|r| r.rule == "capacityPercent"),
            "{s:?}"
        );
        assert_eq!(
            s.dns
                .iter()
                .map(|d| (d.zone.as_str(), d.weight))
                .collect::<Vec<_>>(),
            [("a", 10), ("b", 60)]
        );
        assert_eq!(s.predicted.detection_ms, 2_500);
        assert!(s.events.iter().any(|e| e.kind == "zone-unhealthy"), "{s:?}");
        // Two zones down: c alone cannot hold it; fail open is not reached.
        let s = simulate(&input, &["a".to_owned(), "b".to_owned()], 1_000, 0).unwrap();
        assert_eq!(s.xds["c"], 30);
        assert_eq!(s.xds.values().sum::<u32>(), 100);
        // Every zone down: fail open.
        let all = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let s = simulate(&input, &all, 1_000, 0).unwrap();
        assert_eq!(s.cause, Cause::AllUnhealthyFailOpen);
        assert!(s.critical.is_some());
        // Unknown zones are named.
        let e = simulate(&input, &["a".to_owned(), "x".to_owned()], 0, 0).unwrap_err();
        assert_eq!(e[0].field, "fail[1]");
        // Nothing failing: the current weights stand (here a ramp under way
        // is not disturbed either).
        let ramping = Input {
            policy: Some(&p),
            current: Some(Current {
                weights: [("a".into(), 13), ("b".into(), 57), ("c".into(), 30)].into(),
                cause: "failback".into(),
                decided_at_ms: 900,
            }),
            ..Input::default()
        };
        let s = simulate(&ramping, &[], 1_000, 0).unwrap();
        assert_eq!(s.xds["a"], 13);
        assert_eq!(s.cause, Cause::Failback);
    }
}

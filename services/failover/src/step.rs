//! One pass of the failover leader over one policy, as a pure function:
//! the policy, every checker's probe tallies, the data planes' traffic
//! tallies, the zone states and weights stored by the previous pass, the
//! override and the drains in; the zone states to store, the decision and
//! the events to record out. The leader's loop (crate
//! `meridian-failover-loop`) only reads these inputs and writes the
//! outputs; `simulate` runs the same function on made-up reports.

use std::collections::{BTreeMap, BTreeSet};

use meridian_policy::Policy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::decide::{decide_with, Current, Decision, Override};
use crate::endpoints::{self, authority, Unhealthy};
use crate::health::{evaluate, Health, TrafficTally, Verdict, ZoneState, ZoneTally};

/// How much an event matters, as stored in `events.severity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An event for the policy's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: String,
    pub severity: Severity,
    pub message: String,
    pub details: Value,
}

/// Everything one pass knows about one policy.
#[derive(Clone, Debug, Default)]
pub struct Input<'a> {
    pub policy: Option<&'a Policy>,
    /// Zone → every fresh checker tally of it.
    pub probes: BTreeMap<String, Vec<ZoneTally>>,
    /// Zone → the data planes' load-report intervals of it.
    pub traffic: BTreeMap<String, Vec<TrafficTally>>,
    /// Zone → the state the previous pass stored.
    pub states: BTreeMap<String, ZoneState>,
    pub override_: Option<Override>,
    pub drained: BTreeSet<String>,
    /// The stored effective weights, if any pass or write stored some.
    pub current: Option<Current>,
    /// Endpoints marked unhealthy now, by zone.
    pub unhealthy: Unhealthy,
}

/// What one pass decided for one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub policy: String,
    /// The policy version decided on: the store refuses the update if the
    /// policy changed meanwhile.
    pub resource_version: String,
    /// Zone states that differ from the stored ones.
    pub states: BTreeMap<String, ZoneState>,
    pub decision: Decision,
    /// Whether `decision` differs from the stored weights (or cause).
    pub weights_changed: bool,
    pub events: Vec<Event>,
    /// Why each zone's health is what it is.
    pub verdicts: BTreeMap<String, Verdict>,
    /// The endpoints to mark unhealthy, when that changed.
    pub unhealthy: Option<Unhealthy>,
}

impl Update {
    /// Nothing to store.
    pub fn is_empty(&self) -> bool {
        !self.weights_changed
            && self.states.is_empty()
            && self.events.is_empty()
            && self.unhealthy.is_none()
    }
}

fn event(kind: &str, severity: Severity, message: String, details: Value) -> Event {
    Event {
        kind: kind.to_owned(),
        severity,
        message,
        details,
    }
}

/// Formats weights as `a=50,b=50` for messages.
pub fn fmt_weights(w: &BTreeMap<String, u32>) -> String {
    w.iter()
        .map(|(z, n)| format!("{z}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One pass over one policy at `now_ms`. Total: bad inputs (a state of a
/// zone the policy no longer has, a report of an unknown zone) are ignored,
/// so one policy's data can never stop the pass over the others.
pub fn step_policy(input: &Input<'_>, now_ms: i64) -> Option<Update> {
    let p = input.policy?;
    let name = &p.metadata.name;
    let spec = &p.spec;
    let mut health = BTreeMap::new();
    let mut states = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    let mut events = Vec::new();
    let mut unhealthy = Unhealthy::new();
    let none = BTreeSet::new();
    for z in &spec.zones {
        let prev = input.states.get(&z.name);
        let probes = input.probes.get(&z.name).map_or(&[][..], Vec::as_slice);
        let all: BTreeSet<String> = z
            .endpoints
            .iter()
            .map(|e| authority(&e.address, e.port))
            .collect();
        let marked = input.unhealthy.get(&z.name).unwrap_or(&none);
        let failing = endpoints::failing(probes, &all, marked, spec.failover.failure_rate_percent);
        for ep in failing.difference(marked) {
            events.push(event(
                "endpoint-unhealthy",
                Severity::Warning,
                format!("zone {}: endpoint {ep} fails its health checks; served as UNHEALTHY, the rest of the zone keeps serving", z.name),
                json!({"zone": z.name, "endpoint": ep}),
            ));
        }
        for ep in marked.difference(&failing) {
            events.push(event(
                "endpoint-recovered",
                Severity::Info,
                format!(
                    "zone {}: endpoint {ep} passes its health checks again",
                    z.name
                ),
                json!({"zone": z.name, "endpoint": ep}),
            ));
        }
        // The zone is judged by the endpoints that serve.
        let probes = endpoints::without(probes, &failing);
        if !failing.is_empty() {
            unhealthy.insert(z.name.clone(), failing);
        }
        let (state, verdict) = evaluate(
            prev,
            &probes,
            input.traffic.get(&z.name).map_or(&[][..], Vec::as_slice),
            &spec.failover,
            now_ms,
        );
        let before = prev.map_or(Health::Unknown, |s| s.health);
        // Unknown → healthy is a zone first seen, not news.
        let news = before != state.health
            && state.health != Health::Unknown
            && !(before == Health::Unknown && state.health == Health::Healthy);
        if news {
            let (kind, severity) = match state.health {
                Health::Unhealthy => ("zone-unhealthy", Severity::Warning),
                _ => ("zone-recovered", Severity::Info),
            };
            events.push(event(
                kind,
                severity,
                format!("zone {}: {}", z.name, verdict.reason),
                json!({
                    "zone": z.name,
                    "failureRatePercent": verdict.failure_rate_percent,
                    "samples": verdict.samples,
                    "checkers": verdict.checkers,
                    "decidedBy": verdict.decided_by,
                    "probes": verdict.probes,
                    "traffic": verdict.traffic,
                }),
            ));
        }
        if prev != Some(&state) {
            states.insert(z.name.clone(), state.clone());
        }
        health.insert(z.name.clone(), state.health);
        verdicts.insert(z.name.clone(), verdict);
    }

    let decision = decide_with(
        spec,
        &health,
        input.override_.as_ref(),
        &input.drained,
        input.current.as_ref(),
        now_ms,
    );
    let cause = decision.cause.as_str();
    let spec_weights: BTreeMap<String, u32> = spec
        .zones
        .iter()
        .map(|z| (z.name.clone(), z.weight))
        .collect();
    let (was_weights, was_cause) = match &input.current {
        Some(c) => (c.weights.clone(), c.cause.as_str()),
        None => (spec_weights, "spec"),
    };
    let weights_changed = decision.weights != was_weights || cause != was_cause;
    if weights_changed {
        events.push(event(
            "weights-changed",
            if decision.critical.is_some() {
                Severity::Critical
            } else {
                Severity::Info
            },
            format!(
                "weights {} -> {} ({cause})",
                fmt_weights(&was_weights),
                fmt_weights(&decision.weights)
            ),
            json!({"from": was_weights, "to": decision.weights, "cause": cause,
                   "reasons": decision.reasons, "guardRails": decision.guard_rails}),
        ));
        if let Some(critical) = &decision.critical {
            events.push(event(
                "failover-critical",
                Severity::Critical,
                critical.clone(),
                json!({}),
            ));
        }
        for rail in &decision.guard_rails {
            events.push(event(
                "guard-rail",
                Severity::Warning,
                rail.message.clone(),
                json!({"rule": rail.rule}),
            ));
        }
    }
    Some(Update {
        policy: name.clone(),
        resource_version: p.metadata.resource_version.clone().unwrap_or_default(),
        states,
        decision,
        weights_changed,
        events,
        verdicts,
        unhealthy: (unhealthy != input.unhealthy).then_some(unhealthy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::EndpointTally;

    fn policy() -> Policy {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "resourceVersion": "1"},
            "spec": {"host": "p.example.com", "port": 80, "zones": [
                {"name": "a", "weight": 50, "endpoints": [
                    {"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80},
                    {"address": "10.0.0.3", "port": 80}]},
                {"name": "b", "weight": 50, "endpoints": [{"address": "10.0.1.1", "port": 80}]}]}
        }))
        .unwrap()
    }

    /// Zone a seen by one checker: 10 probes per endpoint, `bad` failing all.
    fn probes(bad: &[&str]) -> BTreeMap<String, Vec<ZoneTally>> {
        let endpoints: BTreeMap<String, EndpointTally> =
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
                .iter()
                .map(|e| {
                    let failing = bad.contains(e);
                    let t = EndpointTally {
                        samples: 10,
                        failures: if failing { 10 } else { 0 },
                        failing_run: if failing { 10 } else { 0 },
                    };
                    (e.to_string(), t)
                })
                .collect();
        let tally = ZoneTally {
            checker: "c".into(),
            samples: 30,
            failures: endpoints.values().map(|e| e.failures).sum(),
            unanswered_rounds: 0,
            endpoints,
        };
        [("a".to_owned(), vec![tally])].into()
    }

    #[test]
    fn one_failing_endpoint_is_marked_and_its_zone_keeps_its_weight() {
        let p = policy();
        let input = Input {
            policy: Some(&p),
            probes: probes(&["10.0.0.2:80"]),
            ..Input::default()
        };
        let u = step_policy(&input, 100_000).unwrap();
        let want: Unhealthy = [("a".to_owned(), ["10.0.0.2:80".to_owned()].into())].into();
        assert_eq!(u.unhealthy, Some(want.clone()));
        assert_eq!(u.decision.weights["a"], 50, "zone a stays in: {u:?}");
        assert_eq!(
            u.verdicts["a"].failure_rate_percent, 0.0,
            "judged by the endpoints that serve"
        );
        assert!(u
            .events
            .iter()
            .any(|e| e.kind == "endpoint-unhealthy" && e.message.contains("10.0.0.2:80")));
        assert!(
            !u.events.iter().any(|e| e.kind == "zone-unhealthy"),
            "{:?}",
            u.events
        );

        // Still failing and already marked: nothing new to store for it.
        let marked = Input {
            unhealthy: want.clone(),
            ..input.clone()
        };
        let u = step_policy(&marked, 100_500).unwrap();
        assert_eq!(u.unhealthy, None);
        // Recovered (its failures aged out): unmarked, with an event.
        let recovered = Input {
            probes: probes(&[]),
            ..marked
        };
        let u = step_policy(&recovered, 101_000).unwrap();
        assert_eq!(u.unhealthy, Some(Unhealthy::new()));
        assert!(u.events.iter().any(|e| e.kind == "endpoint-recovered"));
    }

    #[test]
    fn a_zone_whose_every_endpoint_fails_fails_over_with_none_marked() {
        let p = policy();
        let input = Input {
            policy: Some(&p),
            probes: probes(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
            ..Input::default()
        };
        let u = step_policy(&input, 100_000).unwrap();
        assert_eq!(u.unhealthy, None);
        assert_eq!(u.decision.weights["a"], 0, "{u:?}");
    }
}

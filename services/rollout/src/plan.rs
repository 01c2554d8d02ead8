//! Where a rollout goes: the zones in their order and the steps, as
//! positions, and the canary's weight in each zone at each position.

use std::collections::{BTreeMap, BTreeSet};

use meridian_policy::{Policy, Rollout};

/// One route's rollout as its policy declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub route: String,
    /// The canary's version: the one being delivered.
    pub version: String,
    pub rollout: Rollout,
    /// Every zone of the policy, in the policy's order.
    pub zones: Vec<String>,
    /// The zones with an endpoint of `version`: the only ones that can
    /// take canary traffic.
    pub canary_zones: BTreeSet<String>,
}

/// The rollouts a policy declares, one per route with `canary.rollout`.
pub fn targets(policy: &Policy) -> Vec<Target> {
    let spec = &policy.spec;
    spec.routes
        .iter()
        .filter_map(|route| {
            let canary = route.canary.as_ref()?;
            let rollout = canary.rollout.as_ref()?;
            Some(Target {
                route: route.name.clone(),
                version: canary.version.clone(),
                rollout: rollout.clone(),
                zones: spec.zones.iter().map(|z| z.name.clone()).collect(),
                canary_zones: spec
                    .zones
                    .iter()
                    .filter(|z| z.endpoints.iter().any(|e| e.version == canary.version))
                    .map(|z| z.name.clone())
                    .collect(),
            })
        })
        .collect()
}

/// A place in a rollout: a group of zones (`zone`) at one of the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub zone: usize,
    pub step: usize,
}

/// The positions of a rollout, in order: each group of zones through
/// every step, one group after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<u32>,
    /// With a zone order, one zone per group; without, one group of every
    /// zone that runs the canary's version.
    pub groups: Vec<Vec<String>>,
}

impl Plan {
    /// The plan of `steps` and `zone_order` over the target's zones.
    ///
    /// Total for specs validation would refuse: zones of the order that do
    /// not run the version are left out, and zones that run it but are not
    /// in the order come last, one at a time, so none is ever skipped.
    pub fn new(steps: &[u32], zone_order: Option<&[String]>, target: &Target) -> Plan {
        let groups = match zone_order {
            None if target.canary_zones.is_empty() => Vec::new(),
            None => vec![target
                .zones
                .iter()
                .filter(|z| target.canary_zones.contains(*z))
                .cloned()
                .collect()],
            Some(order) => {
                let mut seen = BTreeSet::new();
                let listed = order.iter().filter(|z| target.canary_zones.contains(*z));
                let rest = target
                    .zones
                    .iter()
                    .filter(|z| target.canary_zones.contains(*z) && !order.contains(z));
                listed
                    .chain(rest)
                    .filter(|z| seen.insert(z.as_str()))
                    .map(|z| vec![z.clone()])
                    .collect()
            }
        };
        Plan {
            steps: steps.to_vec(),
            groups,
        }
    }

    /// The plan the target's spec declares.
    pub fn of(target: &Target) -> Plan {
        Plan::new(
            &target.rollout.steps,
            target.rollout.zone_order.as_deref(),
            target,
        )
    }

    /// Whether the plan has any position at all.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() || self.groups.is_empty()
    }

    /// Every position, in order.
    pub fn positions(&self) -> impl Iterator<Item = Position> + '_ {
        (0..self.groups.len())
            .flat_map(move |zone| (0..self.steps.len()).map(move |step| Position { zone, step }))
    }

    /// The position after `at`, or `None` after the last.
    pub fn next(&self, at: Position) -> Option<Position> {
        if at.step + 1 < self.steps.len() {
            Some(Position {
                zone: at.zone,
                step: at.step + 1,
            })
        } else if at.zone + 1 < self.groups.len() {
            Some(Position {
                zone: at.zone + 1,
                step: 0,
            })
        } else {
            None
        }
    }

    /// The last position (where the canary has 100% everywhere).
    pub fn last(&self) -> Position {
        Position {
            zone: self.groups.len().saturating_sub(1),
            step: self.steps.len().saturating_sub(1),
        }
    }

    /// The canary's weight in each of `zones` at `at`: 100 in the groups
    /// before, the step's weight in its group, 0 after and in zones that
    /// do not run the version. A position past the plan counts as its end.
    pub fn weights(&self, zones: &[String], at: Position) -> BTreeMap<String, u32> {
        let step = self
            .steps
            .get(at.step)
            .or(self.steps.last())
            .copied()
            .unwrap_or(0);
        zones
            .iter()
            .map(|z| {
                let group = self.groups.iter().position(|g| g.contains(z));
                let w = match group {
                    Some(g) if g < at.zone => 100,
                    Some(g) if g == at.zone => step,
                    _ => 0,
                };
                (z.clone(), w)
            })
            .collect()
    }

    /// The canary's weight in every zone of the target once complete.
    pub fn complete_weights(&self, zones: &[String]) -> BTreeMap<String, u32> {
        zones
            .iter()
            .map(|z| {
                let w = if self.groups.iter().any(|g| g.contains(z)) {
                    100
                } else {
                    0
                };
                (z.clone(), w)
            })
            .collect()
    }

    /// Where to go on under this plan from `weights` reached under another
    /// plan: the furthest position that gives no zone more canary than it
    /// has now (nothing that was not analysed), or the first position.
    pub fn anchor(&self, zones: &[String], weights: &BTreeMap<String, u32>) -> Position {
        self.positions()
            .filter(|&p| {
                self.weights(zones, p)
                    .iter()
                    .all(|(z, w)| *w <= weights.get(z).copied().unwrap_or(0))
            })
            .last()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> Target {
        let policy: Policy = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"host": "p.example.com", "port": 80, "zones": [
                {"name": "a", "weight": 40, "endpoints": [
                    {"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80, "version": "v2"}]},
                {"name": "b", "weight": 40, "endpoints": [
                    {"address": "10.0.1.1", "port": 80}, {"address": "10.0.1.2", "port": 80, "version": "v2"}]},
                {"name": "c", "weight": 20, "endpoints": [{"address": "10.0.2.1", "port": 80}]}],
              "routes": [
                {"name": "plain"},
                {"name": "hand", "canary": {"version": "v2", "weight": 10}},
                {"name": "r", "canary": {"version": "v2", "weight": 0, "rollout": {
                    "steps": [10, 50, 100]}}}]}
        }))
        .unwrap();
        let mut t = targets(&policy);
        assert_eq!(t.len(), 1, "only the route with a rollout");
        t.remove(0)
    }

    type Weights = &'static [(&'static str, u32)];

    fn w(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(z, n)| (z.to_string(), *n)).collect()
    }

    #[test]
    fn a_target_knows_the_zones_that_run_the_version() {
        let t = target();
        assert_eq!(t.route, "r");
        assert_eq!(t.version, "v2");
        assert_eq!(t.zones, ["a", "b", "c"]);
        assert_eq!(t.canary_zones, ["a".to_owned(), "b".to_owned()].into());
    }

    #[test]
    fn positions_and_weights() {
        let at = |zone, step| Position { zone, step };
        // (zone order, position, weights there)
        let cases: &[(Option<&[&str]>, Position, Weights)] = &[
            // Together: every zone with v2 at the step; c never.
            (None, at(0, 0), &[("a", 10), ("b", 10), ("c", 0)]),
            (None, at(0, 2), &[("a", 100), ("b", 100), ("c", 0)]),
            // One after the other, in the declared order.
            (
                Some(&["b", "a"]),
                at(0, 1),
                &[("a", 0), ("b", 50), ("c", 0)],
            ),
            (
                Some(&["b", "a"]),
                at(1, 0),
                &[("a", 10), ("b", 100), ("c", 0)],
            ),
            (
                Some(&["b", "a"]),
                at(1, 2),
                &[("a", 100), ("b", 100), ("c", 0)],
            ),
            // Past the end counts as the end.
            (None, at(0, 9), &[("a", 100), ("b", 100), ("c", 0)]),
        ];
        for (order, pos, want) in cases {
            let order: Option<Vec<String>> =
                order.map(|o| o.iter().map(|z| z.to_string()).collect());
            let t = target();
            let plan = Plan::new(&t.rollout.steps, order.as_deref(), &t);
            assert_eq!(plan.weights(&t.zones, *pos), w(want), "{order:?} {pos:?}");
        }
    }

    #[test]
    fn next_walks_every_step_of_every_group_once() {
        let t = target();
        let order = ["b".to_owned(), "a".to_owned()];
        let plan = Plan::new(&t.rollout.steps, Some(&order), &t);
        let mut walked = vec![Position::default()];
        while let Some(p) = plan.next(*walked.last().unwrap()) {
            walked.push(p);
        }
        assert_eq!(walked, plan.positions().collect::<Vec<_>>());
        assert_eq!(walked.len(), 6);
        assert_eq!(*walked.last().unwrap(), plan.last());
        // Together: one group, three positions.
        assert_eq!(Plan::of(&t).positions().count(), 3);
    }

    #[test]
    fn plans_of_specs_validation_refuses_skip_no_zone() {
        let t = target();
        // c does not run v2 and x is not a zone: left out; b is missing: last.
        let order = [
            "c".to_owned(),
            "a".to_owned(),
            "x".to_owned(),
            "a".to_owned(),
        ];
        let plan = Plan::new(&t.rollout.steps, Some(&order), &t);
        assert_eq!(plan.groups, [vec!["a".to_owned()], vec!["b".to_owned()]]);
        let mut t = target();
        t.canary_zones.clear();
        assert!(Plan::of(&t).is_empty());
    }

    #[test]
    fn anchor_never_gives_more_canary_than_analysed() {
        let t = target();
        let order = ["a".to_owned(), "b".to_owned()];
        let ordered = Plan::new(&[10, 50, 100], Some(&order), &t);
        // (new steps, weights reached, position under the ordered plan)
        let cases: &[(&[u32], Weights, Position)] = &[
            // 25 is between 10 and 50: back to 10, not on to 50.
            (&[10, 50, 100], &[("a", 25)], Position { zone: 0, step: 0 }),
            (&[10, 50, 100], &[("a", 50)], Position { zone: 0, step: 1 }),
            (
                &[10, 50, 100],
                &[("a", 100), ("b", 10)],
                Position { zone: 1, step: 0 },
            ),
            // Below the first step: the first step.
            (&[10, 50, 100], &[("a", 5)], Position { zone: 0, step: 0 }),
            (&[5, 100], &[("a", 50)], Position { zone: 0, step: 0 }),
        ];
        for (steps, reached, want) in cases {
            let plan = Plan {
                steps: steps.to_vec(),
                ..ordered.clone()
            };
            assert_eq!(
                plan.anchor(&t.zones, &w(reached)),
                *want,
                "{steps:?} {reached:?}"
            );
        }
    }
}

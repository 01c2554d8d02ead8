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
    /// Traffic is returning to a recovered or undrained zone in steps
    /// (`failover.failback`).
    Failback,
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
            Cause::Failback => "failback",
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
    /// Guard rails that shaped these weights (capacity, ramped failback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guard_rails: Vec<GuardRail>,
}

/// A guard rail that held traffic back from where failover alone would
/// have sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuardRail {
    /// `capacityPercent`, `failback` or `minHealthyZones`.
    pub rule: String,
    pub message: String,
}

/// The effective weights stored now, as the next decision starts from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Current {
    pub weights: BTreeMap<String, u32>,
    /// [`Cause::as_str`] of the stored decision.
    pub cause: String,
    /// When the stored weights last changed.
    pub decided_at_ms: i64,
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
    for z in &spec.zones {
        let w = o.weights.get(&z.name).copied().unwrap_or(0);
        if w <= 100 && w > z.capacity() {
            errors.push(format!(
                "weights.{}: {w} is over the zone's capacityPercent {}",
                z.name,
                z.capacity()
            ));
        }
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
        guard_rails: Vec::new(),
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

/// The effective weights of a policy with every guard rail applied: the
/// target of [`decide`], then each zone's `capacityPercent`, then the
/// ramped failback from the `current` weights. Failover itself is never
/// held back: a zone that turns unhealthy loses its traffic at once.
///
/// Capacity: a zone over its capacity keeps only that much; the rest goes
/// to zones that can take traffic (healthy or unknown, not drained) with
/// room, by spec weight (in `priority` mode the best tier with room
/// first). What they cannot hold stays on the unhealthy zones, in
/// proportion to their spec weights, rather than overloading a healthy one;
/// a [`GuardRail`] says so.
///
/// Failback: when the current weights come from a failover, a drain or a
/// failback under way, a zone whose target is above its current weight
/// gains at most `failback.stepPercent` of its target per
/// `failback.stepSeconds` (one step at once). The healthy zones that took
/// its traffic keep the difference meanwhile. An override is never ramped.
pub fn decide_with(
    spec: &Spec,
    health: &BTreeMap<String, Health>,
    overrides: Option<&Override>,
    drained: &BTreeSet<String>,
    current: Option<&Current>,
    now_ms: i64,
) -> Decision {
    let mut d = decide(spec, health, overrides, drained, now_ms);
    let zones = &spec.zones;
    if zones.is_empty() {
        return d;
    }
    let target: Vec<u32> = zones.iter().map(|z| d.weights[&z.name]).collect();
    let unhealthy: Vec<bool> = zones
        .iter()
        .map(|z| health.get(&z.name) == Some(&Health::Unhealthy))
        .collect();
    let is_drained: Vec<bool> = zones.iter().map(|z| drained.contains(&z.name)).collect();
    let able: Vec<bool> = (0..zones.len())
        .map(|i| !unhealthy[i] && !is_drained[i])
        .collect();
    let mut w = target.clone();
    if let Some(rail) = cap(spec, &mut w, &able, &unhealthy, &is_drained) {
        d.guard_rails.push(rail);
    }
    if d.cause != Cause::Override {
        if let Some((ramped, rail, why)) = ramp(spec, &w, current, &able, now_ms) {
            w = ramped;
            d.cause = Cause::Failback;
            d.guard_rails.push(rail);
            for (zone, reason) in why {
                d.reasons.insert(zone, reason);
            }
            if let Some(rail) = cap(spec, &mut w, &able, &unhealthy, &is_drained) {
                d.guard_rails.push(rail);
            }
        }
    }
    if w != target {
        for (i, z) in zones.iter().enumerate() {
            if w[i] != target[i] && !d.reasons.contains_key(&z.name) {
                d.reasons
                    .insert(z.name.clone(), format!("weight {} → {}", z.weight, w[i]));
            } else if w[i] != target[i] && w[i] > 0 && unhealthy[i] {
                d.reasons.insert(
                    z.name.clone(),
                    format!(
                        "unhealthy, but keeps {}%: the healthy zones' capacityPercent cannot hold it",
                        w[i]
                    ),
                );
            }
        }
    }
    d.weights = zones.iter().map(|z| z.name.clone()).zip(w).collect();
    d
}

/// Adds up to `excess` to the zones `pick` chooses that have room under
/// `caps`, by spec weight (evenly among zero weights), until it is all
/// placed or no chosen zone has room; returns what is left.
fn fill(
    spec: &Spec,
    mut excess: u32,
    w: &mut [u32],
    caps: &[u32],
    pick: impl Fn(usize) -> bool,
) -> u32 {
    loop {
        let chosen: Vec<usize> = (0..w.len())
            .filter(|&i| pick(i) && w[i] < caps[i])
            .collect();
        if chosen.is_empty() || excess == 0 {
            return excess;
        }
        let by: Vec<u32> = chosen.iter().map(|&i| spec.zones[i].weight).collect();
        let mut given = 0;
        for (&i, share) in chosen.iter().zip(apportion(excess, &by)) {
            let add = share.min(caps[i] - w[i]);
            w[i] += add;
            given += add;
        }
        // Every pass places at least one unit: some chosen zone got a share
        // of at least 1 and has room for at least 1.
        excess -= given;
        if given == 0 {
            return excess;
        }
    }
}

/// Caps every zone at its `capacityPercent`; see [`decide_with`].
fn cap(
    spec: &Spec,
    w: &mut [u32],
    able: &[bool],
    unhealthy: &[bool],
    drained: &[bool],
) -> Option<GuardRail> {
    let zones = &spec.zones;
    let caps: Vec<u32> = zones.iter().map(|z| z.capacity().min(100)).collect();
    let mut excess = 0;
    let mut over = Vec::new();
    for i in 0..w.len() {
        if w[i] > caps[i] {
            excess += w[i] - caps[i];
            w[i] = caps[i];
            over.push(zones[i].name.as_str());
        }
    }
    if excess == 0 {
        return None;
    }
    let moved = excess;
    let tiers: Vec<Option<u32>> = if spec.failover.mode == FailoverMode::Priority {
        let set: BTreeSet<u32> = (0..w.len())
            .filter(|&i| able[i])
            .map(|i| zones[i].priority)
            .collect();
        set.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    for tier in tiers {
        excess = fill(spec, excess, w, &caps, |i| {
            able[i] && tier.is_none_or(|t| zones[i].priority == t)
        });
    }
    let mut kept_on: Vec<&str> = Vec::new();
    let degraded = excess;
    if excess > 0 {
        let before: Vec<u32> = w.to_vec();
        excess = fill(spec, excess, w, &caps, |i| unhealthy[i] && !drained[i]);
        excess = fill(spec, excess, w, &caps, |i| drained[i]);
        kept_on = (0..w.len())
            .filter(|&i| w[i] > before[i])
            .map(|i| zones[i].name.as_str())
            .collect();
    }
    if excess > 0 {
        // Capacities summing under 100 fail validation; should a stored
        // policy have them anyway, traffic still goes somewhere.
        let i = (0..w.len()).max_by_key(|&i| (w[i], std::cmp::Reverse(i)))?;
        w[i] += excess;
    }
    let message = if degraded > 0 {
        format!(
            "the healthy zones' capacityPercent cannot hold all traffic: {}% stays on degraded zone{} {} in proportion",
            degraded,
            if kept_on.len() == 1 { "" } else { "s" },
            kept_on.join(", ")
        )
    } else {
        format!(
            "{} over capacityPercent: {moved}% spread over zones with room",
            over.join(", ")
        )
    };
    Some(GuardRail {
        rule: "capacityPercent".to_owned(),
        message,
    })
}

/// Weights held back by a ramp, the rail saying so, and zone → reason.
type Ramped = (Vec<u32>, GuardRail, Vec<(String, String)>);

/// The ramped failback; `None` when nothing is held back. See [`decide_with`].
fn ramp(
    spec: &Spec,
    target: &[u32],
    current: Option<&Current>,
    able: &[bool],
    now_ms: i64,
) -> Option<Ramped> {
    let current = current?;
    if !matches!(current.cause.as_str(), "failover" | "drain" | "failback") {
        return None;
    }
    let zones = &spec.zones;
    // A changed zone set has no history to ramp from.
    if current.weights.len() != zones.len() {
        return None;
    }
    let prev: Vec<u32> = zones
        .iter()
        .map(|z| current.weights.get(&z.name).copied())
        .collect::<Option<_>>()?;
    let fb = spec.failover.failback();
    if fb.step_percent >= 100 {
        return None;
    }
    // The first step is taken at once; the next ones stepSeconds apart.
    let due = current.cause != "failback"
        || now_ms - current.decided_at_ms >= i64::from(fb.step_seconds) * 1000;
    let mut w = target.to_vec();
    let mut held = 0;
    let mut returning = Vec::new();
    for i in 0..w.len() {
        if target[i] > prev[i] {
            let step = (target[i] * fb.step_percent).div_ceil(100).max(1);
            let allowed = if due { prev[i] + step } else { prev[i] };
            w[i] = target[i].min(allowed);
            held += target[i] - w[i];
            returning.push(i);
        }
    }
    if held == 0 {
        return None;
    }
    // The healthy zones giving traffic back keep it meanwhile; an unhealthy
    // zone never does (failover is immediate).
    let donors: Vec<usize> = (0..w.len())
        .filter(|&i| target[i] < prev[i] && able[i])
        .collect();
    let room: Vec<u32> = donors.iter().map(|&i| prev[i] - target[i]).collect();
    let keep = held.min(room.iter().sum());
    if keep == 0 {
        return None;
    }
    for (&i, share) in donors.iter().zip(apportion(keep, &room)) {
        w[i] += share;
    }
    let mut rest = held - keep;
    for &i in &returning {
        let add = rest.min(target[i] - w[i]);
        w[i] += add;
        rest -= add;
    }
    let names: Vec<&str> = returning
        .iter()
        .filter(|&&i| w[i] < target[i])
        .map(|&i| zones[i].name.as_str())
        .collect();
    let why = returning
        .iter()
        .filter(|&&i| w[i] < target[i])
        .map(|&i| {
            (
                zones[i].name.clone(),
                format!(
                    "returning: {} of {}% ({}% of its share every {} s)",
                    w[i], target[i], fb.step_percent, fb.step_seconds
                ),
            )
        })
        .collect();
    let rail = GuardRail {
        rule: "failback".to_owned(),
        message: format!(
            "traffic returns to {} in steps of {}% every {} s",
            names.join(", "),
            fb.step_percent,
            fb.step_seconds
        ),
    };
    Some((w, rail, why))
}

/// Refuses a drain or an override that would leave fewer zones serving
/// than `failover.minHealthyZones`: a zone serves when it gets traffic and
/// is not unhealthy. `drained` and `overrides` are the state after the
/// change; `now_ms` decides whether the override is in force.
pub fn check_min_healthy(
    spec: &Spec,
    health: &BTreeMap<String, Health>,
    overrides: Option<&Override>,
    drained: &BTreeSet<String>,
    now_ms: i64,
) -> Result<(), GuardRail> {
    let d = decide_with(spec, health, overrides, drained, None, now_ms);
    let serving: Vec<&str> = spec
        .zones
        .iter()
        .filter(|z| {
            d.weights.get(&z.name).copied().unwrap_or(0) > 0
                && health.get(&z.name) != Some(&Health::Unhealthy)
        })
        .map(|z| z.name.as_str())
        .collect();
    let min = spec.failover.min_healthy();
    if (serving.len() as u64) < u64::from(min) {
        return Err(GuardRail {
            rule: "minHealthyZones".to_owned(),
            message: format!(
                "failover.minHealthyZones is {min}, and only {} zone{} would serve ({}); force it with a reason to go ahead",
                serving.len(),
                if serving.len() == 1 { "" } else { "s" },
                if serving.is_empty() { "none".to_owned() } else { serving.join(", ") }
            ),
        });
    }
    Ok(())
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
                    capacity_percent: None,
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
            outlier_detection: None,
            circuit_breakers: None,
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

    fn with_caps(mut s: Spec, caps: &[Option<u32>]) -> Spec {
        for (z, &c) in s.zones.iter_mut().zip(caps) {
            z.capacity_percent = c;
        }
        s
    }

    #[test]
    fn capacity_table() {
        struct Case {
            name: &'static str,
            zones: &'static [(&'static str, u32)],
            caps: &'static [Option<u32>],
            unhealthy: &'static [&'static str],
            want: &'static [u32],
            rail: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "no zone near its capacity: plain failover",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                caps: &[None, Some(60), Some(60)],
                unhealthy: &["a"],
                want: &[0, 60, 40],
                rail: None,
            },
            Case {
                name: "b can take 50: the rest goes to c",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                caps: &[None, Some(50), None],
                unhealthy: &["a"],
                want: &[0, 50, 50],
                rail: Some("spread"),
            },
            Case {
                name: "healthy zones hold only 80: 20 stays on the failed zone",
                zones: &[("a", 50), ("b", 30), ("c", 20)],
                caps: &[None, Some(40), Some(40)],
                unhealthy: &["a"],
                want: &[20, 40, 40],
                rail: Some("stays on degraded zone a"),
            },
            Case {
                name: "two failed zones keep what is left in proportion to spec",
                zones: &[("a", 40), ("b", 20), ("c", 40)],
                caps: &[None, None, Some(60)],
                unhealthy: &["a", "b"],
                want: &[27, 13, 60],
                rail: Some("degraded zones a, b"),
            },
            Case {
                name: "all unhealthy fails open, within capacity",
                zones: &[("a", 50), ("b", 50)],
                caps: &[Some(60), Some(60)],
                unhealthy: &["a", "b"],
                want: &[50, 50],
                rail: None,
            },
        ];
        for case in cases {
            let s = with_caps(weighted(case.zones), case.caps);
            let d = decide_with(&s, &health(case.unhealthy), None, &set(&[]), None, 0);
            assert_eq!(weights_of(&s, &d), case.want, "{}: {d:?}", case.name);
            match case.rail {
                None => assert!(d.guard_rails.is_empty(), "{}: {d:?}", case.name),
                Some(text) => assert!(
                    d.guard_rails
                        .iter()
                        .any(|r| r.rule == "capacityPercent" && r.message.contains(text)),
                    "{}: {:?}",
                    case.name,
                    d.guard_rails
                ),
            }
        }
        // Priority mode: the standby tier takes what the first cannot hold.
        let s = with_caps(
            spec(
                FailoverMode::Priority,
                &[("p0", 100, 0), ("p1", 0, 1), ("p2", 0, 2)],
            ),
            &[Some(70), Some(20), None],
        );
        let d = decide_with(&s, &health(&[]), None, &set(&[]), None, 0);
        assert_eq!(weights_of(&s, &d), [70, 20, 10]);
    }

    fn current(w: &[(&str, u32)], cause: &str, at: i64) -> Current {
        Current {
            weights: w.iter().map(|&(z, n)| (z.to_owned(), n)).collect(),
            cause: cause.to_owned(),
            decided_at_ms: at,
        }
    }

    #[test]
    fn failback_ramps_and_failover_does_not() {
        let s = weighted(&[("a", 50), ("b", 30), ("c", 20)]);
        let healthy = health(&[]);
        let none = set(&[]);
        // a recovered after a failover (0/60/40): 25% of its 50 at once,
        // however recent the failover...
        let c = current(&[("a", 0), ("b", 60), ("c", 40)], "failover", 99_999);
        let d = decide_with(&s, &healthy, None, &none, Some(&c), 100_000);
        assert_eq!(weights_of(&s, &d), [13, 52, 35]);
        assert_eq!(d.cause, Cause::Failback);
        assert!(d.reasons["a"].starts_with("returning: 13 of 50"), "{d:?}");
        // ...nothing more before stepSeconds (5 s)...
        let c = current(&[("a", 13), ("b", 52), ("c", 35)], "failback", 100_000);
        let d = decide_with(&s, &healthy, None, &none, Some(&c), 104_999);
        assert_eq!(weights_of(&s, &d), [13, 52, 35]);
        // ...then a step every 5 s until the spec weights.
        let mut c = c;
        let mut now = 105_000;
        let mut seen = vec![13];
        loop {
            let d = decide_with(&s, &healthy, None, &none, Some(&c), now);
            let w = weights_of(&s, &d);
            assert_eq!(w.iter().sum::<u32>(), 100);
            seen.push(w[0]);
            if d.cause == Cause::Spec {
                break;
            }
            c = current(&[("a", w[0]), ("b", w[1]), ("c", w[2])], "failback", now);
            now += 5_000;
        }
        assert_eq!(seen, [13, 26, 39, 50]);
        // Failover during a ramp is immediate, for the returning zone too.
        let c = current(&[("a", 26), ("b", 44), ("c", 30)], "failback", 0);
        let d = decide_with(&s, &health(&["a"]), None, &none, Some(&c), 1);
        assert_eq!(weights_of(&s, &d), [0, 60, 40]);
        assert_eq!(d.cause, Cause::Failover);
        let d = decide_with(&s, &health(&["b"]), None, &none, Some(&c), 1);
        assert_eq!(weights_of(&s, &d)[1], 0, "{d:?}");
        // An undrained zone ramps too; an override never does.
        let c = current(&[("a", 0), ("b", 60), ("c", 40)], "drain", 0);
        let d = decide_with(&s, &healthy, None, &none, Some(&c), 100_000);
        assert_eq!(d.cause, Cause::Failback);
        let o = ov(&[("a", 100)], None);
        let d = decide_with(&s, &healthy, Some(&o), &none, Some(&c), 100_000);
        assert_eq!(weights_of(&s, &d), [100, 0, 0]);
        // After a spec write or an override, nothing ramps.
        let c = current(&[("a", 0), ("b", 60), ("c", 40)], "override", 0);
        let d = decide_with(&s, &healthy, None, &none, Some(&c), 100_000);
        assert_eq!(weights_of(&s, &d), [50, 30, 20]);
        // stepPercent 100 turns the ramp off.
        let mut s100 = s.clone();
        s100.failover.failback = Some(meridian_policy::Failback {
            step_percent: 100,
            step_seconds: 5,
        });
        let c = current(&[("a", 0), ("b", 60), ("c", 40)], "failover", 0);
        let d = decide_with(&s100, &healthy, None, &none, Some(&c), 100_000);
        assert_eq!(weights_of(&s100, &d), [50, 30, 20]);
    }

    #[test]
    fn min_healthy_zones_refuses_drains_and_overrides() {
        let mut s = weighted(&[("a", 50), ("b", 30), ("c", 20)]);
        s.failover.min_healthy_zones = Some(2);
        let ok = check_min_healthy(&s, &health(&[]), None, &set(&["a"]), 0);
        assert_eq!(ok, Ok(()));
        let err = check_min_healthy(&s, &health(&["b"]), None, &set(&["a"]), 0).unwrap_err();
        assert_eq!(err.rule, "minHealthyZones");
        assert!(
            err.message.contains("only 1 zone would serve (c)"),
            "{}",
            err.message
        );
        let o = ov(&[("a", 100)], None);
        assert!(check_min_healthy(&s, &health(&[]), Some(&o), &set(&[]), 0).is_err());
        // An expired override does not count.
        let o = ov(&[("a", 100)], Some(5));
        assert!(check_min_healthy(&s, &health(&[]), Some(&o), &set(&[]), 10).is_ok());
    }

    /// splitmix64, so every generated case is reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u32) -> u32 {
            (self.next() % u64::from(n.max(1))) as u32
        }
    }

    /// A zone with capacityPercent 60 never gets more than 60, whatever the
    /// mode, health, drains, override, or failback under way; and the
    /// weights always sum to 100 over exactly the spec's zones.
    #[test]
    fn capacity_holds_in_generated_cases() {
        let names = ["z0", "z1", "z2", "z3", "z4"];
        let mut checked = 0;
        for seed in 0..20_000u64 {
            let mut rng = Rng(seed);
            let n = 2 + rng.below(4) as usize;
            let mode = [
                FailoverMode::Weighted,
                FailoverMode::Priority,
                FailoverMode::Manual,
            ][rng.below(3) as usize];
            let capped = rng.below(n as u32) as usize;
            // Random weights summing to 100, the capped zone's within 60
            // (validation requires it outside priority mode).
            let mut left = 100;
            let mut weights = vec![0; n];
            for (i, w) in weights.iter_mut().enumerate().take(n - 1) {
                let most = if i == capped { left.min(60) } else { left };
                *w = rng.below(most + 1);
                left -= *w;
            }
            weights[n - 1] = left;
            if weights[capped] > 60 {
                let extra = weights[capped] - 60;
                weights[capped] = 60;
                let other = (capped + 1) % n;
                weights[other] += extra;
            }
            let zones: Vec<(&str, u32, u32)> = (0..n)
                .map(|i| (names[i], weights[i], rng.below(3)))
                .collect();
            let mut s = spec(mode, &zones);
            for (i, z) in s.zones.iter_mut().enumerate() {
                z.capacity_percent = if i == capped {
                    Some(60)
                } else if rng.below(3) == 0 {
                    Some(40 + rng.below(61))
                } else {
                    None
                };
            }
            let cap_sum: u32 = s.zones.iter().map(|z| z.capacity()).sum();
            let fits = (0..n)
                .all(|i| mode == FailoverMode::Priority || weights[i] <= s.zones[i].capacity());
            if cap_sum < 100 || !fits {
                continue; // validation refuses such a policy
            }
            let h: BTreeMap<String, Health> = (0..n)
                .map(|i| {
                    let h = [Health::Healthy, Health::Unhealthy, Health::Unknown]
                        [rng.below(3) as usize];
                    (names[i].to_owned(), h)
                })
                .collect();
            let drained: BTreeSet<String> = (0..n)
                .filter(|_| rng.below(5) == 0)
                .map(|i| names[i].to_owned())
                .collect();
            let o = (rng.below(4) == 0).then(|| {
                let mut w = BTreeMap::new();
                let mut left = 100;
                for (i, name) in names.iter().enumerate().take(n) {
                    let room = left.min(s.zones[i].capacity());
                    let take = if i == n - 1 {
                        room
                    } else {
                        rng.below(room + 1)
                    };
                    w.insert((*name).to_owned(), take);
                    left -= take;
                }
                Override {
                    weights: w,
                    reason: "generated".to_owned(),
                    expires_at_ms: None,
                }
            });
            let cur = (rng.below(2) == 0).then(|| {
                let mut w = BTreeMap::new();
                let mut left = 100;
                for (i, name) in names.iter().enumerate().take(n) {
                    let take = if i == n - 1 {
                        left
                    } else {
                        rng.below(left.min(60) + 1)
                    };
                    w.insert((*name).to_owned(), take.min(s.zones[i].capacity()));
                    left -= take.min(s.zones[i].capacity());
                }
                if left > 0 {
                    // Put what is left where it fits.
                    for i in 0..n {
                        let z = &s.zones[i];
                        let have = w[&z.name];
                        let add = left.min(z.capacity() - have);
                        *w.get_mut(&z.name).unwrap() += add;
                        left -= add;
                    }
                }
                Current {
                    weights: w,
                    cause: ["failover", "failback", "drain", "spec"][rng.below(4) as usize]
                        .to_owned(),
                    decided_at_ms: i64::from(rng.below(20_000)),
                }
            });
            let now = 10_000 + i64::from(rng.below(20_000));
            let d = decide_with(&s, &h, o.as_ref(), &drained, cur.as_ref(), now);
            assert_eq!(d.weights.len(), n, "seed {seed}: {d:?}");
            assert_eq!(
                d.weights.values().sum::<u32>(),
                100,
                "seed {seed}: {s:?} {d:?}"
            );
            for z in &s.zones {
                assert!(
                    d.weights[&z.name] <= z.capacity(),
                    "seed {seed}: {} has {} over capacity {}: {d:?}",
                    z.name,
                    d.weights[&z.name],
                    z.capacity()
                );
            }
            checked += 1;
        }
        assert!(checked > 10_000, "only {checked} cases");
    }
}

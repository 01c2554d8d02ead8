//! One step of one route's rollout, as a pure function: the spec, the
//! stored status, the traffic measured since the step began, the
//! Prometheus answers, the zones failed over or drained, the time and an
//! operator's action in; the next status, the canary's weight per zone and
//! the events out.
//!
//! A rollout only moves from its stored status: the same input gives the
//! same output, and stepping the output again at the same time changes
//! nothing. So a leader that dies between computing and storing a step
//! leaves a successor that computes the same step again, never a second
//! one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use meridian_failover::step::{fmt_weights, Event, Severity};

use crate::analysis::{analyse, Analysis, Comparison, PrometheusResults, Traffic, Verdict};
use crate::plan::{Plan, Target};
use crate::status::{Phase, Status};

/// What an operator asks of a rollout (REST, gRPC, CLI, dashboard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Hold the current weights.
    Pause,
    /// Go on; the current step's interval starts again.
    Resume,
    /// Complete at once: 100% of the new version everywhere.
    Promote,
    /// Roll back: canary weight 0 everywhere.
    Abort,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// An action and who asked for it (as audited).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub action: Action,
    pub by: String,
}

/// What an accepted action does to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Changes,
    /// It is already so (pausing a paused rollout): nothing to do.
    AlreadyDone,
}

/// Whether `action` applies to a rollout in `status`: the REST and gRPC
/// edges answer a refusal with 409 before queueing the action, and
/// [`step`] ignores a refused action (with an event) if the rollout moved
/// meanwhile.
pub fn check(status: &Status, action: Action) -> Result<Effect, String> {
    use Action::*;
    use Phase::*;
    match (action, status.phase) {
        (Pause, Progressing) | (Resume, Paused) | (Promote | Abort, Progressing | Paused) => {
            Ok(Effect::Changes)
        }
        (Pause, Paused) | (Resume, Progressing) | (Promote, Completed) | (Abort, Aborted | Failed) => {
            Ok(Effect::AlreadyDone)
        }
        (action, phase) => Err(format!(
            "the rollout of {} on route {} is {}: it cannot {}; a new version in the spec starts another",
            status.version,
            status.route,
            phase.as_str(),
            action.as_str()
        )),
    }
}

/// Everything one step of one rollout knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub target: Target,
    /// The stored status; `None` (or one for another version) starts the
    /// rollout.
    pub status: Option<Status>,
    /// Requests and failures per zone over [`Status::window`].
    pub traffic: Traffic,
    /// The Prometheus checks' answers, when queried for this step.
    pub prometheus: Option<PrometheusResults>,
    /// Zones failed over (unhealthy) or drained now.
    pub unavailable: BTreeSet<String>,
    pub now_ms: i64,
    /// An operator's action, consumed by this step.
    pub command: Option<Command>,
}

/// What one step decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub status: Status,
    pub events: Vec<Event>,
    /// The canary's weight per zone, to serve: `status.weights`.
    pub weights: BTreeMap<String, u32>,
    /// This step completed the rollout (its last step passed, or it was
    /// promoted): the leader writes, in the same transaction as the status,
    /// the revision that makes the canary's version the route's stable one
    /// (`source = rollout`). True on that one step only, so a spec synced
    /// back from GitOps later never makes the leader write it again; if the
    /// transaction fails, the status is not stored either and the next step
    /// completes again.
    pub complete: bool,
    /// Whether `status` differs from the stored one: the leader writes
    /// only then.
    pub changed: bool,
    /// What this step measured (stored in `status.lastAnalysis` only when
    /// acted on: at the end of an interval, or on a failure).
    pub analysis: Option<Analysis>,
}

/// One step of one rollout. Total: a spec that validation would refuse
/// (no zone runs the version, no steps) pauses the rollout, saying why.
pub fn step(input: &Input) -> Output {
    let t = &input.target;
    let now = input.now_ms;
    let plan = Plan::of(t);
    let unavailable: BTreeSet<String> = input
        .unavailable
        .iter()
        .filter(|z| t.zones.contains(z))
        .cloned()
        .collect();
    let serve = |s: &Status| served(s, t, &unavailable);
    let mut events = Vec::new();

    let stored = input
        .status
        .as_ref()
        .filter(|s| s.route == t.route && s.version == t.version);
    let mut s = match stored {
        Some(s) => s.clone(),
        None => start(
            t,
            &plan,
            input.status.as_ref(),
            &unavailable,
            now,
            &mut events,
        ),
    };
    let before = (s.phase, s.position());

    if !s.phase.is_final() && (s.steps != plan.steps || s.zone_order != t.rollout.zone_order) {
        let old = Plan::new(&s.steps, s.zone_order.as_deref(), t);
        let at = plan.anchor(&t.zones, &old.weights(&t.zones, s.position()));
        s.steps = plan.steps.clone();
        s.zone_order = t.rollout.zone_order.clone();
        s.set_position(at);
        s.step_started_ms = now;
        s.inconclusive = 0;
        events.push(event(
            "rollout-replanned",
            Severity::Info,
            format!(
                "route {}: the rollout's steps or zone order changed; going on from canary {} {}, never above what was analysed",
                t.route,
                t.version,
                fmt_weights(&serve(&s))
            ),
            details(&s, &serve(&s), json!({"steps": s.steps, "zoneOrder": s.zone_order})),
        ));
    }

    if let Some(cmd) = &input.command {
        command(&mut s, t, &plan, cmd, now, &serve, &mut events);
    }

    let newly: Vec<&str> = unavailable
        .difference(&s.unavailable_zones)
        .map(String::as_str)
        .collect();
    if !newly.is_empty() && s.phase == Phase::Progressing {
        let reason = format!(
            "zone {} failed over or drained during the rollout (canary weight 0 there); resume to go on, or abort",
            newly.join(", ")
        );
        pause(&mut s, t, reason, Severity::Warning, &serve, &mut events);
    }
    s.unavailable_zones = unavailable.clone();

    // Judged on the weights served while the traffic was counted, without
    // zones failed over since: their failures are failover's business.
    let mut measured = None;
    if let Some(stored) = stored.filter(|_| matches!(s.phase, Phase::Progressing | Phase::Paused)) {
        let canary_zones: BTreeSet<String> = stored
            .weights
            .iter()
            .filter(|(z, w)| **w > 0 && !unavailable.contains(*z) && t.zones.contains(z))
            .map(|(z, _)| z.clone())
            .collect();
        let available: BTreeSet<String> = t
            .zones
            .iter()
            .filter(|z| !unavailable.contains(*z))
            .cloned()
            .collect();
        let a = analyse(
            &t.rollout.analysis,
            &canary_zones,
            &available,
            &input.traffic,
            input.prometheus.as_ref(),
            stored.window(t.rollout.step_interval_ms, now),
        );
        // Point estimates are acted on at the end of an interval; a
        // failure beyond doubt at once, even when paused.
        let act = s.phase == Phase::Progressing && s.interval_over(t.rollout.step_interval_ms, now);
        match a.verdict {
            Verdict::Fail if act || a.decisive => fail(&mut s, t, a.clone(), &serve, &mut events),
            Verdict::Pass if act => advance(&mut s, t, &plan, a.clone(), now, &serve, &mut events),
            Verdict::Inconclusive if act => {
                inconclusive(&mut s, t, a.clone(), &unavailable, now, &serve, &mut events)
            }
            _ => {}
        }
        measured = Some(a);
    }

    let weights = serve(&s);
    let moved = stored.is_none() || (s.phase, s.position()) != before;
    if !moved && weights != s.weights {
        let zones_where = |f: &dyn Fn(u32, u32) -> bool| {
            let changed: Vec<&str> = weights
                .iter()
                .filter(|(z, new)| f(s.weights.get(*z).copied().unwrap_or(0), **new))
                .map(|(z, _)| z.as_str())
                .collect();
            changed.join(", ")
        };
        let out = zones_where(&|old, new| new < old);
        let back = zones_where(&|old, new| new > old);
        let why = match (out.is_empty(), back.is_empty()) {
            (false, true) => format!("failed over or drained: {out}"),
            (true, false) => format!("back from failover or drain: {back}"),
            (false, false) => format!("failed over or drained: {out}; back: {back}"),
            // The same numbers, different zones: the policy's zones changed.
            (true, true) => "the policy's zones changed".to_owned(),
        };
        events.push(event(
            "rollout-weights",
            Severity::Info,
            format!(
                "route {}: canary {} {} -> {} ({why})",
                t.route,
                t.version,
                fmt_weights(&s.weights),
                fmt_weights(&weights)
            ),
            details(&s, &weights, json!({"from": s.weights})),
        ));
    }
    s.weights = weights.clone();
    Output {
        changed: input.status.as_ref() != Some(&s),
        complete: s.phase == Phase::Completed && stored.map(|p| p.phase) != Some(Phase::Completed),
        status: s,
        events,
        weights,
        analysis: measured,
    }
}

/// The canary's weight per zone a status serves: its plan's weights at its
/// position (all 0 once rolled back, 100 where the version runs once
/// complete), with 0 in zones failed over or drained.
fn served(s: &Status, t: &Target, unavailable: &BTreeSet<String>) -> BTreeMap<String, u32> {
    let plan = Plan::new(&s.steps, s.zone_order.as_deref(), t);
    let mut w = match s.phase {
        Phase::Failed | Phase::Aborted => t.zones.iter().map(|z| (z.clone(), 0)).collect(),
        Phase::Completed => plan.complete_weights(&t.zones),
        Phase::Progressing | Phase::Paused => plan.weights(&t.zones, s.position()),
    };
    for z in unavailable {
        if let Some(n) = w.get_mut(z) {
            *n = 0;
        }
    }
    w
}

fn start(
    t: &Target,
    plan: &Plan,
    replaced: Option<&Status>,
    unavailable: &BTreeSet<String>,
    now: i64,
    events: &mut Vec<Event>,
) -> Status {
    let mut s = Status {
        route: t.route.clone(),
        version: t.version.clone(),
        phase: Phase::Progressing,
        zone_index: 0,
        step_index: 0,
        steps: plan.steps.clone(),
        zone_order: t.rollout.zone_order.clone(),
        weights: BTreeMap::new(),
        started_ms: now,
        step_started_ms: now,
        inconclusive: 0,
        // Zones already out when it starts do not pause it; they get no
        // canary until they are back.
        unavailable_zones: unavailable.clone(),
        last_analysis: None,
        reason: None,
    };
    if plan.is_empty() {
        s.phase = Phase::Paused;
        s.reason = Some(format!(
            "nothing to roll out: no steps, or no zone has endpoints of version {}",
            t.version
        ));
    }
    let weights = served(&s, t, unavailable);
    let replaces = replaced.map(|r| {
        format!(
            " (replaces the {} rollout of {})",
            r.phase.as_str(),
            r.version
        )
    });
    events.push(event(
        "rollout-started",
        Severity::Info,
        format!(
            "route {}: rollout of {} started, canary {}{}{}",
            t.route,
            t.version,
            fmt_weights(&weights),
            replaces.unwrap_or_default(),
            s.reason
                .as_ref()
                .map(|r| format!("; paused: {r}"))
                .unwrap_or_default(),
        ),
        details(
            &s,
            &weights,
            json!({"steps": s.steps, "zoneOrder": s.zone_order,
                   "replaces": replaced.map(|r| json!({"version": r.version, "phase": r.phase}))}),
        ),
    ));
    s
}

fn command(
    s: &mut Status,
    t: &Target,
    plan: &Plan,
    cmd: &Command,
    now: i64,
    serve: &dyn Fn(&Status) -> BTreeMap<String, u32>,
    events: &mut Vec<Event>,
) {
    let by = &cmd.by;
    match check(s, cmd.action) {
        Err(why) => events.push(event(
            "rollout-action-refused",
            Severity::Info,
            format!(
                "route {}: {} by {by} refused: {why}",
                t.route,
                cmd.action.as_str()
            ),
            details(s, &serve(s), json!({"action": cmd.action, "by": by})),
        )),
        Ok(Effect::AlreadyDone) => {}
        Ok(Effect::Changes) => match cmd.action {
            Action::Pause => pause(
                s,
                t,
                format!("paused by {by}"),
                Severity::Info,
                serve,
                events,
            ),
            Action::Resume => {
                let was = s.reason.take().unwrap_or_default();
                s.phase = Phase::Progressing;
                s.step_started_ms = now;
                s.inconclusive = 0;
                events.push(event(
                    "rollout-resumed",
                    Severity::Info,
                    format!(
                        "route {}: rollout of {} resumed by {by} (was paused: {was}); the current step starts again",
                        t.route, t.version
                    ),
                    details(s, &serve(s), json!({"by": by})),
                ));
            }
            Action::Promote => {
                let from = serve(s);
                s.phase = Phase::Completed;
                s.set_position(plan.last());
                s.reason = Some(format!("promoted by {by}"));
                let to = serve(s);
                events.push(event(
                    "rollout-promoted",
                    Severity::Info,
                    format!(
                        "route {}: {} promoted by {by}: canary {} -> {}",
                        t.route,
                        t.version,
                        fmt_weights(&from),
                        fmt_weights(&to)
                    ),
                    details(s, &to, json!({"by": by, "from": from})),
                ));
            }
            Action::Abort => {
                let from = serve(s);
                s.phase = Phase::Aborted;
                s.reason = Some(format!("aborted by {by}"));
                let to = serve(s);
                events.push(event(
                    "rollout-aborted",
                    Severity::Warning,
                    format!(
                        "route {}: rollout of {} aborted by {by}: canary {} -> {}",
                        t.route,
                        t.version,
                        fmt_weights(&from),
                        fmt_weights(&to)
                    ),
                    details(s, &to, json!({"by": by, "from": from})),
                ));
            }
        },
    }
}

fn pause(
    s: &mut Status,
    t: &Target,
    reason: String,
    severity: Severity,
    serve: &dyn Fn(&Status) -> BTreeMap<String, u32>,
    events: &mut Vec<Event>,
) {
    s.phase = Phase::Paused;
    events.push(event(
        "rollout-paused",
        severity,
        format!(
            "route {}: rollout of {} paused: {reason}",
            t.route, t.version
        ),
        details(s, &serve(s), json!({"reason": reason})),
    ));
    s.reason = Some(reason);
}

fn fail(
    s: &mut Status,
    t: &Target,
    a: Analysis,
    serve: &dyn Fn(&Status) -> BTreeMap<String, u32>,
    events: &mut Vec<Event>,
) {
    let from = serve(s);
    s.phase = Phase::Failed;
    let reason = format!("analysis failed: {}", a.reasons.join("; "));
    let to = serve(s);
    events.push(event(
        "rollout-failed",
        Severity::Warning,
        format!(
            "route {}: canary {} rolled back to 0% in every zone: {}",
            t.route,
            t.version,
            a.reasons.join("; ")
        ),
        details(s, &to, json!({"from": from, "analysis": a})),
    ));
    s.reason = Some(reason);
    s.last_analysis = Some(a);
}

fn advance(
    s: &mut Status,
    t: &Target,
    plan: &Plan,
    a: Analysis,
    now: i64,
    serve: &dyn Fn(&Status) -> BTreeMap<String, u32>,
    events: &mut Vec<Event>,
) {
    let from = serve(s);
    let was = s.position();
    let passed = summary(&a.all);
    match plan.next(was) {
        Some(next) => {
            s.set_position(next);
            s.step_started_ms = now;
            s.inconclusive = 0;
            let to = serve(s);
            let what = match plan.groups.get(next.zone) {
                Some(group) if next.zone != was.zone => format!(
                    "zone {} passed every step; zone {} starts",
                    join(plan.groups.get(was.zone).into_iter().flatten()),
                    join(group)
                ),
                _ => "step passed".to_owned(),
            };
            events.push(event(
                "rollout-step",
                Severity::Info,
                format!(
                    "route {}: {what} ({passed}); canary {} {} -> {}",
                    t.route,
                    t.version,
                    fmt_weights(&from),
                    fmt_weights(&to)
                ),
                details(s, &to, json!({"from": from, "analysis": a})),
            ));
        }
        None => {
            s.phase = Phase::Completed;
            s.reason = None;
            let to = serve(s);
            events.push(event(
                "rollout-completed",
                Severity::Info,
                format!(
                    "route {}: {} passed every step ({passed}); canary {}: ready to become the stable version",
                    t.route,
                    t.version,
                    fmt_weights(&to)
                ),
                details(s, &to, json!({"from": from, "analysis": a})),
            ));
        }
    }
    s.last_analysis = Some(a);
}

fn inconclusive(
    s: &mut Status,
    t: &Target,
    a: Analysis,
    unavailable: &BTreeSet<String>,
    now: i64,
    serve: &dyn Fn(&Status) -> BTreeMap<String, u32>,
    events: &mut Vec<Event>,
) {
    s.inconclusive += 1;
    let limit = t.rollout.analysis.inconclusive_limit;
    let mut gaps = a.reasons.join("; ");
    if !unavailable.is_empty() {
        gaps.push_str(&format!("; failed over or drained: {}", join(unavailable)));
    }
    if s.inconclusive >= limit {
        let reason = format!(
            "too little traffic: {} intervals in a row without a verdict ({gaps}); resume to wait again, or promote or abort",
            s.inconclusive
        );
        pause(s, t, reason, Severity::Warning, serve, events);
    } else {
        s.step_started_ms = now;
        events.push(event(
            "rollout-inconclusive",
            Severity::Info,
            format!(
                "route {}: interval {} of {limit} without a verdict ({gaps}); waiting another interval",
                t.route, s.inconclusive
            ),
            details(s, &serve(s), json!({"analysis": a})),
        ));
    }
    s.last_analysis = Some(a);
}

/// Kinds: `rollout-started`, `rollout-step`, `rollout-inconclusive`,
/// `rollout-paused`, `rollout-resumed`, `rollout-failed`,
/// `rollout-completed`, `rollout-promoted`, `rollout-aborted`,
/// `rollout-replanned`, `rollout-weights`, `rollout-action-refused`.
fn event(kind: &str, severity: Severity, message: String, details: Value) -> Event {
    Event {
        kind: kind.to_owned(),
        severity,
        message,
        details,
    }
}

/// A passing comparison in a few words.
fn summary(c: &Comparison) -> String {
    let pct = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}%"));
    format!(
        "canary {} failing of {} requests, stable {}",
        pct(c.canary_failure_rate_percent),
        c.canary.requests,
        pct(c.baseline_failure_rate_percent)
    )
}

fn join<'a>(zones: impl IntoIterator<Item = &'a String>) -> String {
    zones
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every event says which rollout, where it is and what it serves.
fn details(s: &Status, weights: &BTreeMap<String, u32>, extra: Value) -> Value {
    let mut d = json!({
        "route": s.route,
        "version": s.version,
        "phase": s.phase,
        "zoneIndex": s.zone_index,
        "stepIndex": s.step_index,
        "weights": weights,
    });
    if let (Some(d), Value::Object(extra)) = (d.as_object_mut(), extra) {
        d.extend(extra);
    }
    d
}

#[cfg(test)]
mod tests;

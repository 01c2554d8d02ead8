//! Every rule of a step, and the scenarios at the pure level.

use std::collections::{BTreeMap, BTreeSet};

use meridian_policy::Policy;
use serde_json::json;

use super::*;
use crate::analysis::Counts;
use crate::plan::{targets, Position};

const MIN: i64 = 60_000;
const T0: i64 = 1_000_000;

/// Zones a and b, each with v1 and v2 endpoints, and c with v1 only;
/// a rollout of v2 through 5, 25, 50, 100 %, one minute a step.
fn target(zone_order: Option<&[&str]>) -> Target {
    let policy: Policy = serde_json::from_value(json!({
        "metadata": {"name": "track"},
        "spec": {"host": "track.example.com", "port": 80, "zones": [
            {"name": "a", "weight": 40, "endpoints": [
                {"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80, "version": "v2"}]},
            {"name": "b", "weight": 40, "endpoints": [
                {"address": "10.0.1.1", "port": 80}, {"address": "10.0.1.2", "port": 80, "version": "v2"}]},
            {"name": "c", "weight": 20, "endpoints": [{"address": "10.0.2.1", "port": 80}]}],
          "routes": [{"name": "position", "canary": {"version": "v2", "weight": 0, "rollout": {
              "steps": [5, 25, 50, 100], "stepIntervalMs": MIN, "zoneOrder": zone_order,
              "analysis": {"maxFailureRatePercent": 2, "maxFailureRateIncreasePercent": 1,
                           "minRequests": 100, "inconclusiveLimit": 3}}}}]}
    }))
    .unwrap();
    // Every fixture is a policy the API accepts, zone orders included.
    assert_eq!(meridian_policy::validate(&policy), Ok(()));
    targets(&policy).remove(0)
}

type Weights = &'static [(&'static str, u32)];

fn w(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(z, n)| (z.to_string(), *n)).collect()
}

fn zones(z: &[&str]) -> BTreeSet<String> {
    z.iter().map(|z| z.to_string()).collect()
}

/// What the data planes would report: `per_zone` requests in each zone
/// not failed over, split by the canary weights served, the canary
/// failing `canary_failing_percent` of its requests, stable none.
fn traffic(weights: &BTreeMap<String, u32>, per_zone: u64, canary_failing_percent: u64) -> Traffic {
    let mut t = Traffic::default();
    for (z, &w) in weights {
        let canary = per_zone * u64::from(w) / 100;
        let stable = per_zone - canary;
        t.canary.insert(
            z.clone(),
            Counts::new(canary, canary * canary_failing_percent / 100),
        );
        t.stable.insert(z.clone(), Counts::new(stable, 0));
    }
    t
}

fn input(target: Target) -> Input {
    Input {
        target,
        status: None,
        traffic: Traffic::default(),
        prometheus: None,
        unavailable: BTreeSet::new(),
        now_ms: T0,
        command: None,
    }
}

/// A leader that stores every output, as the real one does.
struct Leader {
    input: Input,
    /// The input of the last tick.
    last: Option<Input>,
}

impl Leader {
    fn new(target: Target) -> Leader {
        Leader {
            input: input(target),
            last: None,
        }
    }

    fn status(&self) -> &Status {
        self.input.status.as_ref().unwrap()
    }

    fn tick(&mut self, now: i64, traffic: Traffic) -> Output {
        self.input.now_ms = now;
        self.input.traffic = traffic;
        self.last = Some(self.input.clone());
        let out = step(&self.input);
        self.input.status = Some(out.status.clone());
        self.input.command = None;
        out
    }

    /// One tick with `per_zone` requests over the window at the weights served.
    fn tick_with(&mut self, now: i64, per_zone: u64, failing: u64) -> Output {
        let served = self
            .input
            .status
            .as_ref()
            .map(|s| s.weights.clone())
            .unwrap_or_default();
        self.tick(now, traffic(&served, per_zone, failing))
    }

    fn act(&mut self, now: i64, action: Action) -> Output {
        self.input.command = Some(Command {
            action,
            by: "alice".into(),
        });
        self.tick(now, Traffic::default())
    }
}

fn kinds(out: &Output) -> Vec<&str> {
    out.events.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn a_new_rollout_starts_at_the_first_step() {
    // (zone order, weights served at the start)
    let cases: &[(Option<&[&str]>, Weights)] = &[
        (None, &[("a", 5), ("b", 5), ("c", 0)]),
        (Some(&["b", "a"]), &[("a", 0), ("b", 5), ("c", 0)]),
    ];
    for (order, want) in cases {
        let out = step(&input(target(*order)));
        assert_eq!(out.weights, w(want), "{order:?}");
        assert_eq!(out.status.weights, out.weights);
        assert_eq!(out.status.phase, Phase::Progressing);
        assert_eq!(out.status.position(), Position::default());
        assert_eq!(out.status.started_ms, T0);
        assert_eq!(out.status.step_started_ms, T0);
        assert!(out.changed && !out.complete);
        assert_eq!(out.analysis, None, "nothing was served yet");
        assert_eq!(kinds(&out), ["rollout-started"]);
        assert_eq!(out.events[0].details["weights"], json!(out.weights));
    }
}

/// The healthy canary: 5 → 25 → 50 → 100 % across two zones in
/// the declared order, with no manual action, and it completes.
#[test]
fn a_healthy_canary_goes_through_both_zones_in_order_and_completes() {
    let mut leader = Leader::new(target(Some(&["b", "a"])));
    leader.tick_with(T0, 0, 0);
    let mut served = vec![leader.status().weights.clone()];
    let mut events = Vec::new();
    let mut now = T0;
    for _ in 0..8 {
        now += MIN;
        let out = leader.tick_with(now, 4000, 0);
        served.push(out.weights.clone());
        events.extend(out.events.iter().map(|e| e.kind.clone()));
        if out.complete {
            break;
        }
    }
    let want: Vec<_> = [
        [("a", 0), ("b", 5)],
        [("a", 0), ("b", 25)],
        [("a", 0), ("b", 50)],
        [("a", 0), ("b", 100)],
        [("a", 5), ("b", 100)],
        [("a", 25), ("b", 100)],
        [("a", 50), ("b", 100)],
        [("a", 100), ("b", 100)],
        [("a", 100), ("b", 100)],
    ]
    .iter()
    .map(|p| {
        let mut m = w(p);
        m.insert("c".into(), 0);
        m
    })
    .collect();
    assert_eq!(served, want, "no step repeated or skipped");
    assert_eq!(
        events,
        [
            "rollout-step",
            "rollout-step",
            "rollout-step",
            "rollout-step",
            "rollout-step",
            "rollout-step",
            "rollout-step",
            "rollout-completed"
        ]
    );
    let s = leader.status();
    assert_eq!(s.phase, Phase::Completed);
    assert_eq!(s.reason, None);
    assert_eq!(s.last_analysis.as_ref().unwrap().verdict, Verdict::Pass);
    // Completed stays completed; the revision is asked for once.
    let out = leader.tick_with(now + MIN, 4000, 0);
    assert!(!out.complete && !out.changed && out.events.is_empty());
    assert_eq!(out.weights["a"], 100);
}

#[test]
fn the_step_that_moves_to_the_next_zone_says_so() {
    let mut leader = Leader::new(target(Some(&["b", "a"])));
    leader.tick_with(T0, 0, 0);
    let mut last = None;
    for i in 1..=4 {
        last = Some(leader.tick_with(T0 + i * MIN, 4000, 0));
    }
    let e = &last.unwrap().events[0];
    assert!(
        e.message
            .contains("zone b passed every step; zone a starts"),
        "{}",
        e.message
    );
    assert_eq!(e.details["zoneIndex"], 1);
    assert_eq!(e.details["stepIndex"], 0);
    assert_eq!(e.details["from"]["a"], 0);
    assert_eq!(e.details["weights"]["a"], 5);
}

/// The bad canary: 503 to 5 % of requests while stable answers
/// all; rolled back to 0 % in every zone within two analysis intervals,
/// and the event carries the measured rates.
#[test]
fn a_bad_canary_is_rolled_back_everywhere_within_two_intervals() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    // The leader ticks every second; the window holds what was served since
    // the step began: 400 requests/s per zone, 20/s to the canary.
    let mut failed = None;
    for s in 1..=2 * MIN / 1000 {
        let now = T0 + s * 1000;
        let (from, _) = leader.status().window(MIN as u32, now);
        let out = leader.tick_with(now, 400 * (now - from) as u64 / 1000, 5);
        if out.status.phase == Phase::Failed {
            failed = Some((now, out));
            break;
        }
    }
    let (when, out) = failed.expect("rolled back within two intervals");
    // So clear a failure is acted on before the interval's end: here after
    // 4 s, 8 failures in 160 canary requests against none in 3040 stable.
    assert!(when - T0 < MIN, "after {} ms", when - T0);
    assert!(out.analysis.as_ref().unwrap().decisive);
    assert_eq!(out.weights, w(&[("a", 0), ("b", 0), ("c", 0)]));
    assert_eq!(kinds(&out), ["rollout-failed"]);
    let e = &out.events[0];
    assert_eq!(e.severity, Severity::Warning);
    assert!(
        e.message.contains("rolled back to 0% in every zone")
            && e.message.contains("canary 5.00% failing")
            && e.message.contains("vs stable 0.00%"),
        "{}",
        e.message
    );
    let a = &e.details["analysis"];
    assert_eq!(a["verdict"], "fail");
    assert_eq!(a["zones"]["a"]["canaryFailureRatePercent"], 5.0);
    assert_eq!(a["zones"]["a"]["stableFailureRatePercent"], 0.0);
    assert_eq!(e.details["from"]["a"], 5);
    let s = &out.status;
    assert!(s.reason.as_ref().unwrap().starts_with("analysis failed: "));
    assert_eq!(s.last_analysis.as_ref().unwrap().verdict, Verdict::Fail);
    // Failed is final: healthy traffic later brings nothing back.
    let later = leader.tick_with(when + 10 * MIN, 4000, 0);
    assert_eq!(later.status.phase, Phase::Failed);
    assert!(!later.changed && later.events.is_empty());
    assert_eq!(later.weights["a"], 0);
}

/// "A failure anywhere rolls back everywhere": with a zone order, zone b
/// went through every step and serves 100 % of v2; the canary then fails
/// in zone a at its first step, and both zones go back to 0 % at once.
#[test]
fn a_failure_in_the_second_zone_rolls_back_both_zones() {
    let mut leader = Leader::new(target(Some(&["b", "a"])));
    leader.tick_with(T0, 0, 0);
    let mut now = T0;
    for _ in 0..4 {
        now += MIN;
        leader.tick_with(now, 4000, 0);
    }
    assert_eq!(
        leader.status().weights,
        w(&[("a", 5), ("b", 100), ("c", 0)])
    );
    now += MIN;
    let out = leader.tick_with(now, 4000, 20);
    assert_eq!(out.status.phase, Phase::Failed);
    assert_eq!(out.weights, w(&[("a", 0), ("b", 0), ("c", 0)]));
    assert_eq!(kinds(&out), ["rollout-failed"]);
    assert_eq!(out.events[0].details["from"]["b"], 100);
    assert!(
        out.events[0]
            .message
            .contains("rolled back to 0% in every zone"),
        "{}",
        out.events[0].message
    );
}

/// The too-little-traffic case: waits, then pauses, saying why.
#[test]
fn too_little_traffic_waits_then_pauses_with_a_clear_reason() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    // 800 requests a zone an interval: 40 at the canary's 5 %, 100 needed.
    for n in 1..=2u32 {
        let out = leader.tick_with(T0 + i64::from(n) * MIN, 800, 0);
        assert_eq!(kinds(&out), ["rollout-inconclusive"]);
        assert!(
            out.events[0]
                .message
                .contains(&format!("interval {n} of 3 without a verdict")),
            "{}",
            out.events[0].message
        );
        let s = &out.status;
        assert_eq!(
            (s.phase, s.position(), s.inconclusive),
            (Phase::Progressing, Position::default(), n)
        );
        assert_eq!(s.step_started_ms, T0 + i64::from(n) * MIN, "a new interval");
        assert_eq!(out.weights["a"], 5, "waiting holds the weights");
    }
    let out = leader.tick_with(T0 + 3 * MIN, 800, 0);
    assert_eq!(kinds(&out), ["rollout-paused"]);
    let s = &out.status;
    assert_eq!(s.phase, Phase::Paused);
    assert_eq!(s.inconclusive, 3);
    assert_eq!(out.weights["a"], 5, "paused holds the weights");
    let reason = s.reason.as_deref().unwrap();
    for part in [
        "too little traffic",
        "3 intervals in a row",
        "zone a: 40 canary requests, 100 needed",
        "resume",
    ] {
        assert!(reason.contains(part), "{reason:?} lacks {part:?}");
    }
    // Paused, it neither counts nor steps, however long it waits.
    let out = leader.tick_with(T0 + 9 * MIN, 4000, 0);
    assert!(!out.changed && out.events.is_empty());
    // Resumed: the count starts over and the step passes on enough traffic.
    let out = leader.act(T0 + 10 * MIN, Action::Resume);
    assert_eq!(out.status.inconclusive, 0);
    assert_eq!(out.status.step_started_ms, T0 + 10 * MIN);
    let out = leader.tick_with(T0 + 11 * MIN, 4000, 0);
    assert_eq!(out.weights["a"], 25);
}

#[test]
fn a_passing_step_resets_the_inconclusive_count() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    leader.tick_with(T0 + MIN, 800, 0);
    assert_eq!(leader.status().inconclusive, 1);
    let out = leader.tick_with(T0 + 2 * MIN, 4000, 0);
    assert_eq!((out.status.step_index, out.status.inconclusive), (1, 0));
}

/// The failover during a rollout: it pauses, and the failed zone
/// gets no canary traffic.
#[test]
fn a_failover_of_the_canary_zone_pauses_and_zeroes_it() {
    let mut leader = Leader::new(target(Some(&["a", "b"])));
    leader.tick_with(T0, 0, 0);
    leader.tick_with(T0 + MIN, 4000, 0);
    assert_eq!(leader.status().weights["a"], 25);

    leader.input.unavailable = zones(&["a"]);
    let out = leader.tick_with(T0 + MIN + 1000, 100, 0);
    assert_eq!(kinds(&out), ["rollout-paused"]);
    assert_eq!(out.events[0].severity, Severity::Warning);
    assert!(out.events[0]
        .message
        .contains("zone a failed over or drained"));
    assert_eq!(out.weights, w(&[("a", 0), ("b", 0), ("c", 0)]));
    assert_eq!(out.status.phase, Phase::Paused);
    assert_eq!(out.status.unavailable_zones, zones(&["a"]));
    assert_eq!(out.status.position(), Position { zone: 0, step: 1 });

    // Nothing new while it stays out.
    let out = leader.tick_with(T0 + 5 * MIN, 4000, 0);
    assert!(!out.changed && out.events.is_empty());

    // Back: its weight returns, the rollout stays paused until resumed.
    leader.input.unavailable.clear();
    let out = leader.tick_with(T0 + 6 * MIN, 4000, 0);
    assert_eq!(kinds(&out), ["rollout-weights"]);
    assert!(out.events[0]
        .message
        .contains("back from failover or drain: a"));
    assert_eq!(out.weights["a"], 25);
    assert_eq!(out.status.phase, Phase::Paused);
    leader.act(T0 + 7 * MIN, Action::Resume);
    let out = leader.tick_with(T0 + 8 * MIN, 4000, 0);
    assert_eq!(out.weights["a"], 50);
}

#[test]
fn zones_failed_over_or_drained_never_get_canary_traffic() {
    // (zones out before the start, zones out later, phase after, weights after)
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        Phase,
        Weights,
    );
    let cases: &[Case] = &[
        (
            "out before the start: no pause, no canary there",
            &["b"],
            &["b"],
            Phase::Progressing,
            &[("a", 5), ("b", 0), ("c", 0)],
        ),
        (
            "any zone out during the rollout pauses it",
            &[],
            &["c"],
            Phase::Paused,
            &[("a", 5), ("b", 5), ("c", 0)],
        ),
        (
            "a canary zone out pauses and zeroes it",
            &[],
            &["b"],
            Phase::Paused,
            &[("a", 5), ("b", 0), ("c", 0)],
        ),
        (
            "names that are no zone of the policy are ignored",
            &[],
            &["elsewhere"],
            Phase::Progressing,
            &[("a", 5), ("b", 5), ("c", 0)],
        ),
    ];
    for (what, before, later, phase, want) in cases {
        let mut leader = Leader::new(target(None));
        leader.input.unavailable = zones(before);
        leader.tick_with(T0, 0, 0);
        leader.input.unavailable = zones(later);
        let out = leader.tick_with(T0 + 1000, 10, 0);
        assert_eq!(out.status.phase, *phase, "{what}");
        assert_eq!(out.weights, w(want), "{what}");
    }
}

/// A canary a little over its limit fails at the end of the interval, on
/// the point estimates; one far over it fails at once, even when paused.
#[test]
fn when_a_failure_is_acted_on() {
    // (what, paused, canary failing %, at, phase after)
    let cases: &[(&str, bool, u64, i64, Phase)] = &[
        (
            "a little over, mid-interval",
            false,
            3,
            MIN / 2,
            Phase::Progressing,
        ),
        ("a little over, at the end", false, 3, MIN, Phase::Failed),
        ("far over, mid-interval", false, 20, MIN / 2, Phase::Failed),
        ("a little over, paused", true, 3, MIN, Phase::Paused),
        ("far over, paused", true, 20, MIN / 2, Phase::Failed),
    ];
    for (what, paused, failing, at, phase) in cases {
        let mut leader = Leader::new(target(None));
        leader.tick_with(T0, 0, 0);
        if *paused {
            leader.act(T0, Action::Pause);
        }
        // 2000 requests a zone: 100 to the canary in each.
        let out = leader.tick_with(T0 + at, 2000, *failing);
        assert_eq!(out.status.phase, *phase, "{what}");
        let a = out.analysis.unwrap();
        assert_eq!(a.verdict, Verdict::Fail, "{what}");
        assert_eq!(a.decisive, *failing == 20, "{what}");
    }
}

/// Judged at every tick, a canary just under its limits is not rolled
/// back early by noise: simulated intervals of one-second ticks, the
/// canary failing 1.5% (limit 2%) and stable 1% (at most 1 point more).
#[test]
fn noise_does_not_roll_back_early() {
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut draw = |n: u64, percent_x10: u64| -> u64 {
        (0..n)
            .filter(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % 1000 < percent_x10
            })
            .count() as u64
    };
    let (runs, mut early) = (300, 0);
    for _ in 0..runs {
        let mut leader = Leader::new(target(None));
        leader.tick_with(T0, 0, 0);
        let mut t = Traffic::default();
        for s in 1..MIN / 1000 {
            // A second of 400 requests a zone, 20 of them to the canary.
            for z in ["a", "b"] {
                let c = t.canary.entry(z.into()).or_default();
                *c = Counts::new(c.requests + 20, c.failures + draw(20, 15));
                let st = t.stable.entry(z.into()).or_default();
                *st = Counts::new(st.requests + 380, st.failures + draw(380, 10));
            }
            let out = leader.tick(T0 + s * 1000, t.clone());
            if out.status.phase == Phase::Failed {
                early += 1;
                break;
            }
        }
    }
    assert!(
        early * 100 <= runs,
        "{early} of {runs} runs rolled back early"
    );
}

#[test]
fn prometheus_over_its_maximum_rolls_back() {
    let mut t = target(None);
    t.rollout.analysis.prometheus = Some(meridian_policy::PrometheusAnalysis {
        url: "http://127.0.0.1:9090".into(),
        queries: vec![meridian_policy::PrometheusQuery {
            name: "p99-ms".into(),
            query: "histogram_quantile(0.99, x)".into(),
            max: 250.0,
        }],
    });
    let mut leader = Leader::new(t);
    leader.tick_with(T0, 0, 0);
    // Queried and under: the step passes.
    leader.input.prometheus = Some([("p99-ms".to_owned(), Ok(40.0))].into());
    assert_eq!(leader.tick_with(T0 + MIN, 4000, 0).weights["a"], 25);
    // The canary's backend sleeps 300 ms: judged at the interval's end.
    leader.input.prometheus = Some([("p99-ms".to_owned(), Ok(301.0))].into());
    let out = leader.tick_with(T0 + MIN + 5000, 400, 0);
    assert!(
        !out.changed,
        "a query's range is its interval: not before its end"
    );
    let out = leader.tick_with(T0 + 2 * MIN, 4000, 0);
    assert_eq!(out.status.phase, Phase::Failed);
    assert!(
        out.events[0]
            .message
            .contains("prometheus p99-ms: 301 is over its maximum 250"),
        "{}",
        out.events[0].message
    );
    assert_eq!(out.weights["a"], 0);
}

#[test]
fn nothing_changes_before_the_interval_ends() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    let stored = leader.status().clone();
    for now in [T0, T0 + 1, T0 + MIN / 2, T0 + MIN - 1, T0 - 5000] {
        let out = leader.tick_with(now, 4000, 0);
        assert_eq!(out.status, stored, "at {now}");
        assert!(!out.changed && out.events.is_empty(), "at {now}");
        assert_eq!(
            out.analysis.unwrap().verdict,
            Verdict::Pass,
            "measured, not acted on"
        );
    }
    assert_eq!(leader.tick_with(T0 + MIN, 4000, 0).weights["a"], 25);
}

/// Replaying a step gives the same output; stepping its output again at
/// the same time changes nothing. Checked after every kind of move.
#[test]
fn steps_are_idempotent() {
    let order = Some(&["a", "b"][..]);
    // (what, how to get there from a started rollout)
    type Setup = (&'static str, fn(&mut Leader) -> Output);
    let setups: &[Setup] = &[
        ("start", |l| l.tick_with(T0, 0, 0)),
        ("step", |l| l.tick_with(T0 + MIN, 4000, 0)),
        ("inconclusive", |l| l.tick_with(T0 + MIN, 10, 0)),
        ("failed", |l| l.tick_with(T0 + MIN, 4000, 50)),
        ("paused", |l| l.act(T0 + 1, Action::Pause)),
        ("resumed", |l| {
            l.act(T0 + 1, Action::Pause);
            l.act(T0 + 2, Action::Resume)
        }),
        ("promoted", |l| l.act(T0 + 1, Action::Promote)),
        ("aborted", |l| l.act(T0 + 1, Action::Abort)),
        ("failover", |l| {
            l.input.unavailable = zones(&["a"]);
            l.tick_with(T0 + 1, 10, 0)
        }),
        ("replanned", |l| {
            l.input.target.rollout.steps = vec![10, 100];
            l.tick_with(T0 + 1, 10, 0)
        }),
    ];
    for (what, setup) in setups {
        let mut leader = Leader::new(target(order));
        leader.tick_with(T0, 0, 0);
        let first = setup(&mut leader);
        let last = leader.last.clone().unwrap();
        let command = last.command.clone();
        // The same input again: the same output.
        assert_eq!(step(&last), first, "{what}");
        // Its output stepped again at the same time, on the same traffic:
        // nothing moves, nothing is said.
        let again = Input {
            status: Some(first.status.clone()),
            command: None,
            ..last
        };
        let out = step(&again);
        assert_eq!(out.status, first.status, "{what}");
        assert_eq!(out.weights, first.weights, "{what}");
        assert!(!out.changed, "{what}");
        assert!(out.events.is_empty(), "{what}: {:?}", out.events);
        // And the same action again is no second move.
        if command.is_some() {
            let out = step(&Input { command, ..again });
            assert_eq!(out.status, first.status, "{what}: repeated action");
            assert!(!out.changed, "{what}: repeated action");
        }
    }
}

/// A leader dies after computing a step but before storing it: its
/// successor starts from the stored status and takes exactly that step.
/// A late tick takes one step, never one per interval missed.
#[test]
fn a_successor_leader_repeats_no_step_and_skips_none() {
    let mut a = Leader::new(target(Some(&["a", "b"])));
    a.tick_with(T0, 0, 0);
    a.tick_with(T0 + MIN, 4000, 0);
    let stored = a.status().clone();
    assert_eq!(stored.weights["a"], 25);
    // A computes the next step and dies before storing it.
    let lost = a.tick_with(T0 + 2 * MIN, 4000, 0);
    assert_eq!(lost.weights["a"], 50);
    // B takes over 10 s later from the stored status.
    let mut b = Leader::new(target(Some(&["a", "b"])));
    b.input.status = Some(stored.clone());
    let out = b.tick_with(T0 + 2 * MIN + 10_000, 4000, 0);
    assert_eq!(out.weights, lost.weights, "the same step, once");
    assert_eq!(out.status.position(), lost.status.position());
    let again = b.tick_with(T0 + 2 * MIN + 11_000, 4000, 0);
    assert!(!again.changed, "and not again");
    // A leader away for ten intervals comes back: one step, not ten.
    let mut c = Leader::new(target(Some(&["a", "b"])));
    c.input.status = Some(stored);
    let out = c.tick_with(T0 + 12 * MIN, 4000, 0);
    assert_eq!(out.status.position(), Position { zone: 0, step: 2 });
    assert_eq!(kinds(&out), ["rollout-step"]);
}

#[test]
fn operator_actions() {
    use Action::*;
    // (what, actions before, the action, phase after, effect, event kinds,
    //  weights after)
    type Case = (
        &'static str,
        &'static [Action],
        Action,
        Phase,
        Result<Effect, ()>,
        &'static [&'static str],
        Weights,
    );
    let cases: &[Case] = &[
        (
            "pause",
            &[],
            Pause,
            Phase::Paused,
            Ok(Effect::Changes),
            &["rollout-paused"],
            &[("a", 5), ("b", 0)],
        ),
        (
            "pause twice",
            &[Pause],
            Pause,
            Phase::Paused,
            Ok(Effect::AlreadyDone),
            &[],
            &[("a", 5), ("b", 0)],
        ),
        (
            "resume",
            &[Pause],
            Resume,
            Phase::Progressing,
            Ok(Effect::Changes),
            &["rollout-resumed"],
            &[("a", 5), ("b", 0)],
        ),
        (
            "resume a running one",
            &[],
            Resume,
            Phase::Progressing,
            Ok(Effect::AlreadyDone),
            &[],
            &[("a", 5), ("b", 0)],
        ),
        (
            "promote",
            &[],
            Promote,
            Phase::Completed,
            Ok(Effect::Changes),
            &["rollout-promoted"],
            &[("a", 100), ("b", 100)],
        ),
        (
            "promote a paused one",
            &[Pause],
            Promote,
            Phase::Completed,
            Ok(Effect::Changes),
            &["rollout-promoted"],
            &[("a", 100), ("b", 100)],
        ),
        (
            "promote twice",
            &[Promote],
            Promote,
            Phase::Completed,
            Ok(Effect::AlreadyDone),
            &[],
            &[("a", 100), ("b", 100)],
        ),
        (
            "abort",
            &[],
            Abort,
            Phase::Aborted,
            Ok(Effect::Changes),
            &["rollout-aborted"],
            &[("a", 0), ("b", 0)],
        ),
        (
            "abort a paused one",
            &[Pause],
            Abort,
            Phase::Aborted,
            Ok(Effect::Changes),
            &["rollout-aborted"],
            &[("a", 0), ("b", 0)],
        ),
        (
            "abort twice",
            &[Abort],
            Abort,
            Phase::Aborted,
            Ok(Effect::AlreadyDone),
            &[],
            &[("a", 0), ("b", 0)],
        ),
        (
            "abort a completed one",
            &[Promote],
            Abort,
            Phase::Completed,
            Err(()),
            &["rollout-action-refused"],
            &[("a", 100), ("b", 100)],
        ),
        (
            "promote an aborted one",
            &[Abort],
            Promote,
            Phase::Aborted,
            Err(()),
            &["rollout-action-refused"],
            &[("a", 0), ("b", 0)],
        ),
        (
            "resume an aborted one",
            &[Abort],
            Resume,
            Phase::Aborted,
            Err(()),
            &["rollout-action-refused"],
            &[("a", 0), ("b", 0)],
        ),
        (
            "pause a completed one",
            &[Promote],
            Pause,
            Phase::Completed,
            Err(()),
            &["rollout-action-refused"],
            &[("a", 100), ("b", 100)],
        ),
    ];
    for (what, before, action, phase, effect, events, want) in cases {
        let mut leader = Leader::new(target(Some(&["a", "b"])));
        leader.tick_with(T0, 0, 0);
        for (i, b) in before.iter().enumerate() {
            leader.act(T0 + 1 + i as i64, *b);
        }
        let stored = leader.status().clone();
        assert_eq!(check(&stored, *action).map_err(|_| ()), *effect, "{what}");
        let now = T0 + 30_000;
        let out = leader.act(now, *action);
        assert_eq!(out.status.phase, *phase, "{what}");
        assert_eq!(kinds(&out), *events, "{what}");
        let mut want = w(want);
        want.insert("c".into(), 0);
        assert_eq!(out.weights, want, "{what}");
        assert_eq!(
            out.complete,
            *phase == Phase::Completed && *effect == Ok(Effect::Changes),
            "{what}: the revision is due once"
        );
        if effect != &Ok(Effect::Changes) {
            assert_eq!(out.status, stored, "{what}: nothing changes");
        }
        if let Some(e) = out.events.first() {
            assert!(e.message.contains("alice"), "{what}: {}", e.message);
        }
    }
}

#[test]
fn resume_restarts_the_steps_timer() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    leader.act(T0 + 50_000, Action::Pause);
    let out = leader.act(T0 + 55_000, Action::Resume);
    assert_eq!(out.status.step_started_ms, T0 + 55_000);
    assert_eq!(out.status.reason, None);
    assert!(out.events[0]
        .message
        .contains("was paused: paused by alice"));
    // A full interval from the resume, not from the step's start.
    assert_eq!(leader.tick_with(T0 + MIN, 4000, 0).weights["a"], 5);
    assert_eq!(
        leader.tick_with(T0 + 55_000 + MIN, 4000, 0).weights["a"],
        25
    );
}

#[test]
fn promote_and_abort_say_who_and_keep_it() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    let out = leader.act(T0 + 1, Action::Promote);
    assert_eq!(out.status.reason.as_deref(), Some("promoted by alice"));
    assert_eq!(out.events[0].details["by"], "alice");
    assert_eq!(out.events[0].details["from"]["a"], 5);
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    let out = leader.act(T0 + 1, Action::Abort);
    assert_eq!(out.status.reason.as_deref(), Some("aborted by alice"));
    assert_eq!(out.events[0].severity, Severity::Warning);
}

#[test]
fn a_changed_plan_goes_on_without_more_canary_than_analysed() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    leader.tick_with(T0 + MIN, 4000, 0);
    assert_eq!(leader.status().weights["a"], 25);
    // GitOps syncs new steps mid-way: 25 is not one of them; back to 10.
    leader.input.target.rollout.steps = vec![10, 50, 100];
    let out = leader.tick_with(T0 + MIN + 5000, 100, 0);
    assert_eq!(kinds(&out), ["rollout-replanned"]);
    assert_eq!(out.weights["a"], 10);
    assert_eq!(out.status.steps, [10, 50, 100]);
    assert_eq!(out.status.step_started_ms, T0 + MIN + 5000);
    // A sync of the same spec is no change at all.
    let out = leader.tick_with(T0 + MIN + 6000, 100, 0);
    assert!(!out.changed && out.events.is_empty());
    // A zone order added mid-way: a was at 10 with b, so a goes on at 10 alone.
    leader.input.target.rollout.zone_order = Some(vec!["a".into(), "b".into()]);
    let out = leader.tick_with(T0 + MIN + 7000, 100, 0);
    assert_eq!(out.weights, w(&[("a", 10), ("b", 0), ("c", 0)]));
    assert_eq!(
        out.status.zone_order.as_deref().map(<[String]>::len),
        Some(2)
    );
}

#[test]
fn a_new_version_starts_a_new_rollout() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    leader.act(T0 + 1, Action::Abort);
    leader.input.target.version = "v3".into();
    let out = leader.tick_with(T0 + 2, 0, 0);
    assert_eq!(kinds(&out), ["rollout-started"]);
    assert!(
        out.events[0]
            .message
            .contains("replaces the aborted rollout of v2"),
        "{}",
        out.events[0].message
    );
    assert_eq!(out.status.version, "v3");
    assert_eq!(out.status.phase, Phase::Progressing);
    assert_eq!(out.status.position(), Position::default());
    assert_eq!(out.weights["a"], 5);
}

#[test]
fn a_rollout_with_nowhere_to_go_pauses_saying_why() {
    let mut t = target(None);
    t.canary_zones.clear();
    let out = step(&input(t));
    assert_eq!(out.status.phase, Phase::Paused);
    assert!(out
        .status
        .reason
        .as_ref()
        .unwrap()
        .contains("nothing to roll out"));
    assert_eq!(out.weights, w(&[("a", 0), ("b", 0), ("c", 0)]));
}

#[test]
fn the_window_is_the_current_step_at_most_one_interval_back() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    let s = leader.status();
    // (now, window)
    for (now, want) in [
        (T0, (T0, T0)),
        (T0 + 10_000, (T0, T0 + 10_000)),
        (T0 + MIN, (T0, T0 + MIN)),
        (T0 + 3 * MIN, (T0 + 2 * MIN, T0 + 3 * MIN)),
        (T0 - 5, (T0 - 5, T0 - 5)),
    ] {
        assert_eq!(s.window(MIN as u32, now), want, "at {now}");
    }
}

#[test]
fn the_status_is_stored_as_camel_case_json_and_read_back() {
    let mut leader = Leader::new(target(Some(&["a", "b"])));
    leader.tick_with(T0, 0, 0);
    leader.tick_with(T0 + MIN, 4000, 0);
    leader.input.unavailable = zones(&["c"]);
    let s = leader.tick_with(T0 + MIN + 1, 100, 0).status;
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["phase"], "paused");
    assert_eq!(json["zoneIndex"], 0);
    assert_eq!(json["stepIndex"], 1);
    assert_eq!(json["stepStartedMs"], T0 + MIN);
    assert_eq!(json["weights"], json!({"a": 25, "b": 0, "c": 0}));
    assert_eq!(json["zoneOrder"], json!(["a", "b"]));
    assert_eq!(json["unavailableZones"], json!(["c"]));
    assert_eq!(json["lastAnalysis"]["verdict"], "pass");
    assert!(json["reason"].as_str().unwrap().contains("zone c"));
    let back: Status = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, s);
    // A field from a newer leader does not stop an older one.
    let mut newer = json;
    newer["somethingNew"] = json!(1);
    assert_eq!(serde_json::from_value::<Status>(newer).unwrap(), s);
}

/// The revision is due on the completing step only; a leader that dies
/// before storing that step leaves it due for its successor.
#[test]
fn the_revision_is_due_once_and_never_lost() {
    let mut leader = Leader::new(target(None));
    leader.tick_with(T0, 0, 0);
    for i in 1..=3 {
        assert!(!leader.tick_with(T0 + i * MIN, 4000, 0).complete);
    }
    let before_last = leader.status().clone();
    let done = leader.tick_with(T0 + 4 * MIN, 4000, 0);
    assert!(done.complete && done.changed);
    assert_eq!(kinds(&done), ["rollout-completed"]);
    // Not stored (the transaction with the revision failed): due again.
    let mut successor = Leader::new(target(None));
    successor.input.status = Some(before_last);
    let again = successor.tick_with(T0 + 4 * MIN + 2000, 4000, 0);
    assert!(again.complete);
    assert_eq!(again.status.phase, Phase::Completed);
    // Stored: never again, whatever the spec says meanwhile.
    assert!(!successor.tick_with(T0 + 9 * MIN, 4000, 0).complete);
}

//! Zone health from probe results.
//!
//! Each health checker (a replica running the health role) keeps a [`Window`]
//! of its own probe results per zone and reports a [`ZoneTally`]. The leader
//! combines the tallies of all checkers with [`evaluate`], which votes across
//! checkers and applies hysteresis, so that neither one checker's network
//! trouble nor one lucky round flips a zone.

use std::collections::{BTreeMap, VecDeque};

use meridian_policy::Failover;
use serde::{Deserialize, Serialize};

/// Most samples a [`Window`] keeps, whatever the window length. A zone with
/// many endpoints probed often could otherwise grow a window without bound;
/// beyond this many samples the rate is already as precise as it gets.
pub const MAX_WINDOW_SAMPLES: usize = 4096;

/// The result of one probe of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When the probe finished, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub ok: bool,
}

/// The samples one checker took of one zone during the last `window_seconds`.
///
/// Time is taken from the samples themselves: inserting a sample prunes
/// everything that fell out of the window relative to the newest sample, so
/// the window needs no clock. Samples are kept in time order even when they
/// arrive out of order (probes of several endpoints finish in any order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    window_ms: i64,
    samples: VecDeque<Sample>,
}

impl Window {
    /// An empty window of `window_seconds` (the policy's
    /// `failover.windowSeconds`).
    pub fn new(window_seconds: u32) -> Self {
        // A zero window would drop even the sample just taken; keep at least
        // the newest instant so a tally is never empty right after a probe.
        let window_ms = (i64::from(window_seconds) * 1000).max(1);
        Self {
            window_ms,
            samples: VecDeque::new(),
        }
    }

    /// Length of the window in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Adds a sample and drops what is now outside the window (or over
    /// [`MAX_WINDOW_SAMPLES`], oldest first). A sample already outside the
    /// window is ignored.
    pub fn insert(&mut self, sample: Sample) {
        let newest = self
            .samples
            .back()
            .map_or(sample.at_ms, |last| last.at_ms.max(sample.at_ms));
        if sample.at_ms <= newest - self.window_ms {
            return;
        }
        let at = self.samples.partition_point(|s| s.at_ms <= sample.at_ms);
        self.samples.insert(at, sample);
        self.prune(newest);
        while self.samples.len() > MAX_WINDOW_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Drops samples outside the window ending at `now_ms`, for a checker
    /// that stopped receiving results and must not report stale ones forever.
    pub fn prune(&mut self, now_ms: i64) {
        let cutoff = now_ms - self.window_ms;
        while self.samples.front().is_some_and(|s| s.at_ms <= cutoff) {
            self.samples.pop_front();
        }
    }

    /// The samples in the window, oldest first.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = &Sample> + '_ {
        self.samples.iter()
    }

    /// Number of samples in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the window holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// What one checker reports for one zone over its window; what replicas
/// store in `health_reports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneTally {
    pub checker: String,
    pub samples: u32,
    pub failures: u32,
}

/// Summarises a checker's window for one zone.
pub fn tally(window: &Window, checker: &str) -> ZoneTally {
    let failures = window.samples().filter(|s| !s.ok).count();
    ZoneTally {
        checker: checker.to_owned(),
        samples: saturating_u32(window.len()),
        failures: saturating_u32(failures),
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Health of a zone as the failover decision sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Not enough data yet. Failover treats it as healthy (fail open).
    #[default]
    Unknown,
}

impl Health {
    /// The serialized name: `healthy`, `unhealthy` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

/// Hysteresis state of one zone, carried from one evaluation to the next
/// (stored in `zone_states` so that a new leader continues it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneState {
    pub health: Health,
    /// When `health` last changed.
    pub since_ms: i64,
    /// Since when an unhealthy zone has been passing without interruption;
    /// it turns healthy once this is `recoverySeconds` old.
    pub below_threshold_since_ms: Option<i64>,
}

/// Why [`evaluate`] decided what it did, for events and the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Failures over samples, in percent, across the checkers that have an
    /// opinion (those with at least `minSamples`); 0 when none has.
    pub failure_rate_percent: f64,
    /// Samples of the checkers that have an opinion.
    pub samples: u32,
    /// Checkers with an opinion (at least `minSamples` samples).
    pub checkers: u32,
    /// Checkers whose failure rate exceeds the threshold.
    pub failing_checkers: u32,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vote {
    Fail,
    Pass,
    Abstain,
}

fn vote(samples: u32, failures: u32, failover: &Failover) -> Vote {
    // With min_samples 0 an empty tally would otherwise "pass" with no data.
    if samples == 0 || samples < failover.min_samples {
        return Vote::Abstain;
    }
    // A corrupt row must not produce a rate above 100%.
    let failures = u64::from(failures.min(samples));
    if failures * 100 > u64::from(failover.failure_rate_percent) * u64::from(samples) {
        Vote::Fail
    } else {
        Vote::Pass
    }
}

/// Combines the checkers' tallies of one zone with its previous state.
///
/// A checker is failing when it has at least `minSamples` samples and its
/// failure rate strictly exceeds `failureRatePercent`, passing when it has
/// enough samples and does not, and has no opinion otherwise. The zone fails
/// only when a strict majority of the checkers with an opinion say failing,
/// so one checker with its own network trouble cannot fail a zone over (and
/// with two opinions, both must fail). Transitions:
///
/// - healthy or unknown → unhealthy as soon as the zone is failing;
/// - unknown → healthy as soon as a majority passes (a zone never seen
///   unhealthy has nothing to recover from);
/// - unhealthy → healthy only after a majority has passed continuously for
///   `recoverySeconds`; failing again, a split vote or no data restarts that
///   wait.
///
/// Tallies of the same checker are summed so it votes once.
pub fn evaluate(
    prev: Option<&ZoneState>,
    tallies: &[ZoneTally],
    failover: &Failover,
    now_ms: i64,
) -> (ZoneState, Verdict) {
    let mut by_checker: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for t in tallies {
        let entry = by_checker.entry(t.checker.as_str()).or_default();
        entry.0 = entry.0.saturating_add(t.samples);
        entry.1 = entry.1.saturating_add(t.failures.min(t.samples));
    }

    let (mut failing, mut passing) = (0u32, 0u32);
    let (mut samples, mut failures) = (0u64, 0u64);
    let mut most_samples = 0u32;
    for &(s, f) in by_checker.values() {
        most_samples = most_samples.max(s);
        match vote(s, f, failover) {
            Vote::Fail => failing += 1,
            Vote::Pass => passing += 1,
            Vote::Abstain => continue,
        }
        samples += u64::from(s);
        failures += u64::from(f.min(s));
    }
    let checkers = failing + passing;
    let failure_rate_percent = if samples == 0 {
        0.0
    } else {
        failures as f64 * 100.0 / samples as f64
    };
    let zone_failing = failing * 2 > checkers;
    let zone_passing = passing * 2 > checkers;
    let threshold = failover.failure_rate_percent;
    let observed = format!(
        "{failure_rate_percent:.1}% failures over {samples} samples from {checkers} checker{}",
        if checkers == 1 { "" } else { "s" }
    );

    let prev = prev.cloned().unwrap_or(ZoneState {
        health: Health::Unknown,
        since_ms: now_ms,
        below_threshold_since_ms: None,
    });
    let changed = |health: Health| ZoneState {
        health,
        since_ms: now_ms,
        below_threshold_since_ms: None,
    };
    let held = |below: Option<i64>| ZoneState {
        below_threshold_since_ms: below,
        ..prev.clone()
    };

    let (state, reason) = if zone_failing {
        let reason = format!("{failing} of {checkers} checkers above {threshold}% ({observed})");
        if prev.health == Health::Unhealthy {
            (held(None), reason)
        } else {
            (changed(Health::Unhealthy), reason)
        }
    } else if zone_passing {
        let reason =
            format!("{passing} of {checkers} checkers at or below {threshold}% ({observed})");
        match prev.health {
            Health::Unknown => (changed(Health::Healthy), reason),
            Health::Healthy => (held(None), reason),
            Health::Unhealthy => {
                let below = prev.below_threshold_since_ms.unwrap_or(now_ms);
                let recovery_ms = i64::from(failover.recovery_seconds) * 1000;
                let passed_ms = now_ms - below;
                if passed_ms >= recovery_ms {
                    (
                        changed(Health::Healthy),
                        format!("recovered: {reason} for {}s", recovery_ms / 1000),
                    )
                } else {
                    (
                        held(Some(below)),
                        format!(
                            "recovering: {reason} for {}s of {}s",
                            passed_ms.max(0) / 1000,
                            failover.recovery_seconds
                        ),
                    )
                }
            }
        }
    } else if checkers > 0 {
        (
            held(None),
            format!("no majority: {failing} failing, {passing} passing ({observed})"),
        )
    } else if by_checker.is_empty() {
        (held(None), "no health reports".to_owned())
    } else {
        (
            held(None),
            format!(
                "not enough samples: no checker has {} yet (most: {most_samples})",
                failover.min_samples.max(1)
            ),
        )
    };

    let verdict = Verdict {
        failure_rate_percent,
        samples: u32::try_from(samples).unwrap_or(u32::MAX),
        checkers,
        failing_checkers: failing,
        reason,
    };
    (state, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover() -> Failover {
        Failover {
            failure_rate_percent: 5,
            window_seconds: 30,
            min_samples: 10,
            recovery_seconds: 60,
            ..Failover::default()
        }
    }

    fn tallies(spec: &[(&str, u32, u32)]) -> Vec<ZoneTally> {
        spec.iter()
            .map(|&(checker, samples, failures)| ZoneTally {
                checker: checker.to_owned(),
                samples,
                failures,
            })
            .collect()
    }

    fn state(health: Health, since_ms: i64, below: Option<i64>) -> ZoneState {
        ZoneState {
            health,
            since_ms,
            below_threshold_since_ms: below,
        }
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn evaluate_table() {
        use Health::*;
        struct Case {
            name: &'static str,
            prev: Option<ZoneState>,
            tallies: &'static [(&'static str, u32, u32)],
            want: ZoneState,
            want_checkers: u32,
            want_failing: u32,
        }
        let cases = [
            Case {
                name: "first evaluation without reports is unknown",
                prev: None,
                tallies: &[],
                want: state(Unknown, NOW, None),
                want_checkers: 0,
                want_failing: 0,
            },
            Case {
                name: "below min samples has no opinion, even all failing",
                prev: None,
                tallies: &[("a", 9, 9)],
                want: state(Unknown, NOW, None),
                want_checkers: 0,
                want_failing: 0,
            },
            Case {
                name: "unknown turns healthy at once when passing",
                prev: Some(state(Unknown, 5, None)),
                tallies: &[("a", 10, 0)],
                want: state(Healthy, NOW, None),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "unknown turns unhealthy when failing",
                prev: None,
                tallies: &[("a", 10, 1)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 1,
                want_failing: 1,
            },
            Case {
                name: "exactly at the threshold passes (strictly exceeds fails)",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 100, 5)],
                want: state(Healthy, 5, None),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "just above the threshold fails",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 100, 6)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 1,
                want_failing: 1,
            },
            Case {
                name: "one of three checkers failing cannot fail the zone",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 30), ("b", 30, 0), ("c", 30, 1)],
                want: state(Healthy, 5, None),
                want_checkers: 3,
                want_failing: 1,
            },
            Case {
                name: "two of three checkers failing fail the zone",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 30), ("b", 30, 2), ("c", 30, 1)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 3,
                want_failing: 2,
            },
            Case {
                name: "one of two opinions failing is no majority",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 30), ("b", 30, 0)],
                want: state(Healthy, 5, None),
                want_checkers: 2,
                want_failing: 1,
            },
            Case {
                name: "split vote leaves an unknown zone unknown",
                prev: Some(state(Unknown, 5, None)),
                tallies: &[("a", 30, 30), ("b", 30, 0)],
                want: state(Unknown, 5, None),
                want_checkers: 2,
                want_failing: 1,
            },
            Case {
                name: "both of two opinions failing fail the zone",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 30), ("b", 30, 3)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 2,
                want_failing: 2,
            },
            Case {
                name: "checkers without opinion do not vote",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 30), ("b", 3, 0), ("c", 0, 0)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 1,
                want_failing: 1,
            },
            Case {
                name: "unhealthy stays unhealthy while failing; since unchanged",
                prev: Some(state(Unhealthy, 5, None)),
                tallies: &[("a", 30, 30)],
                want: state(Unhealthy, 5, None),
                want_checkers: 1,
                want_failing: 1,
            },
            Case {
                name: "unhealthy starts the recovery clock when passing",
                prev: Some(state(Unhealthy, 5, None)),
                tallies: &[("a", 30, 0), ("b", 30, 0)],
                want: state(Unhealthy, 5, Some(NOW)),
                want_checkers: 2,
                want_failing: 0,
            },
            Case {
                name: "unhealthy keeps waiting just before recovery",
                prev: Some(state(Unhealthy, 5, Some(NOW - 59_999))),
                tallies: &[("a", 30, 0)],
                want: state(Unhealthy, 5, Some(NOW - 59_999)),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "unhealthy recovers after recoverySeconds of passing",
                prev: Some(state(Unhealthy, 5, Some(NOW - 60_000))),
                tallies: &[("a", 30, 0)],
                want: state(Healthy, NOW, None),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "failing again resets the recovery clock",
                prev: Some(state(Unhealthy, 5, Some(NOW - 59_000))),
                tallies: &[("a", 30, 30)],
                want: state(Unhealthy, 5, None),
                want_checkers: 1,
                want_failing: 1,
            },
            Case {
                name: "split vote resets the recovery clock",
                prev: Some(state(Unhealthy, 5, Some(NOW - 59_000))),
                tallies: &[("a", 30, 30), ("b", 30, 0)],
                want: state(Unhealthy, 5, None),
                want_checkers: 2,
                want_failing: 1,
            },
            Case {
                name: "no data resets the recovery clock and holds unhealthy",
                prev: Some(state(Unhealthy, 5, Some(NOW - 59_000))),
                tallies: &[("a", 2, 0)],
                want: state(Unhealthy, 5, None),
                want_checkers: 0,
                want_failing: 0,
            },
            Case {
                name: "no data holds a healthy zone",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[],
                want: state(Healthy, 5, None),
                want_checkers: 0,
                want_failing: 0,
            },
            Case {
                name: "a checker reported twice votes once",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 30), ("a", 30, 30), ("b", 30, 0)],
                want: state(Healthy, 5, None),
                want_checkers: 2,
                want_failing: 1,
            },
            Case {
                name: "failures above samples are clamped, not overflowing",
                prev: None,
                tallies: &[("a", 10, u32::MAX)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 1,
                want_failing: 1,
            },
        ];
        let f = failover();
        for case in cases {
            let (got, verdict) = evaluate(case.prev.as_ref(), &tallies(case.tallies), &f, NOW);
            assert_eq!(got, case.want, "{}: {}", case.name, verdict.reason);
            assert_eq!(verdict.checkers, case.want_checkers, "{}", case.name);
            assert_eq!(verdict.failing_checkers, case.want_failing, "{}", case.name);
            assert!(!verdict.reason.is_empty(), "{}", case.name);
        }
    }

    #[test]
    fn recovery_zero_is_immediate() {
        let f = Failover {
            recovery_seconds: 0,
            ..failover()
        };
        let prev = state(Health::Unhealthy, 5, None);
        let (got, _) = evaluate(Some(&prev), &tallies(&[("a", 10, 0)]), &f, NOW);
        assert_eq!(got, state(Health::Healthy, NOW, None));
    }

    #[test]
    fn recovery_walks_through_time() {
        // Passing every 10 s: still unhealthy at +50 s, healthy at +60 s.
        let f = failover();
        let passing = tallies(&[("a", 30, 0), ("b", 30, 1)]);
        let mut s = state(Health::Unhealthy, 0, None);
        for t in (0..=50_000).step_by(10_000) {
            s = evaluate(Some(&s), &passing, &f, NOW + t).0;
            assert_eq!(s.health, Health::Unhealthy, "at +{t}");
            assert_eq!(s.below_threshold_since_ms, Some(NOW));
        }
        let (s, v) = evaluate(Some(&s), &passing, &f, NOW + 60_000);
        assert_eq!(s, state(Health::Healthy, NOW + 60_000, None));
        assert!(v.reason.starts_with("recovered"), "{}", v.reason);
    }

    #[test]
    fn verdict_aggregates_opinionated_checkers() {
        let (_, v) = evaluate(
            None,
            &tallies(&[("a", 40, 10), ("b", 60, 0), ("c", 5, 5)]),
            &failover(),
            NOW,
        );
        assert_eq!(v.samples, 100);
        assert_eq!(v.checkers, 2);
        assert_eq!(v.failing_checkers, 1);
        assert!((v.failure_rate_percent - 10.0).abs() < 1e-9);
        assert!(v.reason.contains("no majority"), "{}", v.reason);
    }

    #[test]
    fn min_samples_zero_still_needs_a_sample() {
        let f = Failover {
            min_samples: 0,
            ..failover()
        };
        let (s, v) = evaluate(None, &tallies(&[("a", 0, 0)]), &f, NOW);
        assert_eq!(s.health, Health::Unknown);
        assert_eq!(v.checkers, 0);
    }

    fn ok(at_ms: i64) -> Sample {
        Sample { at_ms, ok: true }
    }
    fn bad(at_ms: i64) -> Sample {
        Sample { at_ms, ok: false }
    }

    #[test]
    fn window_prunes_relative_to_newest_sample() {
        let mut w = Window::new(30);
        w.insert(ok(0));
        w.insert(bad(10_000));
        w.insert(ok(29_999));
        assert_eq!(w.len(), 3);
        // 30 s after the first sample, it is out: the window is (now-30s, now].
        w.insert(ok(30_000));
        assert_eq!(
            w.samples().map(|s| s.at_ms).collect::<Vec<_>>(),
            [10_000, 29_999, 30_000]
        );
        assert_eq!(
            tally(&w, "replica-1"),
            ZoneTally {
                checker: "replica-1".to_owned(),
                samples: 3,
                failures: 1
            }
        );
    }

    #[test]
    fn window_orders_late_samples_and_drops_stale_ones() {
        let mut w = Window::new(10);
        w.insert(ok(20_000));
        w.insert(bad(15_000));
        w.insert(ok(18_000));
        w.insert(bad(10_000)); // exactly one window old: outside
        w.insert(bad(1_000));
        assert_eq!(
            w.samples().map(|s| s.at_ms).collect::<Vec<_>>(),
            [15_000, 18_000, 20_000]
        );
        w.prune(28_000);
        assert_eq!(w.len(), 1);
        w.prune(40_000);
        assert!(w.is_empty());
        assert_eq!(tally(&w, "c").samples, 0);
    }

    #[test]
    fn window_memory_is_bounded() {
        let mut w = Window::new(u32::MAX / 1000);
        for i in 0..(MAX_WINDOW_SAMPLES as i64 * 3) {
            w.insert(bad(i));
        }
        assert_eq!(w.len(), MAX_WINDOW_SAMPLES);
        assert_eq!(
            w.samples().next().unwrap().at_ms,
            MAX_WINDOW_SAMPLES as i64 * 2
        );
    }

    #[test]
    fn zero_window_keeps_the_newest_sample() {
        let mut w = Window::new(0);
        w.insert(ok(5));
        w.insert(bad(6));
        assert_eq!(tally(&w, "c").samples, 1);
        assert_eq!(tally(&w, "c").failures, 1);
    }

    #[test]
    fn serde_shapes() {
        assert_eq!(
            serde_json::to_string(&Health::Unhealthy).unwrap(),
            r#""unhealthy""#
        );
        let s = state(Health::Unhealthy, 7, Some(9));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"health": "unhealthy", "sinceMs": 7, "belowThresholdSinceMs": 9})
        );
        assert_eq!(serde_json::from_value::<ZoneState>(json).unwrap(), s);
        for h in [Health::Healthy, Health::Unhealthy, Health::Unknown] {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
    }
}

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
    /// Probe rounds in a row, up to now, in which no endpoint of the zone
    /// answered at all (refused, reset, timed out): the least, over the
    /// zone's endpoints, of each endpoint's run of unanswered probes. A
    /// wrong answer (HTTP 503, gRPC NOT_SERVING) is a failure but not
    /// silence, and resets nothing here either.
    #[serde(default)]
    pub unanswered_rounds: u32,
    /// The same window per endpoint (`ip:port`), for endpoint health.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, crate::endpoints::EndpointTally>,
}

/// Summarises a checker's window for one zone (`unanswered_rounds` is the
/// prober's to fill in: the window does not know the endpoints).
pub fn tally(window: &Window, checker: &str) -> ZoneTally {
    let failures = window.samples().filter(|s| !s.ok).count();
    ZoneTally {
        checker: checker.to_owned(),
        samples: saturating_u32(window.len()),
        failures: saturating_u32(failures),
        unanswered_rounds: 0,
        endpoints: Default::default(),
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Requests and failures that data planes (Envoy, proxyless gRPC clients)
/// reported for one zone over one load-report interval ending at `end_ms`
/// (Envoy's load reporting service). The leader pools every reporter's
/// intervals that end inside the policy's window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTally {
    pub reporter: String,
    pub end_ms: i64,
    pub requests: u64,
    pub failures: u64,
}

/// Where a count of outcomes comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Meridian's own health probes.
    #[default]
    Probes,
    /// Real requests, from the data planes' load reports.
    Traffic,
}

/// Outcomes of one source for one zone, pooled over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub requests: u64,
    pub failures: u64,
    pub source: Source,
}

impl Evidence {
    /// Failures over requests in percent; 0 without requests.
    pub fn rate_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures.min(self.requests) as f64 * 100.0 / self.requests as f64
        }
    }

    /// The Wilson score interval of the failure rate at `z` standard
    /// deviations, in percent; `(0, 100)` without requests.
    pub fn bounds_percent(&self, z: f64) -> (f64, f64) {
        let (lo, hi) = wilson(self.failures, self.requests, z);
        (lo * 100.0, hi * 100.0)
    }
}

/// How many standard deviations of confidence each decision needs. See
/// docs/failover.md for why these values; the simulations in this module's
/// tests hold them to the outcomes they are chosen for.
pub mod confidence {
    /// Failing a zone on probes. A window of 30 probes is re-tested at every
    /// probe, some 600 times in ten minutes, and the normal approximation
    /// under the Wilson interval is optimistic for a few failures out of a
    /// few dozen: at 99% (z = 2.576) a zone failing 4% under a 5% threshold
    /// was failed over in a third of simulated ten-minute runs. At 5.5 it
    /// takes 9 failures of 30 (13 of 60) and none of 1,000 runs trips.
    pub const PROBES_FAIL_Z: f64 = 5.5;
    /// Failing a zone on traffic: 99% one-sided. Windows of thousands of
    /// requests are where the normal approximation holds; a tenth of the
    /// policy's threshold already separates 4% from 5% there.
    pub const TRAFFIC_FAIL_Z: f64 = 2.576;
    /// Recovering (the upper bound must be below the threshold): about 84%
    /// one-sided. Any more and a window of 30 clean probes could never
    /// show a 5% zone healthy (0 of 30 has a 95% upper bound of 8.6%); the
    /// `recoverySeconds` of passing and the ramped failback stand guard
    /// instead, and real traffic fails it over again quickly if need be.
    pub const RECOVER_Z: f64 = 1.0;
}

/// Traffic intervals ending within this much of now form the short window,
/// which catches a zone that turns bad while its full window is still
/// diluted by minutes of good requests.
pub const TRAFFIC_SHORT_WINDOW_MS: i64 = 10_000;

/// Probe rounds without any answer after which a checker votes a zone down
/// at once, whatever its window says: the "stops answering" fast path.
/// Two rounds, so one lost probe is never enough.
pub const DOWN_ROUNDS: u32 = 2;

/// Requests in the window from which traffic, rather than probes, decides.
pub fn traffic_min_requests(failover: &Failover) -> u64 {
    (u64::from(failover.min_samples) * 10).max(100)
}

/// The Wilson score interval of `failures` out of `n` at `z`, as fractions.
/// Without samples it is `(0, 1)`: nothing is known.
pub fn wilson(failures: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = failures.min(n) as f64 / n_f;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denominator;
    let margin = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denominator;
    ((centre - margin).max(0.0), (centre + margin).min(1.0))
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

/// Why [`evaluate`] decided what it did, for events, `/status` and the
/// dashboard: both sources' evidence, and which one decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The failure rate of the source that decided, in percent.
    pub failure_rate_percent: f64,
    /// Samples of the source that decided.
    pub samples: u32,
    /// Checkers with an opinion (at least `minSamples` samples, or silence).
    pub checkers: u32,
    /// Checkers that vote the zone failing.
    pub failing_checkers: u32,
    /// Probes of the checkers with an opinion, pooled.
    pub probes: Evidence,
    /// Requests the data planes reported over the window, pooled.
    pub traffic: Evidence,
    /// Which source decided: traffic once it has
    /// [`traffic_min_requests`], probes before.
    pub decided_by: Source,
    /// Wilson bounds of the deciding evidence, in percent: the lower at the
    /// failing confidence, the upper at the recovery confidence.
    pub lower_bound_percent: f64,
    pub upper_bound_percent: f64,
    pub reason: String,
}

/// What one source says of a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// Confidently above the threshold (or silent: the fast path).
    Fail,
    /// Confidently below it (or a clean window).
    Pass,
    /// Enough data for neither.
    Unsure,
    /// Too little data to say anything.
    Abstain,
}

fn probe_call(samples: u32, failures: u32, silent_rounds: u32, failover: &Failover) -> Call {
    if silent_rounds >= DOWN_ROUNDS {
        return Call::Fail;
    }
    // With min_samples 0 an empty tally would otherwise "pass" with no data.
    if samples == 0 || samples < failover.min_samples {
        return Call::Abstain;
    }
    rate_call(
        u64::from(failures),
        u64::from(samples),
        failover,
        confidence::PROBES_FAIL_Z,
    )
}

fn rate_call(failures: u64, n: u64, failover: &Failover, fail_z: f64) -> Call {
    let threshold = f64::from(failover.failure_rate_percent) / 100.0;
    let failures = failures.min(n);
    if wilson(failures, n, fail_z).0 > threshold {
        Call::Fail
    } else if failures == 0 || wilson(failures, n, confidence::RECOVER_Z).1 < threshold {
        Call::Pass
    } else {
        Call::Unsure
    }
}

/// Combines the evidence of one zone with its previous state.
///
/// Each checker's window calls the zone failing when the Wilson lower
/// bound of its failure rate (at [`confidence::PROBES_FAIL_Z`]) is above
/// `failureRatePercent`, or when no endpoint answered its last
/// [`DOWN_ROUNDS`] rounds; passing when the upper bound (at
/// [`confidence::RECOVER_Z`]) is below it, or it saw no failure; unsure
/// otherwise; and has no opinion below `minSamples`. The zone fails only
/// when a strict majority of the checkers with an opinion call it failing,
/// so one checker with its own network trouble cannot fail a zone over.
///
/// Once the data planes reported [`traffic_min_requests`] over the window,
/// real traffic decides instead of the probes' statistics: failing when the
/// lower bound (at [`confidence::TRAFFIC_FAIL_Z`]) of the whole window or
/// of its last [`TRAFFIC_SHORT_WINDOW_MS`] is above the threshold. A
/// majority of checkers that get no answer at all still fails the zone.
///
/// Transitions:
/// - healthy or unknown → unhealthy as soon as the zone is failing;
/// - unknown → healthy once the deciding source has an opinion and does not
///   call it failing (a zone never seen unhealthy has nothing to recover from);
/// - unhealthy → healthy only after the deciding source has called it
///   passing continuously for `recoverySeconds`; anything else restarts
///   that wait.
///
/// Tallies of the same checker are summed so it votes once; traffic
/// intervals are pooled across reporters.
pub fn evaluate(
    prev: Option<&ZoneState>,
    tallies: &[ZoneTally],
    traffic: &[TrafficTally],
    failover: &Failover,
    now_ms: i64,
) -> (ZoneState, Verdict) {
    let mut by_checker: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    for t in tallies {
        let entry = by_checker.entry(t.checker.as_str()).or_default();
        entry.0 = entry.0.saturating_add(t.samples);
        entry.1 = entry.1.saturating_add(t.failures.min(t.samples));
        entry.2 = entry.2.max(t.unanswered_rounds);
    }

    let (mut failing, mut passing, mut unsure, mut silent) = (0u32, 0u32, 0u32, 0u32);
    let (mut samples, mut failures) = (0u64, 0u64);
    let mut most_samples = 0u32;
    for &(s, f, rounds) in by_checker.values() {
        most_samples = most_samples.max(s);
        match probe_call(s, f, rounds, failover) {
            Call::Fail => failing += 1,
            Call::Pass => passing += 1,
            Call::Unsure => unsure += 1,
            Call::Abstain => continue,
        }
        if rounds >= DOWN_ROUNDS {
            silent += 1;
        }
        samples += u64::from(s);
        failures += u64::from(f.min(s));
    }
    let checkers = failing + passing + unsure;
    let probes = Evidence {
        requests: samples,
        failures,
        source: Source::Probes,
    };
    let probes_call = if checkers == 0 {
        Call::Abstain
    } else if failing * 2 > checkers {
        Call::Fail
    } else if passing * 2 > checkers {
        Call::Pass
    } else {
        Call::Unsure
    };

    let window_ms = i64::from(failover.window_seconds) * 1000;
    let pool = |since: i64| {
        traffic
            .iter()
            .filter(|t| t.end_ms > since && t.end_ms <= now_ms)
            .fold(
                Evidence {
                    source: Source::Traffic,
                    ..Evidence::default()
                },
                |mut e, t| {
                    e.requests = e.requests.saturating_add(t.requests);
                    e.failures = e.failures.saturating_add(t.failures.min(t.requests));
                    e
                },
            )
    };
    let traffic_all = pool(now_ms - window_ms);
    let traffic_short = pool(now_ms - TRAFFIC_SHORT_WINDOW_MS.min(window_ms));
    let by_traffic = traffic_all.requests >= traffic_min_requests(failover).max(1);
    let zone_silent = checkers > 0 && silent * 2 > checkers;

    let (call, deciding) = if by_traffic {
        let z = confidence::TRAFFIC_FAIL_Z;
        let whole = rate_call(traffic_all.failures, traffic_all.requests, failover, z);
        let short = rate_call(traffic_short.failures, traffic_short.requests, failover, z);
        let call = if whole == Call::Fail || short == Call::Fail || zone_silent {
            Call::Fail
        } else {
            whole
        };
        (call, traffic_all)
    } else {
        (probes_call, probes)
    };
    let z_fail = match deciding.source {
        Source::Probes => confidence::PROBES_FAIL_Z,
        Source::Traffic => confidence::TRAFFIC_FAIL_Z,
    };
    let (lower, _) = deciding.bounds_percent(z_fail);
    let (_, upper) = deciding.bounds_percent(confidence::RECOVER_Z);

    let threshold = failover.failure_rate_percent;
    let observed = match deciding.source {
        Source::Probes => format!(
            "probes: {:.1}% failed of {samples} from {checkers} checker{}",
            probes.rate_percent(),
            if checkers == 1 { "" } else { "s" }
        ),
        Source::Traffic => format!(
            "traffic: {:.2}% failed of {} requests ({:.2}% of {} in the last {} s)",
            traffic_all.rate_percent(),
            traffic_all.requests,
            traffic_short.rate_percent(),
            traffic_short.requests,
            TRAFFIC_SHORT_WINDOW_MS.min(window_ms) / 1000
        ),
    };
    let bounds = format!("bounds {lower:.1}%..{upper:.1}%");

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

    let (state, reason) = match call {
        Call::Fail => {
            let reason = if zone_silent {
                format!("{silent} of {checkers} checkers got no answer for {DOWN_ROUNDS}+ rounds ({observed})")
            } else if by_traffic {
                format!(
                    "failure rate above {threshold}% with 99% confidence ({observed}; {bounds})"
                )
            } else {
                format!(
                    "{failing} of {checkers} checkers confidently above {threshold}% ({observed}; {bounds})"
                )
            };
            if prev.health == Health::Unhealthy {
                (held(None), reason)
            } else {
                (changed(Health::Unhealthy), reason)
            }
        }
        // A split vote says nothing of a zone never judged yet.
        Call::Unsure if prev.health == Health::Unknown && !by_traffic && failing > 0 => (
            held(None),
            format!(
                "no majority: {failing} failing, {passing} passing, {unsure} unsure ({observed})"
            ),
        ),
        Call::Pass | Call::Unsure if prev.health != Health::Unhealthy => {
            let reason = format!("not above {threshold}% ({observed}; {bounds})");
            match prev.health {
                Health::Unknown => (changed(Health::Healthy), reason),
                _ => (held(None), reason),
            }
        }
        Call::Pass => {
            let reason = format!("below {threshold}% ({observed}; {bounds})");
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
        Call::Unsure => (
            held(None),
            format!("not confidently below {threshold}% yet ({observed}; {bounds})"),
        ),
        Call::Abstain if by_checker.is_empty() => (held(None), "no health reports".to_owned()),
        Call::Abstain => (
            held(None),
            format!(
                "not enough samples: no checker has {} yet (most: {most_samples})",
                failover.min_samples.max(1)
            ),
        ),
    };

    let verdict = Verdict {
        failure_rate_percent: deciding.rate_percent(),
        samples: u32::try_from(deciding.requests).unwrap_or(u32::MAX),
        checkers,
        failing_checkers: failing,
        probes,
        traffic: traffic_all,
        decided_by: deciding.source,
        lower_bound_percent: lower,
        upper_bound_percent: upper,
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
                unanswered_rounds: 0,
                endpoints: Default::default(),
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
                tallies: &[("a", 10, 10)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 1,
                want_failing: 1,
            },
            Case {
                name: "at the threshold is not evidence of failing",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 100, 5)],
                want: state(Healthy, 5, None),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "just above the threshold is noise, not evidence",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 100, 6)],
                want: state(Healthy, 5, None),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "2 failures of 30 (6.7%) under 5% is noise",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 2)],
                want: state(Healthy, 5, None),
                want_checkers: 1,
                want_failing: 0,
            },
            Case {
                name: "8 of 30 is not yet confident; 9 of 30 is",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 30, 9), ("b", 30, 8), ("c", 30, 9)],
                want: state(Unhealthy, NOW, None),
                want_checkers: 3,
                want_failing: 2,
            },
            Case {
                name: "far above the threshold over many samples fails",
                prev: Some(state(Healthy, 5, None)),
                tallies: &[("a", 100, 20)],
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
                tallies: &[("a", 30, 30), ("b", 30, 15), ("c", 30, 1)],
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
                tallies: &[("a", 30, 30), ("b", 30, 12)],
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
            let (got, verdict) = evaluate(case.prev.as_ref(), &tallies(case.tallies), &[], &f, NOW);
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
        let (got, _) = evaluate(Some(&prev), &tallies(&[("a", 10, 0)]), &[], &f, NOW);
        assert_eq!(got, state(Health::Healthy, NOW, None));
    }

    #[test]
    fn recovery_walks_through_time() {
        // Passing every 10 s: still unhealthy at +50 s, healthy at +60 s.
        let f = failover();
        let passing = tallies(&[("a", 30, 0), ("b", 30, 0)]);
        let mut s = state(Health::Unhealthy, 0, None);
        for t in (0..=50_000).step_by(10_000) {
            s = evaluate(Some(&s), &passing, &[], &f, NOW + t).0;
            assert_eq!(s.health, Health::Unhealthy, "at +{t}");
            assert_eq!(s.below_threshold_since_ms, Some(NOW));
        }
        let (s, v) = evaluate(Some(&s), &passing, &[], &f, NOW + 60_000);
        assert_eq!(s, state(Health::Healthy, NOW + 60_000, None));
        assert!(v.reason.starts_with("recovered"), "{}", v.reason);
    }

    #[test]
    fn verdict_aggregates_opinionated_checkers() {
        let (_, v) = evaluate(
            None,
            &tallies(&[("a", 40, 10), ("b", 60, 0), ("c", 5, 5)]),
            &[],
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
        let (s, v) = evaluate(None, &tallies(&[("a", 0, 0)]), &[], &f, NOW);
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
                failures: 1,
                unanswered_rounds: 0,
                endpoints: Default::default(),
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

    #[test]
    fn wilson_table() {
        // (failures, n, z, lower %, upper %), checked against the formula by hand.
        let cases: &[(u64, u64, f64, f64, f64)] = &[
            (0, 0, 2.576, 0.0, 100.0),
            (0, 30, 1.0, 0.0, 3.23),
            (1, 30, 1.0, 1.28, 8.40),
            (5, 30, 2.576, 5.73, 39.68),
            (9, 30, 5.5, 6.05, 74.03),
            (8, 30, 5.5, 4.93, 71.83),
            (30, 30, 2.576, 81.89, 100.0),
            (80, 1000, 2.576, 6.06, 10.5),
            (40, 1000, 1.0, 3.42, 4.67),
            (u64::MAX, 10, 2.0, 71.43, 100.0),
        ];
        for &(f, n, z, lo, hi) in cases {
            let (l, h) = wilson(f, n, z);
            assert!(
                (l * 100.0 - lo).abs() < 0.05 && (h * 100.0 - hi).abs() < 0.05,
                "{f}/{n} at z={z}: {:.2}..{:.2}, want {lo}..{hi}",
                l * 100.0,
                h * 100.0
            );
        }
    }

    fn silent(checker: &str, samples: u32, failures: u32, rounds: u32) -> ZoneTally {
        ZoneTally {
            checker: checker.to_owned(),
            samples,
            failures,
            unanswered_rounds: rounds,
            endpoints: Default::default(),
        }
    }

    #[test]
    fn silence_fails_a_zone_at_once_with_a_majority() {
        use Health::*;
        let f = failover();
        let healthy = state(Healthy, 5, None);
        // A full window of good probes, then two rounds without an answer.
        let (s, v) = evaluate(Some(&healthy), &[silent("a", 30, 2, 2)], &[], &f, NOW);
        assert_eq!(s, state(Unhealthy, NOW, None), "{}", v.reason);
        assert!(v.reason.contains("no answer"), "{}", v.reason);
        // One round is one lost probe, not silence.
        let (s, _) = evaluate(Some(&healthy), &[silent("a", 30, 1, 1)], &[], &f, NOW);
        assert_eq!(s.health, Healthy);
        // A checker cut off alone cannot fail the zone.
        let (s, _) = evaluate(
            Some(&healthy),
            &[
                silent("a", 30, 5, 5),
                silent("b", 30, 0, 0),
                silent("c", 30, 0, 0),
            ],
            &[],
            &f,
            NOW,
        );
        assert_eq!(s.health, Healthy);
        // Silence counts even before minSamples are in.
        let (s, _) = evaluate(None, &[silent("a", 2, 2, 2)], &[], &f, NOW);
        assert_eq!(s.health, Unhealthy);
        // Silence outvotes traffic that still looks good on the whole window.
        let traffic = steady(&[(100, 0)], 30, NOW);
        let (s, v) = evaluate(Some(&healthy), &[silent("a", 30, 2, 2)], &traffic, &f, NOW);
        assert_eq!(s.health, Unhealthy);
        assert_eq!(v.decided_by, Source::Traffic);
    }

    /// `seconds` one-second intervals ending at `now`, from the oldest,
    /// repeating the last `(requests, failures)` pair given.
    fn steady(per_second: &[(u64, u64)], seconds: i64, now: i64) -> Vec<TrafficTally> {
        (0..seconds)
            .map(|i| {
                let (requests, failures) = per_second[(i as usize).min(per_second.len() - 1)];
                TrafficTally {
                    reporter: "envoy-1".to_owned(),
                    end_ms: now - (seconds - 1 - i) * 1000,
                    requests,
                    failures,
                }
            })
            .collect()
    }

    #[test]
    fn traffic_decides_once_there_is_enough() {
        use Health::*;
        let f = failover();
        let healthy = state(Healthy, 5, None);
        let bad_probes = tallies(&[("a", 30, 30)]);
        // 5 requests a second over 30 s: 150, over the 100 needed. Traffic
        // is clean, so probes failing (a broken health endpoint) fail nothing.
        let clean = steady(&[(5, 0)], 30, NOW);
        let (s, v) = evaluate(Some(&healthy), &bad_probes, &clean, &f, NOW);
        assert_eq!(
            (s.health, v.decided_by),
            (Healthy, Source::Traffic),
            "{}",
            v.reason
        );
        assert_eq!(v.probes.requests, 30);
        assert_eq!(v.traffic.requests, 150);
        // Too little traffic: the probes decide.
        let trickle = steady(&[(3, 0)], 30, NOW);
        let (s, v) = evaluate(Some(&healthy), &bad_probes, &trickle, &f, NOW);
        assert_eq!((s.health, v.decided_by), (Unhealthy, Source::Probes));
        // Intervals outside the window do not count.
        let stale = steady(&[(100, 0)], 30, NOW - 31_000);
        let (_, v) = evaluate(Some(&healthy), &[], &stale, &f, NOW);
        assert_eq!((v.decided_by, v.traffic.requests), (Source::Probes, 0));
        // 8% over the last 10 s fails even behind 20 s of clean traffic.
        let mut turned = steady(&[(200, 0)], 30, NOW);
        for t in turned.iter_mut().skip(20) {
            t.failures = 16;
        }
        let (s, v) = evaluate(Some(&healthy), &[], &turned, &f, NOW);
        assert_eq!(s.health, Unhealthy, "{}", v.reason);
        // 4% with thousands of requests is confidently not failing, and an
        // unhealthy zone recovers on traffic like on probes.
        let four = steady(&[(200, 8)], 30, NOW);
        let (s, v) = evaluate(Some(&healthy), &[], &four, &f, NOW);
        assert_eq!(s.health, Healthy, "{}", v.reason);
        let down = state(Unhealthy, 5, Some(NOW - 60_000));
        let (s, _) = evaluate(Some(&down), &[], &four, &f, NOW);
        assert_eq!(s, state(Healthy, NOW, None));
        // Failures over requests in a row are clamped, not a rate over 100%.
        let odd = steady(&[(100, u64::MAX)], 30, NOW);
        let (_, v) = evaluate(None, &[], &odd, &f, NOW);
        assert!((v.failure_rate_percent - 100.0).abs() < 1e-9);
    }

    /// splitmix64: a small deterministic generator, so each simulated run
    /// is reproducible from its seed without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// True with probability `p`.
        fn chance(&mut self, p: f64) -> bool {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
        }
    }

    /// One checker probing once a second for `seconds`, a zone failing at
    /// `rate` from the start; returns the second the zone was failed over.
    fn probe_run(seed: u64, rate: f64, seconds: i64) -> Option<i64> {
        let f = failover();
        let mut rng = Rng(seed);
        let mut window = Window::new(f.window_seconds);
        let mut state = None;
        for t in 0..seconds {
            let at_ms = NOW + t * 1000;
            window.insert(Sample {
                at_ms,
                ok: !rng.chance(rate),
            });
            let (s, _) = evaluate(state.as_ref(), &[tally(&window, "c")], &[], &f, at_ms);
            if s.health == Health::Unhealthy {
                return Some(t);
            }
            state = Some(s);
        }
        None
    }

    #[test]
    fn probes_at_4_percent_never_fail_over_in_10_minutes() {
        let tripped: Vec<u64> = (0..300)
            .filter(|&seed| probe_run(seed, 0.04, 600).is_some())
            .collect();
        assert!(tripped.is_empty(), "failed over in runs {tripped:?}");
    }

    #[test]
    fn probes_at_25_percent_fail_over() {
        let mut times: Vec<i64> = (0..100)
            .map(|seed| probe_run(seed, 0.25, 600).expect("25% is failed over"))
            .collect();
        times.sort_unstable();
        // Measured: median about half a minute, the slowest of 100 runs a few.
        assert!(times[50] <= 60, "median {} s", times[50]);
    }

    /// Traffic of `rps` a second from one reporter in one-second intervals,
    /// healthy for 30 s and then failing at `rate`; returns the seconds from
    /// the change to the failover.
    fn traffic_run(seed: u64, rate: f64, rps: u64, seconds: i64) -> Option<i64> {
        let f = failover();
        let mut rng = Rng(seed);
        let mut intervals: VecDeque<TrafficTally> = VecDeque::new();
        let mut state = None;
        let start = 30;
        for t in 0..start + seconds {
            let p = if t >= start { rate } else { 0.0 };
            let failures = (0..rps).filter(|_| rng.chance(p)).count() as u64;
            let end_ms = NOW + (t + 1) * 1000;
            intervals.push_back(TrafficTally {
                reporter: "envoy".to_owned(),
                end_ms,
                requests: rps,
                failures,
            });
            if intervals.len() > 40 {
                intervals.pop_front();
            }
            let traffic: Vec<TrafficTally> = intervals.iter().cloned().collect();
            // Probes see nothing wrong: the health endpoint answers.
            let probes = tallies(&[("c", 30, 0)]);
            let (s, v) = evaluate(state.as_ref(), &probes, &traffic, &f, end_ms);
            if s.health == Health::Unhealthy {
                assert_eq!(v.decided_by, Source::Traffic);
                return Some(t + 1 - start);
            }
            state = Some(s);
        }
        None
    }

    /// Seconds to fail over a zone turning 8% bad, over 100 seeded runs at
    /// `rps`, sorted.
    fn eight_percent_times(rps: u64) -> Vec<i64> {
        let mut times: Vec<i64> = (0..100)
            .map(|seed| traffic_run(seed, 0.08, rps, 60).expect("8% is failed over"))
            .collect();
        times.sort_unstable();
        times
    }

    #[test]
    fn traffic_at_8_percent_fails_over_within_10_s() {
        // At 300 requests a second: every run within 10 s.
        let t300 = eight_percent_times(300);
        assert!(t300[99] <= 10, "300 req/s: {t300:?}");
        // At 200, all but the odd run (measured: 1 of 100 at 11 s).
        let t200 = eight_percent_times(200);
        assert!(t200[97] <= 10 && t200[99] <= 15, "200 req/s: {t200:?}");
        // At exactly 100 a second, 1,000 requests in 10 s are about as few
        // as can tell 8% from 5% (docs/failover.md): most runs make 10 s.
        let t100 = eight_percent_times(100);
        assert!(
            t100[50] <= 10 && t100[85] <= 10 && t100[99] <= 30,
            "100 req/s: {t100:?}"
        );
        eprintln!(
            "8% failing, seconds to fail over (median / 95th / max of 100 runs): \
             100 req/s {}/{}/{}, 200 req/s {}/{}/{}, 300 req/s {}/{}/{}",
            t100[50],
            t100[95],
            t100[99],
            t200[50],
            t200[95],
            t200[99],
            t300[50],
            t300[95],
            t300[99]
        );
    }

    #[test]
    fn traffic_at_4_percent_never_fails_over_in_10_minutes() {
        for seed in 0..20 {
            assert_eq!(traffic_run(seed, 0.04, 200, 600), None, "seed {seed}");
        }
        let tripped = (0..20)
            .filter(|&seed| traffic_run(seed, 0.04, 100, 600).is_some())
            .count();
        assert!(tripped <= 1, "{tripped} of 20 runs at 100 req/s");
    }

    #[test]
    fn a_zone_that_stops_answering_fails_over_on_the_second_silent_round() {
        // Probes every second of one endpoint; it stops answering at t = 0.
        let f = failover();
        let mut window = Window::new(f.window_seconds);
        for t in -30..0 {
            window.insert(Sample {
                at_ms: NOW + t * 1000,
                ok: true,
            });
        }
        let mut state = Some(state(Health::Healthy, 5, None));
        let mut silent_rounds = 0;
        let mut failed_at = None;
        for t in 0..10 {
            let at_ms = NOW + t * 1000;
            window.insert(Sample { at_ms, ok: false });
            silent_rounds += 1;
            let mut tally = tally(&window, "c");
            tally.unanswered_rounds = silent_rounds;
            let (s, _) = evaluate(state.as_ref(), &[tally], &[], &f, at_ms);
            if s.health == Health::Unhealthy {
                failed_at = Some(t);
                break;
            }
            state = Some(s);
        }
        // The second probe, 1 s after the first failed one; the report
        // (0.5 s) and the leader's tick (0.5 s) keep it within 3 s.
        assert_eq!(failed_at, Some(1));
    }
}

//! The verdict on a canary from what it served: its failure rate against
//! the limits and against the stable version's, per zone and over every
//! zone that runs it, and the Prometheus checks.

use std::collections::{BTreeMap, BTreeSet};

use meridian_failover::wilson;
use meridian_policy::RolloutAnalysis;
use serde::{Deserialize, Serialize};

/// Standard deviations of confidence for a failure acted on before its
/// interval ends (99.95% one-sided). The window is judged again at every
/// leader tick, some 60 times a minute, and each look is a chance for
/// noise to pass for a failure: point estimates are acted on only once, at
/// the interval's end, and earlier only a failure this certain (a canary
/// failing far over its limits, on enough requests) rolls back at once.
pub const DECISIVE_Z: f64 = 3.29;

/// Requests and failures of one version in one zone over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub failures: u64,
}

impl Counts {
    pub fn new(requests: u64, failures: u64) -> Counts {
        // A report can never fail more requests than it made.
        Counts {
            requests,
            failures: failures.min(requests),
        }
    }

    fn add(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_add(other.requests),
            failures: self.failures.saturating_add(other.failures),
        }
    }

    /// Failures in percent of requests; `None` without requests.
    pub fn failure_rate_percent(self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures as f64 * 100.0 / self.requests as f64)
    }
}

/// What the data planes reported over the analysis window, per zone, for
/// the canary's version and for the stable version of the route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub canary: BTreeMap<String, Counts>,
    pub stable: BTreeMap<String, Counts>,
}

/// Prometheus answers by query name: the number, or why there is none.
pub type PrometheusResults = BTreeMap<String, Result<f64, String>>;

/// What an analysis concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Too little traffic, or a check without a value: no verdict yet.
    Inconclusive,
}

/// Which stable traffic the canary was compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The stable version in the same zones.
    SameZones,
    /// The stable version in every available zone (the same zones had too
    /// few requests, for example a zone at 100% canary).
    AllZones,
    /// Too little stable traffic anywhere: the absolute limit alone applies.
    None,
}

/// The canary against the stable version in one zone, or over every zone
/// that runs the canary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub canary: Counts,
    /// The stable version in the same zones.
    pub stable: Counts,
    pub canary_failure_rate_percent: Option<f64>,
    pub stable_failure_rate_percent: Option<f64>,
    pub baseline: Baseline,
    /// The stable traffic the canary was held against (zero under
    /// [`Baseline::None`]).
    pub against: Counts,
    pub baseline_failure_rate_percent: Option<f64>,
    pub verdict: Verdict,
    /// Failing beyond doubt: even at [`DECISIVE_Z`] confidence bounds,
    /// not only by the point estimates.
    pub decisive: bool,
}

/// One Prometheus check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub max: f64,
    pub verdict: Verdict,
}

/// One analysis of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// The window the traffic was counted over.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Each zone that took canary traffic in the window.
    pub zones: BTreeMap<String, Comparison>,
    /// Those zones together.
    pub all: Comparison,
    pub prometheus: BTreeMap<String, QueryResult>,
    pub verdict: Verdict,
    /// A failure beyond doubt in some zone or overall, to act on at once
    /// rather than at the end of the interval. Prometheus values are
    /// never decisive: a query's own range is its interval.
    pub decisive: bool,
    /// Why it failed, or what it lacks; empty when it passes.
    pub reasons: Vec<String>,
}

/// Judges the canary on `traffic`.
///
/// `canary_zones` are the zones that took canary traffic in the window
/// (weight above 0, not failed over or drained); `available` the zones not
/// failed over or drained, whose stable traffic may serve as a baseline.
/// Each of those zones with at least `minRequests` canary requests is
/// judged, and so are they all together; the rollout fails if any fails,
/// and passes when all together pass (a zone with too few requests on its
/// own does not hold back a canary that has enough overall) and every
/// Prometheus check has a value under its `max`.
///
/// A unit fails when the canary's failure rate is over
/// `maxFailureRatePercent`, or more than `maxFailureRateIncreasePercent`
/// points over the baseline's. The absolute limit is not applied where the
/// stable version fails as much (its baseline is over the limit too): that
/// zone is broken for every version, which is failover's business, and the
/// canary is then judged on the difference alone.
pub fn analyse(
    spec: &RolloutAnalysis,
    canary_zones: &BTreeSet<String>,
    available: &BTreeSet<String>,
    traffic: &Traffic,
    prometheus: Option<&PrometheusResults>,
    window: (i64, i64),
) -> Analysis {
    let count = |m: &BTreeMap<String, Counts>, z: &String| {
        m.get(z)
            .map(|c| Counts::new(c.requests, c.failures))
            .unwrap_or_default()
    };
    let sum = |m: &BTreeMap<String, Counts>, zones: &BTreeSet<String>| {
        zones
            .iter()
            .fold(Counts::default(), |acc, z| acc.add(count(m, z)))
    };
    let all_stable = sum(&traffic.stable, available);
    // Failures decide a failing verdict; gaps explain an inconclusive one.
    let (mut failures, mut gaps) = (Vec::new(), Vec::new());
    let mut note = |what: &str, c: &Comparison| match c.verdict {
        Verdict::Pass => {}
        Verdict::Fail => failures.push(format!("{what}: {}", failure(c, spec))),
        Verdict::Inconclusive => gaps.push(format!(
            "{what}: {} canary requests, {} needed",
            c.canary.requests, spec.min_requests
        )),
    };
    let mut zones = BTreeMap::new();
    for z in canary_zones {
        let c = compare(
            spec,
            count(&traffic.canary, z),
            count(&traffic.stable, z),
            all_stable,
        );
        note(&format!("zone {z}"), &c);
        zones.insert(z.clone(), c);
    }
    let all = compare(
        spec,
        sum(&traffic.canary, canary_zones),
        sum(&traffic.stable, canary_zones),
        all_stable,
    );
    if canary_zones.is_empty() {
        gaps.push("no zone takes canary traffic".to_owned());
    } else {
        note("all zones", &all);
    }

    let mut checks = BTreeMap::new();
    for q in spec.prometheus.iter().flat_map(|p| &p.queries) {
        let answer = match prometheus {
            None => Err("not queried".to_owned()),
            Some(results) => results
                .get(&q.name)
                .cloned()
                .unwrap_or_else(|| Err("no result".to_owned())),
        };
        let check = match answer {
            // NaN (Prometheus's 0/0) and infinities are no measurement.
            Ok(v) if !v.is_finite() => QueryResult {
                value: None,
                error: Some(format!("{v} is not a number")),
                max: q.max,
                verdict: Verdict::Inconclusive,
            },
            Ok(v) => QueryResult {
                value: Some(v),
                error: None,
                max: q.max,
                verdict: if v > q.max {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                },
            },
            Err(e) => QueryResult {
                value: None,
                error: Some(e),
                max: q.max,
                verdict: Verdict::Inconclusive,
            },
        };
        match (&check.verdict, check.value, &check.error) {
            (Verdict::Fail, Some(v), _) => failures.push(format!(
                "prometheus {}: {v} is over its maximum {}",
                q.name, q.max
            )),
            (Verdict::Inconclusive, _, Some(e)) => gaps.push(format!("prometheus {}: {e}", q.name)),
            _ => {}
        }
        checks.insert(q.name.clone(), check);
    }

    let (verdict, reasons) = if !failures.is_empty() {
        (Verdict::Fail, failures)
    } else if !canary_zones.is_empty()
        && all.verdict == Verdict::Pass
        && checks.values().all(|q| q.verdict == Verdict::Pass)
    {
        (Verdict::Pass, Vec::new())
    } else {
        (Verdict::Inconclusive, gaps)
    };
    let decisive = verdict == Verdict::Fail && (all.decisive || zones.values().any(|c| c.decisive));
    Analysis {
        from_ms: window.0,
        to_ms: window.1,
        decisive,
        zones,
        all,
        prometheus: checks,
        verdict,
        reasons,
    }
}

fn compare(
    spec: &RolloutAnalysis,
    canary: Counts,
    stable: Counts,
    all_stable: Counts,
) -> Comparison {
    let min = u64::from(spec.min_requests);
    let (baseline, against) = if stable.requests >= min {
        (Baseline::SameZones, stable)
    } else if all_stable.requests >= min {
        (Baseline::AllZones, all_stable)
    } else {
        (Baseline::None, Counts::default())
    };
    let base_rate = against.failure_rate_percent();
    let verdict = match canary.failure_rate_percent() {
        Some(rate) if canary.requests >= min => {
            if over_limit(spec, rate, base_rate) || over_stable(spec, rate, base_rate) {
                Verdict::Fail
            } else {
                Verdict::Pass
            }
        }
        _ => Verdict::Inconclusive,
    };
    let decisive = verdict == Verdict::Fail && {
        let pct = |(lo, hi): (f64, f64)| (lo * 100.0, hi * 100.0);
        let (canary_lo, _) = pct(wilson(canary.failures, canary.requests, DECISIVE_Z));
        let base_hi = (baseline != Baseline::None)
            .then(|| pct(wilson(against.failures, against.requests, DECISIVE_Z)).1);
        // Waived as for the point estimate, where the stable version may
        // be over the limit too.
        let zone_broken = base_hi.is_some_and(|b| b > spec.max_failure_rate_percent);
        (canary_lo > spec.max_failure_rate_percent && !zone_broken)
            || base_hi.is_some_and(|b| canary_lo - b > spec.max_failure_rate_increase_percent)
    };
    Comparison {
        canary,
        stable,
        canary_failure_rate_percent: canary.failure_rate_percent(),
        stable_failure_rate_percent: stable.failure_rate_percent(),
        baseline,
        against,
        baseline_failure_rate_percent: base_rate,
        verdict,
        decisive,
    }
}

/// Over the absolute limit, unless the stable version is over it too.
fn over_limit(spec: &RolloutAnalysis, rate: f64, base: Option<f64>) -> bool {
    let zone_broken = base.is_some_and(|b| b > spec.max_failure_rate_percent);
    rate > spec.max_failure_rate_percent && !zone_broken
}

fn over_stable(spec: &RolloutAnalysis, rate: f64, base: Option<f64>) -> bool {
    base.is_some_and(|b| rate - b > spec.max_failure_rate_increase_percent)
}

/// Why a failing comparison fails, with its numbers.
fn failure(c: &Comparison, spec: &RolloutAnalysis) -> String {
    let rate = c.canary_failure_rate_percent.unwrap_or(0.0);
    let base = c.baseline_failure_rate_percent;
    let stable = match (c.baseline, base) {
        (Baseline::None, _) | (_, None) => "no stable baseline".to_owned(),
        (b, Some(r)) => format!(
            "stable {r:.2}% ({} of {}{})",
            c.against.failures,
            c.against.requests,
            if b == Baseline::AllZones {
                ", all zones"
            } else {
                ""
            }
        ),
    };
    let mut why = Vec::new();
    if over_limit(spec, rate, base) {
        why.push(format!("over the {}% limit", spec.max_failure_rate_percent));
    }
    if over_stable(spec, rate, base) {
        why.push(format!(
            "{:.2} points over stable, over the {}-point limit",
            rate - base.unwrap_or(0.0),
            spec.max_failure_rate_increase_percent
        ));
    }
    format!(
        "canary {rate:.2}% failing ({} of {}) vs {stable}: {}",
        c.canary.failures,
        c.canary.requests,
        why.join(" and ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policy::{PrometheusAnalysis, PrometheusQuery};

    fn spec(prometheus: bool) -> RolloutAnalysis {
        RolloutAnalysis {
            max_failure_rate_percent: 2.0,
            max_failure_rate_increase_percent: 1.0,
            min_requests: 100,
            inconclusive_limit: 3,
            prometheus: prometheus.then(|| PrometheusAnalysis {
                url: "http://127.0.0.1:9090".into(),
                queries: vec![PrometheusQuery {
                    name: "p99".into(),
                    query: "histogram_quantile(0.99, x)".into(),
                    max: 300.0,
                }],
            }),
        }
    }

    fn zones(z: &[&str]) -> BTreeSet<String> {
        z.iter().map(|z| z.to_string()).collect()
    }

    fn counts(c: &[(&str, u64, u64)]) -> BTreeMap<String, Counts> {
        c.iter()
            .map(|(z, r, f)| (z.to_string(), Counts::new(*r, *f)))
            .collect()
    }

    struct Case {
        what: &'static str,
        canary: &'static [(&'static str, u64, u64)],
        stable: &'static [(&'static str, u64, u64)],
        canary_zones: &'static [&'static str],
        available: &'static [&'static str],
        prometheus: Option<&'static [(&'static str, Result<f64, &'static str>)]>,
        verdict: Verdict,
        /// Each must be in the reasons, joined.
        says: &'static [&'static str],
    }

    const BASE: Case = Case {
        what: "",
        canary: &[],
        stable: &[],
        canary_zones: &["a"],
        available: &["a", "b"],
        prometheus: None,
        verdict: Verdict::Pass,
        says: &[],
    };

    #[test]
    fn verdicts() {
        use Verdict::*;
        let cases = [
            Case {
                what: "healthy",
                canary: &[("a", 1000, 5)],
                stable: &[("a", 19000, 57)],
                ..BASE
            },
            Case {
                what: "limits are inclusive",
                canary: &[("a", 1000, 20)],
                stable: &[("a", 10000, 100)],
                ..BASE
            },
            Case {
                what: "over the absolute limit only",
                canary: &[("a", 1000, 25)],
                stable: &[("a", 10000, 180)],
                verdict: Fail,
                says: &["zone a: canary 2.50% failing (25 of 1000) vs stable 1.80% (180 of 10000): over the 2% limit"],
                ..BASE
            },
            Case {
                what: "too far over stable only",
                canary: &[("a", 1000, 15)],
                stable: &[("a", 10000, 20)],
                verdict: Fail,
                says: &["1.30 points over stable, over the 1-point limit"],
                ..BASE
            },
            Case {
                what: "the issue's bad canary: 5% 503s against none",
                canary: &[("a", 1000, 50)],
                stable: &[("a", 19000, 0)],
                verdict: Fail,
                says: &["canary 5.00% failing (50 of 1000) vs stable 0.00% (0 of 19000): over the 2% limit and 5.00 points over stable"],
                ..BASE
            },
            Case {
                what: "a zone broken for every version is not the canary's fault",
                canary: &[("a", 1000, 300)],
                stable: &[("a", 10000, 2900)],
                ..BASE
            },
            Case {
                what: "but a canary worse than a broken zone fails",
                canary: &[("a", 1000, 400)],
                stable: &[("a", 10000, 2900)],
                verdict: Fail,
                says: &["11.00 points over stable"],
                ..BASE
            },
            Case {
                what: "too few requests",
                canary: &[("a", 99, 50)],
                stable: &[("a", 19000, 0)],
                verdict: Inconclusive,
                says: &["zone a: 99 canary requests, 100 needed", "all zones: 99 canary requests"],
                ..BASE
            },
            Case {
                what: "zones too small alone pass together",
                canary: &[("a", 60, 0), ("b", 60, 0)],
                stable: &[("a", 5000, 0), ("b", 5000, 0)],
                canary_zones: &["a", "b"],
                ..BASE
            },
            Case {
                what: "a failing zone is not hidden by the pool",
                canary: &[("a", 1000, 0), ("b", 100, 10)],
                stable: &[("a", 5000, 0), ("b", 5000, 0)],
                canary_zones: &["a", "b"],
                verdict: Fail,
                says: &["zone b: canary 10.00% failing (10 of 100)"],
                ..BASE
            },
            Case {
                what: "no stable in the zone: every available zone's",
                canary: &[("a", 1000, 15)],
                stable: &[("b", 5000, 0)],
                verdict: Fail,
                says: &["vs stable 0.00% (0 of 5000, all zones)"],
                ..BASE
            },
            Case {
                what: "stable of a zone failed over is no baseline",
                canary: &[("a", 1000, 15)],
                stable: &[("b", 5000, 0)],
                available: &["a"],
                ..BASE
            },
            Case {
                what: "no zone takes canary traffic",
                canary: &[("a", 1000, 0)],
                canary_zones: &[],
                verdict: Inconclusive,
                says: &["no zone takes canary traffic"],
                ..BASE
            },
            Case {
                what: "more failures than requests count as all failing",
                canary: &[("a", 100, 500)],
                verdict: Fail,
                says: &["canary 100.00% failing (100 of 100)"],
                ..BASE
            },
            Case {
                what: "prometheus under its maximum",
                canary: &[("a", 1000, 0)],
                prometheus: Some(&[("p99", Ok(300.0))]),
                ..BASE
            },
            Case {
                what: "prometheus over its maximum",
                canary: &[("a", 1000, 0)],
                prometheus: Some(&[("p99", Ok(301.5))]),
                verdict: Fail,
                says: &["prometheus p99: 301.5 is over its maximum 300"],
                ..BASE
            },
            Case {
                what: "prometheus over its maximum fails even with too little traffic",
                canary: &[("a", 10, 0)],
                prometheus: Some(&[("p99", Ok(1000.0))]),
                verdict: Fail,
                says: &["prometheus p99"],
                ..BASE
            },
            Case {
                what: "prometheus NaN",
                canary: &[("a", 1000, 0)],
                prometheus: Some(&[("p99", Ok(f64::NAN))]),
                verdict: Inconclusive,
                says: &["prometheus p99: NaN is not a number"],
                ..BASE
            },
            Case {
                what: "prometheus unreachable",
                canary: &[("a", 1000, 0)],
                prometheus: Some(&[("p99", Err("connection refused"))]),
                verdict: Inconclusive,
                says: &["prometheus p99: connection refused"],
                ..BASE
            },
            Case {
                what: "prometheus without this query's answer",
                canary: &[("a", 1000, 0)],
                prometheus: Some(&[("other", Ok(1.0))]),
                verdict: Inconclusive,
                says: &["prometheus p99: no result"],
                ..BASE
            },
        ];
        for c in cases {
            let traffic = Traffic {
                canary: counts(c.canary),
                stable: counts(c.stable),
            };
            let results: Option<PrometheusResults> = c.prometheus.map(|p| {
                p.iter()
                    .map(|(n, r)| (n.to_string(), r.map_err(str::to_owned)))
                    .collect()
            });
            let a = analyse(
                &spec(c.prometheus.is_some()),
                &zones(c.canary_zones),
                &zones(c.available),
                &traffic,
                results.as_ref(),
                (1000, 2000),
            );
            assert_eq!(a.verdict, c.verdict, "{}: {:?}", c.what, a.reasons);
            let said = a.reasons.join("; ");
            for s in c.says {
                assert!(said.contains(s), "{}: {said:?} lacks {s:?}", c.what);
            }
            assert_eq!(
                a.reasons.is_empty(),
                c.verdict == Verdict::Pass,
                "{}",
                c.what
            );
        }
    }

    #[test]
    fn queried_or_not_prometheus_decides_a_pass() {
        let traffic = Traffic {
            canary: counts(&[("a", 1000, 0)]),
            stable: counts(&[("a", 1000, 0)]),
        };
        let a = analyse(
            &spec(true),
            &zones(&["a"]),
            &zones(&["a"]),
            &traffic,
            None,
            (0, 1),
        );
        assert_eq!(a.verdict, Verdict::Inconclusive);
        assert_eq!(a.reasons, ["prometheus p99: not queried"]);
        assert_eq!(a.prometheus["p99"].verdict, Verdict::Inconclusive);
    }

    #[test]
    fn the_analysis_keeps_its_numbers_and_round_trips() {
        let traffic = Traffic {
            canary: counts(&[("a", 1000, 5), ("b", 10, 0)]),
            stable: counts(&[("a", 19000, 57)]),
        };
        let a = analyse(
            &spec(true),
            &zones(&["a", "b"]),
            &zones(&["a", "b"]),
            &traffic,
            Some(&[("p99".to_owned(), Ok(12.5))].into()),
            (1000, 61000),
        );
        assert_eq!(a.verdict, Verdict::Pass);
        let za = &a.zones["a"];
        assert_eq!(za.canary, Counts::new(1000, 5));
        assert_eq!(za.canary_failure_rate_percent, Some(0.5));
        assert_eq!(za.stable_failure_rate_percent, Some(0.3));
        assert_eq!(za.baseline, Baseline::SameZones);
        assert_eq!(a.zones["b"].verdict, Verdict::Inconclusive);
        assert_eq!(a.zones["b"].baseline, Baseline::AllZones);
        assert_eq!(a.all.canary, Counts::new(1010, 5));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["zones"]["a"]["canaryFailureRatePercent"], 0.5);
        assert_eq!(json["zones"]["b"]["baseline"], "all-zones");
        assert_eq!(json["prometheus"]["p99"]["value"], 12.5);
        assert_eq!(json["verdict"], "pass");
        let back: Analysis = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
    }
}

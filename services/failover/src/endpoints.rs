//! Endpoint health from the checkers' probes.
//!
//! A zone's health says whether the zone as a whole serves; one endpoint
//! can fail while its zone is fine. Every checker reports, beside its zone
//! tally, one [`EndpointTally`] per endpoint. An endpoint is *failing* when
//! a majority of the checkers that report it see it failing:
//!
//! * its last [`FAILING_RUN`] probes or more failed in a row (a fresh
//!   failure, caught within three probe intervals), or
//! * it is already marked unhealthy and its failure rate in the window is
//!   still over the policy's `failureRatePercent` (so it comes back only
//!   once its failures have aged out, and does not flap).
//!
//! Failing endpoints are served to the data plane as `UNHEALTHY` (they get
//! no traffic, outlier detection or not), and their probes leave the zone's
//! tally, so one bad endpoint does not fail its whole zone over. When every
//! endpoint of a zone fails, none is marked: the zone's own health decides.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::health::ZoneTally;

/// Failed probes in a row after which a checker sees an endpoint failing.
/// Three, so that probe noise does not mark endpoints: at 4% of probes
/// failing at random, two in a row come once in 625 probes of an endpoint
/// (about every 10 minutes at 1 s), three once in 15,625 (4 hours).
pub const FAILING_RUN: u32 = 3;

/// What one checker saw of one endpoint over the policy's window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointTally {
    pub samples: u32,
    pub failures: u32,
    /// Probes in a row, up to now, that failed (answered wrongly or not at all).
    pub failing_run: u32,
}

/// Zone → endpoints (`ip:port`) marked unhealthy.
pub type Unhealthy = BTreeMap<String, BTreeSet<String>>;

/// How endpoints are named in reports and marks: `ip:port`, `[ip6]:port`.
pub fn authority(address: &str, port: u32) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

/// Whether one checker sees an endpoint failing.
fn sees_failing(t: &EndpointTally, marked: bool, failure_rate_percent: u32) -> bool {
    t.failing_run >= FAILING_RUN
        || (marked
            && t.samples > 0
            && u64::from(t.failures) * 100 > u64::from(failure_rate_percent) * u64::from(t.samples))
}

/// The endpoints of one zone a majority of their reporting checkers see
/// failing. `endpoints`: the zone's endpoints (`ip:port`) in the policy;
/// `marked`: those marked unhealthy now. Empty when every endpoint fails.
pub fn failing(
    tallies: &[ZoneTally],
    endpoints: &BTreeSet<String>,
    marked: &BTreeSet<String>,
    failure_rate_percent: u32,
) -> BTreeSet<String> {
    let mut votes: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for t in tallies {
        for (ep, e) in &t.endpoints {
            if !endpoints.contains(ep) {
                continue;
            }
            let v = votes.entry(ep.as_str()).or_default();
            v.0 += 1;
            if sees_failing(e, marked.contains(ep), failure_rate_percent) {
                v.1 += 1;
            }
        }
    }
    let out: BTreeSet<String> = votes
        .into_iter()
        .filter(|(_, (reporters, failing))| failing * 2 > *reporters)
        .map(|(ep, _)| ep.to_owned())
        .collect();
    if out.len() >= endpoints.len() {
        BTreeSet::new()
    } else {
        out
    }
}

/// The zone tallies without the probes of `excluded` endpoints, so the
/// zone is judged by the endpoints that serve.
pub fn without(tallies: &[ZoneTally], excluded: &BTreeSet<String>) -> Vec<ZoneTally> {
    tallies
        .iter()
        .map(|t| {
            let mut t = t.clone();
            for ep in excluded {
                if let Some(e) = t.endpoints.get(ep) {
                    t.samples = t.samples.saturating_sub(e.samples);
                    t.failures = t.failures.saturating_sub(e.failures).min(t.samples);
                }
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checker's zone tally from (endpoint, samples, failures, run).
    fn checker(name: &str, eps: &[(&str, u32, u32, u32)]) -> ZoneTally {
        let endpoints: BTreeMap<String, EndpointTally> = eps
            .iter()
            .map(|&(e, samples, failures, failing_run)| {
                (
                    e.to_owned(),
                    EndpointTally {
                        samples,
                        failures,
                        failing_run,
                    },
                )
            })
            .collect();
        ZoneTally {
            checker: name.to_owned(),
            samples: endpoints.values().map(|e| e.samples).sum(),
            failures: endpoints.values().map(|e| e.failures).sum(),
            unanswered_rounds: 0,
            endpoints,
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn majority_of_reporting_checkers_decides() {
        let zone = set(&["a:1", "b:1", "c:1"]);
        // (case, checkers, marked now, failing)
        type Case = (
            &'static str,
            Vec<ZoneTally>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "all healthy",
                vec![checker("x", &[("a:1", 10, 0, 0), ("b:1", 10, 0, 0)])],
                vec![],
                vec![],
            ),
            (
                "three failures in a row",
                vec![checker("x", &[("a:1", 10, 3, 3), ("b:1", 10, 0, 0)])],
                vec![],
                vec!["a:1"],
            ),
            (
                "two are noise",
                vec![checker("x", &[("a:1", 10, 2, 2), ("b:1", 10, 0, 0)])],
                vec![],
                vec![],
            ),
            (
                "one of two checkers is no majority",
                vec![
                    checker("x", &[("a:1", 10, 3, 3)]),
                    checker("y", &[("a:1", 10, 0, 0)]),
                ],
                vec![],
                vec![],
            ),
            (
                "two of three checkers",
                vec![
                    checker("x", &[("a:1", 10, 3, 3)]),
                    checker("y", &[("a:1", 10, 4, 4)]),
                    checker("z", &[("a:1", 10, 0, 0)]),
                ],
                vec![],
                vec!["a:1"],
            ),
            (
                "a checker that does not report it does not vote",
                vec![
                    checker("x", &[("a:1", 10, 3, 3)]),
                    checker("y", &[("b:1", 10, 0, 0)]),
                ],
                vec![],
                vec!["a:1"],
            ),
            (
                "marked stays out while its window is bad",
                vec![checker("x", &[("a:1", 10, 4, 0)])],
                vec!["a:1"],
                vec!["a:1"],
            ),
            (
                "marked comes back once its failures aged out",
                vec![checker("x", &[("a:1", 20, 1, 0)])],
                vec!["a:1"],
                vec![],
            ),
            (
                "unmarked with old failures is not failing",
                vec![checker("x", &[("a:1", 10, 4, 0)])],
                vec![],
                vec![],
            ),
            (
                "every endpoint failing: the zone decides",
                vec![checker(
                    "x",
                    &[("a:1", 10, 9, 9), ("b:1", 10, 9, 9), ("c:1", 10, 9, 9)],
                )],
                vec![],
                vec![],
            ),
            (
                "an endpoint the policy no longer has",
                vec![checker("x", &[("gone:1", 10, 9, 9)])],
                vec![],
                vec![],
            ),
        ];
        for (what, tallies, marked, want) in cases {
            let got = failing(&tallies, &zone, &set(&marked), 5);
            assert_eq!(got, set(&want), "{what}");
        }
    }

    #[test]
    fn failing_endpoints_leave_the_zone_tally() {
        let t = vec![checker("x", &[("a:1", 10, 10, 10), ("b:1", 10, 1, 0)])];
        let w = without(&t, &set(&["a:1"]));
        assert_eq!((w[0].samples, w[0].failures), (10, 1));
        let w = without(&t, &set(&["c:1"]));
        assert_eq!((w[0].samples, w[0].failures), (20, 11));
    }
}

//! How long a zone outage takes to reach clients, predicted from the policy,
//! so an operator sees the cost of a long window or TTL before an incident.

use meridian_policy::Spec;
use serde::{Deserialize, Serialize};

/// Worst-case time from a zone going down to clients having moved off it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PredictedFailover {
    /// Until the checkers' tallies fail the zone (see [`predicted_failover_ms`]).
    pub detection_ms: u64,
    /// Until the DNS provider serves the new records.
    pub dns_ms: u64,
    /// Until resolvers drop the old records: the policy's DNS TTL.
    pub ttl_ms: u64,
    pub total_ms: u64,
    /// Set when some zone can never be failed by its probes; the times then
    /// cover only the zones that can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Predicts the failover time of the policy's slowest zone.
///
/// A checker probes each endpoint of a zone once per `intervalMs`, so with
/// `E` endpoints it gains `E` samples per round, and a probe of a dead
/// endpoint reports after `timeoutMs`. The zone fails after `k` all-failing
/// rounds, where `k` is the worse of two starting points:
///
/// - an empty window (a new checker or zone): `minSamples` failures are
///   needed, so `k = ceil(minSamples / E)`;
/// - a full window of passing samples, `S = floor(windowMs / intervalMs) * E`
///   of them: the failures must exceed `failureRatePercent` of `S`, so
///   `k = floor(failureRatePercent * S / (100 * E)) + 1`.
///
/// The outage may begin just after a round, so detection is
/// `k * intervalMs + timeoutMs`. The time the control loop takes to notice
/// fresh tallies and push weights is not included: it is not in the policy.
/// A zone whose window can never hold `minSamples` samples, or whose
/// threshold is 100% or more, is never failed; it is left out and named in
/// `warning`.
pub fn predicted_failover_ms(spec: &Spec, dns_propagation_ms: u64) -> PredictedFailover {
    let hc = &spec.health_check;
    let f = &spec.failover;
    let interval = u64::from(hc.interval_ms).max(1);
    let window = u64::from(f.window_seconds) * 1000;
    let rounds_in_window = window / interval;
    let min_samples = u64::from(f.min_samples).max(1);
    let rate = u64::from(f.failure_rate_percent);

    let mut detection = 0u64;
    let mut undetectable = Vec::new();
    for zone in &spec.zones {
        // A zone without endpoints has nothing to probe; count it as one so
        // the prediction still says what one endpoint would take.
        let endpoints = (zone.endpoints.len() as u64).max(1);
        let window_samples = rounds_in_window * endpoints;
        if rate >= 100 || window_samples < min_samples {
            undetectable.push(zone.name.as_str());
            continue;
        }
        let from_empty = min_samples.div_ceil(endpoints);
        let from_full = rate * window_samples / (100 * endpoints) + 1;
        let rounds = from_empty.max(from_full);
        detection = detection.max(rounds * interval + u64::from(hc.timeout_ms));
    }

    let warning = (!undetectable.is_empty()).then(|| {
        let why = if rate >= 100 {
            "a failure rate cannot exceed 100%".to_owned()
        } else {
            format!(
                "{} s window at {interval} ms holds fewer than {min_samples} samples",
                f.window_seconds
            )
        };
        format!("never failed over: {} ({why})", undetectable.join(", "))
    });
    let ttl_ms = u64::from(spec.dns.ttl) * 1000;
    PredictedFailover {
        detection_ms: detection,
        dns_ms: dns_propagation_ms,
        ttl_ms,
        total_ms: detection
            .saturating_add(dns_propagation_ms)
            .saturating_add(ttl_ms),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_policy::{Endpoint, Failover, HealthCheck, Zone};

    fn spec(endpoints: &[usize], hc: (u32, u32), f: (u32, u32, u32), ttl: u32) -> Spec {
        Spec {
            host: "svc.example.com".to_owned(),
            port: 8080,
            protocol: Default::default(),
            zones: endpoints
                .iter()
                .enumerate()
                .map(|(i, &n)| Zone {
                    name: format!("z{i}"),
                    region: None,
                    weight: 0,
                    priority: 0,
                    endpoints: (0..n)
                        .map(|j| Endpoint {
                            address: format!("10.0.{i}.{j}"),
                            port: 8080,
                            version: "v1".to_owned(),
                        })
                        .collect(),
                    dns: None,
                })
                .collect(),
            routes: Vec::new(),
            health_check: HealthCheck {
                interval_ms: hc.0,
                timeout_ms: hc.1,
                ..HealthCheck::default()
            },
            failover: Failover {
                failure_rate_percent: f.0,
                window_seconds: f.1,
                min_samples: f.2,
                ..Failover::default()
            },
            mtls: Default::default(),
            dns: meridian_policy::Dns { ttl },
        }
    }

    /// (endpoints per zone, (interval, timeout), (rate, window s, min samples),
    /// ttl s, dns ms, detection ms, total ms, warned)
    type Row = (
        &'static [usize],
        (u32, u32),
        (u32, u32, u32),
        u32,
        u64,
        u64,
        u64,
        bool,
    );

    #[test]
    fn predictions() {
        let cases: &[Row] = &[
            // Defaults, one endpoint: 10 rounds to reach minSamples.
            (&[1], (1000, 500), (5, 30, 10), 30, 0, 10_500, 40_500, false),
            // Two endpoints: 5 rounds.
            (&[2], (1000, 500), (5, 30, 10), 30, 0, 5_500, 35_500, false),
            // The slowest zone decides.
            (
                &[4, 1, 2],
                (1000, 500),
                (5, 30, 10),
                30,
                2_000,
                10_500,
                42_500,
                false,
            ),
            // Full window dominates: 25% of 60 samples is 15, so 16 failing
            // samples = 8 rounds of 2.
            (&[2], (1000, 200), (25, 30, 10), 10, 0, 8_200, 18_200, false),
            // Many endpoints: 1 round fills minSamples, 1 round exceeds 5%.
            (
                &[20],
                (2000, 1000),
                (5, 10, 10),
                0,
                500,
                3_000,
                3_500,
                false,
            ),
            // Window too short for minSamples: no zone can fail.
            (&[1], (1000, 500), (5, 5, 10), 30, 0, 0, 30_000, true),
            // A threshold of 100% never trips.
            (&[3], (1000, 500), (100, 30, 10), 30, 0, 0, 30_000, true),
            // One zone undetectable, the other predicted.
            (&[1, 5], (1000, 500), (5, 3, 10), 30, 0, 2_500, 32_500, true),
            // Zone without endpoints counts as one.
            (&[0], (1000, 500), (5, 30, 10), 30, 0, 10_500, 40_500, false),
        ];
        for (i, &(eps, hc, f, ttl, dns, detection, total, warned)) in cases.iter().enumerate() {
            let p = predicted_failover_ms(&spec(eps, hc, f, ttl), dns);
            assert_eq!(p.detection_ms, detection, "case {i}: {p:?}");
            assert_eq!(p.total_ms, total, "case {i}: {p:?}");
            assert_eq!(p.ttl_ms, u64::from(ttl) * 1000, "case {i}");
            assert_eq!(p.dns_ms, dns, "case {i}");
            assert_eq!(p.warning.is_some(), warned, "case {i}: {p:?}");
        }
    }

    #[test]
    fn serde_shape() {
        let p = predicted_failover_ms(&spec(&[1], (1000, 500), (5, 30, 10), 30), 1_000);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"detectionMs": 10_500, "dnsMs": 1_000, "ttlMs": 30_000, "totalMs": 41_500})
        );
    }
}

//! How long a zone outage takes to reach clients, predicted from the policy,
//! so an operator sees the cost of a long window or TTL before an incident.

use meridian_policy::Spec;

use crate::health::DOWN_ROUNDS;
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

/// Predicts the failover time of a zone that stops answering.
///
/// A checker probes each endpoint once per `intervalMs`; a probe of a dead
/// endpoint reports after at most `timeoutMs`. A zone is failed over once
/// a majority of checkers got no answer from any of its endpoints for
/// [`DOWN_ROUNDS`] rounds in a row, whatever its window holds (see
/// [`crate::health::evaluate`]). The outage may begin just after a round,
/// so detection is `DOWN_ROUNDS * intervalMs + timeoutMs`. The time the
/// control loop takes to notice fresh reports and push weights is not
/// included: it is not in the policy. A zone that keeps answering but
/// fails some requests is failed over by the failure-rate statistics
/// instead, as soon as they are confident: that time depends on the rate
/// and the traffic (docs/failover.md), and is not predicted here.
pub fn predicted_failover_ms(spec: &Spec, dns_propagation_ms: u64) -> PredictedFailover {
    let hc = &spec.health_check;
    let interval = u64::from(hc.interval_ms).max(1);
    let detection = if spec.zones.is_empty() {
        0
    } else {
        u64::from(DOWN_ROUNDS) * interval + u64::from(hc.timeout_ms)
    };
    let ttl_ms = u64::from(spec.dns.ttl) * 1000;
    PredictedFailover {
        detection_ms: detection,
        dns_ms: dns_propagation_ms,
        ttl_ms,
        total_ms: detection
            .saturating_add(dns_propagation_ms)
            .saturating_add(ttl_ms),
        warning: None,
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
                    capacity_percent: None,
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
            outlier_detection: None,
            circuit_breakers: None,
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
            // Defaults: two silent rounds of 1 s, the second timing out.
            (&[1], (1000, 500), (5, 30, 10), 30, 0, 2_500, 32_500, false),
            // Endpoints, thresholds and windows do not change silence.
            (
                &[4, 1, 2],
                (1000, 500),
                (5, 30, 10),
                30,
                2_000,
                2_500,
                34_500,
                false,
            ),
            (&[2], (1000, 200), (25, 30, 10), 10, 0, 2_200, 12_200, false),
            (
                &[20],
                (2000, 1000),
                (5, 10, 10),
                0,
                500,
                5_000,
                5_500,
                false,
            ),
            (
                &[3],
                (1000, 500),
                (100, 30, 10),
                30,
                0,
                2_500,
                32_500,
                false,
            ),
            // A policy without zones has nothing to detect.
            (&[], (1000, 500), (5, 30, 10), 30, 0, 0, 30_000, false),
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
            serde_json::json!({"detectionMs": 2_500, "dnsMs": 1_000, "ttlMs": 30_000, "totalMs": 33_500})
        );
    }
}

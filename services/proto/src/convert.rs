//! Policy model ⇄ protobuf messages. Both directions are total over valid
//! input; `Rust → proto → Rust` is the identity (tested below), and so is
//! `JSON → Rust → proto → Rust → JSON`.

use chrono::{DateTime, Utc};
use meridian_policy as m;
use meridian_policy::FieldError;

use crate::v1 as pb;

/// A message that does not describe a policy; each problem names its field
/// with the same path the REST API would use.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct ConvertError(pub Vec<FieldError>);

pub fn to_timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// A JSON object as a `google.protobuf.Struct` (`None` for any other JSON
/// value): event details and rollout analyses, whose shape is documented
/// rather than typed in the protos.
pub fn to_struct(v: serde_json::Value) -> Option<prost_types::Struct> {
    match to_value(v).kind {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        J::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

impl From<&m::Policy> for pb::GlobalTrafficPolicy {
    fn from(p: &m::Policy) -> Self {
        let md = &p.metadata;
        pb::GlobalTrafficPolicy {
            api_version: Some(p.api_version.clone()),
            kind: Some(p.kind.clone()),
            metadata: Some(pb::Metadata {
                name: md.name.clone(),
                labels: md.labels.clone().into_iter().collect(),
                resource_version: md.resource_version.clone(),
                generation: md.generation,
                created_at: md.created_at.map(to_timestamp),
                updated_at: md.updated_at.map(to_timestamp),
                source: md.source.clone(),
            }),
            spec: Some(spec_to_pb(&p.spec)),
        }
    }
}

fn spec_to_pb(s: &m::Spec) -> pb::Spec {
    pb::Spec {
        host: s.host.clone(),
        port: s.port,
        protocol: match s.protocol {
            m::Protocol::Http => pb::Protocol::Http,
            m::Protocol::Grpc => pb::Protocol::Grpc,
        } as i32,
        zones: s
            .zones
            .iter()
            .map(|z| pb::Zone {
                name: z.name.clone(),
                region: z.region.clone(),
                weight: z.weight,
                priority: Some(z.priority),
                endpoints: z
                    .endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        address: e.address.clone(),
                        port: e.port,
                        version: Some(e.version.clone()),
                    })
                    .collect(),
                dns: z.dns.as_ref().map(|d| pb::ZoneDns {
                    target: d.target.clone(),
                    provider: d.provider.clone(),
                }),
                capacity_percent: z.capacity_percent,
            })
            .collect(),
        routes: s
            .routes
            .iter()
            .map(|r| pb::Route {
                name: r.name.clone(),
                r#match: Some(pb::RouteMatch {
                    path_prefix: Some(r.matcher.path_prefix.clone()),
                    headers: r
                        .matcher
                        .headers
                        .iter()
                        .map(|h| pb::HeaderMatch {
                            name: h.name.clone(),
                            exact: h.exact.clone(),
                        })
                        .collect(),
                }),
                canary: r.canary.as_ref().map(|c| pb::Canary {
                    version: c.version.clone(),
                    weight: c.weight,
                    header: Some(c.header.clone()),
                    rollout: c.rollout.as_ref().map(rollout_to_pb),
                }),
                timeout_ms: r.timeout_ms,
                retries: r.retries.as_ref().map(|t| pb::Retries {
                    attempts: Some(t.attempts),
                    per_try_timeout_ms: t.per_try_timeout_ms,
                    retry_on: t.retry_on.iter().map(|c| c.as_str().to_owned()).collect(),
                    retriable_status_codes: t.retriable_status_codes.clone(),
                }),
            })
            .collect(),
        health_check: Some(pb::HealthCheck {
            protocol: match s.health_check.protocol {
                m::HealthProtocol::Http => pb::HealthProtocol::Http,
                m::HealthProtocol::Tcp => pb::HealthProtocol::Tcp,
                m::HealthProtocol::Grpc => pb::HealthProtocol::Grpc,
            } as i32,
            path: Some(s.health_check.path.clone()),
            interval_ms: Some(s.health_check.interval_ms),
            timeout_ms: Some(s.health_check.timeout_ms),
            expected_status: Some(s.health_check.expected_status.clone()),
        }),
        failover: Some(pb::Failover {
            mode: match s.failover.mode {
                m::FailoverMode::Weighted => pb::FailoverMode::Weighted,
                m::FailoverMode::Priority => pb::FailoverMode::Priority,
                m::FailoverMode::Manual => pb::FailoverMode::Manual,
            } as i32,
            failure_rate_percent: Some(s.failover.failure_rate_percent),
            window_seconds: Some(s.failover.window_seconds),
            min_samples: Some(s.failover.min_samples),
            recovery_seconds: Some(s.failover.recovery_seconds),
            min_healthy_zones: s.failover.min_healthy_zones,
            failback: s.failover.failback.as_ref().map(|f| pb::Failback {
                step_percent: f.step_percent,
                step_seconds: f.step_seconds,
            }),
        }),
        mtls: Some(pb::Mtls {
            mode: match s.mtls.mode {
                m::MtlsMode::Disabled => pb::MtlsMode::Disabled,
                m::MtlsMode::Permissive => pb::MtlsMode::Permissive,
                m::MtlsMode::Strict => pb::MtlsMode::Strict,
            } as i32,
            allowed_sans: s.mtls.allowed_sans.clone(),
        }),
        dns: Some(pb::Dns {
            ttl: Some(s.dns.ttl),
        }),
        outlier_detection: s.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
            consecutive_5xx: Some(o.consecutive_5xx),
            consecutive_gateway_errors: Some(o.consecutive_gateway_errors),
            interval_ms: Some(o.interval_ms),
            base_ejection_time_ms: Some(o.base_ejection_time_ms),
            max_ejection_percent: Some(o.max_ejection_percent),
            success_rate: o.success_rate.as_ref().map(|r| pb::SuccessRate {
                minimum_hosts: Some(r.minimum_hosts),
                request_volume: Some(r.request_volume),
                stdev_factor: Some(r.stdev_factor),
            }),
        }),
        circuit_breakers: s.circuit_breakers.as_ref().map(|c| pb::CircuitBreakers {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_retries: c.max_retries,
            retry_budget: c.retry_budget.as_ref().map(|b| pb::RetryBudget {
                budget_percent: Some(b.budget_percent),
                min_retry_concurrency: Some(b.min_retry_concurrency),
            }),
        }),
    }
}

fn retries_from_pb(at: String, r: pb::Retries, problems: &mut Problems) -> m::Retries {
    let d = m::Retries::default();
    let mut retry_on = Vec::with_capacity(r.retry_on.len());
    for (j, name) in r.retry_on.iter().enumerate() {
        match m::RetryOn::parse(name) {
            Some(c) => retry_on.push(c),
            None => problems.0.push(FieldError::new(
                format!("{at}.retryOn[{j}]"),
                format!("unknown retry condition {name:?}"),
            )),
        }
    }
    m::Retries {
        attempts: r.attempts.unwrap_or(d.attempts),
        per_try_timeout_ms: r.per_try_timeout_ms,
        retry_on: if r.retry_on.is_empty() {
            d.retry_on
        } else {
            retry_on
        },
        retriable_status_codes: r.retriable_status_codes,
    }
}

fn outlier_from_pb(o: pb::OutlierDetection) -> m::OutlierDetection {
    let d = m::OutlierDetection::default();
    m::OutlierDetection {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(d.consecutive_5xx),
        consecutive_gateway_errors: o
            .consecutive_gateway_errors
            .unwrap_or(d.consecutive_gateway_errors),
        interval_ms: o.interval_ms.unwrap_or(d.interval_ms),
        base_ejection_time_ms: o.base_ejection_time_ms.unwrap_or(d.base_ejection_time_ms),
        max_ejection_percent: o.max_ejection_percent.unwrap_or(d.max_ejection_percent),
        success_rate: o.success_rate.map(|r| {
            let d = m::SuccessRate::default();
            m::SuccessRate {
                minimum_hosts: r.minimum_hosts.unwrap_or(d.minimum_hosts),
                request_volume: r.request_volume.unwrap_or(d.request_volume),
                stdev_factor: r.stdev_factor.unwrap_or(d.stdev_factor),
            }
        }),
    }
}

fn circuit_breakers_from_pb(c: pb::CircuitBreakers) -> m::CircuitBreakers {
    m::CircuitBreakers {
        max_connections: c.max_connections,
        max_pending_requests: c.max_pending_requests,
        max_requests: c.max_requests,
        max_retries: c.max_retries,
        retry_budget: c.retry_budget.map(|b| {
            let d = m::RetryBudget::default();
            m::RetryBudget {
                budget_percent: b.budget_percent.unwrap_or(d.budget_percent),
                min_retry_concurrency: b.min_retry_concurrency.unwrap_or(d.min_retry_concurrency),
            }
        }),
    }
}

/// Collects every problem instead of stopping at the first.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn enumeration<T>(
        &mut self,
        field: String,
        value: i32,
        decode: impl Fn(i32) -> Option<T>,
    ) -> Option<T> {
        match decode(value) {
            Some(v) => Some(v),
            None => {
                self.0.push(FieldError::new(
                    field,
                    format!("unknown enum value {value}"),
                ));
                None
            }
        }
    }

    fn time(&mut self, field: &str, t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
        let t = t?;
        let parsed = from_timestamp(t);
        if parsed.is_none() {
            self.0.push(FieldError::new(field, "not a valid timestamp"));
        }
        parsed
    }
}

impl TryFrom<pb::GlobalTrafficPolicy> for m::Policy {
    type Error = ConvertError;

    fn try_from(p: pb::GlobalTrafficPolicy) -> Result<Self, ConvertError> {
        let mut problems = Problems::default();
        let md = p.metadata.unwrap_or_default();
        if p.spec.is_none() {
            problems
                .0
                .push(FieldError::new("spec", "missing field `spec`"));
        }
        let metadata = m::Metadata {
            name: md.name,
            labels: md.labels.into_iter().collect(),
            resource_version: md.resource_version,
            generation: md.generation,
            created_at: problems.time("metadata.createdAt", md.created_at.as_ref()),
            updated_at: problems.time("metadata.updatedAt", md.updated_at.as_ref()),
            source: md.source,
        };
        let spec = spec_from_pb(p.spec.unwrap_or_default(), &mut problems);
        if !problems.0.is_empty() {
            return Err(ConvertError(problems.0));
        }
        Ok(m::Policy {
            api_version: p.api_version.unwrap_or_else(|| m::API_VERSION.to_owned()),
            kind: p.kind.unwrap_or_else(|| m::KIND.to_owned()),
            metadata,
            spec,
        })
    }
}

fn spec_from_pb(s: pb::Spec, problems: &mut Problems) -> m::Spec {
    let protocol = match problems.enumeration("spec.protocol".into(), s.protocol, |v| {
        pb::Protocol::try_from(v).ok()
    }) {
        Some(pb::Protocol::Grpc) => m::Protocol::Grpc,
        _ => m::Protocol::Http,
    };
    let zones = s
        .zones
        .into_iter()
        .map(|z| m::Zone {
            name: z.name,
            region: z.region,
            weight: z.weight,
            priority: z.priority.unwrap_or_default(),
            endpoints: z
                .endpoints
                .into_iter()
                .map(|e| m::Endpoint {
                    address: e.address,
                    port: e.port,
                    version: e.version.unwrap_or_else(|| m::DEFAULT_VERSION.to_owned()),
                })
                .collect(),
            dns: z.dns.map(|d| m::ZoneDns {
                target: d.target,
                provider: d.provider,
            }),
            capacity_percent: z.capacity_percent,
        })
        .collect();
    let routes = s
        .routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let matcher = r.r#match.unwrap_or_default();
            m::Route {
                name: r.name,
                matcher: m::RouteMatch {
                    path_prefix: matcher
                        .path_prefix
                        .unwrap_or_else(|| m::RouteMatch::default().path_prefix),
                    headers: matcher
                        .headers
                        .into_iter()
                        .map(|h| m::HeaderMatch {
                            name: h.name,
                            exact: h.exact,
                        })
                        .collect(),
                },
                canary: r.canary.map(|c| m::Canary {
                    version: c.version,
                    weight: c.weight,
                    header: c
                        .header
                        .unwrap_or_else(|| m::DEFAULT_CANARY_HEADER.to_owned()),
                    rollout: c.rollout.map(rollout_from_pb),
                }),
                timeout_ms: r.timeout_ms,
                retries: r
                    .retries
                    .map(|t| retries_from_pb(format!("spec.routes[{i}].retries"), t, problems)),
            }
        })
        .collect();
    let health_check = match s.health_check {
        None => m::HealthCheck::default(),
        Some(h) => {
            let d = m::HealthCheck::default();
            m::HealthCheck {
                protocol: match problems.enumeration(
                    "spec.healthCheck.protocol".into(),
                    h.protocol,
                    |v| pb::HealthProtocol::try_from(v).ok(),
                ) {
                    Some(pb::HealthProtocol::Tcp) => m::HealthProtocol::Tcp,
                    Some(pb::HealthProtocol::Grpc) => m::HealthProtocol::Grpc,
                    _ => d.protocol,
                },
                path: h.path.unwrap_or(d.path),
                interval_ms: h.interval_ms.unwrap_or(d.interval_ms),
                timeout_ms: h.timeout_ms.unwrap_or(d.timeout_ms),
                expected_status: h.expected_status.unwrap_or(d.expected_status),
            }
        }
    };
    let failover = match s.failover {
        None => m::Failover::default(),
        Some(f) => {
            let d = m::Failover::default();
            m::Failover {
                mode: match problems.enumeration("spec.failover.mode".into(), f.mode, |v| {
                    pb::FailoverMode::try_from(v).ok()
                }) {
                    Some(pb::FailoverMode::Priority) => m::FailoverMode::Priority,
                    Some(pb::FailoverMode::Manual) => m::FailoverMode::Manual,
                    _ => d.mode,
                },
                failure_rate_percent: f.failure_rate_percent.unwrap_or(d.failure_rate_percent),
                window_seconds: f.window_seconds.unwrap_or(d.window_seconds),
                min_samples: f.min_samples.unwrap_or(d.min_samples),
                recovery_seconds: f.recovery_seconds.unwrap_or(d.recovery_seconds),
                min_healthy_zones: f.min_healthy_zones,
                failback: f.failback.map(|b| m::Failback {
                    step_percent: b.step_percent,
                    step_seconds: b.step_seconds,
                }),
            }
        }
    };
    let mtls = match s.mtls {
        None => m::Mtls::default(),
        Some(t) => m::Mtls {
            mode: match problems.enumeration("spec.mtls.mode".into(), t.mode, |v| {
                pb::MtlsMode::try_from(v).ok()
            }) {
                Some(pb::MtlsMode::Permissive) => m::MtlsMode::Permissive,
                Some(pb::MtlsMode::Strict) => m::MtlsMode::Strict,
                _ => m::MtlsMode::Disabled,
            },
            allowed_sans: t.allowed_sans,
        },
    };
    let dns = m::Dns {
        ttl: s.dns.and_then(|d| d.ttl).unwrap_or(m::Dns::default().ttl),
    };
    m::Spec {
        host: s.host,
        port: s.port,
        protocol,
        zones,
        routes,
        health_check,
        failover,
        mtls,
        dns,
        outlier_detection: s.outlier_detection.map(outlier_from_pb),
        circuit_breakers: s.circuit_breakers.map(circuit_breakers_from_pb),
    }
}

fn rollout_to_pb(r: &m::Rollout) -> pb::Rollout {
    let a = &r.analysis;
    pb::Rollout {
        steps: r.steps.clone(),
        step_interval_ms: Some(r.step_interval_ms),
        analysis: Some(pb::RolloutAnalysis {
            max_failure_rate_percent: Some(a.max_failure_rate_percent),
            max_failure_rate_increase_percent: Some(a.max_failure_rate_increase_percent),
            min_requests: Some(a.min_requests),
            inconclusive_limit: Some(a.inconclusive_limit),
            prometheus: a.prometheus.as_ref().map(|p| pb::PrometheusAnalysis {
                url: p.url.clone(),
                queries: p
                    .queries
                    .iter()
                    .map(|q| pb::PrometheusQuery {
                        name: q.name.clone(),
                        query: q.query.clone(),
                        max: q.max,
                    })
                    .collect(),
            }),
        }),
        zone_order: r.zone_order.clone().unwrap_or_default(),
    }
}

/// Absent fields take the JSON API's defaults, so both APIs read a
/// partial rollout the same way.
fn rollout_from_pb(r: pb::Rollout) -> m::Rollout {
    let d = m::Rollout::default();
    let a = r.analysis.unwrap_or_default();
    let da = d.analysis;
    m::Rollout {
        steps: if r.steps.is_empty() { d.steps } else { r.steps },
        step_interval_ms: r.step_interval_ms.unwrap_or(d.step_interval_ms),
        analysis: m::RolloutAnalysis {
            max_failure_rate_percent: a
                .max_failure_rate_percent
                .unwrap_or(da.max_failure_rate_percent),
            max_failure_rate_increase_percent: a
                .max_failure_rate_increase_percent
                .unwrap_or(da.max_failure_rate_increase_percent),
            min_requests: a.min_requests.unwrap_or(da.min_requests),
            inconclusive_limit: a.inconclusive_limit.unwrap_or(da.inconclusive_limit),
            prometheus: a.prometheus.map(|p| m::PrometheusAnalysis {
                url: p.url,
                queries: p
                    .queries
                    .into_iter()
                    .map(|q| m::PrometheusQuery {
                        name: q.name,
                        query: q.query,
                        max: q.max,
                    })
                    .collect(),
            }),
        },
        zone_order: (!r.zone_order.is_empty()).then_some(r.zone_order),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn policy(json: &str) -> m::Policy {
        meridian_policy::decode::from_bytes(json.as_bytes(), meridian_policy::Format::Json).unwrap()
    }

    fn round_trip(p: &m::Policy) -> m::Policy {
        let bytes = pb::GlobalTrafficPolicy::from(p).encode_to_vec();
        let decoded = pb::GlobalTrafficPolicy::decode(bytes.as_slice()).unwrap();
        m::Policy::try_from(decoded).unwrap()
    }

    const FULL: &str = r#"{
      "apiVersion": "meridian/v1", "kind": "GlobalTrafficPolicy",
      "metadata": {"name": "pay", "labels": {"team": "payments", "tier": "1"},
                   "resourceVersion": "42", "generation": 3,
                   "createdAt": "2026-11-22T10:00:00.123456789Z",
                   "updatedAt": "2026-11-22T11:00:00Z", "source": "gitops:repo@abc"},
      "spec": {
        "host": "pay.example.com", "port": 8443, "protocol": "grpc",
        "zones": [
          {"name": "a", "region": "eu-west-1", "weight": 70, "priority": 1,
           "endpoints": [{"address": "10.0.0.1", "port": 9000, "version": "v2"}],
           "dns": {"target": "198.51.100.1", "provider": "r53"}},
          {"name": "b", "weight": 30, "endpoints": [{"address": "b.internal", "port": 9000}]}
        ],
        "routes": [
          {"name": "canary", "match": {"pathPrefix": "/api", "headers": [{"name": "x-user", "exact": "beta"}]},
           "canary": {"version": "v2", "weight": 10, "header": "x-canary"}},
          {"name": "rolling", "match": {"pathPrefix": "/v3"},
           "canary": {"version": "v3", "weight": 0, "rollout": {"steps": [10, 100], "stepIntervalMs": 30000,
             "analysis": {"maxFailureRatePercent": 2.5, "maxFailureRateIncreasePercent": 0.5,
                          "minRequests": 50, "inconclusiveLimit": 4,
                          "prometheus": {"url": "http://127.0.0.1:9090",
                                         "queries": [{"name": "p99", "query": "histogram_quantile(0.99, x)", "max": 300}]}},
             "zoneOrder": ["b", "a"]}}},
          {"name": "rolling-defaults", "match": {"pathPrefix": "/v4"},
           "canary": {"version": "v4", "weight": 0, "rollout": {}}},
          {"name": "default", "timeoutMs": 0, "retries": {"attempts": 1, "perTryTimeoutMs": 100,
           "retryOn": ["retriable-status-codes", "cancelled"], "retriableStatusCodes": [503]}},
          {"name": "defaults", "retries": {}}
        ],
        "healthCheck": {"protocol": "tcp", "path": "/h", "intervalMs": 250, "timeoutMs": 100, "expectedStatus": "200,204"},
        "failover": {"mode": "priority", "failureRatePercent": 0, "windowSeconds": 10, "minSamples": 3, "recoverySeconds": 5},
        "mtls": {"mode": "strict", "allowedSans": ["spiffe://m/ns/a/sa/b"]},
        "dns": {"ttl": 60},
        "outlierDetection": {"consecutive5xx": 0, "consecutiveGatewayErrors": 3, "intervalMs": 500,
          "baseEjectionTimeMs": 1000, "maxEjectionPercent": 50,
          "successRate": {"minimumHosts": 2, "requestVolume": 10, "stdevFactor": 1.5}},
        "circuitBreakers": {"maxConnections": 1, "maxPendingRequests": 2, "maxRequests": 3,
          "retryBudget": {"budgetPercent": 25, "minRetryConcurrency": 0}}
      }
    }"#;

    #[test]
    fn rust_to_proto_and_back_is_the_identity() {
        for p in [policy(FULL), policy(MINIMAL)] {
            assert_eq!(round_trip(&p), p);
        }
    }

    #[test]
    fn json_to_proto_and_back_gives_the_same_json() {
        for text in [FULL, MINIMAL] {
            let p = policy(text);
            let json_before = serde_json::to_value(&p).unwrap();
            let json_after = serde_json::to_value(round_trip(&p)).unwrap();
            assert_eq!(json_after, json_before);
        }
        // A zero that JSON states stays a zero; it is not mistaken for "absent".
        let p = round_trip(&policy(FULL));
        assert_eq!(p.spec.failover.failure_rate_percent, 0);
        assert_eq!(
            p.metadata.created_at.unwrap().timestamp_subsec_nanos(),
            123_456_789
        );
    }

    const MINIMAL: &str = r#"{"metadata": {"name": "min"},
      "spec": {"host": "min.example.com", "port": 80,
               "zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "127.0.0.1", "port": 80}]}]}}"#;

    #[test]
    fn absent_proto_fields_take_the_json_defaults() {
        let from_json = policy(MINIMAL);
        let msg = pb::GlobalTrafficPolicy {
            metadata: Some(pb::Metadata {
                name: "min".into(),
                ..Default::default()
            }),
            spec: Some(pb::Spec {
                host: "min.example.com".into(),
                port: 80,
                zones: vec![pb::Zone {
                    name: "a".into(),
                    weight: 100,
                    endpoints: vec![pb::Endpoint {
                        address: "127.0.0.1".into(),
                        port: 80,
                        version: None,
                    }],
                    ..Default::default()
                }],
                health_check: Some(pb::HealthCheck {
                    interval_ms: None,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(m::Policy::try_from(msg).unwrap(), from_json);
    }

    #[test]
    fn unknown_retry_conditions_are_reported_with_paths() {
        let mut msg = pb::GlobalTrafficPolicy::from(&policy(MINIMAL));
        let spec = msg.spec.as_mut().unwrap();
        spec.routes.push(pb::Route {
            name: "r".into(),
            retries: Some(pb::Retries {
                retry_on: vec!["reset".into(), "sometimes".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = m::Policy::try_from(msg).unwrap_err();
        assert_eq!(err.0[0].field, "spec.routes[0].retries.retryOn[1]");
    }

    #[test]
    fn unknown_enum_values_and_missing_spec_are_reported_with_paths() {
        let msg = pb::GlobalTrafficPolicy {
            spec: Some(pb::Spec {
                protocol: 9,
                mtls: Some(pb::Mtls {
                    mode: 7,
                    allowed_sans: vec![],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = m::Policy::try_from(msg).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.protocol", "spec.mtls.mode"]);
        let err = m::Policy::try_from(pb::GlobalTrafficPolicy::default()).unwrap_err();
        assert_eq!(err.0[0].field, "spec");
    }
}

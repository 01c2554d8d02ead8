//! The rules the server enforces on a decoded policy.
//!
//! Validation reports every problem at once, each with the wire path of its
//! field, so one round trip tells a user everything to fix.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::Serialize;
use utoipa::ToSchema;

use crate::{HealthProtocol, Policy, API_VERSION, KIND};

pub const MAX_ZONES: usize = 32;
pub const MAX_ENDPOINTS_PER_ZONE: usize = 1000;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Wire path, for example `spec.zones[1].weight`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Checks every rule; `Err` lists all violations.
pub fn validate(policy: &Policy) -> Result<(), Vec<FieldError>> {
    let mut v = Violations::default();
    if policy.api_version != API_VERSION {
        v.push("apiVersion", format!("must be {API_VERSION:?}"));
    }
    if policy.kind != KIND {
        v.push("kind", format!("must be {KIND:?}"));
    }
    v.check("metadata.name", dns_label(&policy.metadata.name));
    for (key, value) in &policy.metadata.labels {
        v.check(&format!("metadata.labels.{key}"), label_key(key));
        v.check(&format!("metadata.labels.{key}"), label_value(value));
    }

    let spec = &policy.spec;
    v.check("spec.host", fqdn(&spec.host));
    v.check("spec.port", port(spec.port));

    if spec.zones.is_empty() || spec.zones.len() > MAX_ZONES {
        v.push(
            "spec.zones",
            format!("must have 1 to {MAX_ZONES} zones, has {}", spec.zones.len()),
        );
    }
    let mut zone_names = HashSet::new();
    let mut versions = HashSet::new();
    let mut weights_ok = true;
    for (i, zone) in spec.zones.iter().enumerate() {
        let at = format!("spec.zones[{i}]");
        v.check(&format!("{at}.name"), dns_label(&zone.name));
        if !zone_names.insert(zone.name.as_str()) {
            v.push(
                format!("{at}.name"),
                format!("duplicate zone name {:?}", zone.name),
            );
        }
        if let Some(region) = &zone.region {
            v.check(&format!("{at}.region"), dns_label(region));
        }
        if zone.weight > 100 {
            weights_ok = false;
            v.push(
                format!("{at}.weight"),
                format!("must be 0 to 100, is {}", zone.weight),
            );
        }
        if zone.endpoints.is_empty() || zone.endpoints.len() > MAX_ENDPOINTS_PER_ZONE {
            v.push(
                format!("{at}.endpoints"),
                format!(
                    "must have 1 to {MAX_ENDPOINTS_PER_ZONE} endpoints, has {}",
                    zone.endpoints.len()
                ),
            );
        }
        let mut seen = HashSet::new();
        for (j, ep) in zone.endpoints.iter().enumerate() {
            let at = format!("{at}.endpoints[{j}]");
            v.check(&format!("{at}.address"), endpoint_address(&ep.address));
            v.check(&format!("{at}.port"), port(ep.port));
            v.check(&format!("{at}.version"), dns_label(&ep.version));
            if !seen.insert((ep.address.as_str(), ep.port)) {
                v.push(at, format!("duplicate endpoint {}:{}", ep.address, ep.port));
            }
            versions.insert(ep.version.as_str());
        }
        if let Some(dns) = &zone.dns {
            v.check(&format!("{at}.dns.target"), address(&dns.target));
            v.check(&format!("{at}.dns.provider"), dns_label(&dns.provider));
        }
        if let Some(cap) = zone.capacity_percent {
            if cap > 100 {
                v.push(
                    format!("{at}.capacityPercent"),
                    format!("must be 0 to 100, is {cap}"),
                );
            } else if spec.failover.mode != crate::FailoverMode::Priority && zone.weight > cap {
                // In priority mode weights split a tier, not the policy's traffic.
                v.push(
                    format!("{at}.weight"),
                    format!("{} is over the zone's capacityPercent {cap}", zone.weight),
                );
            }
        }
    }
    let capacity: u64 = spec
        .zones
        .iter()
        .map(|z| u64::from(z.capacity().min(100)))
        .sum();
    if !spec.zones.is_empty() && capacity < 100 {
        v.push(
            "spec.zones",
            format!("zone capacityPercent values sum to {capacity}: together the zones must be able to take 100"),
        );
    }
    let total: u64 = spec.zones.iter().map(|z| u64::from(z.weight)).sum();
    if weights_ok && !spec.zones.is_empty() && total != 100 {
        v.push(
            "spec.zones",
            format!("zone weights must sum to exactly 100, they sum to {total}"),
        );
    }

    let mut route_names = HashSet::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let at = format!("spec.routes[{i}]");
        v.check(&format!("{at}.name"), dns_label(&route.name));
        if !route_names.insert(route.name.as_str()) {
            v.push(
                format!("{at}.name"),
                format!("duplicate route name {:?}", route.name),
            );
        }
        if !route.matcher.path_prefix.starts_with('/') {
            v.push(format!("{at}.match.pathPrefix"), "must start with '/'");
        }
        for (j, h) in route.matcher.headers.iter().enumerate() {
            v.check(
                &format!("{at}.match.headers[{j}].name"),
                header_name(&h.name),
            );
        }
        if let Some(canary) = &route.canary {
            if canary.weight > 100 {
                v.push(
                    format!("{at}.canary.weight"),
                    format!("must be 0 to 100, is {}", canary.weight),
                );
            }
            v.check(
                &format!("{at}.canary.header"),
                header_name(&canary.header).and_then(|()| settable_header(&canary.header)),
            );
            if !versions.contains(canary.version.as_str()) {
                v.push(
                    format!("{at}.canary.version"),
                    format!("no endpoint has version {:?}", canary.version),
                );
            } else if canary.weight < 100 && versions.iter().all(|&ver| ver == canary.version) {
                // The stable share would go to an empty set of endpoints.
                v.push(
                    format!("{at}.canary.version"),
                    format!(
                        "every endpoint has version {:?}; a canary below 100% needs endpoints of another version",
                        canary.version
                    ),
                );
            }
        }
    }

    for (i, route) in spec.routes.iter().enumerate() {
        route_resilience(&mut v, &format!("spec.routes[{i}]"), route);
        if let Some(canary) = &route.canary {
            if let Some(r) = &canary.rollout {
                rollout(&mut v, &format!("spec.routes[{i}].canary"), spec, canary, r);
            }
        }
    }
    if let Some(od) = &spec.outlier_detection {
        outlier_detection(&mut v, od);
    }
    if let Some(cb) = &spec.circuit_breakers {
        circuit_breakers(&mut v, cb);
    }

    let hc = &spec.health_check;
    if hc.protocol == HealthProtocol::Http && !hc.path.starts_with('/') {
        v.push("spec.healthCheck.path", "must start with '/'");
    }
    if !(100..=300_000).contains(&hc.interval_ms) {
        v.push("spec.healthCheck.intervalMs", "must be 100 to 300000");
    }
    if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms {
        v.push(
            "spec.healthCheck.timeoutMs",
            "must be at least 1 and at most intervalMs",
        );
    }
    v.check(
        "spec.healthCheck.expectedStatus",
        status_ranges(&hc.expected_status).map(|_| ()),
    );

    let fo = &spec.failover;
    if fo.failure_rate_percent > 100 {
        v.push("spec.failover.failureRatePercent", "must be 0 to 100");
    }
    if !(1..=3600).contains(&fo.window_seconds) {
        v.push("spec.failover.windowSeconds", "must be 1 to 3600");
    }
    if fo.min_samples == 0 {
        v.push("spec.failover.minSamples", "must be at least 1");
    }
    if fo.recovery_seconds > 86_400 {
        v.push("spec.failover.recoverySeconds", "must be 0 to 86400");
    }
    if let Some(n) = fo.min_healthy_zones {
        if n as usize > spec.zones.len() {
            v.push(
                "spec.failover.minHealthyZones",
                format!("{n} is more than the policy's {} zones", spec.zones.len()),
            );
        }
    }
    if let Some(fb) = &fo.failback {
        if !(1..=100).contains(&fb.step_percent) {
            v.push("spec.failover.failback.stepPercent", "must be 1 to 100");
        }
        if fb.step_seconds > 3600 {
            v.push("spec.failover.failback.stepSeconds", "must be 0 to 3600");
        }
    }

    for (i, san) in spec.mtls.allowed_sans.iter().enumerate() {
        v.check(&format!("spec.mtls.allowedSans[{i}]"), spiffe_id(san));
    }
    if !(1..=86_400).contains(&spec.dns.ttl) {
        v.push("spec.dns.ttl", "must be 1 to 86400");
    }
    v.finish()
}

/// Longest route timeout: a day (a longer call is a stream, to run unlimited with 0).
pub const MAX_TIMEOUT_MS: u32 = 86_400_000;
/// Most retries of one request.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Largest circuit-breaker limit: far above what one Envoy can hold, far
/// below where Envoy's 32-bit counters would wrap.
pub const MAX_CIRCUIT_LIMIT: u32 = 1_000_000_000;

fn route_resilience(v: &mut Violations, at: &str, route: &crate::Route) {
    if let Some(t) = route.timeout_ms {
        if t > MAX_TIMEOUT_MS {
            v.push(
                format!("{at}.timeoutMs"),
                format!("must be 0 (no limit) to {MAX_TIMEOUT_MS}, is {t}"),
            );
        }
    }
    let Some(r) = &route.retries else {
        return;
    };
    if !(1..=MAX_RETRY_ATTEMPTS).contains(&r.attempts) {
        v.push(
            format!("{at}.retries.attempts"),
            format!("must be 1 to {MAX_RETRY_ATTEMPTS}, is {}", r.attempts),
        );
    }
    if let Some(t) = r.per_try_timeout_ms {
        let limit = route
            .timeout_ms
            .filter(|&t| t > 0)
            .unwrap_or(MAX_TIMEOUT_MS);
        if t == 0 || t > limit {
            v.push(
                format!("{at}.retries.perTryTimeoutMs"),
                format!("must be 1 to {limit} (at most the route's timeoutMs), is {t}"),
            );
        }
    }
    if r.retry_on.is_empty() {
        v.push(
            format!("{at}.retries.retryOn"),
            "must name at least one condition",
        );
    }
    let mut seen = HashSet::new();
    for (j, cond) in r.retry_on.iter().enumerate() {
        if !seen.insert(cond) {
            v.push(
                format!("{at}.retries.retryOn[{j}]"),
                format!("duplicate condition {:?}", cond.as_str()),
            );
        }
    }
    let wants_codes = r.retry_on.contains(&crate::RetryOn::RetriableStatusCodes);
    if wants_codes && r.retriable_status_codes.is_empty() {
        v.push(
            format!("{at}.retries.retriableStatusCodes"),
            "must list at least one status when retryOn has retriable-status-codes",
        );
    }
    if !wants_codes && !r.retriable_status_codes.is_empty() {
        v.push(
            format!("{at}.retries.retriableStatusCodes"),
            "has no effect unless retryOn has retriable-status-codes",
        );
    }
    let mut seen = HashSet::new();
    for (j, &code) in r.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(&code) {
            v.push(
                format!("{at}.retries.retriableStatusCodes[{j}]"),
                format!("must be an HTTP status, 100 to 599, is {code}"),
            );
        } else if !seen.insert(code) {
            v.push(
                format!("{at}.retries.retriableStatusCodes[{j}]"),
                format!("duplicate status {code}"),
            );
        }
    }
}

/// Shortest and longest step of a rollout: load reports arrive every
/// second, and a step longer than a day is a hand-set weight.
pub const MIN_STEP_INTERVAL_MS: u32 = 1_000;
pub const MAX_STEP_INTERVAL_MS: u32 = 86_400_000;
/// Most intervals a rollout may wait for traffic before it pauses.
pub const MAX_INCONCLUSIVE_LIMIT: u32 = 1_000;
/// Most PromQL queries of one rollout: each runs at every analysis.
pub const MAX_PROMETHEUS_QUERIES: usize = 20;
/// Longest PromQL query, in bytes.
pub const MAX_QUERY_LEN: usize = 4_096;

fn rollout(
    v: &mut Violations,
    at: &str,
    spec: &crate::Spec,
    canary: &crate::Canary,
    r: &crate::Rollout,
) {
    if canary.weight != 0 {
        v.push(
            format!("{at}.weight"),
            format!(
                "must be 0 under a rollout, which sets the canary's weight itself; is {}",
                canary.weight
            ),
        );
    }
    let at = format!("{at}.rollout");
    if r.steps.last() != Some(&100) {
        v.push(
            format!("{at}.steps"),
            "must be a list of percentages ending at 100",
        );
    }
    for (j, &step) in r.steps.iter().enumerate() {
        if !(1..=100).contains(&step) {
            v.push(
                format!("{at}.steps[{j}]"),
                format!("must be 1 to 100, is {step}"),
            );
        } else if j > 0 && (1..=100).contains(&r.steps[j - 1]) && step <= r.steps[j - 1] {
            // Compared with an in-range predecessor only: after a step
            // out of range, that step is the one to fix.
            v.push(
                format!("{at}.steps[{j}]"),
                format!(
                    "steps must increase strictly: {step} follows {}",
                    r.steps[j - 1]
                ),
            );
        }
    }
    if !(MIN_STEP_INTERVAL_MS..=MAX_STEP_INTERVAL_MS).contains(&r.step_interval_ms) {
        v.push(
            format!("{at}.stepIntervalMs"),
            format!(
                "must be {MIN_STEP_INTERVAL_MS} to {MAX_STEP_INTERVAL_MS}, is {}",
                r.step_interval_ms
            ),
        );
    }
    let a = &r.analysis;
    for (field, value) in [
        ("maxFailureRatePercent", a.max_failure_rate_percent),
        (
            "maxFailureRateIncreasePercent",
            a.max_failure_rate_increase_percent,
        ),
    ] {
        // NaN fails `contains`, so it is refused too.
        if !(0.0..=100.0).contains(&value) {
            v.push(format!("{at}.analysis.{field}"), "must be 0 to 100");
        }
    }
    if !(1..=MAX_CIRCUIT_LIMIT).contains(&a.min_requests) {
        v.push(
            format!("{at}.analysis.minRequests"),
            format!("must be 1 to {MAX_CIRCUIT_LIMIT}, is {}", a.min_requests),
        );
    }
    if !(1..=MAX_INCONCLUSIVE_LIMIT).contains(&a.inconclusive_limit) {
        v.push(
            format!("{at}.analysis.inconclusiveLimit"),
            format!(
                "must be 1 to {MAX_INCONCLUSIVE_LIMIT}, is {}",
                a.inconclusive_limit
            ),
        );
    }
    if let Some(prom) = &a.prometheus {
        let at = format!("{at}.analysis.prometheus");
        v.check(&format!("{at}.url"), http_url(&prom.url));
        if prom.queries.is_empty() || prom.queries.len() > MAX_PROMETHEUS_QUERIES {
            v.push(
                format!("{at}.queries"),
                format!(
                    "must have 1 to {MAX_PROMETHEUS_QUERIES} queries, has {}",
                    prom.queries.len()
                ),
            );
        }
        let mut names = HashSet::new();
        for (j, q) in prom.queries.iter().enumerate() {
            let at = format!("{at}.queries[{j}]");
            v.check(&format!("{at}.name"), dns_label(&q.name));
            if !names.insert(q.name.as_str()) {
                v.push(
                    format!("{at}.name"),
                    format!("duplicate query name {:?}", q.name),
                );
            }
            if q.query.trim().is_empty() || q.query.len() > MAX_QUERY_LEN {
                v.push(
                    format!("{at}.query"),
                    format!("must be a PromQL query of 1 to {MAX_QUERY_LEN} bytes"),
                );
            }
            if !q.max.is_finite() {
                v.push(format!("{at}.max"), "must be a finite number");
            }
        }
    }
    if let Some(order) = &r.zone_order {
        // The order must name exactly the zones that run the canary's
        // version: a zone left out would go from 0 to 100% of the new
        // version at once when the rollout completes, and a zone without
        // the version could never pass a step.
        let carries =
            |zone: &crate::Zone| zone.endpoints.iter().any(|e| e.version == canary.version);
        if order.is_empty() {
            v.push(
                format!("{at}.zoneOrder"),
                "must name at least one zone (leave it out to move every zone together)",
            );
        }
        let mut seen = HashSet::new();
        for (j, name) in order.iter().enumerate() {
            let at = format!("{at}.zoneOrder[{j}]");
            match spec.zones.iter().find(|z| &z.name == name) {
                None => v.push(at, format!("{name:?} is not a zone of the policy")),
                Some(_) if !seen.insert(name.as_str()) => {
                    v.push(at, format!("duplicate zone {name:?}"))
                }
                Some(z) if !carries(z) => v.push(
                    at,
                    format!(
                        "zone {name:?} has no endpoint of version {:?}",
                        canary.version
                    ),
                ),
                Some(_) => {}
            }
        }
        let missing: Vec<&str> = spec
            .zones
            .iter()
            .filter(|z| carries(z) && !order.contains(&z.name))
            .map(|z| z.name.as_str())
            .collect();
        if !order.is_empty() && !missing.is_empty() {
            v.push(
                format!("{at}.zoneOrder"),
                format!(
                    "must list every zone with endpoints of version {:?}; missing {}",
                    canary.version,
                    missing.join(", ")
                ),
            );
        }
    }
}

/// An `http://` or `https://` URL with a host and no spaces.
fn http_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.starts_with(':')
    }) && s.len() <= 2048
        && !s
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an http:// or https:// URL such as http://prometheus:9090"
        ))
    }
}

fn outlier_detection(v: &mut Violations, od: &crate::OutlierDetection) {
    let at = "spec.outlierDetection";
    if od.consecutive_5xx > 1000 {
        v.push(format!("{at}.consecutive5xx"), "must be 0 (off) to 1000");
    }
    if od.consecutive_gateway_errors > 1000 {
        v.push(
            format!("{at}.consecutiveGatewayErrors"),
            "must be 0 (off) to 1000",
        );
    }
    if !(100..=MAX_TIMEOUT_MS).contains(&od.interval_ms) {
        v.push(
            format!("{at}.intervalMs"),
            format!("must be 100 to {MAX_TIMEOUT_MS}"),
        );
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&od.base_ejection_time_ms) {
        v.push(
            format!("{at}.baseEjectionTimeMs"),
            format!("must be 1 to {MAX_TIMEOUT_MS}"),
        );
    }
    if od.max_ejection_percent > 100 {
        v.push(format!("{at}.maxEjectionPercent"), "must be 0 to 100");
    }
    if let Some(sr) = &od.success_rate {
        if !(1..=MAX_CIRCUIT_LIMIT).contains(&sr.minimum_hosts) {
            v.push(
                format!("{at}.successRate.minimumHosts"),
                format!("must be 1 to {MAX_CIRCUIT_LIMIT}"),
            );
        }
        if !(1..=MAX_CIRCUIT_LIMIT).contains(&sr.request_volume) {
            v.push(
                format!("{at}.successRate.requestVolume"),
                format!("must be 1 to {MAX_CIRCUIT_LIMIT}"),
            );
        }
        // Envoy takes it in thousandths: 0.001 to 100 keeps it a positive integer.
        if !(0.001..=100.0).contains(&sr.stdev_factor) {
            v.push(
                format!("{at}.successRate.stdevFactor"),
                "must be 0.001 to 100",
            );
        }
    }
    if od.consecutive_5xx == 0 && od.consecutive_gateway_errors == 0 && od.success_rate.is_none() {
        v.push(
            at,
            "ejects nothing: set consecutive5xx, consecutiveGatewayErrors or successRate",
        );
    }
}

fn circuit_breakers(v: &mut Violations, cb: &crate::CircuitBreakers) {
    let at = "spec.circuitBreakers";
    for (field, value) in [
        ("maxConnections", cb.max_connections),
        ("maxPendingRequests", cb.max_pending_requests),
        ("maxRequests", cb.max_requests),
    ] {
        if let Some(n) = value {
            if !(1..=MAX_CIRCUIT_LIMIT).contains(&n) {
                v.push(
                    format!("{at}.{field}"),
                    format!("must be 1 to {MAX_CIRCUIT_LIMIT}, is {n}"),
                );
            }
        }
    }
    if let Some(n) = cb.max_retries {
        if n > MAX_CIRCUIT_LIMIT {
            v.push(
                format!("{at}.maxRetries"),
                format!("must be 0 (no retries) to {MAX_CIRCUIT_LIMIT}, is {n}"),
            );
        }
    }
    if let Some(b) = &cb.retry_budget {
        if cb.max_retries.is_some() {
            v.push(
                format!("{at}.retryBudget"),
                "replaces maxRetries (Envoy ignores maxRetries under a budget): set one of them",
            );
        }
        if !(1..=100).contains(&b.budget_percent) {
            v.push(
                format!("{at}.retryBudget.budgetPercent"),
                "must be 1 to 100",
            );
        }
        if b.min_retry_concurrency > MAX_CIRCUIT_LIMIT {
            v.push(
                format!("{at}.retryBudget.minRetryConcurrency"),
                format!("must be 0 to {MAX_CIRCUIT_LIMIT}"),
            );
        }
    }
}

#[derive(Default)]
struct Violations(Vec<FieldError>);

impl Violations {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }
    fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.push(field, message);
        }
    }
    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// RFC 1123 label: lowercase letters, digits and '-', 1 to 63, alphanumeric at both ends.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS-1123 label (1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        ))
    }
}

/// A fully qualified host name: two or more labels, lowercase, at most 253 characters.
pub fn fqdn(s: &str) -> Result<(), String> {
    let labels: Vec<&str> = s.split('.').collect();
    let ok = s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| dns_label(l).is_ok())
        && s.parse::<IpAddr>().is_err()
        && !labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a fully qualified lowercase DNS name such as track.example.com"
        ))
    }
}

fn host_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok())
}

/// An IP address or a host name.
pub fn address(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || host_name(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is neither an IP address nor a host name"))
    }
}

/// An endpoint's address: an IP address. Envoy and gRPC clients get
/// endpoints through EDS, whose socket addresses take IPs only; a host
/// name there makes Envoy refuse the whole update ("malformed IP address").
pub fn endpoint_address(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        Ok(())
    } else if host_name(s) {
        Err(format!(
            "{s:?} is a host name; endpoints must be IP addresses (they are served to Envoy and gRPC clients by EDS, which takes no names)"
        ))
    } else {
        Err(format!("{s:?} is not an IP address"))
    }
}

fn port(p: u32) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("must be 1 to 65535, is {p}"))
    }
}

fn name_segment(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Label key: `name` or `prefix/name`, as Kubernetes label keys.
fn label_key(key: &str) -> Result<(), String> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => host_name(prefix) && !prefix.is_empty() && name_segment(name),
        None => name_segment(key),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "label key {key:?} must be 1 to 63 of letters, digits, '-', '_' and '.', starting and ending alphanumeric, with an optional DNS prefix and '/'"
        ))
    }
}

fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || name_segment(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} must be empty or 1 to 63 of letters, digits, '-', '_' and '.', starting and ending alphanumeric"
        ))
    }
}

/// HTTP header names as Envoy matches them: lowercase tokens.
fn header_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is not a lowercase HTTP header name"))
    }
}

/// A header a route may add and remove. Envoy refuses route configurations
/// that modify `host` (and pseudo-headers, which `header_name` already
/// refuses), and the refusal would take the whole shared `egress_<port>`
/// route configuration down with it.
fn settable_header(s: &str) -> Result<(), String> {
    if s == "host" {
        Err(format!(
            "{s:?} cannot be set by a route (Envoy refuses to modify it); use a header such as x-envoy-upstream-canary"
        ))
    } else {
        Ok(())
    }
}

fn spiffe_id(s: &str) -> Result<(), String> {
    let ok = s
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(domain, path)| host_name(domain) && !domain.is_empty() && !path.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a SPIFFE ID such as spiffe://example.org/ns/team/sa/web"
        ))
    }
}

/// Parses `200`, `200-399` or a comma-separated list of both into inclusive ranges.
pub fn status_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || {
        format!(
            "{s:?} must be statuses or ranges such as \"200-399\" or \"200,204\", within 100-599"
        )
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        out.push((lo, hi));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{from_bytes, Format};

    fn policy(extra: &str) -> Policy {
        let text = format!(
            r#"
metadata: {{name: track-api, labels: {{team: logistics}}}}
spec:
  host: track.example.com
  port: 8080
  zones:
    - name: us-west-2a
      weight: 70
      endpoints: [{{address: 10.0.1.5, port: 8080}}, {{address: 10.0.1.6, port: 8080, version: v2}}]
    - name: eu-west-1a
      weight: 30
      endpoints: [{{address: 10.0.2.7, port: 8080}}]
  routes:
    - name: position
      match: {{pathPrefix: /track/v1/position}}
      canary: {{version: v2, weight: 10}}
{extra}"#
        );
        from_bytes(text.as_bytes(), Format::Yaml).unwrap()
    }

    fn fields(p: &Policy) -> Vec<String> {
        validate(p)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_good_policy_passes() {
        assert_eq!(validate(&policy("")), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut p = policy("");
        p.metadata.name = "Track_API".into();
        p.spec.host = "not a host".into();
        p.spec.port = 0;
        p.spec.zones[1].weight = 101;
        p.spec.zones[1].name = "us-west-2a".into();
        p.spec.routes[0].matcher.path_prefix = "track".into();
        p.spec.dns.ttl = 0;
        assert_eq!(
            fields(&p),
            [
                "metadata.name",
                "spec.host",
                "spec.port",
                "spec.zones[1].name",
                "spec.zones[1].weight",
                "spec.routes[0].match.pathPrefix",
                "spec.dns.ttl",
            ]
        );
    }

    #[test]
    fn weights_must_sum_to_100() {
        let mut p = policy("");
        p.spec.zones[0].weight = 60;
        let errs = validate(&p).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.zones");
        assert!(errs[0].message.contains("sum to 90"), "{}", errs[0].message);
    }

    #[test]
    fn guard_rail_fields() {
        let mut p = policy("");
        p.spec.zones[0].capacity_percent = Some(80);
        p.spec.zones[1].capacity_percent = Some(40);
        p.spec.failover.min_healthy_zones = Some(2);
        p.spec.failover.failback = Some(crate::Failback {
            step_percent: 10,
            step_seconds: 30,
        });
        assert_eq!(fields(&p), Vec::<String>::new());
        // 70 + 30 over capacities 60 + 30: the weight and the sum are wrong.
        p.spec.zones[1].capacity_percent = Some(30);
        p.spec.zones[0].capacity_percent = Some(69);
        assert_eq!(fields(&p), ["spec.zones[0].weight", "spec.zones"]);
        p.spec.zones[0].capacity_percent = Some(101);
        p.spec.zones[1].capacity_percent = None;
        p.spec.failover.min_healthy_zones = Some(3);
        p.spec.failover.failback = Some(crate::Failback {
            step_percent: 0,
            step_seconds: 3601,
        });
        assert_eq!(
            fields(&p),
            [
                "spec.zones[0].capacityPercent",
                "spec.failover.minHealthyZones",
                "spec.failover.failback.stepPercent",
                "spec.failover.failback.stepSeconds",
            ]
        );
        // Priority mode: weights split a tier, so only the sum is checked.
        p.spec.failover = crate::Failover {
            mode: crate::FailoverMode::Priority,
            ..Default::default()
        };
        p.spec.zones[0].capacity_percent = Some(50);
        p.spec.zones[1].capacity_percent = Some(50);
        assert_eq!(fields(&p), Vec::<String>::new());
    }

    #[test]
    fn zone_and_endpoint_counts() {
        let mut p = policy("");
        p.spec.routes.clear();
        p.spec.zones[0].endpoints.clear();
        assert_eq!(fields(&p), ["spec.zones[0].endpoints"]);
        let mut p = policy("");
        p.spec.routes.clear();
        p.spec.zones.clear();
        assert_eq!(fields(&p), ["spec.zones"]);
        let mut p = policy("");
        let zone = p.spec.zones[1].clone();
        p.spec.zones = (0..33)
            .map(|i| crate::Zone {
                name: format!("z{i}"),
                weight: 0,
                ..zone.clone()
            })
            .collect();
        p.spec.zones[0].weight = 100;
        p.spec.routes.clear();
        assert_eq!(fields(&p), ["spec.zones"]);
    }

    #[test]
    fn canary_version_must_exist_and_leave_a_stable_set() {
        let mut p = policy("");
        p.spec.routes[0].canary.as_mut().unwrap().version = "v9".into();
        assert_eq!(fields(&p), ["spec.routes[0].canary.version"]);

        let mut p = policy("");
        for zone in &mut p.spec.zones {
            for ep in &mut zone.endpoints {
                ep.version = "v2".into();
            }
        }
        assert_eq!(fields(&p), ["spec.routes[0].canary.version"]);
        p.spec.routes[0].canary.as_mut().unwrap().weight = 100;
        assert_eq!(fields(&p), Vec::<String>::new());
    }

    #[test]
    fn duplicates_are_named() {
        let mut p = policy("");
        let ep = p.spec.zones[0].endpoints[0].clone();
        p.spec.zones[0].endpoints.push(ep);
        let route = p.spec.routes[0].clone();
        p.spec.routes.push(route);
        assert_eq!(
            fields(&p),
            ["spec.zones[0].endpoints[2]", "spec.routes[1].name"]
        );
    }

    #[test]
    fn name_rules() {
        for good in ["a", "track-api", "a1", &"x".repeat(63)] {
            assert!(dns_label(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
        for good in ["track.example.com", "a.b"] {
            assert!(fqdn(good).is_ok(), "{good}");
        }
        for bad in [
            "localhost",
            "10.0.0.1",
            "Track.example.com",
            "a..b",
            "a.b.",
            "a.123",
        ] {
            assert!(fqdn(bad).is_err(), "{bad}");
        }
        for good in ["10.0.0.1", "::1", "backend", "b.internal"] {
            assert!(address(good).is_ok(), "{good}");
        }
        assert!(address("not an address").is_err());
        for good in ["10.0.0.1", "::1", "127.0.1.1"] {
            assert!(endpoint_address(good).is_ok(), "{good}");
        }
        for bad in ["backend", "b.internal", "10.0.0", "not an address"] {
            assert!(endpoint_address(bad).is_err(), "{bad}");
        }
    }

    /// Policies Envoy would refuse are refused here first (each of these
    /// passed validation and was NACKed by Envoy for the whole port).
    #[test]
    fn policies_envoy_refuses_are_refused() {
        let mut p = policy("");
        p.spec.zones[1].endpoints[0].address = "backend.internal".into();
        assert_eq!(fields(&p), ["spec.zones[1].endpoints[0].address"]);
        let mut p = policy("");
        p.spec.routes[0].canary.as_mut().unwrap().header = "host".into();
        assert_eq!(fields(&p), ["spec.routes[0].canary.header"]);
    }

    #[test]
    fn resilience_defaults_decode_and_pass() {
        let p = policy("  outlierDetection: {}\n  circuitBreakers: {maxRequests: 10}\n");
        assert_eq!(validate(&p), Ok(()));
        let od = p.spec.outlier_detection.as_ref().unwrap();
        assert_eq!(od.consecutive_5xx, 5);
        assert_eq!(od.max_ejection_percent, 10);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["spec"]["outlierDetection"]["consecutive5xx"], 5);
        assert_eq!(
            json["spec"]["circuitBreakers"],
            serde_json::json!({"maxRequests": 10})
        );
        // Unset stays unset: no route timeout, no retries.
        assert!(json["spec"]["routes"][0].get("timeoutMs").is_none());
        assert!(json["spec"]["routes"][0].get("retries").is_none());
        let mut p = policy("");
        p.spec.routes[0].retries = Some(crate::Retries::default());
        assert_eq!(validate(&p), Ok(()));
        let text = r#"{"attempts": 3, "retryOn": ["5xx", "retriable-status-codes"], "retriableStatusCodes": [503]}"#;
        let r: crate::Retries = serde_json::from_str(text).unwrap();
        assert_eq!(
            r.retry_on,
            [crate::RetryOn::FiveXx, crate::RetryOn::RetriableStatusCodes]
        );
        for cond in crate::RetryOn::ALL {
            let json = serde_json::to_value(cond).unwrap();
            assert_eq!(json, cond.as_str());
            assert_eq!(crate::RetryOn::parse(cond.as_str()), Some(cond));
        }
    }

    #[test]
    fn resilience_rules() {
        use crate::{
            CircuitBreakers, OutlierDetection, Retries, RetryBudget, RetryOn, SuccessRate,
        };
        // (what to change, the fields that must be named)
        type Case = (&'static str, fn(&mut Policy), &'static [&'static str]);
        let cases: &[Case] = &[
            (
                "timeout over a day",
                |p| p.spec.routes[0].timeout_ms = Some(MAX_TIMEOUT_MS + 1),
                &["spec.routes[0].timeoutMs"],
            ),
            (
                "timeout 0 is no limit",
                |p| p.spec.routes[0].timeout_ms = Some(0),
                &[],
            ),
            (
                "0 attempts",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        attempts: 0,
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.attempts"],
            ),
            (
                "11 attempts",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        attempts: 11,
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.attempts"],
            ),
            (
                "per try over the timeout",
                |p| {
                    p.spec.routes[0].timeout_ms = Some(500);
                    p.spec.routes[0].retries = Some(Retries {
                        per_try_timeout_ms: Some(501),
                        ..Default::default()
                    });
                },
                &["spec.routes[0].retries.perTryTimeoutMs"],
            ),
            (
                "per try 0",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        per_try_timeout_ms: Some(0),
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.perTryTimeoutMs"],
            ),
            (
                "per try under an unlimited timeout",
                |p| {
                    p.spec.routes[0].timeout_ms = Some(0);
                    p.spec.routes[0].retries = Some(Retries {
                        per_try_timeout_ms: Some(60_000),
                        ..Default::default()
                    });
                },
                &[],
            ),
            (
                "no condition",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        retry_on: vec![],
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.retryOn"],
            ),
            (
                "duplicate condition",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        retry_on: vec![RetryOn::Reset, RetryOn::Reset],
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.retryOn[1]"],
            ),
            (
                "codes without the condition",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        retriable_status_codes: vec![503],
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.retriableStatusCodes"],
            ),
            (
                "condition without codes",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        retry_on: vec![RetryOn::RetriableStatusCodes],
                        ..Default::default()
                    })
                },
                &["spec.routes[0].retries.retriableStatusCodes"],
            ),
            (
                "bad and duplicate codes",
                |p| {
                    p.spec.routes[0].retries = Some(Retries {
                        retry_on: vec![RetryOn::RetriableStatusCodes],
                        retriable_status_codes: vec![503, 42, 503],
                        ..Default::default()
                    })
                },
                &[
                    "spec.routes[0].retries.retriableStatusCodes[1]",
                    "spec.routes[0].retries.retriableStatusCodes[2]",
                ],
            ),
            (
                "outlier limits",
                |p| {
                    p.spec.outlier_detection = Some(OutlierDetection {
                        consecutive_5xx: 1001,
                        consecutive_gateway_errors: 1001,
                        interval_ms: 99,
                        base_ejection_time_ms: 0,
                        max_ejection_percent: 101,
                        success_rate: Some(SuccessRate {
                            minimum_hosts: 0,
                            request_volume: 0,
                            stdev_factor: 0.0,
                        }),
                    })
                },
                &[
                    "spec.outlierDetection.consecutive5xx",
                    "spec.outlierDetection.consecutiveGatewayErrors",
                    "spec.outlierDetection.intervalMs",
                    "spec.outlierDetection.baseEjectionTimeMs",
                    "spec.outlierDetection.maxEjectionPercent",
                    "spec.outlierDetection.successRate.minimumHosts",
                    "spec.outlierDetection.successRate.requestVolume",
                    "spec.outlierDetection.successRate.stdevFactor",
                ],
            ),
            (
                "outlier detection that ejects nothing",
                |p| {
                    p.spec.outlier_detection = Some(OutlierDetection {
                        consecutive_5xx: 0,
                        ..Default::default()
                    })
                },
                &["spec.outlierDetection"],
            ),
            (
                "a NaN stdev factor",
                |p| {
                    p.spec.outlier_detection = Some(OutlierDetection {
                        success_rate: Some(SuccessRate {
                            stdev_factor: f64::NAN,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                },
                &["spec.outlierDetection.successRate.stdevFactor"],
            ),
            (
                "zero limits",
                |p| {
                    p.spec.circuit_breakers = Some(CircuitBreakers {
                        max_connections: Some(0),
                        max_pending_requests: Some(0),
                        max_requests: Some(0),
                        max_retries: Some(0),
                        retry_budget: None,
                    })
                },
                &[
                    "spec.circuitBreakers.maxConnections",
                    "spec.circuitBreakers.maxPendingRequests",
                    "spec.circuitBreakers.maxRequests",
                ],
            ),
            (
                "budget and max retries",
                |p| {
                    p.spec.circuit_breakers = Some(CircuitBreakers {
                        max_retries: Some(3),
                        retry_budget: Some(RetryBudget {
                            budget_percent: 0,
                            min_retry_concurrency: MAX_CIRCUIT_LIMIT + 1,
                        }),
                        ..Default::default()
                    })
                },
                &[
                    "spec.circuitBreakers.retryBudget",
                    "spec.circuitBreakers.retryBudget.budgetPercent",
                    "spec.circuitBreakers.retryBudget.minRetryConcurrency",
                ],
            ),
        ];
        for (what, change, want) in cases {
            let mut p = policy("");
            change(&mut p);
            assert_eq!(fields(&p), *want, "{what}");
        }
    }

    #[test]
    fn rollout_defaults_decode_and_pass() {
        // Without a rollout the canary is a hand-set weight, as before.
        let p = policy("");
        assert_eq!(p.spec.routes[0].canary.as_ref().unwrap().rollout, None);
        let json = serde_json::to_value(&p).unwrap();
        assert!(json["spec"]["routes"][0]["canary"].get("rollout").is_none());

        let text = r#"{"version": "v2", "weight": 0, "rollout": {}}"#;
        let c: crate::Canary = serde_json::from_str(text).unwrap();
        let r = c.rollout.clone().unwrap();
        assert_eq!(r, crate::Rollout::default());
        assert_eq!(r.steps, [5, 25, 50, 100]);
        assert_eq!(r.step_interval_ms, 60_000);
        assert_eq!(r.analysis.min_requests, 100);
        assert_eq!(r.analysis.inconclusive_limit, 3);
        let mut p = policy("");
        p.spec.routes[0].canary = Some(c);
        assert_eq!(validate(&p), Ok(()));
        // camelCase on the wire; unset stays unset.
        let json = serde_json::to_value(&p).unwrap();
        let rollout = &json["spec"]["routes"][0]["canary"]["rollout"];
        assert_eq!(rollout["stepIntervalMs"], 60_000);
        assert_eq!(rollout["analysis"]["maxFailureRatePercent"], 5.0);
        assert_eq!(rollout["analysis"]["maxFailureRateIncreasePercent"], 1.0);
        assert_eq!(rollout["analysis"]["inconclusiveLimit"], 3);
        assert!(rollout.get("zoneOrder").is_none());
        assert!(rollout["analysis"].get("prometheus").is_none());

        let full = r#"{"version": "v2", "weight": 0, "rollout": {
            "steps": [10, 100], "stepIntervalMs": 5000, "zoneOrder": ["us-west-2a"],
            "analysis": {"maxFailureRatePercent": 0.5, "minRequests": 50,
                "prometheus": {"url": "http://127.0.0.1:9090", "queries": [
                    {"name": "p99-ms", "query": "histogram_quantile(0.99, x)", "max": 300}]}}}}"#;
        let c: crate::Canary = serde_json::from_str(full).unwrap();
        let r = c.rollout.as_ref().unwrap();
        assert_eq!(
            r.zone_order.as_deref(),
            Some(&["us-west-2a".to_owned()][..])
        );
        assert_eq!(r.analysis.max_failure_rate_percent, 0.5);
        assert_eq!(r.analysis.max_failure_rate_increase_percent, 1.0);
        assert_eq!(
            r.analysis.prometheus.as_ref().unwrap().queries[0].max,
            300.0
        );
        // Served per zone (per-route clusters, docs/rollouts.md): accepted.
        p.spec.routes[0].canary = Some(c);
        assert_eq!(validate(&p), Ok(()));

        // A typo is refused, as everywhere else.
        let typo = r#"{"version": "v2", "weight": 0, "rollout": {"step": [100]}}"#;
        assert!(serde_json::from_str::<crate::Canary>(typo).is_err());
    }

    #[test]
    fn rollout_rules() {
        use crate::{PrometheusAnalysis, PrometheusQuery, Rollout, Zone};
        fn with(p: &mut Policy, change: impl FnOnce(&mut Rollout)) {
            let c = p.spec.routes[0].canary.as_mut().unwrap();
            c.weight = 0;
            let mut r = Rollout::default();
            change(&mut r);
            c.rollout = Some(r);
        }
        fn query(name: &str, query: &str, max: f64) -> PrometheusQuery {
            PrometheusQuery {
                name: name.into(),
                query: query.into(),
                max,
            }
        }
        /// A third zone, running v2 too.
        fn third_zone(p: &mut Policy) {
            let mut z: Zone = p.spec.zones[1].clone();
            z.name = "ap-south-1a".into();
            z.weight = 0;
            z.endpoints[0].version = "v2".into();
            z.endpoints.push(crate::Endpoint {
                address: "10.0.3.9".into(),
                port: 8080,
                version: "v1".into(),
            });
            p.spec.zones.push(z);
        }
        const R: &str = "spec.routes[0].canary.rollout";
        // (what, change, the fields that must be named)
        type Case = (&'static str, fn(&mut Policy), &'static [&'static str]);
        let cases: &[Case] = &[
            ("defaults", |p| with(p, |_| {}), &[]),
            (
                "a hand-set weight under a rollout",
                |p| {
                    with(p, |_| {});
                    p.spec.routes[0].canary.as_mut().unwrap().weight = 10;
                },
                &["spec.routes[0].canary.weight"],
            ),
            ("one step of 100", |p| with(p, |r| r.steps = vec![100]), &[]),
            (
                "no steps",
                |p| with(p, |r| r.steps = vec![]),
                &["spec.routes[0].canary.rollout.steps"],
            ),
            (
                "not ending at 100",
                |p| with(p, |r| r.steps = vec![5, 50]),
                &["spec.routes[0].canary.rollout.steps"],
            ),
            (
                "a step of 0 and one over 100",
                |p| with(p, |r| r.steps = vec![0, 50, 101, 100]),
                &[
                    "spec.routes[0].canary.rollout.steps[0]",
                    "spec.routes[0].canary.rollout.steps[2]",
                ],
            ),
            (
                "repeated and decreasing steps",
                |p| with(p, |r| r.steps = vec![5, 5, 50, 25, 100]),
                &[
                    "spec.routes[0].canary.rollout.steps[1]",
                    "spec.routes[0].canary.rollout.steps[3]",
                ],
            ),
            (
                "interval too short",
                |p| with(p, |r| r.step_interval_ms = MIN_STEP_INTERVAL_MS - 1),
                &["spec.routes[0].canary.rollout.stepIntervalMs"],
            ),
            (
                "interval too long",
                |p| with(p, |r| r.step_interval_ms = MAX_STEP_INTERVAL_MS + 1),
                &["spec.routes[0].canary.rollout.stepIntervalMs"],
            ),
            (
                "shortest and longest intervals",
                |p| {
                    with(p, |r| r.step_interval_ms = MIN_STEP_INTERVAL_MS);
                    p.spec.routes.push(p.spec.routes[0].clone());
                    p.spec.routes[1].name = "second".into();
                    with(p, |r| r.step_interval_ms = MAX_STEP_INTERVAL_MS);
                },
                &[],
            ),
            (
                "rates out of range",
                |p| {
                    with(p, |r| {
                        r.analysis.max_failure_rate_percent = 100.5;
                        r.analysis.max_failure_rate_increase_percent = -1.0;
                    })
                },
                &[
                    "spec.routes[0].canary.rollout.analysis.maxFailureRatePercent",
                    "spec.routes[0].canary.rollout.analysis.maxFailureRateIncreasePercent",
                ],
            ),
            (
                "NaN rates",
                |p| {
                    with(p, |r| {
                        r.analysis.max_failure_rate_percent = f64::NAN;
                        r.analysis.max_failure_rate_increase_percent = f64::NAN;
                    })
                },
                &[
                    "spec.routes[0].canary.rollout.analysis.maxFailureRatePercent",
                    "spec.routes[0].canary.rollout.analysis.maxFailureRateIncreasePercent",
                ],
            ),
            (
                "zero rates are allowed: no failure at all",
                |p| {
                    with(p, |r| {
                        r.analysis.max_failure_rate_percent = 0.0;
                        r.analysis.max_failure_rate_increase_percent = 0.0;
                    })
                },
                &[],
            ),
            (
                "no minimum and no patience",
                |p| {
                    with(p, |r| {
                        r.analysis.min_requests = 0;
                        r.analysis.inconclusive_limit = 0;
                    })
                },
                &[
                    "spec.routes[0].canary.rollout.analysis.minRequests",
                    "spec.routes[0].canary.rollout.analysis.inconclusiveLimit",
                ],
            ),
            (
                "too much patience",
                |p| {
                    with(p, |r| {
                        r.analysis.inconclusive_limit = MAX_INCONCLUSIVE_LIMIT + 1
                    })
                },
                &["spec.routes[0].canary.rollout.analysis.inconclusiveLimit"],
            ),
            (
                "a good Prometheus",
                |p| {
                    with(p, |r| {
                        r.analysis.prometheus = Some(PrometheusAnalysis {
                            url: "https://prom.example.com/prefix".into(),
                            queries: vec![query("p99", "up", 300.0), query("errors", "x", 0.0)],
                        })
                    })
                },
                &[],
            ),
            (
                "a bad Prometheus",
                |p| {
                    with(p, |r| {
                        r.analysis.prometheus = Some(PrometheusAnalysis {
                            url: "prometheus:9090".into(),
                            queries: vec![
                                query("P99", "up", f64::INFINITY),
                                query("a", " ", 1.0),
                                query("a", &"x".repeat(MAX_QUERY_LEN + 1), f64::NAN),
                            ],
                        })
                    })
                },
                &[
                    "spec.routes[0].canary.rollout.analysis.prometheus.url",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries[0].name",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries[0].max",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries[1].query",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries[2].name",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries[2].query",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries[2].max",
                ],
            ),
            (
                "Prometheus without queries, and URLs without a host",
                |p| {
                    with(p, |r| {
                        r.analysis.prometheus = Some(PrometheusAnalysis {
                            url: "http://:9090".into(),
                            queries: vec![],
                        })
                    })
                },
                &[
                    "spec.routes[0].canary.rollout.analysis.prometheus.url",
                    "spec.routes[0].canary.rollout.analysis.prometheus.queries",
                ],
            ),
            (
                "a zone order of the zones running v2",
                |p| {
                    third_zone(p);
                    with(p, |r| {
                        r.zone_order = Some(vec!["ap-south-1a".into(), "us-west-2a".into()])
                    });
                },
                &[],
            ),
            (
                "an empty zone order",
                |p| with(p, |r| r.zone_order = Some(vec![])),
                &["spec.routes[0].canary.rollout.zoneOrder"],
            ),
            (
                "unknown, duplicate and v2-less zones",
                |p| {
                    with(p, |r| {
                        r.zone_order = Some(vec![
                            "us-west-2a".into(),
                            "nowhere".into(),
                            "us-west-2a".into(),
                            "eu-west-1a".into(),
                        ])
                    })
                },
                &[
                    "spec.routes[0].canary.rollout.zoneOrder[1]",
                    "spec.routes[0].canary.rollout.zoneOrder[2]",
                    "spec.routes[0].canary.rollout.zoneOrder[3]",
                ],
            ),
            (
                "a zone running v2 left out of the order",
                |p| {
                    third_zone(p);
                    with(p, |r| r.zone_order = Some(vec!["us-west-2a".into()]));
                },
                &["spec.routes[0].canary.rollout.zoneOrder"],
            ),
        ];
        for (what, change, want) in cases {
            let mut p = policy("");
            change(&mut p);
            assert_eq!(fields(&p), *want, "{what}");
            for f in *want {
                assert!(f.starts_with(R) || f.ends_with(".weight"), "{what}: {f}");
            }
        }
        // The messages say what to do.
        let mut p = policy("");
        third_zone(&mut p);
        with(&mut p, |r| r.zone_order = Some(vec!["us-west-2a".into()]));
        let errs = validate(&p).unwrap_err();
        assert!(
            errs[0].message.contains("missing ap-south-1a"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn labels_and_sans() {
        let mut p = policy("");
        p.metadata
            .labels
            .insert("example.com/tier".into(), "gold".into());
        p.metadata.labels.insert("bad key!".into(), "x".into());
        p.metadata.labels.insert("ok".into(), "bad value!".into());
        p.spec.mtls.allowed_sans =
            vec!["spiffe://example.org/ns/a/sa/b".into(), "https://x".into()];
        assert_eq!(
            fields(&p),
            [
                "metadata.labels.bad key!",
                "metadata.labels.ok",
                "spec.mtls.allowedSans[1]"
            ]
        );
    }

    #[test]
    fn health_check_rules() {
        assert_eq!(
            status_ranges("200-399, 404").unwrap(),
            [(200, 399), (404, 404)]
        );
        for bad in ["", "abc", "399-200", "99", "200-600"] {
            assert!(status_ranges(bad).is_err(), "{bad}");
        }
        let mut p = policy("");
        p.spec.health_check.timeout_ms = 5000;
        p.spec.health_check.interval_ms = 50;
        p.spec.health_check.path = "healthz".into();
        assert_eq!(
            fields(&p),
            [
                "spec.healthCheck.path",
                "spec.healthCheck.intervalMs",
                "spec.healthCheck.timeoutMs"
            ]
        );
    }
}

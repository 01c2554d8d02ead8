//! Types of the GlobalTrafficPolicy, with the defaults the server fills in.
//!
//! Defaults live in serde attributes so that anything decoded (a request, a
//! stored row, a file in a policy repository) carries the same filled-in
//! values: what a client reads back is what the server acts on.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const API_VERSION: &str = "meridian/v1";
pub const KIND: &str = "GlobalTrafficPolicy";
/// Header that marks a request routed to a canary, unless a route names another.
pub const DEFAULT_CANARY_HEADER: &str = "x-envoy-upstream-canary";
/// Endpoint version assumed when a policy does not give one.
pub const DEFAULT_VERSION: &str = "v1";

/// A service that runs in several zones, and how traffic reaches it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "api_version")]
    #[schema(example = "meridian/v1")]
    pub api_version: String,
    #[serde(default = "kind")]
    #[schema(example = "GlobalTrafficPolicy")]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

fn api_version() -> String {
    API_VERSION.to_owned()
}
fn kind() -> String {
    KIND.to_owned()
}

/// Identity and bookkeeping. Only `name` and `labels` are read from input;
/// the rest is set by the server and ignored when a client sends it back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS-1123 label, unique among policies.
    #[schema(example = "track-api")]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Opaque; changes on every write. Send it back in `If-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Incremented on every change of `spec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// `api`, or the GitOps origin that wrote the policy last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Metadata {
    /// Drops what only the server may set, so input cannot smuggle it in.
    pub fn clear_server_fields(&mut self) {
        self.resource_version = None;
        self.generation = None;
        self.created_at = None;
        self.updated_at = None;
        self.source = None;
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Global host name of the service; unique among policies.
    #[schema(example = "track.example.com")]
    pub host: String,
    #[schema(example = 8080)]
    pub port: u32,
    #[serde(default)]
    pub protocol: Protocol,
    pub zones: Vec<Zone>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub failover: Failover,
    #[serde(default)]
    pub mtls: Mtls,
    #[serde(default)]
    pub dns: Dns,
    /// Passive health checking by the data plane: endpoints that keep
    /// failing are ejected for a while. Unset: no ejection (as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits on connections and requests to the policy's endpoints.
    /// Unset: Envoy's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Grpc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Zone {
    #[schema(example = "us-west-2a")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Share of traffic in percent; the zones of a policy sum to 100.
    pub weight: u32,
    /// Lower is preferred by `priority` failover.
    #[serde(default)]
    pub priority: u32,
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<ZoneDns>,
    /// Largest share of the policy's traffic this zone may take, in percent
    /// (default 100): failover, failback, overrides and drains never give it
    /// more, so a failover cannot overload it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_percent: Option<u32>,
}

impl Zone {
    /// [`Zone::capacity_percent`], 100 when unset.
    pub fn capacity(&self) -> u32 {
        self.capacity_percent.unwrap_or(100)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// IP address or host name.
    #[schema(example = "10.0.1.5")]
    pub address: String,
    pub port: u32,
    #[serde(default = "default_version")]
    pub version: String,
}

fn default_version() -> String {
    DEFAULT_VERSION.to_owned()
}

/// What a zone publishes in DNS, and through which provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneDns {
    /// An IP address (A/AAAA record) or a host name (CNAME).
    pub target: String,
    pub provider: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Longest a request on this route may take, in milliseconds, until
    /// the whole response is in (retries included); 0: no limit. Unset:
    /// Envoy's default of 15 s, and no limit for proxyless gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Whether and when a failed request is tried again. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

/// When a request is tried again, and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt, 1 to 10 (default 2).
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Limit of each attempt, in milliseconds. Unset: each attempt may
    /// use what is left of the route's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u32>,
    /// What counts as retriable (default `5xx`, `reset`,
    /// `connect-failure`, `unavailable`).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// HTTP statuses retried under `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u32>,
}

/// Default of [`Retries::attempts`].
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

fn default_retry_attempts() -> u32 {
    DEFAULT_RETRY_ATTEMPTS
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::FiveXx,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::Unavailable,
    ]
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout_ms: None,
            retry_on: default_retry_on(),
            retriable_status_codes: Vec::new(),
        }
    }
}

/// A retry condition, named as Envoy's `retry_on` names it. The HTTP
/// conditions apply to Envoy only; proxyless gRPC clients honour the gRPC
/// status conditions (`cancelled` to `unavailable`) alone.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx answer, and a reset or connect failure.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 and 504.
    GatewayError,
    /// The upstream reset the stream or closed the connection.
    Reset,
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// A status listed in `retriableStatusCodes`.
    RetriableStatusCodes,
    /// gRPC status CANCELLED.
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC status INTERNAL.
    Internal,
    /// gRPC status RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC status UNAVAILABLE.
    Unavailable,
}

impl RetryOn {
    /// Every condition, in the order of the enum.
    pub const ALL: [RetryOn; 12] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Retriable4xx,
        RetryOn::RetriableStatusCodes,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::Internal,
        RetryOn::ResourceExhausted,
        RetryOn::Unavailable,
    ];

    /// The name in policies and in Envoy's `retry_on`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::Internal => "internal",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Unavailable => "unavailable",
        }
    }

    /// The condition of a name ([`RetryOn::as_str`]).
    pub fn parse(s: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Passive health checking: the data plane ejects an endpoint that keeps
/// failing for `baseEjectionTimeMs` (longer each time it is ejected again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx answers (or resets, connect failures) in a row that eject an
    /// endpoint (default 5); 0 turns this rule off.
    pub consecutive_5xx: u32,
    /// 502, 503 and 504 answers in a row that eject an endpoint
    /// (default 0: off).
    pub consecutive_gateway_errors: u32,
    /// How often ejections are reconsidered (default 10000).
    pub interval_ms: u32,
    /// How long a first ejection lasts (default 30000).
    pub base_ejection_time_ms: u32,
    /// Most endpoints of a cluster ejected at once, in percent (default
    /// 10; one endpoint can always be ejected).
    pub max_ejection_percent: u32,
    /// Ejects endpoints whose success rate is far below their peers'.
    /// Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
            success_rate: None,
        }
    }
}

/// Success-rate ejection: every interval, an endpoint whose success rate is
/// below mean - stdevFactor x standard deviation of its cluster is ejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SuccessRate {
    /// Endpoints with enough requests needed before anyone is judged (default 5).
    pub minimum_hosts: u32,
    /// Requests in an interval an endpoint needs to be judged (default 100).
    pub request_volume: u32,
    /// How many standard deviations below the mean ejects (default 1.9).
    pub stdev_factor: f64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        SuccessRate {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1.9,
        }
    }
}

/// Connection and request limits per cluster (the stable cluster and each
/// canary cluster have their own). A request over a limit fails at once
/// (Envoy answers 503 with `x-envoy-overloaded`). Unset: Envoy's defaults
/// (1024 connections, pending and active requests; 3 retries at a time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Retries in flight as a share of requests in flight; replaces
    /// `maxRetries`. Envoy keeps retry budgets per cluster, so the budget
    /// is the policy's, shared by its routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries in flight, in percent of requests in flight (default 20).
    pub budget_percent: u32,
    /// Retries always allowed in flight, whatever the budget (default 3).
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            budget_percent: 20,
            min_retry_concurrency: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        Self {
            path_prefix: default_path_prefix(),
            headers: Vec::new(),
        }
    }
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub exact: String,
}

// Not `Eq`: a rollout's thresholds are fractional percentages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    /// Endpoint version that receives the canary share.
    pub version: String,
    /// Percent of the route's matching requests sent to the canary. Must
    /// be 0 under a `rollout`, which sets the canary's weight itself.
    pub weight: u32,
    /// Set to `true` on every request sent to the canary, and on no other.
    #[serde(default = "default_canary_header")]
    pub header: String,
    /// Progressive delivery: the failover leader steps the canary's weight
    /// up on its measured failure rate and rolls it back on its own.
    /// Unset: the weight is set by hand (as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

fn default_canary_header() -> String {
    DEFAULT_CANARY_HEADER.to_owned()
}

/// Where a rollout goes: the canary's version through `steps`, one step
/// per `stepIntervalMs` if its analysis passes. Where it is lives in the
/// rollout's status, never here, so a GitOps sync cannot move it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Rollout {
    /// Canary weights in percent, strictly increasing, ending at 100
    /// (default 5, 25, 50, 100).
    pub steps: Vec<u32>,
    /// Time at each step, in milliseconds (default 60000): one analysis
    /// interval.
    pub step_interval_ms: u32,
    pub analysis: RolloutAnalysis,
    /// Zones one after the other: the canary goes through every step in
    /// the first before the next starts. Unset: every zone moves together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_order: Option<Vec<String>>,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            steps: vec![5, 25, 50, 100],
            step_interval_ms: 60_000,
            analysis: RolloutAnalysis::default(),
            zone_order: None,
        }
    }
}

/// When a rollout's step passes: the canary's failure rate, measured from
/// the data planes' load reports per zone, against limits and against the
/// stable version's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RolloutAnalysis {
    /// Highest failure rate of the canary, in percent (default 5).
    pub max_failure_rate_percent: f64,
    /// Most the canary's failure rate may exceed the stable version's, in
    /// percentage points (default 1).
    pub max_failure_rate_increase_percent: f64,
    /// Canary requests needed before any verdict (default 100).
    pub min_requests: u32,
    /// Intervals in a row without enough traffic before the rollout
    /// pauses (default 3).
    pub inconclusive_limit: u32,
    /// PromQL queries that must also stay under their thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusAnalysis>,
}

impl Default for RolloutAnalysis {
    fn default() -> Self {
        RolloutAnalysis {
            max_failure_rate_percent: 5.0,
            max_failure_rate_increase_percent: 1.0,
            min_requests: 100,
            inconclusive_limit: 3,
            prometheus: None,
        }
    }
}

/// PromQL checks of a rollout, as Flagger's metric templates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusAnalysis {
    /// Base URL of the Prometheus HTTP API, such as `http://prometheus:9090`.
    #[schema(example = "http://prometheus:9090")]
    pub url: String,
    pub queries: Vec<PrometheusQuery>,
}

/// One PromQL query; its result must be at most `max`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusQuery {
    /// Unique within the rollout; names the value in status and events.
    #[schema(example = "p99-latency-ms")]
    pub name: String,
    /// An instant query returning one number.
    pub query: String,
    pub max: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    pub path: String,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Accepted HTTP statuses: `200`, `200-399` or a comma-separated list of both.
    pub expected_status: String,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            protocol: HealthProtocol::Http,
            path: "/healthz".to_owned(),
            interval_ms: 1000,
            timeout_ms: 500,
            expected_status: "200-399".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    #[default]
    Http,
    Tcp,
    Grpc,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Failover {
    pub mode: FailoverMode,
    /// A zone fails when more than this percentage of its probes fail.
    pub failure_rate_percent: u32,
    pub window_seconds: u32,
    pub min_samples: u32,
    /// How long a failed zone must stay under the threshold to count as healthy.
    pub recovery_seconds: u32,
    /// Zones that must keep serving: a drain or an override that would
    /// leave fewer is refused unless forced with a reason (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_healthy_zones: Option<u32>,
    /// How traffic returns to a recovered or undrained zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failback: Option<Failback>,
}

impl Failover {
    /// [`Failover::min_healthy_zones`], 1 when unset.
    pub fn min_healthy(&self) -> u32 {
        self.min_healthy_zones.unwrap_or(1)
    }

    /// [`Failover::failback`], or the default ramp.
    pub fn failback(&self) -> Failback {
        self.failback.clone().unwrap_or_default()
    }
}

/// Ramped failback: a zone coming back gets `stepPercent` of its share at
/// once, then another step every `stepSeconds`. Failover itself is never
/// ramped: an unhealthy zone loses its traffic at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Failback {
    /// Percent of the zone's share returned per step, 1 to 100 (100: at once).
    pub step_percent: u32,
    pub step_seconds: u32,
}

impl Default for Failback {
    fn default() -> Self {
        Self {
            step_percent: 25,
            step_seconds: 5,
        }
    }
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            mode: FailoverMode::Weighted,
            failure_rate_percent: 5,
            window_seconds: 30,
            min_samples: 10,
            recovery_seconds: 60,
            min_healthy_zones: None,
            failback: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    #[default]
    Weighted,
    Priority,
    Manual,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Mtls {
    pub mode: MtlsMode,
    /// URI SANs (SPIFFE IDs) allowed to call the service under `strict`.
    pub allowed_sans: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Disabled,
    Permissive,
    Strict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Dns {
    pub ttl: u32,
}

impl Default for Dns {
    fn default() -> Self {
        Self { ttl: 30 }
    }
}

/// One immutable entry of a policy's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// 1 for the first write of the policy, +1 on every write after.
    pub revision: i64,
    pub resource_version: String,
    pub generation: i64,
    pub labels: BTreeMap<String, String>,
    pub spec: Spec,
    pub created_at: DateTime<Utc>,
    pub source: String,
}

#[cfg(test)]
mod tests {
    use utoipa::{PartialSchema, ToSchema};

    /// The rollout is in the schema OpenAPI clients are generated from:
    /// the API's document collects nested schemas from these derives.
    #[test]
    fn the_canary_schema_has_the_rollout() {
        let canary = serde_json::to_value(super::Canary::schema()).unwrap();
        let rollout = &canary["properties"]["rollout"];
        assert!(!rollout.is_null(), "{canary}");
        assert!(
            !canary["required"]
                .as_array()
                .unwrap()
                .contains(&"rollout".into()),
            "optional"
        );
        let mut nested = Vec::new();
        super::Canary::schemas(&mut nested);
        let names: Vec<&str> = nested.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "Rollout",
            "RolloutAnalysis",
            "PrometheusAnalysis",
            "PrometheusQuery",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let analysis = serde_json::to_value(super::RolloutAnalysis::schema()).unwrap();
        for field in [
            "maxFailureRatePercent",
            "maxFailureRateIncreasePercent",
            "minRequests",
            "inconclusiveLimit",
            "prometheus",
        ] {
            assert!(
                !analysis["properties"][field].is_null(),
                "{field}: {analysis}"
            );
        }
        let rollout = serde_json::to_value(super::Rollout::schema()).unwrap();
        for field in ["steps", "stepIntervalMs", "analysis", "zoneOrder"] {
            assert!(
                !rollout["properties"][field].is_null(),
                "{field}: {rollout}"
            );
        }
    }
}

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Canary {
    /// Endpoint version that receives the canary share.
    pub version: String,
    /// Percent of the route's matching requests sent to the canary.
    pub weight: u32,
    /// Set to `true` on every request sent to the canary, and on no other.
    #[serde(default = "default_canary_header")]
    pub header: String,
}

fn default_canary_header() -> String {
    DEFAULT_CANARY_HEADER.to_owned()
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

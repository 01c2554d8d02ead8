//! Read endpoints for the dashboard.
//!
//! `GET /api/v1/dashboard/overview` answers "which services are degraded,
//! where is traffic going, did DNS and the sidecars follow" for every
//! policy in one request: a fixed number of queries however many policies
//! there are, so the overview of 1,000 policies is one round trip rather
//! than a thousand `/status` calls. The summary of one policy is a pure
//! function of what was read ([`summarize`]), tested without a database.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::{DateTime, Utc};
use meridian_policy::Policy;
use meridian_store::failover::{EffectiveWeights, Override};
use meridian_store::providers::DnsStatus;
use serde::Serialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorBody};
use crate::request::query_pairs;
use crate::AppState;

/// Reports older than this are from checkers that stopped (as in `/status`).
const REPORT_FRESHNESS: Duration = Duration::from_secs(10);

/// One policy's state at a glance.
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub name: String,
    pub host: String,
    pub port: u32,
    pub labels: BTreeMap<String, String>,
    pub resource_version: Option<String>,
    /// `healthy`, `degraded` (some zones unhealthy), `down` (every zone
    /// unhealthy) or `unknown` (no health decision yet).
    pub health: &'static str,
    /// What needs a look besides health, in a fixed order:
    /// `failed-over`, `fail-open`, `override`, `drained`, `dns-out-of-sync`,
    /// `xds-nack`.
    pub flags: Vec<&'static str>,
    /// Why the effective weights are what they are (`spec` when the leader
    /// has not decided anything).
    pub cause: String,
    pub zones: Vec<ZoneSummary>,
    pub canaries: Vec<CanarySummary>,
    #[serde(rename = "override")]
    pub override_reason: Option<String>,
    /// `synced`, `pending`, `error`, `unknown` (a zone publishes to DNS but
    /// nothing was reconciled yet) or `none` (no zone publishes to DNS).
    pub dns: &'static str,
    /// NACKs currently held by xDS clients of this replica whose message
    /// names this policy (its clusters or its host).
    pub xds_nacks: usize,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSummary {
    pub name: String,
    pub health: String,
    pub spec_weight: u32,
    pub effective_weight: u32,
    pub drained: bool,
    pub failure_rate_percent: f64,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanarySummary {
    pub route: String,
    pub version: String,
    pub weight: u32,
}

/// What the store holds about one policy, besides the policy itself.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    /// Zone name to its health (`healthy`, `unhealthy`, `unknown`).
    pub zone_health: BTreeMap<&'a str, &'a str>,
    /// Zone name to (samples, failures) over the fresh reports.
    pub tallies: BTreeMap<&'a str, (i64, i64)>,
    pub effective: Option<&'a EffectiveWeights>,
    pub override_: Option<&'a Override>,
    pub drained: &'a [String],
    pub dns: &'a [DnsStatus],
    /// Messages of the NACKs that xDS clients hold now.
    pub nacks: &'a [String],
}

/// The at-a-glance state of `policy` at `now`.
pub fn summarize(policy: &Policy, facts: &Facts<'_>, now: DateTime<Utc>) -> Summary {
    let spec = &policy.spec;
    let zones: Vec<ZoneSummary> = spec
        .zones
        .iter()
        .map(|z| {
            let (samples, failures) = facts
                .tallies
                .get(z.name.as_str())
                .copied()
                .unwrap_or_default();
            ZoneSummary {
                name: z.name.clone(),
                health: facts
                    .zone_health
                    .get(z.name.as_str())
                    .copied()
                    .unwrap_or("unknown")
                    .to_owned(),
                spec_weight: z.weight,
                effective_weight: facts
                    .effective
                    .and_then(|e| e.weights.get(&z.name).copied())
                    .unwrap_or(z.weight),
                drained: facts.drained.contains(&z.name),
                failure_rate_percent: if samples > 0 {
                    failures as f64 * 100.0 / samples as f64
                } else {
                    0.0
                },
            }
        })
        .collect();

    let unhealthy = zones.iter().filter(|z| z.health == "unhealthy").count();
    let known = zones.iter().filter(|z| z.health != "unknown").count();
    let health = if !zones.is_empty() && unhealthy == zones.len() {
        "down"
    } else if unhealthy > 0 {
        "degraded"
    } else if known == 0 {
        "unknown"
    } else {
        "healthy"
    };

    let cause = facts
        .effective
        .map_or_else(|| "spec".to_owned(), |e| e.cause.clone());
    // An expired override no longer pins anything, even before the leader
    // has removed it.
    let override_reason = facts
        .override_
        .filter(|o| o.expires_at.is_none_or(|t| t > now))
        .map(|o| o.reason.clone());

    let dns_zones = spec.zones.iter().any(|z| z.dns.is_some());
    let dns = if !dns_zones {
        "none"
    } else if facts.dns.is_empty() {
        "unknown"
    } else if facts.dns.iter().any(|d| d.state == "error") {
        "error"
    } else if facts.dns.iter().any(|d| d.state != "synced") {
        "pending"
    } else {
        "synced"
    };

    let xds_nacks = facts
        .nacks
        .iter()
        .filter(|m| mentions(m, &policy.metadata.name) || mentions(m, &spec.host))
        .count();

    let mut flags = Vec::new();
    if cause == "failover" {
        flags.push("failed-over");
    }
    if cause == "all-unhealthy-fail-open" {
        flags.push("fail-open");
    }
    if override_reason.is_some() {
        flags.push("override");
    }
    if zones.iter().any(|z| z.drained) {
        flags.push("drained");
    }
    if matches!(dns, "pending" | "error") {
        flags.push("dns-out-of-sync");
    }
    if xds_nacks > 0 {
        flags.push("xds-nack");
    }

    Summary {
        name: policy.metadata.name.clone(),
        host: spec.host.clone(),
        port: spec.port,
        labels: policy.metadata.labels.clone(),
        resource_version: policy.metadata.resource_version.clone(),
        health,
        flags,
        cause,
        zones,
        canaries: spec
            .routes
            .iter()
            .filter_map(|r| {
                r.canary.as_ref().map(|c| CanarySummary {
                    route: r.name.clone(),
                    version: c.version.clone(),
                    weight: c.weight,
                })
            })
            .collect(),
        override_reason,
        dns,
        xds_nacks,
    }
}

/// Whether `message` names `word` as a whole resource name: a cluster is
/// `<policy>` or `<policy>@<version>` and a listener `<host>` or
/// `<host>:<port>`, so `api` must not match inside `track-api`.
pub fn mentions(message: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    message.match_indices(word).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let rest = &message[at + word.len()..];
        let mut next = rest.chars();
        let joined_before = before.is_some_and(part_of_name);
        // A trailing dot ends a sentence; followed by more of a name it is
        // a longer host (`track.example.com.evil`).
        let joined_after = match next.next() {
            Some('.') => next.next().is_some_and(part_of_name),
            Some(c) => part_of_name(c),
            None => false,
        };
        !joined_before && !joined_after
    })
}

/// Messages of the NACKs the xDS clients hold now (from
/// `GET /api/v1/xds/clients`' shape).
fn current_nacks(clients: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for client in clients.as_array().into_iter().flatten() {
        for r in client["resources"].as_array().into_iter().flatten() {
            if r["status"] == "nacked" {
                if let Some(m) = r["lastNack"]["message"].as_str() {
                    out.push(m.to_owned());
                }
            }
        }
    }
    out
}

/// Counts of the xDS clients list (`GET /api/v1/xds/clients`' shape).
fn xds_totals(clients: &Value) -> XdsTotals {
    let list = clients.as_array().map(Vec::as_slice).unwrap_or_default();
    let with_status = |status: &str| {
        list.iter()
            .filter(|c| {
                c["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["status"] == status)
            })
            .count()
    };
    XdsTotals {
        clients: list.len(),
        nacking: with_status("nacked"),
        pending: with_status("sent"),
    }
}

/// The overview's body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    generated_at: DateTime<Utc>,
    /// Connected xDS clients of this replica and how many hold a NACK;
    /// absent when this replica does not run the xds role.
    xds: Option<XdsTotals>,
    items: Vec<Summary>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsTotals {
    clients: usize,
    /// Clients whose last answer to some type was a NACK.
    nacking: usize,
    /// Clients that have not yet answered the latest version of some type:
    /// the sidecars still catching up with a change.
    pending: usize,
}

/// `GET /api/v1/dashboard/overview`: every policy's summary, ordered by name.
#[utoipa::path(get, path = "/api/v1/dashboard/overview", tag = "dashboard",
    responses((status = 200, description = "Every policy's summary, by name", body = Object)))]
pub async fn overview(State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    let store = &state.store;
    let (policies, states, effective, overrides, drains, dns, reports) = tokio::try_join!(
        store.all(),
        store.zone_states(),
        store.effective_weights(),
        store.overrides(),
        store.drains(),
        store.dns_status_all(),
        store.health_reports(REPORT_FRESHNESS),
    )?;
    let clients = state.xds_clients.as_ref().map(|list| list());
    let nacks = clients.as_ref().map(current_nacks).unwrap_or_default();
    let xds = clients.as_ref().map(xds_totals);

    let mut health: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for ((p, z), s) in &states {
        if let Some(h) = s.get("health").and_then(Value::as_str) {
            health.entry(p).or_default().insert(z, h);
        }
    }
    let mut tallies: BTreeMap<&str, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
    for r in &reports {
        let t = tallies
            .entry(&r.policy_name)
            .or_default()
            .entry(&r.zone)
            .or_default();
        t.0 += i64::from(r.samples);
        t.1 += i64::from(r.failures);
    }
    let now = Utc::now();
    let none: Vec<String> = Vec::new();
    let no_dns: Vec<DnsStatus> = Vec::new();
    let items = policies
        .iter()
        .map(|p| {
            let name = p.metadata.name.as_str();
            let facts = Facts {
                zone_health: health.remove(name).unwrap_or_default(),
                tallies: tallies.remove(name).unwrap_or_default(),
                effective: effective.get(name),
                override_: overrides.get(name),
                drained: drains.get(name).unwrap_or(&none),
                dns: dns.get(name).unwrap_or(&no_dns),
                nacks: &nacks,
            };
            summarize(p, &facts, now)
        })
        .collect();
    Ok(Json(Overview {
        generated_at: now,
        xds,
        items,
    }))
}

/// The newest events, newest first.
#[derive(Serialize)]
pub struct RecentEvents {
    items: Vec<meridian_store::failover::Event>,
}

/// `GET /api/v1/dashboard/events?policy=NAME&limit=N`: the newest `N`
/// events (default 200, at most 5000), newest first. `/api/v1/events`
/// pages oldest first from a time, which cannot say "the last 200".
#[utoipa::path(get, path = "/api/v1/dashboard/events", tag = "dashboard",
    params(
        ("policy" = Option<String>, Query, description = "Only this policy's events"),
        ("limit" = Option<i64>, Query, description = "How many of the newest: 1 to 5000, default 200"),
    ),
    responses((status = 200, description = "`{items: [event]}`, newest first", body = Object), (status = 400, body = ErrorBody)))]
pub async fn recent_events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<RecentEvents>, ApiError> {
    let (mut policy, mut limit) = (None, 200_i64);
    for (k, v) in query_pairs(query.as_deref(), &["policy", "limit"])? {
        if k == "policy" {
            policy = Some(v);
        } else {
            limit = v
                .parse()
                .ok()
                .filter(|n| (1..=5000).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("limit must be 1 to 5000, not {v:?}"))
                })?;
        }
    }
    let items = state.store.recent_events(policy.as_deref(), limit).await?;
    Ok(Json(RecentEvents { items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn policy() -> Policy {
        meridian_policy::decode::from_value(json!({
            "apiVersion": "meridian/v1", "kind": "GlobalTrafficPolicy",
            "metadata": {"name": "track-api", "labels": {"team": "logistics"}},
            "spec": {
                "host": "track.example.com", "port": 8080,
                "zones": [
                    {"name": "a", "weight": 70, "endpoints": [{"address": "127.0.0.2", "port": 1, "version": "v2"}],
                     "dns": {"target": "192.0.2.1", "provider": "p"}},
                    {"name": "b", "weight": 30, "endpoints": [{"address": "127.0.0.3", "port": 1}]}
                ],
                "routes": [{"name": "pos", "match": {"pathPrefix": "/p"}, "canary": {"version": "v2", "weight": 10}}]
            }
        }))
        .unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn dns(state: &str) -> DnsStatus {
        DnsStatus {
            provider: "p".into(),
            state: state.into(),
            last_change_at: None,
            last_error: None,
            updated_at: at(0),
        }
    }

    #[test]
    fn nothing_known_yet_is_unknown_at_spec_weights() {
        let s = summarize(&policy(), &Facts::default(), at(0));
        assert_eq!(s.health, "unknown");
        assert_eq!(s.cause, "spec");
        assert_eq!(s.dns, "unknown");
        assert!(s.flags.is_empty(), "{:?}", s.flags);
        let w: Vec<_> = s
            .zones
            .iter()
            .map(|z| (z.spec_weight, z.effective_weight))
            .collect();
        assert_eq!(w, [(70, 70), (30, 30)]);
        assert_eq!(
            s.canaries,
            [CanarySummary {
                route: "pos".into(),
                version: "v2".into(),
                weight: 10
            }]
        );
    }

    #[test]
    fn health_is_the_worst_of_the_zones() {
        let p = policy();
        for (a, b, want) in [
            ("healthy", "healthy", "healthy"),
            ("healthy", "unknown", "healthy"),
            ("unhealthy", "healthy", "degraded"),
            ("unknown", "unhealthy", "degraded"),
            ("unhealthy", "unhealthy", "down"),
        ] {
            let facts = Facts {
                zone_health: [("a", a), ("b", b)].into(),
                ..Facts::default()
            };
            assert_eq!(summarize(&p, &facts, at(0)).health, want, "{a} {b}");
        }
    }

    #[test]
    fn a_failover_shows_its_weights_and_flags() {
        let effective = EffectiveWeights {
            weights: [("a".into(), 0), ("b".into(), 100)].into(),
            cause: "failover".into(),
            reasons: BTreeMap::new(),
            decided_at: at(0),
            guard_rails: Vec::new(),
        };
        let facts = Facts {
            zone_health: [("a", "unhealthy"), ("b", "healthy")].into(),
            tallies: [("a", (10, 4)), ("b", (10, 0))].into(),
            effective: Some(&effective),
            dns: &[dns("pending")],
            ..Facts::default()
        };
        let s = summarize(&policy(), &facts, at(0));
        assert_eq!(s.health, "degraded");
        assert_eq!(s.flags, ["failed-over", "dns-out-of-sync"]);
        assert_eq!(s.zones[0].effective_weight, 0);
        assert_eq!(s.zones[1].effective_weight, 100);
        assert_eq!(s.zones[0].failure_rate_percent, 40.0);
    }

    #[test]
    fn an_expired_override_is_not_active() {
        let ov = |expires: Option<i64>| Override {
            weights: BTreeMap::new(),
            reason: "maintenance".into(),
            expires_at: expires.map(at),
            actor: "anonymous".into(),
            created_at: at(-100),
        };
        let drained = vec!["b".to_owned()];
        for (expires, active) in [(None, true), (Some(10), true), (Some(-1), false)] {
            let o = ov(expires);
            let facts = Facts {
                override_: Some(&o),
                drained: &drained,
                ..Facts::default()
            };
            let s = summarize(&policy(), &facts, at(0));
            assert_eq!(s.override_reason.is_some(), active, "{expires:?}");
            assert_eq!(s.flags.contains(&"override"), active, "{expires:?}");
            assert!(s.flags.contains(&"drained"));
            assert!(s.zones[1].drained && !s.zones[0].drained);
        }
    }

    #[test]
    fn dns_state_is_the_worst_provider() {
        let p = policy();
        for (states, want) in [
            (vec!["synced"], "synced"),
            (vec!["synced", "pending"], "pending"),
            (vec!["pending", "error"], "error"),
        ] {
            let rows: Vec<_> = states.iter().map(|s| dns(s)).collect();
            let facts = Facts {
                dns: &rows,
                ..Facts::default()
            };
            assert_eq!(summarize(&p, &facts, at(0)).dns, want, "{states:?}");
        }
        let mut no_dns = policy();
        no_dns.spec.zones[0].dns = None;
        assert_eq!(summarize(&no_dns, &Facts::default(), at(0)).dns, "none");
    }

    #[test]
    fn nacks_count_only_when_they_name_the_policy() {
        let nacks = vec![
            "Error adding/updating cluster(s) track-api@v2: bad lb policy".to_owned(),
            "listener track.example.com:8080 rejected".to_owned(),
            "cluster other-track-api: nope".to_owned(),
        ];
        let facts = Facts {
            nacks: &nacks,
            ..Facts::default()
        };
        let s = summarize(&policy(), &facts, at(0));
        assert_eq!(s.xds_nacks, 2);
        assert!(s.flags.contains(&"xds-nack"));
    }

    #[test]
    fn mentions_matches_whole_names_only() {
        for (message, word, want) in [
            ("cluster track-api: bad", "track-api", true),
            ("cluster track-api@v2: bad", "track-api", true),
            ("clusters [track-api]", "track-api", true),
            ("cluster my-track-api: bad", "track-api", false),
            ("cluster track-api-2: bad", "track-api", false),
            ("cluster track-api", "api", false),
            ("host track.example.com.", "track.example.com", true),
            ("host track.example.com.evil", "track.example.com", false),
            ("anything", "", false),
        ] {
            assert_eq!(mentions(message, word), want, "{message:?} {word:?}");
        }
    }

    #[test]
    fn current_nacks_reads_the_client_list() {
        let clients = json!([
            {"resources": [
                {"status": "nacked", "lastNack": {"message": "m1"}},
                {"status": "acked", "lastNack": {"message": "old, since fixed"}}
            ]},
            {"resources": []}
        ]);
        assert_eq!(current_nacks(&clients), ["m1"]);
        let t = xds_totals(&clients);
        assert_eq!((t.clients, t.nacking, t.pending), (2, 1, 0));
        let t = xds_totals(&json!([{"resources": [{"status": "sent"}, {"status": "acked"}]}]));
        assert_eq!((t.clients, t.nacking, t.pending), (1, 0, 1));
    }
}

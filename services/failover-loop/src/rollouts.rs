//! The leader's rollout pass (issue 18, docs/rollouts.md "How the leader
//! runs it"): for each policy with rollouts, under the failover lease and
//! after this tick's failover decision, read each rollout's status, queued
//! action and per-version traffic, ask Prometheus at the end of an
//! interval, run the pure [`meridian_rollout::step`], and store what
//! changed in one fenced transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_policy::{Policy, PrometheusAnalysis};
use meridian_rollout::{Command, Counts, Input, PrometheusResults, Target, Traffic};
use meridian_store::failover::NewEvent;
use meridian_store::load_reports::{LoadTotals, TrafficKey};
use meridian_store::rollouts::RolloutSave;
use meridian_store::Store;

use crate::LEASE;

/// How long one Prometheus query may take: an answer later than this is no
/// verdict, and the leader's tick goes on.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Steps every rollout of `policy`. `unavailable`: the zones at effective
/// weight 0 after this tick's failover decision (failed over or drained).
pub(crate) async fn step_policy(
    store: &Store,
    http: &reqwest::Client,
    token: i64,
    policy: &Policy,
    unavailable: &BTreeSet<String>,
    now_ms: i64,
) -> Result<(), meridian_store::Error> {
    let targets = meridian_rollout::targets(policy);
    if targets.is_empty() {
        return Ok(());
    }
    let name = &policy.metadata.name;
    let Some(rv) = policy.metadata.resource_version.as_deref() else {
        return Ok(());
    };
    let statuses = store.rollout_statuses(name).await?;
    let mut commands = store.rollout_commands(name).await?;
    for target in targets {
        let status = statuses.get(&target.route).cloned();
        let interval = target.rollout.step_interval_ms;
        // A rollout not started yet has no window: it starts now.
        let (from_ms, _) = status
            .as_ref()
            .map_or((now_ms, now_ms), |s| s.window(interval, now_ms));
        let totals = store.version_traffic(name, from_ms).await?;
        let traffic = traffic_of(&totals, &target.version, &target.route);
        let over = status
            .as_ref()
            .is_some_and(|s| s.interval_over(interval, now_ms));
        let prometheus = match (&target.rollout.analysis.prometheus, over) {
            (Some(p), true) => Some(query_all(http, p).await),
            _ => None,
        };
        let queued = commands.remove(&target.route);
        let input = Input {
            target: target.clone(),
            status,
            traffic,
            prometheus,
            unavailable: unavailable.clone(),
            now_ms,
            command: queued.as_ref().map(|c| Command {
                action: c.action,
                by: c.actor.clone(),
            }),
        };
        let out = meridian_rollout::step(&input);
        // A consumed command must be deleted even when it changed nothing
        // (an action already done), or it would be offered again forever.
        if !out.changed && queued.is_none() {
            continue;
        }
        let events: Vec<NewEvent> = out
            .events
            .iter()
            .map(|e| {
                crate::event(
                    name,
                    &e.kind,
                    e.severity.as_str(),
                    e.message.clone(),
                    e.details.clone(),
                )
            })
            .collect();
        let save = RolloutSave {
            status: &out.status,
            events: &events,
            consumed: queued.as_ref().map(|c| c.id),
            complete: out.complete,
        };
        let stored = store.save_rollout(LEASE, token, name, rv, &save).await?;
        if !stored {
            tracing::debug!(policy = %name, route = %target.route, "policy changed while stepping its rollout; stepping again next pass");
            return Ok(());
        }
        log(&target, &out);
        if out.complete {
            // The completion revision changed the policy: the next pass
            // steps on the new spec.
            return Ok(());
        }
    }
    Ok(())
}

fn log(target: &Target, out: &meridian_rollout::Output) {
    for e in &out.events {
        tracing::info!(route = %target.route, version = %target.version, kind = %e.kind, "{}", e.message);
    }
}

/// The canary's and the stable version's requests per zone, from the load
/// reports' totals per (zone, version, route). While the route has its own
/// clusters (its rollout serves per zone; docs/rollouts.md), only their
/// reports count: the route's traffic, not its policy's other routes'.
/// Before they exist in the window (the first moments of a rollout, or a
/// data plane that has not got them yet), the shared clusters' reports
/// count, as before per-route clusters: `""` is the stable version, and
/// other canary versions of the policy count for neither.
pub(crate) fn traffic_of(
    totals: &BTreeMap<TrafficKey, LoadTotals>,
    version: &str,
    route: &str,
) -> Traffic {
    let own = totals.keys().any(|k| k.route == route);
    let counted = if own { route } else { "" };
    let mut traffic = Traffic::default();
    for (k, t) in totals {
        if k.route != counted {
            continue;
        }
        let side = if k.version == version {
            &mut traffic.canary
        } else if k.version.is_empty() {
            &mut traffic.stable
        } else {
            continue;
        };
        let c = side.entry(k.zone.clone()).or_insert(Counts::new(0, 0));
        *c = Counts::new(c.requests + t.requests, c.failures + t.failures);
    }
    traffic
}

/// Asks Prometheus every query of a rollout, each time-limited; an error is
/// passed on as an error (no verdict).
async fn query_all(http: &reqwest::Client, p: &PrometheusAnalysis) -> PrometheusResults {
    let mut out = PrometheusResults::new();
    for q in &p.queries {
        out.insert(q.name.clone(), query(http, &p.url, &q.query).await);
    }
    out
}

async fn query(http: &reqwest::Client, url: &str, query: &str) -> Result<f64, String> {
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let answer = http
        .get(&endpoint)
        .query(&[("query", query)])
        .timeout(PROMETHEUS_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("querying {endpoint}: {e}"))?;
    let status = answer.status();
    let body: serde_json::Value = answer
        .json()
        .await
        .map_err(|e| format!("reading {endpoint}'s answer ({status}): {e}"))?;
    instant_value(&body)
}

/// The first sample of an instant-vector (or scalar) answer of Prometheus'
/// `/api/v1/query`: `{"status":"success","data":{"resultType":"vector",
/// "result":[{"metric":{},"value":[<time>,"<number>"]}]}}`.
pub(crate) fn instant_value(body: &serde_json::Value) -> Result<f64, String> {
    if body["status"] != "success" {
        let error = body["error"].as_str().unwrap_or("no status in the answer");
        return Err(format!("prometheus: {error}"));
    }
    let data = &body["data"];
    let value = match data["resultType"].as_str() {
        Some("vector") => {
            let first = data["result"]
                .as_array()
                .and_then(|r| r.first())
                .ok_or("prometheus: the query returned no series")?;
            &first["value"]
        }
        Some("scalar") => &data["result"],
        other => return Err(format!("prometheus: unexpected result type {other:?}")),
    };
    let text = value[1]
        .as_str()
        .ok_or("prometheus: a sample without a value")?;
    let v: f64 = text
        .parse()
        .map_err(|_| format!("prometheus: {text:?} is not a number"))?;
    if v.is_nan() {
        return Err("prometheus: the query returned NaN".to_owned());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn traffic_splits_canary_and_stable_and_ignores_other_canaries_and_routes() {
        let t = |r, f| LoadTotals {
            requests: r,
            failures: f,
            reporters: 1,
        };
        let k = |zone: &str, version: &str, route: &str| TrafficKey {
            zone: zone.to_owned(),
            version: version.to_owned(),
            route: route.to_owned(),
        };
        let shared = [
            (k("a", "", ""), t(100, 1)),
            (k("a", "v2", ""), t(10, 2)),
            (k("a", "v3", ""), t(50, 50)),
            (k("b", "v2", ""), t(7, 0)),
        ];
        let counts = |pairs: &[(&str, u64, u64)]| -> BTreeMap<String, Counts> {
            pairs
                .iter()
                .map(|(z, r, f)| (z.to_string(), Counts::new(*r, *f)))
                .collect()
        };
        // (what, totals, route, expected canary, expected stable)
        type Case<'a> = (
            &'a str,
            Vec<(TrafficKey, LoadTotals)>,
            &'a str,
            &'a [(&'a str, u64, u64)],
            &'a [(&'a str, u64, u64)],
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "shared clusters only: the policy's reports, by version",
                shared.to_vec(),
                "position",
                &[("a", 10, 2), ("b", 7, 0)],
                &[("a", 100, 1)],
            ),
            (
                "the route's own clusters: only theirs count",
                shared
                    .iter()
                    .cloned()
                    .chain([
                        (k("a", "", "position"), t(40, 0)),
                        (k("a", "v2", "position"), t(4, 1)),
                        (k("b", "", "position"), t(30, 0)),
                        // Another route's own clusters.
                        (k("a", "v2", "other"), t(99, 99)),
                    ])
                    .collect(),
                "position",
                &[("a", 4, 1)],
                &[("a", 40, 0), ("b", 30, 0)],
            ),
            (
                "another route's own clusters do not make this one's",
                shared
                    .iter()
                    .cloned()
                    .chain([(k("a", "v2", "other"), t(99, 99))])
                    .collect(),
                "position",
                &[("a", 10, 2), ("b", 7, 0)],
                &[("a", 100, 1)],
            ),
        ];
        for (what, totals, route, canary, stable) in cases {
            let totals: BTreeMap<TrafficKey, LoadTotals> = totals.into_iter().collect();
            let traffic = traffic_of(&totals, "v2", route);
            assert_eq!(traffic.canary, counts(canary), "{what}");
            assert_eq!(traffic.stable, counts(stable), "{what}");
        }
    }

    #[test]
    fn prometheus_answers() {
        let vector = |v: &str| {
            json!({"status": "success", "data": {"resultType": "vector",
                   "result": [{"metric": {}, "value": [1.5, v]}]}})
        };
        assert_eq!(instant_value(&vector("250.5")), Ok(250.5));
        assert!(instant_value(&vector("NaN")).unwrap_err().contains("NaN"));
        assert!(instant_value(&vector("x")).is_err());
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}});
        assert_eq!(instant_value(&scalar), Ok(3.0));
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert!(instant_value(&empty).unwrap_err().contains("no series"));
        let error = json!({"status": "error", "error": "parse error"});
        assert!(instant_value(&error).unwrap_err().contains("parse error"));
    }
}

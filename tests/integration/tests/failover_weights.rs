//! Effective weights follow every write at once, with no failover leader
//! running: a policy write, an override and a drain re-derive the stored
//! decision in their own transaction, and a leader's decision made for an
//! older version of a policy is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_policy::Policy;
use meridian_store::failover::WeightDecision;
use meridian_store::{Precondition, Store, Write};
use serde_json::json;

fn policy(zones: &[(&str, u32)]) -> Policy {
    let zones: Vec<_> = zones
        .iter()
        .enumerate()
        .map(|(i, (name, weight))| {
            json!({"name": name, "weight": weight,
                   "endpoints": [{"address": format!("127.0.9.{}", i + 1), "port": 8080}]})
        })
        .collect();
    meridian_policy::decode::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"host": "web.example.com", "port": 8080, "zones": zones}
    }))
    .expect("valid policy")
}

fn write() -> Write<'static> {
    Write {
        actor: "test",
        source: "api",
        dry_run: false,
        force: false,
    }
}

async fn weights(store: &Store) -> Option<(BTreeMap<String, u32>, String)> {
    store
        .effective_weights()
        .await
        .unwrap()
        .remove("web")
        .map(|e| (e.weights, e.cause))
}

fn w(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|&(z, n)| (z.to_owned(), n)).collect()
}

/// A leader's decision, stored as the failover loop stores it: zone `down`
/// unhealthy, its share on the others.
async fn lead(store: &Store, p: &Policy, down: &str, decided: &BTreeMap<String, u32>) -> bool {
    let token = store
        .acquire_lease("failover", "leader-1", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("lease");
    let states: BTreeMap<String, serde_json::Value> = [(
        down.to_owned(),
        json!({"health": "unhealthy", "sinceMs": 1, "belowThresholdSinceMs": null}),
    )]
    .into();
    let reasons = BTreeMap::new();
    store
        .decide(
            "failover",
            token,
            "web",
            p.metadata.resource_version.as_deref().unwrap(),
            Some(WeightDecision {
                weights: decided,
                cause: "failover",
                reasons: &reasons,
                guard_rails: &json!([]),
            }),
            &states,
            &[],
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn renaming_a_zone_without_a_leader_keeps_its_traffic() {
    let db = meridian_test_support::database().await;
    let store = &db.store;
    let p = store
        .create(&policy(&[("a", 50), ("b", 50)]), &write())
        .await
        .unwrap();
    // Nothing decided yet: no row, xDS and DNS serve the spec weights.
    assert_eq!(weights(store).await, None);
    // A leader once decided (all healthy): weights pinned to the old names.
    let token = store
        .acquire_lease("failover", "leader-1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let reasons = BTreeMap::new();
    let spec_weights = w(&[("a", 50), ("b", 50)]);
    assert!(store
        .decide(
            "failover",
            token,
            "web",
            p.metadata.resource_version.as_deref().unwrap(),
            Some(WeightDecision {
                weights: &spec_weights,
                cause: "spec",
                reasons: &reasons,
                guard_rails: &json!([]),
            }),
            &BTreeMap::new(),
            &[],
        )
        .await
        .unwrap());
    // The leader goes away (no failover role runs), then zone b is renamed.
    store.release_lease("failover", "leader-1").await.unwrap();
    let (renamed, _) = store
        .replace(
            &policy(&[("a", 50), ("b2", 50)]),
            &Precondition::None,
            &write(),
        )
        .await
        .unwrap();
    // Before the fix the row still said {a: 50, b: 50}: b2 got weight 0.
    assert_eq!(
        weights(store).await,
        Some((w(&[("a", 50), ("b2", 50)]), "spec".to_owned()))
    );
    // A zone added, another removed, weights changed: all at once.
    store
        .replace(
            &policy(&[("b2", 20), ("c", 80)]),
            &Precondition::None,
            &write(),
        )
        .await
        .unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("b2", 20), ("c", 80)]), "spec".to_owned()))
    );
    let events = store.events(Some("web"), None, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "weights-changed" && e.message.contains("policy write")),
        "{events:?}"
    );
    drop(renamed);
}

#[tokio::test]
async fn a_failed_over_zone_stays_failed_over_when_another_is_renamed() {
    let db = meridian_test_support::database().await;
    let store = &db.store;
    let p = store
        .create(&policy(&[("a", 50), ("b", 30), ("c", 20)]), &write())
        .await
        .unwrap();
    assert!(lead(store, &p, "a", &w(&[("a", 0), ("b", 60), ("c", 40)])).await);
    // c renamed to c2: a stays out, c2 takes c's place.
    store
        .replace(
            &policy(&[("a", 50), ("b", 30), ("c2", 20)]),
            &Precondition::None,
            &write(),
        )
        .await
        .unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("a", 0), ("b", 60), ("c2", 40)]), "failover".to_owned()))
    );
    // The unhealthy zone itself renamed: a new name has no bad record.
    store
        .replace(
            &policy(&[("a2", 50), ("b", 30), ("c2", 20)]),
            &Precondition::None,
            &write(),
        )
        .await
        .unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("a2", 50), ("b", 30), ("c2", 20)]), "spec".to_owned()))
    );
}

#[tokio::test]
async fn a_leader_decision_for_an_older_version_is_refused() {
    let db = meridian_test_support::database().await;
    let store = &db.store;
    let old = store
        .create(&policy(&[("a", 50), ("b", 50)]), &write())
        .await
        .unwrap();
    store
        .replace(
            &policy(&[("a", 50), ("b2", 50)]),
            &Precondition::None,
            &write(),
        )
        .await
        .unwrap();
    // The leader read the policy before the rename and decides on it now.
    assert!(!lead(store, &old, "a", &w(&[("a", 0), ("b", 100)])).await);
    assert_eq!(weights(store).await, None, "nothing stored");
}

#[tokio::test]
async fn overrides_and_drains_apply_without_a_leader() {
    let db = meridian_test_support::database().await;
    let store = &db.store;
    store
        .create(&policy(&[("a", 50), ("b", 50)]), &write())
        .await
        .unwrap();
    store.set_drain("web", "a", true, "ops").await.unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("a", 0), ("b", 100)]), "drain".to_owned()))
    );
    store
        .set_override(
            "web",
            &w(&[("a", 70), ("b", 30)]),
            "incident 7",
            None,
            "ops",
        )
        .await
        .unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("a", 70), ("b", 30)]), "override".to_owned()))
    );
    store.clear_override("web", "ops").await.unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("a", 0), ("b", 100)]), "drain".to_owned()))
    );
    // Undrained, a comes back in steps: a quarter of its share at once.
    store.set_drain("web", "a", false, "ops").await.unwrap();
    assert_eq!(
        weights(store).await,
        Some((w(&[("a", 13), ("b", 87)]), "failback".to_owned()))
    );
}

fn guarded(min_healthy: u32) -> Policy {
    let mut p = policy(&[("a", 50), ("b", 30), ("c", 20)]);
    p.spec.failover.min_healthy_zones = Some(min_healthy);
    p.spec.zones[1].capacity_percent = Some(60);
    p
}

#[tokio::test]
async fn min_healthy_zones_refuses_a_drain_unless_forced_with_a_reason() {
    let db = meridian_test_support::database().await;
    let store = db.store.clone();
    store.create(&guarded(2), &write()).await.unwrap();
    let server = meridian_test_support::Server::start(store.clone()).await;
    let http = reqwest::Client::new();
    let drain = |zone: &str, query: &str| {
        http.post(server.url(&format!("/api/v1/policies/web/zones/{zone}/drain{query}")))
            .send()
    };
    assert_eq!(drain("a", "").await.unwrap().status(), 200);
    // b would be left alone: refused, naming the rule, and nothing changed.
    let r = drain("b", "").await.unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "guard_rail", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("minHealthyZones"),
        "{body}"
    );
    assert_eq!(store.drains().await.unwrap()["web"], ["a"]);
    // Forcing needs a reason.
    assert_eq!(drain("b", "?force=true").await.unwrap().status(), 422);
    let r = drain("b", "?force=true&reason=rack+swap").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let events = store.events(Some("web"), None, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "guard-rail-forced" && e.message.contains("rack swap")),
        "{events:?}"
    );
    // An override putting everything on one zone is refused the same way,
    // and one over a zone's capacity is invalid.
    let r = http
        .put(server.url("/api/v1/policies/web/override"))
        .json(&json!({"weights": {"a": 100}, "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .put(server.url("/api/v1/policies/web/override"))
        .json(&json!({"weights": {"a": 30, "b": 70}, "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "b's capacity is 60");
    server.stop().await;
}

#[tokio::test]
async fn simulate_answers_with_the_leaders_decision_and_changes_nothing() {
    let db = meridian_test_support::database().await;
    let store = db.store.clone();
    store.create(&guarded(1), &write()).await.unwrap();
    let server = meridian_test_support::Server::start(store.clone()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/api/v1/policies/web/simulate"))
        .json(&json!({"fail": ["a"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = r.json().await.unwrap();
    // b (capacity 60) and c share a's 50 by spec weight: 30+30 → 60, 20+20 → 40.
    assert_eq!(s["xds"], json!({"a": 0, "b": 60, "c": 40}), "{s}");
    assert_eq!(s["cause"], "failover");
    assert_eq!(s["predicted"]["detectionMs"], 2_500);
    // a and c down: b holds 60 at most; 40 stays on the failed zones.
    let s: serde_json::Value = http
        .post(server.url("/api/v1/policies/web/simulate"))
        .json(&json!({"fail": ["a", "c"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["xds"]["b"], 60, "{s}");
    assert_eq!(s["guardRails"][0]["rule"], "capacityPercent", "{s}");
    let r = http
        .post(server.url("/api/v1/policies/web/simulate"))
        .json(&json!({"fail": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(weights(&store).await, None, "a simulation stores nothing");
    server.stop().await;
}

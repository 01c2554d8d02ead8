//! The dashboard's read endpoints against a real PostgreSQL: the overview
//! reflects what the failover tables hold, and the recent-events read
//! gives the newest events however many older ones there are.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_store::failover::{NewEvent, WeightDecision};
use meridian_test_support::{database, Server};
use serde_json::{json, Value};

fn policy(name: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "host": format!("{name}.example.com"),
            "port": 8080,
            "zones": [
                {"name": "a", "weight": 70, "endpoints": [
                    {"address": "127.0.0.2", "port": 9},
                    {"address": "127.0.0.4", "port": 9, "version": "v2"}],
                 "dns": {"target": "192.0.2.1", "provider": "p1"}},
                {"name": "b", "weight": 30, "endpoints": [{"address": "127.0.0.3", "port": 9}]}
            ],
            "routes": [{"name": "r", "match": {"pathPrefix": "/"}, "canary": {"version": "v2", "weight": 10}}]
        }
    })
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let r = reqwest::get(server.url(path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn the_overview_reflects_every_table() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let client = reqwest::Client::new();
    for (name, labels) in [("web", json!({"team": "x"})), ("api", json!({}))] {
        let r = client
            .post(server.url("/api/v1/policies"))
            .json(&policy(name, labels))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let (status, before) = get(&server, "/api/v1/dashboard/overview").await;
    assert_eq!(status, 200, "{before}");
    let names: Vec<&str> = before["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(before["items"][1]["health"], "unknown");
    assert_eq!(before["items"][1]["dns"], "unknown");
    assert_eq!(before["items"][1]["flags"], json!([]));
    assert!(before["xds"].is_null(), "no xds role in this server");

    // The leader fails `web` over, zone a is reported failing, DNS errs,
    // and someone pins `api` and drains its zone b.
    let store = &db.store;
    let token = store
        .acquire_lease("failover", "test", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let weights = BTreeMap::from([("a".to_owned(), 0), ("b".to_owned(), 100)]);
    let states = BTreeMap::from([
        ("a".to_owned(), json!({"health": "unhealthy"})),
        ("b".to_owned(), json!({"health": "healthy"})),
    ]);
    let version = store.get("web").await.unwrap().metadata.resource_version;
    store
        .decide(
            "failover",
            token,
            "web",
            version.as_deref().unwrap(),
            Some(WeightDecision {
                weights: &weights,
                cause: "failover",
                reasons: &BTreeMap::new(),
                guard_rails: &json!([]),
            }),
            &states,
            &[],
        )
        .await
        .unwrap();
    store
        .report_health(
            "checker-1",
            &[
                ("web".into(), "a".into(), 10, 4, Some("refused".into())),
                ("web".into(), "b".into(), 10, 0, None),
            ],
        )
        .await
        .unwrap();
    store
        .set_dns_status("web", "p1", "error", false, Some("no provider"))
        .await
        .unwrap();
    store
        .set_override(
            "api",
            &BTreeMap::from([("a".to_owned(), 100), ("b".to_owned(), 0)]),
            "maintenance",
            None,
            "anonymous",
        )
        .await
        .unwrap();
    store
        .set_drain("api", "b", true, "anonymous")
        .await
        .unwrap();

    let (_, after) = get(&server, "/api/v1/dashboard/overview").await;
    let (api, web) = (&after["items"][0], &after["items"][1]);
    assert_eq!(web["health"], "degraded");
    assert_eq!(web["cause"], "failover");
    assert_eq!(web["flags"], json!(["failed-over", "dns-out-of-sync"]));
    assert_eq!(web["dns"], "error");
    assert_eq!(web["zones"][0]["effectiveWeight"], 0);
    assert_eq!(web["zones"][1]["effectiveWeight"], 100);
    assert_eq!(web["zones"][0]["failureRatePercent"], 40.0);
    assert_eq!(
        web["canaries"],
        json!([{"route": "r", "version": "v2", "weight": 10}])
    );
    assert_eq!(api["flags"], json!(["override", "drained"]));
    assert_eq!(api["override"], "maintenance");
    assert_eq!(api["zones"][1]["drained"], true);
    assert_eq!(api["health"], "unknown");
    server.stop().await;
}

#[tokio::test]
async fn recent_events_are_the_newest_first() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    for i in 0..8 {
        db.store
            .record_event(&NewEvent {
                policy_name: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
                kind: "test-kind".into(),
                severity: "info".into(),
                message: format!("event {i}"),
                details: json!({"i": i}),
            })
            .await
            .unwrap();
    }
    let messages = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = get(&server, "/api/v1/dashboard/events?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(messages(&all), ["event 7", "event 6", "event 5"]);
    let (_, odd) = get(&server, "/api/v1/dashboard/events?policy=odd&limit=2").await;
    assert_eq!(messages(&odd), ["event 7", "event 5"]);
    let (_, default) = get(&server, "/api/v1/dashboard/events").await;
    assert_eq!(messages(&default).len(), 8);

    for bad in ["limit=0", "limit=5001", "limit=x", "since=now"] {
        let (status, body) = get(&server, &format!("/api/v1/dashboard/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
    }
    server.stop().await;
}

//! A real Envoy holding a mesh-sized config: 200 policies on 10 egress
//! ports; one of them changes its zone weights 20 times in a row under
//! steady traffic. No request may fail, and the final split must be the last
//! one written (SotW and delta).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_test_support::backend::Backend;
use meridian_test_support::database;
use meridian_test_support::envoy::{Ads, Envoy};
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{self, eventually, free_port, share};
use reqwest::Client;
use serde_json::{json, Value};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const HOST: &str = "track.example.com";
const POLICIES: usize = 200;
const CHANGES: u32 = 20;

fn zones(port: u16, a: u32) -> Value {
    json!([
        {"name": "zone-a", "weight": a, "endpoints": [{"address": "127.0.0.2", "port": port}]},
        {"name": "zone-b", "weight": 100 - a, "endpoints": [{"address": "127.0.0.3", "port": port}]}
    ])
}

async fn weight_changes_under_traffic(ads: Ads) {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let _a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let ports: Vec<u16> = (0..10).map(|_| free_port(&["127.0.0.1"])).collect();
    let listen = ports[0];
    m.create_policy(&json!({
        "metadata": {"name": "track"},
        "spec": {"host": HOST, "port": listen, "zones": zones(port, 70)}
    }))
    .await;
    // 199 more, spread over the 10 ports, their endpoints on unused addresses.
    let http = Client::new();
    let mut puts = JoinSet::new();
    for i in 1..POLICIES {
        let (http, url) = (http.clone(), m.url(&format!("/api/v1/policies/p{i:03}")));
        let body = json!({
            "metadata": {"name": format!("p{i:03}")},
            "spec": {"host": format!("p{i:03}.example.com"), "port": ports[i % ports.len()],
                "zones": [
                    {"name": "zone-a", "weight": 50, "endpoints": [{"address": format!("127.0.8.{}", 1 + i % 200), "port": 80}]},
                    {"name": "zone-b", "weight": 50, "endpoints": [{"address": format!("127.0.9.{}", 1 + i % 200), "port": 80}]}]}
        });
        puts.spawn(async move {
            let r = http
                .put(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        });
        if puts.len() >= 8 {
            puts.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = puts.join_next().await {
        r.unwrap();
    }

    let envoy = Envoy::start(&format!("mesh-{ads:?}"), m.xds_port, ads).await;
    let client = Client::new();
    eventually(
        "envoy holds every policy and routes track",
        Duration::from_secs(60),
        || {
            let (client, envoy) = (client.clone(), &envoy);
            async move {
                let clusters = envoy.admin_get("/clusters").await;
                clusters.contains("p199::")
                    && traffic::request(&client, listen, HOST, "/", &[])
                        .await
                        .is_ok()
            }
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let mut load = JoinSet::new();
    for _ in 0..4 {
        let (stop, ok, failed, failures) =
            (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        load.spawn(async move {
            let client = Client::new();
            while !stop.load(Ordering::Relaxed) {
                match traffic::request(&client, listen, HOST, "/", &[]).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        *failures.lock().unwrap().entry(e).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    // 20 changes in a row, as fast as the API takes them; the last is 10/90.
    let mut last = 0;
    for i in 0..CHANGES {
        last = if i + 1 == CHANGES {
            10
        } else {
            20 + (i * 3) % 60
        };
        let r = http
            .patch(m.url("/api/v1/policies/track"))
            .header("content-type", "application/merge-patch+json")
            .body(json!({"spec": {"zones": zones(port, last)}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 200, "too little traffic to judge: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        ok + failed,
        failures.lock().unwrap()
    );

    // The final split is the last one written: 10/90.
    let answers = traffic::burst(listen, HOST, "/", 1000, 0, &[]).await;
    let a = share(&answers, "zone", "zone-a");
    assert_eq!(last, 10);
    assert!(
        (5.0..=15.0).contains(&a),
        "zone-a got {a}% of 1000, want 10 ± 5"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_envoy_with_200_policies_follows_20_weight_changes_without_a_failed_request() {
    weight_changes_under_traffic(Ads::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_envoy_with_200_policies_follows_20_weight_changes_without_a_failed_request() {
    weight_changes_under_traffic(Ads::Delta).await;
}

//! Scoping by node metadata `meridian.hosts`: a real Envoy (SotW and delta)
//! that names the one host it calls gets only that policy's listener,
//! route, cluster and endpoints, and routes to it; an unscoped Envoy on the
//! same replica still gets every policy.

use std::time::Duration;

use meridian_test_support::backend::Backend;
use meridian_test_support::database;
use meridian_test_support::envoy::{Ads, Envoy};
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{self, eventually, free_port};

use reqwest::Client;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

fn policy(name: &str, listen: u16, ip: &str, backend_port: u16) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "host": format!("{name}.example.com"),
            "port": listen,
            "zones": [{"name": "zone-a", "weight": 100, "endpoints": [{"address": ip, "port": backend_port}]}]
        }
    })
}

async fn scoped_envoy_gets_only_its_hosts(ads: Ads) {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let _a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    // Both on one egress port: the scoped node's route must hold one host only.
    let listen = free_port(&["127.0.0.1"]);
    let other_listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy("track", listen, "127.0.0.2", port))
        .await;
    m.create_policy(&policy("other", listen, "127.0.0.3", port))
        .await;
    m.create_policy(&policy("far", other_listen, "127.0.0.3", port))
        .await;

    let scoped = Envoy::start_with_metadata(
        &format!("scoped-{ads:?}"),
        m.xds_port,
        ads,
        &[("meridian.hosts", "track.example.com")],
    )
    .await;
    let client = Client::new();
    eventually(
        "the scoped envoy routes its host",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                traffic::request(&client, listen, "track.example.com", "/", &[])
                    .await
                    .is_ok_and(|v| v["zone"] == "zone-a")
            }
        },
    )
    .await;
    // The other host on the same port has no virtual host there.
    let r = client
        .get(format!("http://127.0.0.1:{listen}/"))
        .header("host", "other.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a host the node did not name is not routed"
    );
    let clusters = scoped.admin_get("/clusters").await;
    assert!(clusters.contains("track::"), "{clusters}");
    assert!(!clusters.contains("other::"), "{clusters}");
    assert!(!clusters.contains("far::"), "{clusters}");
    let listeners = scoped.admin_get("/listeners").await;
    assert!(
        listeners.contains(&format!("egress_{listen}")),
        "{listeners}"
    );
    assert!(
        !listeners.contains(&format!("egress_{other_listen}")),
        "{listeners}"
    );

    // An unscoped Envoy on the same replica gets everything (its egress
    // listeners on another address: the scoped one holds 127.0.0.1).
    let all = Envoy::start_with_metadata(
        &format!("all-{ads:?}"),
        m.xds_port,
        ads,
        &[("meridian.egress_address", "127.0.0.5")],
    )
    .await;
    eventually(
        "the unscoped envoy gets every policy",
        Duration::from_secs(30),
        || {
            let all = &all;
            async move {
                let c = all.admin_get("/clusters").await;
                c.contains("track::") && c.contains("other::") && c.contains("far::")
            }
        },
    )
    .await;

    // A change to a policy the scoped node does not call reaches the other
    // Envoy but sends the scoped one nothing; a change to its own does.
    const CDS_UPDATES: &str = "/stats?filter=cluster_manager.cds.update_success";
    let before = scoped.admin_get(CDS_UPDATES).await;
    m.create_policy(&policy("late", other_listen, "127.0.0.3", port))
        .await;
    eventually(
        "the unscoped envoy gets the new policy",
        Duration::from_secs(30),
        || {
            let all = &all;
            async move { all.admin_get("/clusters").await.contains("late::") }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        scoped.admin_get(CDS_UPDATES).await,
        before,
        "no CDS push for a policy it does not call"
    );
    assert!(!scoped.admin_get("/clusters").await.contains("late::"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_scoped_by_hosts() {
    scoped_envoy_gets_only_its_hosts(Ads::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_scoped_by_hosts() {
    scoped_envoy_gets_only_its_hosts(Ads::Delta).await;
}

//! A real Envoy 1.40 against a real `meridian` process: weighted zones,
//! canary routing and its header, live weight changes, deletes, two
//! replicas on one database, no failed request while config changes, and
//! `envoy --mode validate` on what `meridian xds render` prints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_test_support::backend::Backend;
use meridian_test_support::envoy::{envoy_binary, Ads, Envoy};
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{self, eventually, free_port, share};
use meridian_test_support::{database, repo_root};
use reqwest::Client;
use serde_json::{json, Value};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const HOST: &str = "track.example.com";
const CANARY: &str = "x-envoy-upstream-canary";

/// Zone a: v1 on 127.0.0.2 and the v2 canary on 127.0.0.4; zone b: v1 on 127.0.0.3.
struct Zones {
    _backends: Vec<Backend>,
    port: u16,
}

async fn zones() -> Zones {
    let port = free_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let backends = vec![
        Backend::start("127.0.0.2", port, "zone-a", "v1").await,
        Backend::start("127.0.0.3", port, "zone-b", "v1").await,
        Backend::start("127.0.0.4", port, "zone-a", "v2").await,
    ];
    Zones {
        _backends: backends,
        port,
    }
}

fn policy(listen_port: u16, backend_port: u16, weights: (u32, u32), canary: u32) -> Value {
    json!({
        "metadata": {"name": "track"},
        "spec": {
            "host": HOST,
            "port": listen_port,
            "zones": [
                {"name": "zone-a", "weight": weights.0, "endpoints": [
                    {"address": "127.0.0.2", "port": backend_port, "version": "v1"},
                    {"address": "127.0.0.4", "port": backend_port, "version": "v2"}]},
                {"name": "zone-b", "weight": weights.1, "endpoints": [
                    {"address": "127.0.0.3", "port": backend_port, "version": "v1"}]}
            ],
            "routes": [{"name": "canary", "match": {"pathPrefix": "/canary"}, "canary": {"version": "v2", "weight": canary}}]
        }
    })
}

async fn patch(m: &Meridian, body: Value) {
    let r = Client::new()
        .patch(m.url("/api/v1/policies/track"))
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

fn zone_weights(a: u32, b: u32, backend_port: u16) -> Value {
    policy(0, backend_port, (a, b), 10)["spec"]["zones"].clone()
}

/// One request through Envoy's egress listener to the test policy's host.
async fn request(client: &Client, port: u16, path: &str, spoof: bool) -> Result<Value, String> {
    let extra: &[(&str, &str)] = if spoof { &[(CANARY, "true")] } else { &[] };
    traffic::request(client, port, HOST, path, extra).await
}

/// `n` requests; every `spoof_every`-th sends a forged canary header.
async fn burst(port: u16, path: &str, n: usize, spoof_every: usize) -> Vec<Value> {
    traffic::burst(port, HOST, path, n, spoof_every, &[(CANARY, "true")]).await
}

async fn envoy_routes(port: u16) {
    let client = Client::new();
    eventually("envoy routes the policy", Duration::from_secs(30), || {
        let client = client.clone();
        async move { request(&client, port, "/", false).await.is_ok() }
    })
    .await;
}

async fn weighted_zones_and_canary(ads: Ads) {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let z = zones().await;
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy(listen, z.port, (70, 30), 10)).await;
    let envoy = Envoy::start(&format!("sidecar-{ads:?}"), m.xds_port, ads).await;
    envoy_routes(listen).await;

    // Zones 70/30, only stable (v1) endpoints on the default route, no canary header.
    let answers = burst(listen, "/", 1000, 5).await;
    let a = share(&answers, "zone", "zone-a");
    assert!(
        (63.0..=77.0).contains(&a),
        "zone-a got {a}% of 1000, want 70 ± 7"
    );
    assert!(
        answers.iter().all(|x| x["version"] == "v1"),
        "default route must not reach the canary"
    );
    assert!(
        answers.iter().all(|x| x["headers"][CANARY].is_null()),
        "no stable request carries the canary header, even spoofed"
    );

    // The canary route: 10% to v2, each with the header; none of the rest has it.
    let answers = burst(listen, "/canary/position", 1000, 3).await;
    let v2 = share(&answers, "version", "v2");
    assert!(
        (6.0..=14.0).contains(&v2),
        "canary got {v2}% of 1000, want 6-14"
    );
    for x in &answers {
        let tagged = x["headers"][CANARY] == "true";
        assert_eq!(
            tagged,
            x["version"] == "v2",
            "canary header on exactly the canary requests: {x}"
        );
    }

    // A PATCH to 20/80 shows in traffic within 5 s of the write returning.
    patch(&m, json!({"spec": {"zones": zone_weights(20, 80, z.port)}})).await;
    let written = Instant::now();
    eventually(
        "20/80 visible in traffic",
        Duration::from_secs(5),
        || async move {
            let a = share(&burst(listen, "/", 200, 0).await, "zone", "zone-a");
            (10.0..=30.0).contains(&a)
        },
    )
    .await;
    eprintln!(
        "{ads:?}: 20/80 visible {:?} after the write",
        written.elapsed()
    );
    let a = share(&burst(listen, "/", 1000, 0).await, "zone", "zone-a");
    assert!(
        (13.0..=27.0).contains(&a),
        "zone-a got {a}% after the PATCH, want 20 ± 7"
    );

    // Deleting the policy removes its listener, routes and clusters from Envoy.
    let r = Client::new()
        .delete(m.url("/api/v1/policies/track"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The listener drains (Envoy keeps it in its dump meanwhile) and stops
    // routing; the clusters go once Envoy has accepted the listener removal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clusters = reqwest::get(format!("{}/clusters", envoy.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let left: Vec<&str> = clusters
            .lines()
            .filter(|l| l.starts_with("track::") || l.starts_with("track@v2::"))
            .collect();
        let routed = request(&Client::new(), listen, "/", false).await.is_ok();
        if left.is_empty() && !routed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after the delete: routed={routed}, clusters left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        request(&Client::new(), listen, "/", false).await.is_err(),
        "requests no longer routed"
    );

    // The xDS client list shows this Envoy with what it ACKed.
    let clients: Value = reqwest::get(m.url("/api/v1/xds/clients"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = clients["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["nodeId"] == format!("sidecar-{ads:?}"))
        .cloned();
    let me = me.unwrap_or_else(|| panic!("envoy not in {clients}"));
    assert_eq!(
        me["xdsVariant"],
        match ads {
            Ads::StateOfTheWorld => "sotw",
            Ads::Delta => "delta",
        }
    );
    drop(envoy);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_weighted_zones_and_canary() {
    weighted_zones_and_canary(Ads::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_weighted_zones_and_canary() {
    weighted_zones_and_canary(Ads::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_reaches_envoy_on_another() {
    let db = database().await;
    let writer = Meridian::start(BIN.as_ref(), &db.url).await;
    let server = Meridian::start(BIN.as_ref(), &db.url).await;
    let z = zones().await;
    let listen = free_port(&["127.0.0.1"]);
    let _envoy = Envoy::start("two-replicas", server.xds_port, Ads::Delta).await;
    writer
        .create_policy(&policy(listen, z.port, (100, 0), 0))
        .await;
    envoy_routes(listen).await;
    assert!(burst(listen, "/", 100, 0)
        .await
        .iter()
        .all(|x| x["zone"] == "zone-a"));
    patch(
        &writer,
        json!({"spec": {"zones": zone_weights(0, 100, z.port)}}),
    )
    .await;
    eventually(
        "change via the other replica",
        Duration::from_secs(10),
        || async move {
            burst(listen, "/", 50, 0)
                .await
                .iter()
                .all(|x| x["zone"] == "zone-b")
        },
    )
    .await;
    writer.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_weights_change_and_the_canary_goes() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let z = zones().await;
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy(listen, z.port, (70, 30), 50)).await;
    let _envoy = Envoy::start("steady", m.xds_port, Ads::StateOfTheWorld).await;
    envoy_routes(listen).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let mut traffic = JoinSet::new();
    for worker in 0..4 {
        let (stop, ok, failed, failures) =
            (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        traffic.spawn(async move {
            let client = Client::new();
            let path = if worker % 2 == 0 { "/" } else { "/canary/x" };
            while !stop.load(Ordering::Relaxed) {
                match request(&client, listen, path, false).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        *failures.lock().unwrap().entry(e).or_default() += 1;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    let steps = [
        json!({"spec": {"zones": zone_weights(60, 40, z.port)}}),
        json!({"spec": {"zones": zone_weights(30, 70, z.port)}}),
        json!({"spec": {"routes": [{"name": "canary", "match": {"pathPrefix": "/canary"}, "canary": {"version": "v2", "weight": 90}}]}}),
        json!({"spec": {"routes": []}}),
        json!({"spec": {"zones": zone_weights(50, 50, z.port)}}),
        json!({"spec": {"zones": zone_weights(100, 0, z.port)}}),
    ];
    for step in steps {
        tokio::time::sleep(Duration::from_millis(700)).await;
        patch(&m, step).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    while traffic.join_next().await.is_some() {}
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 500, "too little traffic to judge: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        ok + failed,
        failures.lock().unwrap()
    );
    m.stop().await;
}

/// Turns `meridian xds render` output into a static bootstrap: routes
/// inlined into their listeners, EDS clusters made STATIC with their load
/// assignment. Only egress listeners: api_listeners are for gRPC clients.
fn static_bootstrap(render: &Value) -> Value {
    let r = &render["resources"];
    let routes: BTreeMap<&str, &Value> = r["routeConfigurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rc| (rc["name"].as_str().unwrap(), rc))
        .collect();
    let assignments: BTreeMap<&str, &Value> = r["clusterLoadAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["cluster_name"].as_str().unwrap(), a))
        .collect();
    let mut listeners = Vec::new();
    for l in r["listeners"].as_array().unwrap() {
        if l.get("address").is_none() {
            continue;
        }
        let mut l = l.clone();
        for chain in l["filter_chains"].as_array_mut().unwrap() {
            for filter in chain["filters"].as_array_mut().unwrap() {
                let hcm = &mut filter["typed_config"];
                let name = hcm["rds"]["route_config_name"].as_str().unwrap().to_owned();
                hcm.as_object_mut().unwrap().remove("rds");
                hcm["route_config"] = (*routes
                    .get(name.as_str())
                    .expect("listener's route config rendered"))
                .clone();
            }
        }
        listeners.push(l);
    }
    let clusters: Vec<Value> = r["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let name = c["name"].as_str().unwrap().to_owned();
            let obj = c.as_object_mut().unwrap();
            obj.remove("eds_cluster_config");
            obj.insert("type".into(), json!("STATIC"));
            obj.insert(
                "load_assignment".into(),
                (*assignments
                    .get(name.as_str())
                    .expect("cluster's endpoints rendered"))
                .clone(),
            );
            c
        })
        .collect();
    // mTLS policies' secrets come over SDS on the ADS stream, which
    // Envoy's validate mode cannot follow (it crashes): name them as static
    // secrets instead, so the TLS contexts themselves are still validated.
    let mut listeners = Value::Array(listeners);
    let mut clusters = Value::Array(clusters);
    strip_sds_config(&mut listeners);
    strip_sds_config(&mut clusters);
    let ca = meridian_ca::Authority::generate("meridian.local", chrono::Utc::now()).unwrap();
    let id = meridian_ca::SpiffeId::parse("spiffe://meridian.local/ns/v/sa/validator").unwrap();
    let cert = ca
        .issue(&id, &[], chrono::Utc::now(), chrono::Duration::hours(1))
        .unwrap();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": [
            {"name": "meridian/workload", "tls_certificate": {
                "certificate_chain": {"inline_string": cert.cert_chain_pem},
                "private_key": {"inline_string": cert.key_pem}}},
            {"name": "meridian/trust-bundle", "validation_context": {
                "trusted_ca": {"inline_string": ca.trust_bundle_pem()}}}
        ]}
    })
}

fn strip_sds_config(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("sds_config");
            m.remove("sdsConfig");
            m.values_mut().for_each(strip_sds_config);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_sds_config),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_validates_a_bootstrap_rendered_from_every_example() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let examples = repo_root().join("examples");
    let applied = tokio::process::Command::new(BIN)
        .args([
            "apply",
            "-f",
            examples.to_str().unwrap(),
            "--server",
            &m.api,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let list: Value = reqwest::get(m.url("/api/v1/policies"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 3);
    let dir = repo_root().join(format!(".meridian/validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in &names {
        let out = tokio::process::Command::new(BIN)
            .args([
                "xds",
                "render",
                "--node",
                "validator",
                "--policy",
                name,
                "--server",
                &m.api,
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let render: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(render["node"], "validator");
        let file = dir.join(format!("{name}.json"));
        std::fs::write(
            &file,
            serde_json::to_vec_pretty(&static_bootstrap(&render)).unwrap(),
        )
        .unwrap();
        let check = tokio::process::Command::new(envoy_binary())
            .args([
                "--mode",
                "validate",
                "-c",
                file.to_str().unwrap(),
                "-l",
                "error",
            ])
            .output()
            .await
            .unwrap();
        assert!(
            check.status.success(),
            "envoy rejected the bootstrap for {name}:\n{}\n{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    m.stop().await;
}

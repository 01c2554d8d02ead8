//! Health checks and failover end to end: a real `meridian` (every role),
//! real backends per zone that the test stops and restarts, a real Envoy.

use std::time::{Duration, Instant};

use meridian_test_support::backend::Backend;
use meridian_test_support::database;
use meridian_test_support::envoy::{Ads, Envoy};
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{all_reach, burst, eventually, free_port, share};
use reqwest::Client;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const HOST: &str = "orders.example.com";

fn policy(listen: u16, backend_port: u16) -> Value {
    json!({
        "metadata": {"name": "orders"},
        "spec": {
            "host": HOST, "port": listen,
            "zones": [
                {"name": "zone-a", "weight": 70, "endpoints": [{"address": "127.0.0.2", "port": backend_port}]},
                {"name": "zone-b", "weight": 30, "endpoints": [{"address": "127.0.0.3", "port": backend_port}]}
            ],
            // Fast settings so the test runs in seconds; the logic is the same at the defaults.
            "healthCheck": {"protocol": "http", "path": "/healthz", "intervalMs": 200, "timeoutMs": 150},
            "failover": {"mode": "weighted", "failureRatePercent": 5, "windowSeconds": 3, "minSamples": 5, "recoverySeconds": 2}
        }
    })
}

async fn status(m: &Meridian) -> Value {
    reqwest::get(m.url("/api/v1/policies/orders/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn effective(status: &Value) -> (u64, u64) {
    let w = |i: usize| status["zones"][i]["effectiveWeight"].as_u64().unwrap();
    (w(0), w(1))
}

async fn wait_weights(m: &Meridian, want: (u64, u64), within: Duration, what: &str) {
    eventually(what, within, || async move {
        effective(&status(m).await) == want
    })
    .await;
}

async fn events(m: &Meridian) -> Vec<Value> {
    let v: Value = reqwest::get(m.url("/api/v1/events?policy=orders"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_zone_is_drained_from_envoy_and_returns_after_recovery() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy(listen, port)).await;
    let _envoy = Envoy::start("failover", m.xds_port, Ads::StateOfTheWorld).await;
    eventually("both zones healthy", Duration::from_secs(20), || async {
        let s = status(&m).await;
        s["zones"][0]["health"] == "healthy" && s["zones"][1]["health"] == "healthy"
    })
    .await;
    // Warm: 20 requests in a row succeed (both localities' endpoints are in).
    eventually("envoy routes", Duration::from_secs(20), || async {
        let client = Client::new();
        for _ in 0..20 {
            let r = meridian_test_support::traffic::request(&client, listen, HOST, "/", &[]).await;
            if r.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    let a = share(
        &burst(listen, HOST, "/", 1000, 0, &[]).await,
        "zone",
        "zone-a",
    );
    assert!((63.0..=77.0).contains(&a), "zone-a {a}% before the outage");

    // Zone A goes down: it turns unhealthy, weights become 0/100, Envoy follows.
    zone_a.stop().await;
    let outage = Instant::now();
    wait_weights(&m, (0, 100), Duration::from_secs(15), "failover to zone-b").await;
    eprintln!("decision {:?} after the outage", outage.elapsed());
    eventually(
        "envoy sends everything to zone-b",
        Duration::from_secs(5),
        || all_reach(listen, HOST, 100, "zone-b"),
    )
    .await;
    eprintln!("envoy shifted {:?} after the outage", outage.elapsed());
    let s = status(&m).await;
    assert_eq!(s["zones"][0]["health"], "unhealthy", "{s}");
    assert_eq!(s["cause"], "failover", "{s}");
    let kinds: Vec<String> = events(&m)
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"zone-unhealthy".to_owned())
            && kinds.contains(&"weights-changed".to_owned()),
        "{kinds:?}"
    );

    // An override wins over automation until cleared.
    let r = Client::new()
        .put(m.url("/api/v1/policies/orders/override"))
        .json(&json!({"weights": {"zone-a": 50, "zone-b": 50}, "reason": "game day"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    wait_weights(&m, (50, 50), Duration::from_secs(10), "override applied").await;
    assert_eq!(status(&m).await["cause"], "override");
    let r = Client::new()
        .put(m.url("/api/v1/policies/orders/override"))
        .json(&json!({"weights": {"zone-a": 60}, "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "an override must sum to 100");
    let r = Client::new()
        .delete(m.url("/api/v1/policies/orders/override"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_weights(
        &m,
        (0, 100),
        Duration::from_secs(10),
        "automation back after the override",
    )
    .await;

    // Zone A returns: healthy again only after the recovery period, then 70/30.
    let back = Instant::now();
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    // The failback is ramped in Envoy's traffic too: while the weights
    // climb back, Envoy sends zone A a share well between none and its 70.
    let mut seen = Vec::new();
    while back.elapsed() < Duration::from_secs(40) && effective(&status(&m).await) != (70, 30) {
        let a = share(
            &burst(listen, HOST, "/", 200, 0, &[]).await,
            "zone",
            "zone-a",
        );
        seen.push(a.round());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        seen.iter().any(|a| (8.0..=58.0).contains(a)),
        "no intermediate share of zone A seen in Envoy during the failback: {seen:?}"
    );
    wait_weights(&m, (70, 30), Duration::from_secs(30), "recovery to 70/30").await;
    assert!(
        back.elapsed() >= Duration::from_secs(2),
        "recovered before recoverySeconds: {:?}",
        back.elapsed()
    );
    eventually("envoy back to 70/30", Duration::from_secs(10), || async {
        let a = share(
            &burst(listen, HOST, "/", 400, 0, &[]).await,
            "zone",
            "zone-a",
        );
        (60.0..=80.0).contains(&a)
    })
    .await;

    // Drain wins too, and undrain restores.
    let r = Client::new()
        .post(m.url("/api/v1/policies/orders/zones/zone-b/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_weights(&m, (100, 0), Duration::from_secs(10), "zone-b drained").await;
    let r = Client::new()
        .post(m.url("/api/v1/policies/orders/zones/zone-b/undrain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Ramped failback (25% of its share every 5 s by default): 15 s to full.
    wait_weights(&m, (70, 30), Duration::from_secs(25), "zone-b restored").await;
    let steps: Vec<Value> = events(&m)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "weights-changed" && e["details"]["cause"] == "failback")
        .collect();
    assert!(steps.len() >= 2, "failback in steps: {steps:?}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_zone_down_keeps_the_spec_weights_and_raises_a_critical_event() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    // Nothing listens on these: every probe fails from the start.
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    m.create_policy(&policy(free_port(&["127.0.0.1"]), port))
        .await;
    eventually("both zones unhealthy", Duration::from_secs(20), || async {
        let s = status(&m).await;
        s["zones"][0]["health"] == "unhealthy" && s["zones"][1]["health"] == "unhealthy"
    })
    .await;
    eventually("critical event", Duration::from_secs(10), || async {
        events(&m).await.iter().any(|e| e["severity"] == "critical")
    })
    .await;
    assert_eq!(
        effective(&status(&m).await),
        (70, 30),
        "fail open: never drain everything"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_dies_another_replica_takes_over_within_10_s() {
    let db = database().await;
    let first = Meridian::start(BIN.as_ref(), &db.url).await;
    let leaders = |m: &Meridian| {
        let url = m.url("/api/v1/events");
        async move {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "leader-changed")
                .map(|e| e["details"]["holder"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    eventually("a leader", Duration::from_secs(10), || async {
        leaders(&first).await.len() == 1
    })
    .await;
    let second = Meridian::start(BIN.as_ref(), &db.url).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        leaders(&second).await.len(),
        1,
        "a live leader keeps its lease"
    );

    first.kill().await;
    let died = Instant::now();
    eventually("takeover", Duration::from_secs(10), || async {
        leaders(&second).await.len() == 2
    })
    .await;
    eprintln!("takeover {:?} after the leader was killed", died.elapsed());
    let holders = leaders(&second).await;
    assert_ne!(holders[0], holders[1], "a different replica leads");
    second.stop().await;
}

/// The failover timeline with the default health-check and failover
/// settings (1 s probes, 5 %, 30 s window, 10 samples). A benchmark, not a
/// test of speed: run by `scripts/bench-failover`, which prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-failover"]
async fn failover_timeline_with_default_settings() {
    use meridian_dns::{Owner, Provider, Route53Provider};
    use meridian_test_support::moto::Moto;

    let moto = Moto::start().await;
    let zone_id = moto.create_zone().await;
    let db = database().await;
    let (id_var, secret_var) = (
        "MERIDIAN_SECRET_TEST_AWS_KEY_ID",
        "MERIDIAN_SECRET_TEST_AWS_SECRET",
    );
    let env = [
        (id_var, "AKIAIOSFODNN7EXAMPLE"),
        (secret_var, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ];
    let m = Meridian::start_with_env(BIN.as_ref(), &db.url, &env).await;
    let provider = json!({"name": "aws-bench", "kind": "route53", "hostedZoneId": zone_id,
                          "endpointUrl": moto.url, "accessKeyId": {"env": id_var}, "secretAccessKey": {"env": secret_var}});
    assert_eq!(
        Client::new()
            .post(m.url("/api/v1/providers"))
            .json(&provider)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let listen = free_port(&["127.0.0.1"]);
    let mut p = policy(listen, port);
    let spec = p["spec"].as_object_mut().unwrap();
    spec.remove("healthCheck");
    spec.remove("failover");
    p["spec"]["zones"][0]["dns"] = json!({"target": "192.0.2.10", "provider": "aws-bench"});
    p["spec"]["zones"][1]["dns"] = json!({"target": "192.0.2.11", "provider": "aws-bench"});
    m.create_policy(&p).await;
    let _envoy = Envoy::start("timeline", m.xds_port, Ads::StateOfTheWorld).await;
    let route53 = Route53Provider::new(moto.config(&zone_id)).unwrap();
    let dns_weight_a = || async {
        let records = route53
            .read("orders.example.com.", &Owner::default())
            .await
            .unwrap_or_default();
        // Read as a stranger: Meridian's records are then the foreign ones.
        records
            .owned
            .iter()
            .chain(&records.foreign)
            .find(|r| r.set_id == "zone-a")
            .map(|r| r.weight)
    };
    eventually("both zones healthy", Duration::from_secs(60), || async {
        let s = status(&m).await;
        s["zones"][0]["health"] == "healthy" && s["zones"][1]["health"] == "healthy"
    })
    .await;
    eventually("envoy routes", Duration::from_secs(20), || async {
        meridian_test_support::traffic::request(&Client::new(), listen, HOST, "/", &[])
            .await
            .is_ok()
    })
    .await;
    eventually("Route53 at 70/30", Duration::from_secs(20), || async {
        dns_weight_a().await == Some(70)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    zone_a.stop().await;
    let outage = Instant::now();
    let (mut decided, mut shifted, mut dns) = (None, None, None);
    while decided.is_none() || shifted.is_none() || dns.is_none() {
        assert!(
            outage.elapsed() < Duration::from_secs(60),
            "no failover within 60 s"
        );
        if decided.is_none() && effective(&status(&m).await) == (0, 100) {
            decided = Some(outage.elapsed());
        }
        if dns.is_none() && dns_weight_a().await == Some(0) {
            dns = Some(outage.elapsed());
        }
        if shifted.is_none() {
            let client = Client::new();
            let mut all_b = true;
            for _ in 0..10 {
                let r =
                    meridian_test_support::traffic::request(&client, listen, HOST, "/", &[]).await;
                all_b &= r.is_ok_and(|v| v["zone"] == "zone-b");
            }
            if all_b {
                shifted = Some(outage.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = status(&m).await;
    println!("BENCH failover timeline (defaults: 1 s probes, 5 %, 30 s window, 10 samples):");
    println!(
        "BENCH   decision (effective weights 0/100 stored): {:?} after zone A stopped",
        decided.unwrap()
    );
    println!(
        "BENCH   Envoy traffic shifted (10 requests in a row to zone B): {:?} after zone A stopped",
        shifted.unwrap()
    );
    println!(
        "BENCH   Route53 (moto) change in sync, zone A weight 0: {:?} after zone A stopped",
        dns.unwrap()
    );
    println!(
        "BENCH   predicted by the policy: {}",
        s["predictedFailover"]
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_follows_failover_and_drift_is_restored() {
    use meridian_test_support::pdns::{query_a, Pdns};
    use std::collections::BTreeSet;

    // Starts with the zone example.com. created.
    let pdns = Pdns::start().await;
    let db = database().await;
    let key_var = "MERIDIAN_SECRET_TEST_PDNS_API_KEY";
    let m =
        Meridian::start_with_env(BIN.as_ref(), &db.url, &[(key_var, pdns.api_key.as_str())]).await;
    let provider = json!({"name": "pdns-test", "kind": "pdns", "apiUrl": pdns.api_url,
                          "zone": "example.com.", "apiKey": {"env": key_var}, "useLua": false});
    let r = Client::new()
        .post(m.url("/api/v1/providers"))
        .json(&provider)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let mut p = policy(free_port(&["127.0.0.1"]), port);
    p["spec"]["zones"][0]["dns"] = json!({"target": "192.0.2.10", "provider": "pdns-test"});
    p["spec"]["zones"][1]["dns"] = json!({"target": "192.0.2.11", "provider": "pdns-test"});
    m.create_policy(&p).await;

    let answers = || async {
        query_a(pdns.dns_port, "orders.example.com.")
            .await
            .unwrap_or_default()
    };
    let both: BTreeSet<String> = ["192.0.2.10", "192.0.2.11"].map(String::from).into();
    let only_b: BTreeSet<String> = ["192.0.2.11".to_owned()].into();
    eventually("both zones published", Duration::from_secs(20), || async {
        answers().await == both
    })
    .await;
    assert_eq!(status(&m).await["dns"]["providers"][0]["state"], "synced");

    // Zone A fails: DNS stops answering its target.
    zone_a.stop().await;
    eventually(
        "zone A withdrawn from DNS",
        Duration::from_secs(20),
        || async { answers().await == only_b },
    )
    .await;

    // A record changed by hand is restored, with a drift event.
    pdns.edit_by_hand("orders.example.com.", "A", &["198.51.100.1"])
        .await;
    let edited: BTreeSet<String> = ["198.51.100.1".to_owned()].into();
    assert_eq!(
        answers().await,
        edited,
        "the hand edit is live before Meridian restores it"
    );
    eventually("drift restored", Duration::from_secs(20), || async {
        answers().await == only_b
    })
    .await;
    eventually("drift event", Duration::from_secs(10), || async {
        events(&m)
            .await
            .iter()
            .any(|e| e["kind"] == "dns-drift-restored")
    })
    .await;

    // Zone A returns: both answered again after recovery.
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    eventually("zone A back in DNS", Duration::from_secs(30), || async {
        answers().await == both
    })
    .await;
    m.stop().await;
}

/// The scenario: the Route53 API goes away mid-failover. The failure
/// is reported and retried, xDS shifts regardless, and once the API is
/// back the records converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route53_outage_is_reported_and_retried_while_xds_shifts() {
    use meridian_dns::{Owner, Provider, Route53Provider};
    use meridian_test_support::moto::{Moto, Relay};

    let moto = Moto::start().await;
    let zone_id = moto.create_zone().await;
    let relay = Relay::start(moto.url.trim_start_matches("http://")).await;
    let db = database().await;
    let (id_var, secret_var) = (
        "MERIDIAN_SECRET_TEST_AWS_KEY_ID",
        "MERIDIAN_SECRET_TEST_AWS_SECRET",
    );
    // Any SigV4-shaped credentials pass moto.
    let env = [
        (id_var, "AKIAIOSFODNN7EXAMPLE"),
        (secret_var, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ];
    let m = Meridian::start_with_env(BIN.as_ref(), &db.url, &env).await;
    let provider = json!({"name": "aws-test", "kind": "route53", "hostedZoneId": zone_id,
                          "endpointUrl": relay.url(), "accessKeyId": {"env": id_var}, "secretAccessKey": {"env": secret_var}});
    let r = Client::new()
        .post(m.url("/api/v1/providers"))
        .json(&provider)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let listen = free_port(&["127.0.0.1"]);
    let mut p = policy(listen, port);
    p["spec"]["zones"][0]["dns"] = json!({"target": "192.0.2.10", "provider": "aws-test"});
    p["spec"]["zones"][1]["dns"] = json!({"target": "192.0.2.11", "provider": "aws-test"});
    m.create_policy(&p).await;
    let _envoy = Envoy::start("route53-outage", m.xds_port, Ads::Delta).await;

    // Read Route53 directly (not through the relay) as an SRE would.
    let route53 = Route53Provider::new(moto.config(&zone_id)).unwrap();
    let weights = || async {
        let records = route53
            .read("orders.example.com.", &Owner::default())
            .await
            .unwrap_or_default();
        // Read as a stranger: Meridian's records are then the foreign ones.
        records
            .owned
            .iter()
            .chain(&records.foreign)
            .map(|r| (r.set_id.clone(), r.weight))
            .collect::<Vec<_>>()
    };
    let w = |a: u32, b: u32| vec![("zone-a".to_owned(), a), ("zone-b".to_owned(), b)];
    eventually("70/30 in Route53", Duration::from_secs(20), || async {
        weights().await == w(70, 30)
    })
    .await;

    // The Route53 API goes away, then zone A fails.
    relay.cut().await;
    zone_a.stop().await;
    wait_weights(
        &m,
        (0, 100),
        Duration::from_secs(15),
        "failover decided without DNS",
    )
    .await;
    eventually("envoy shifted without DNS", Duration::from_secs(10), || {
        all_reach(listen, HOST, 50, "zone-b")
    })
    .await;
    eventually("DNS failure reported", Duration::from_secs(30), || async {
        let s = status(&m).await;
        s["dns"]["providers"][0]["state"] == "error"
            && s["dns"]["providers"][0]["lastError"].is_string()
    })
    .await;
    assert!(events(&m)
        .await
        .iter()
        .any(|e| e["kind"] == "dns-change-failed"));
    assert_eq!(
        weights().await,
        w(70, 30),
        "nothing reached Route53 while it was away"
    );

    // The API returns: the records converge on the decision.
    relay.restore().await;
    eventually(
        "Route53 converges to 0/100",
        Duration::from_secs(30),
        || async { weights().await == w(0, 100) },
    )
    .await;
    eventually("DNS synced", Duration::from_secs(10), || async {
        status(&m).await["dns"]["providers"][0]["state"] == "synced"
    })
    .await;
    assert!(events(&m)
        .await
        .iter()
        .any(|e| e["kind"] == "dns-change-submitted"));

    // Zone A returns: after the recovery period Route53 is back at 70/30.
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    eventually("Route53 back to 70/30", Duration::from_secs(30), || async {
        weights().await == w(70, 30)
    })
    .await;
    m.stop().await;
}

/// Two replicas share one database: each failover is decided and published
/// to DNS exactly once, also across a leader that dies in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_apply_each_dns_change_once_across_a_leader_death() {
    use meridian_test_support::pdns::{query_a, Pdns};
    use std::collections::BTreeSet;

    let pdns = Pdns::start().await;
    let db = database().await;
    let key_var = "MERIDIAN_SECRET_TEST_PDNS_API_KEY";
    let env = [(key_var, pdns.api_key.as_str())];
    let first = Meridian::start_with_env(BIN.as_ref(), &db.url, &env).await;
    // The first replica leads before the second exists.
    eventually("a leader", Duration::from_secs(10), || async {
        events_of(&first, "leader-changed", None).await.len() == 1
    })
    .await;
    let second = Meridian::start_with_env(BIN.as_ref(), &db.url, &env).await;
    let provider = json!({"name": "pdns-test", "kind": "pdns", "apiUrl": pdns.api_url,
                          "zone": "example.com.", "apiKey": {"env": key_var}, "useLua": false});
    assert_eq!(
        Client::new()
            .post(second.url("/api/v1/providers"))
            .json(&provider)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let mut p = policy(free_port(&["127.0.0.1"]), port);
    p["spec"]["zones"][0]["dns"] = json!({"target": "192.0.2.10", "provider": "pdns-test"});
    p["spec"]["zones"][1]["dns"] = json!({"target": "192.0.2.11", "provider": "pdns-test"});
    second.create_policy(&p).await;
    let answers = || async {
        query_a(pdns.dns_port, "orders.example.com.")
            .await
            .unwrap_or_default()
    };
    let both: BTreeSet<String> = ["192.0.2.10", "192.0.2.11"].map(String::from).into();
    let only_b: BTreeSet<String> = ["192.0.2.11".to_owned()].into();
    eventually("published", Duration::from_secs(20), || async {
        answers().await == both
    })
    .await;
    let applied_at_start = events_of(&second, "dns-change-applied", None).await.len();

    zone_a.stop().await;
    eventually("failed over in DNS", Duration::from_secs(20), || async {
        answers().await == only_b
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        events_of(&second, "weights-changed", None).await.len(),
        1,
        "one decision"
    );
    assert_eq!(
        events_of(&second, "dns-change-applied", None).await.len(),
        applied_at_start + 1,
        "one DNS change"
    );

    // The leader dies; the other replica takes over and applies the recovery once.
    first.kill().await;
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    eventually("recovered in DNS", Duration::from_secs(40), || async {
        answers().await == both
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        events_of(&second, "leader-changed", None).await.len(),
        2,
        "one takeover"
    );
    assert_eq!(
        events_of(&second, "weights-changed", None).await.len(),
        2,
        "one recovery decision"
    );
    assert_eq!(
        events_of(&second, "dns-change-applied", None).await.len(),
        applied_at_start + 2,
        "one DNS change each way"
    );
    second.stop().await;
}

/// Events of one kind, optionally of one policy.
async fn events_of(m: &Meridian, kind: &str, policy: Option<&str>) -> Vec<Value> {
    let url = match policy {
        Some(p) => m.url(&format!("/api/v1/events?policy={p}")),
        None => m.url("/api/v1/events"),
    };
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

/// One checker with its own network trouble (every probe it sends to zone A
/// fails) cannot fail the zone over; when every checker sees it, it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_alone_cannot_reach_a_zone_does_not_fail_it_over() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    // The second replica's probes leave from 127.0.0.9, a path that is broken to zone A.
    let _lonely = Meridian::start_with_env(
        BIN.as_ref(),
        &db.url,
        &[("MERIDIAN_PROBE_SOURCE", "127.0.0.9")],
    )
    .await;
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let broken_path: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let zone_a =
        Backend::start_failing_for("127.0.0.2", port, "zone-a", "v1", Some(broken_path)).await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    m.create_policy(&policy(free_port(&["127.0.0.1"]), port))
        .await;

    // Both checkers report, and the lonely one sees zone A failing...
    eventually(
        "two checkers, one failing",
        Duration::from_secs(20),
        || async {
            let s = status(&m).await;
            let checkers = s["zones"][0]["checkers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            checkers.len() == 2 && checkers.iter().any(|c| c["failures"].as_i64() > Some(5))
        },
    )
    .await;
    // ...for longer than detection takes, and nothing moves.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        let s = status(&m).await;
        assert_ne!(
            s["zones"][0]["health"], "unhealthy",
            "one checker failed the zone over: {s}"
        );
        assert_eq!(effective(&s), (70, 30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // When the zone is really down, every checker agrees and it fails over.
    zone_a.stop().await;
    wait_weights(
        &m,
        (0, 100),
        Duration::from_secs(15),
        "failover when all checkers agree",
    )
    .await;
    m.stop().await;
}

/// `healthCheck.protocol: grpc` asks each endpoint's standard gRPC health
/// service; NOT_SERVING fails the zone over, SERVING brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_drive_failover() {
    use tonic_health::ServingStatus;

    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let mut reporters = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let (mut reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let incoming =
            tonic::transport::server::TcpIncoming::from_listener(listener, true, None).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        reporters.push(reporter);
    }
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let mut p = policy(free_port(&["127.0.0.1"]), port);
    p["spec"]["protocol"] = json!("grpc");
    p["spec"]["healthCheck"] = json!({"protocol": "grpc", "intervalMs": 200, "timeoutMs": 150});
    m.create_policy(&p).await;
    eventually(
        "both zones healthy over gRPC health",
        Duration::from_secs(20),
        || async {
            let s = status(&m).await;
            s["zones"][0]["health"] == "healthy" && s["zones"][1]["health"] == "healthy"
        },
    )
    .await;

    reporters[0]
        .set_service_status("", ServingStatus::NotServing)
        .await;
    wait_weights(
        &m,
        (0, 100),
        Duration::from_secs(15),
        "NOT_SERVING fails zone A over",
    )
    .await;
    reporters[0]
        .set_service_status("", ServingStatus::Serving)
        .await;
    wait_weights(
        &m,
        (70, 30),
        Duration::from_secs(30),
        "SERVING brings zone A back",
    )
    .await;
    m.stop().await;
}

/// Noise cannot fool the probes' statistics. Default failover settings (5 %,
/// a 30 s window, 10 samples, 1 s probes); zone A's health endpoint fails
/// 4 % of probes at random, zone B none, zone C 25 %. Over five minutes zone
/// A is never failed over (before the confidence bounds it was within 150
/// s); zone C is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_probes_never_fail_over_a_zone_under_the_threshold() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let zone_c = Backend::start("127.0.0.4", port, "zone-c", "v1").await;
    zone_a.fail_health_randomly(40, 0x5eed_0004);
    zone_c.fail_health_randomly(250, 0x5eed_0025);
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&json!({
        "metadata": {"name": "noise"},
        "spec": {
            "host": "noise.example.com", "port": listen,
            "zones": [
                {"name": "zone-a", "weight": 34, "endpoints": [{"address": "127.0.0.2", "port": port}]},
                {"name": "zone-b", "weight": 33, "endpoints": [{"address": "127.0.0.3", "port": port}]},
                {"name": "zone-c", "weight": 33, "endpoints": [{"address": "127.0.0.4", "port": port}]}
            ],
            "healthCheck": {"protocol": "http", "path": "/healthz"}
        }
    }))
    .await;
    let started = Instant::now();
    let mut zone_c_failed_over = None;
    while started.elapsed() < Duration::from_secs(300) {
        let status: Value = reqwest::get(m.url("/api/v1/policies/noise/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let zone = |name: &str| {
            status["zones"]
                .as_array()
                .unwrap()
                .iter()
                .find(|z| z["name"] == name)
                .unwrap()
                .clone()
        };
        let a = zone("zone-a");
        assert_ne!(
            a["health"],
            "unhealthy",
            "zone A (4 % noise) failed over after {:?}: {a}",
            started.elapsed()
        );
        if zone_c_failed_over.is_none() && zone("zone-c")["effectiveWeight"] == 0 {
            zone_c_failed_over = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Between two looks too: no event ever called zone A unhealthy.
    let a_down: Vec<Value> = events_of(&m, "zone-unhealthy", Some("noise"))
        .await
        .into_iter()
        .filter(|e| e["details"]["zone"] == "zone-a")
        .collect();
    assert!(a_down.is_empty(), "zone A was failed over: {a_down:?}");
    let c_after =
        zone_c_failed_over.expect("zone C (25 % failing) was never failed over in 5 minutes");
    eprintln!("zone C (25 %) failed over {c_after:?} after the start; zone A (4 %) never in 300 s");
    m.stop().await;
}

/// Stale weights cannot black-hole a renamed zone. A leader has stored a
/// decision naming zones A and B; then only the API and xDS run (no leader
/// will ever decide again) and zone A is renamed by a write. Envoy sends
/// the renamed zone its 70 % at once. (Before writes re-derived the
/// weights, the stored decision had no entry for the new name, which got
/// weight 0 until a leader decided again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_zone_keeps_its_traffic_with_no_leader_running() {
    let db = database().await;
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let listen = free_port(&["127.0.0.1"]);
    let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;

    // With a leader: a failover and a recovery leave a stored decision.
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    m.create_policy(&policy(listen, port)).await;
    zone_a.stop().await;
    wait_weights(&m, (0, 100), Duration::from_secs(20), "zone A failed over").await;
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    wait_weights(&m, (70, 30), Duration::from_secs(40), "zone A back").await;
    m.stop().await;

    // Only the API and xDS from now on.
    let m =
        Meridian::start_with(BIN.as_ref(), &db.url, &[("MERIDIAN_ROLES", "api,xds")], &[]).await;
    let _envoy = Envoy::start("renamed-zone", m.xds_port, Ads::StateOfTheWorld).await;
    let mut renamed = policy(listen, port);
    renamed["spec"]["zones"][0]["name"] = json!("zone-a-2");
    let r = Client::new()
        .put(m.url("/api/v1/policies/orders"))
        .json(&renamed)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "rename: {} {}",
        r.status(),
        r.text().await.unwrap()
    );
    let s = status(&m).await;
    assert_eq!(s["zones"][0]["name"], "zone-a-2");
    assert_eq!(effective(&s), (70, 30), "{s}");
    eventually(
        "Envoy sends the renamed zone its 70 %",
        Duration::from_secs(30),
        || async {
            let a = share(
                &burst(listen, HOST, "/", 200, 0, &[]).await,
                "zone",
                "zone-a",
            );
            (60.0..=80.0).contains(&a)
        },
    )
    .await;
    m.stop().await;
}

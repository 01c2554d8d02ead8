//! Health from real traffic: a real Envoy with load reporting (LRS) on,
//! traffic from a small load generator through its egress listener to two
//! zones, one of which answers 503 to a fifth of its requests. The tallies
//! Meridian stores are exactly what Envoy sent and got.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_store::load_reports::LoadTotals;
use meridian_store::Store;
use meridian_test_support::backend::Backend;
use meridian_test_support::database;
use meridian_test_support::envoy::Envoy;
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{eventually, free_port, request};
use reqwest::Client;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const HOST: &str = "reports.example.com";
const POLICY: &str = "reports";

fn policy(listen: u16, backend_port: u16) -> Value {
    json!({
        "metadata": {"name": POLICY},
        "spec": {
            "host": HOST, "port": listen,
            "zones": [
                {"name": "zone-a", "weight": 50, "endpoints": [{"address": "127.0.0.2", "port": backend_port}]},
                {"name": "zone-b", "weight": 50, "endpoints": [{"address": "127.0.0.3", "port": backend_port}]}
            ],
            "healthCheck": {"protocol": "http", "path": "/healthz", "intervalMs": 500, "timeoutMs": 300},
            // Nothing moves: this test is about what is counted.
            "failover": {"mode": "manual"}
        }
    })
}

async fn totals(store: &Store) -> BTreeMap<String, LoadTotals> {
    let windows = [(POLICY.to_owned(), Duration::from_secs(600))].into();
    store
        .load_totals(&windows)
        .await
        .unwrap()
        .into_iter()
        .map(|((_, zone), t)| (zone, t))
        .collect()
}

/// The totals once they stop moving (reports come every second).
async fn settled(store: &Store) -> BTreeMap<String, LoadTotals> {
    let mut last = totals(store).await;
    loop {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let now = totals(store).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_load_reports_become_per_zone_tallies() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy(listen, port)).await;
    let envoy = Envoy::start_reporting_load("lrs-test", m.xds_port).await;
    eventually("envoy routes", Duration::from_secs(20), || async {
        request(&Client::new(), listen, HOST, "/", &[])
            .await
            .is_ok()
    })
    .await;
    let before = settled(&db.store).await;

    zone_b.fail_share(200);
    // The load generator: 8 workers, 1000 requests.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        workers.spawn(async move {
            let client = Client::new();
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..125 {
                let key = match request(&client, listen, HOST, "/", &[]).await {
                    Ok(v) => v["zone"].as_str().unwrap().to_owned(),
                    Err(e) if e.starts_with("status 503") => "503".to_owned(),
                    Err(e) => panic!("request failed: {e}"),
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        });
    }
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(w) = workers.join_next().await {
        for (k, n) in w.unwrap() {
            *seen.entry(k).or_default() += n;
        }
    }
    let (ok_a, ok_b, failed) = (seen["zone-a"], seen["zone-b"], seen["503"]);
    assert_eq!(ok_a + ok_b + failed, 1000);
    // Zone B fails a fifth of what it gets (to the request, by the backend).
    let b_total = ok_b + failed;
    assert!(
        failed * 5 <= b_total + 5 && failed * 5 + 5 >= b_total,
        "{seen:?}"
    );

    let after = settled(&db.store).await;
    let delta = |zone: &str| {
        let (a, b) = (
            after.get(zone).copied().unwrap_or_default(),
            before.get(zone).copied().unwrap_or_default(),
        );
        (a.requests - b.requests, a.failures - b.failures)
    };
    assert_eq!(
        (delta("zone-a"), delta("zone-b")),
        ((ok_a, 0), (b_total, failed)),
        "stored tallies must be what Envoy sent: {seen:?}\nbefore {before:?}\nafter {after:?}\nenvoy log:\n{}",
        envoy.log()
    );
    assert_eq!(after["zone-b"].reporters, 1, "one replica received them");
    eprintln!("zone-a {ok_a} ok; zone-b {ok_b} ok, {failed} failed; stored {after:?}");
}

/// A canary's requests are counted apart from the stable version's, per
/// zone, as a rollout needs them; failover still sees the zone's sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_traffic_is_counted_per_version() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let _stable_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let _stable_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
    let canary = Backend::start("127.0.0.4", port, "zone-a", "v2").await;
    let listen = free_port(&["127.0.0.1"]);
    let mut p = policy(listen, port);
    p["spec"]["zones"][0]["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"address": "127.0.0.4", "port": port, "version": "v2"}));
    p["spec"]["routes"] = json!([{"name": "all", "canary": {"version": "v2", "weight": 30}}]);
    m.create_policy(&p).await;
    let envoy = Envoy::start_reporting_load("lrs-canary", m.xds_port).await;
    eventually("envoy routes", Duration::from_secs(20), || async {
        request(&Client::new(), listen, HOST, "/", &[])
            .await
            .is_ok()
    })
    .await;
    // Wait out the warm-up's reports, then count from a clean second.
    let _ = settled(&db.store).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = chrono::Utc::now().timestamp_millis();
    let before = db.store.version_traffic(POLICY, since).await.unwrap();
    assert!(before.is_empty(), "{before:?}");

    canary.fail_share(200);
    let client = Client::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..600 {
        let key = match request(&client, listen, HOST, "/", &[]).await {
            Ok(v) => format!(
                "{}/{}",
                v["zone"].as_str().unwrap(),
                v["version"].as_str().unwrap()
            ),
            Err(e) if e.starts_with("status 503") => "503".to_owned(),
            Err(e) => panic!("request failed: {e}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    let n = |k: &str| seen.get(k).copied().unwrap_or(0);
    // About 30 % to the canary, which fails a fifth of them.
    let canary_total = n("zone-a/v2") + n("503");
    assert!((120..=240).contains(&canary_total), "{seen:?}");
    assert!(n("503") > 0, "{seen:?}");

    let mut last = BTreeMap::new();
    let got = loop {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let now = db.store.version_traffic(POLICY, since).await.unwrap();
        if now == last {
            break now;
        }
        last = now;
    };
    let counts = |zone: &str, version: &str| {
        let key = meridian_store::TrafficKey {
            zone: zone.to_owned(),
            version: version.to_owned(),
            route: String::new(),
        };
        got.get(&key)
            .map(|t| (t.requests, t.failures))
            .unwrap_or_default()
    };
    assert_eq!(
        (
            counts("zone-a", "v2"),
            counts("zone-a", ""),
            counts("zone-b", "")
        ),
        (
            (canary_total, n("503")),
            (n("zone-a/v1"), 0),
            (n("zone-b/v1"), 0)
        ),
        "per-version tallies must be what Envoy sent: {seen:?}\nstored {got:?}\nenvoy log:\n{}",
        envoy.log()
    );
}

/// Health from real traffic decides: two policies behind one Envoy with
/// load reporting on, each at well over 100 requests/s, each with a zone
/// whose backend answers 503 to part of its requests while its `/healthz`
/// stays healthy, so the probes alone would never move anything. Under the
/// default 5 % threshold the zone failing 8 % is failed over, on traffic,
/// and Envoy's traffic leaves it; the zone failing 4 % keeps its weight the
/// whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_traffic_fails_over_a_zone_at_8_percent_and_not_at_4() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let envoy = Envoy::start_reporting_load("lrs-decides", m.xds_port).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    let mut sites = Vec::new();
    for (name, per_mille, zone_b_ip) in [("eight", 80, "127.0.0.3"), ("four", 40, "127.0.0.4")] {
        let host = format!("{name}.example.com");
        let port = free_port(&["127.0.0.2", zone_b_ip]);
        let zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
        let zone_b = Backend::start(zone_b_ip, port, "zone-b", "v1").await;
        let listen = free_port(&["127.0.0.1"]);
        m.create_policy(&json!({
            "metadata": {"name": name},
            "spec": {
                "host": host, "port": listen,
                "zones": [
                    {"name": "zone-a", "weight": 50, "endpoints": [{"address": "127.0.0.2", "port": port}]},
                    {"name": "zone-b", "weight": 50, "endpoints": [{"address": zone_b_ip, "port": port}]}
                ],
                "healthCheck": {"protocol": "http", "path": "/healthz"}
            }
        }))
        .await;
        let h = host.clone();
        eventually("envoy routes", Duration::from_secs(30), || {
            let h = h.clone();
            async move { request(&Client::new(), listen, &h, "/", &[]).await.is_ok() }
        })
        .await;
        zone_b.fail_share(per_mille);
        // Closed-loop load: 6 workers per policy, each pausing 10 ms between
        // requests (a few hundred requests/s, not all the CPU there is).
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..6 {
            let (stop, host, count) = (stop.clone(), host.clone(), count.clone());
            load.spawn(async move {
                let client = Client::new();
                while !stop.is_cancelled() {
                    let _ = request(&client, listen, &host, "/", &[]).await;
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        sites.push((name, listen, host, count, zone_a, zone_b));
    }
    let started = std::time::Instant::now();
    let client = Client::new();
    let zone_b_weight = |name: &'static str| {
        let (client, url) = (
            client.clone(),
            m.url(&format!("/api/v1/policies/{name}/status")),
        );
        async move {
            let status: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            let b = status["zones"]
                .as_array()
                .unwrap()
                .iter()
                .find(|z| z["name"] == "zone-b")
                .unwrap()
                .clone();
            (b["effectiveWeight"].as_u64().unwrap(), b)
        }
    };
    // Watch both for 90 s: "eight" must shift, "four" must never.
    let mut shifted_after = None;
    while started.elapsed() < Duration::from_secs(90) {
        let (four, four_b) = zone_b_weight("four").await;
        assert_eq!(
            four,
            50,
            "a zone failing 4 % of real requests was moved after {:?}: {four_b}",
            started.elapsed()
        );
        if shifted_after.is_none() {
            let (eight, eight_b) = zone_b_weight("eight").await;
            if eight == 0 {
                assert_eq!(eight_b["decidedBy"], "traffic", "{eight_b}");
                assert!(
                    eight_b["traffic"]["requests"].as_u64().unwrap() >= 100,
                    "{eight_b}"
                );
                shifted_after = Some(started.elapsed());
                // And Envoy's traffic leaves it (before any ramped failback,
                // which begins a recovery time later).
                let (_, listen, host, ..) = &sites[0];
                let (listen, host) = (*listen, host.clone());
                eventually(
                    "Envoy's traffic leaves zone-b",
                    Duration::from_secs(10),
                    || {
                        let host = host.clone();
                        async move {
                            meridian_test_support::traffic::all_reach(listen, &host, 20, "zone-a")
                                .await
                        }
                    },
                )
                .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    while load.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    for (name, _, _, count, _, _) in &sites {
        let rps = count.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed;
        eprintln!("{name}: {rps:.0} requests/s");
        assert!(
            rps >= 100.0,
            "the load must be at least 100 requests/s: {name} got {rps:.0}"
        );
    }
    let shifted_after = shifted_after.unwrap_or_else(|| {
        panic!(
            "a zone failing 8 % of real requests was not failed over in 90 s\nenvoy log:\n{}",
            envoy.log()
        )
    });
    eprintln!("zone failing 8 %: failed over {shifted_after:?} after the failures began");
    m.stop().await;
}

/// The bootstrap `meridian xds render` prints enables load reporting, and
/// Envoy accepts it.
#[tokio::test]
async fn the_rendered_bootstrap_reports_load_and_envoy_accepts_it() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let out = tokio::process::Command::new(BIN)
        .args(["xds", "render", "--node", "edge-1", "--xds-address"])
        .arg(format!("127.0.0.1:{}", m.xds_port))
        .args(["--server", &m.api])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let render: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bootstrap = &render["bootstrap"];
    assert_eq!(
        bootstrap["cluster_manager"]["load_stats_config"]["grpc_services"][0]["envoy_grpc"]
            ["cluster_name"],
        "meridian"
    );
    let dir = meridian_test_support::repo_root()
        .join(format!(".meridian/lrs-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
    let check = tokio::process::Command::new(meridian_test_support::envoy::envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .args(["-l", "error"])
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        check.status.success(),
        "envoy rejected the rendered bootstrap:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    m.stop().await;
}

/// Benchmark (scripts/bench-failover): with LRS on and ≥ 100 requests/s
/// through Envoy, the time from a zone starting to fail a share of its real
/// requests (its `/healthz` stays healthy, so probes see nothing) to
/// Envoy's traffic having left it. Default failover settings. A row that
/// never shifts within the limit is printed as such: the decision then
/// does not use the load reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by scripts/bench-failover"]
async fn lrs_failover_timeline() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let _envoy = Envoy::start_reporting_load("lrs-bench", m.xds_port).await;
    println!(
        "BENCH failover from real traffic (LRS on, >= 100 requests/s, default failover settings):"
    );
    for (per_mille, name) in [(1000, "lrs-all"), (100, "lrs-tenth")] {
        let host = format!("{name}.example.com");
        let port = free_port(&["127.0.0.2", "127.0.0.3"]);
        let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
        let zone_b = Backend::start("127.0.0.3", port, "zone-b", "v1").await;
        let listen = free_port(&["127.0.0.1"]);
        m.create_policy(&json!({
            "metadata": {"name": name},
            "spec": {
                "host": host, "port": listen,
                "zones": [
                    {"name": "zone-a", "weight": 50, "endpoints": [{"address": "127.0.0.2", "port": port}]},
                    {"name": "zone-b", "weight": 50, "endpoints": [{"address": "127.0.0.3", "port": port}]}
                ],
                "healthCheck": {"protocol": "http", "path": "/healthz"}
            }
        }))
        .await;
        let h = host.clone();
        eventually("envoy routes", Duration::from_secs(30), || {
            let h = h.clone();
            async move { request(&Client::new(), listen, &h, "/", &[]).await.is_ok() }
        })
        .await;
        // Background load: 4 workers, ~25 requests/s each at least.
        let stop = tokio_util::sync::CancellationToken::new();
        let mut load = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (stop, host) = (stop.clone(), host.clone());
            load.spawn(async move {
                let client = Client::new();
                while !stop.is_cancelled() {
                    let _ = request(&client, listen, &host, "/", &[]).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        zone_b.fail_share(per_mille);
        let started = std::time::Instant::now();
        let limit = Duration::from_secs(60);
        let mut shifted = None;
        while started.elapsed() < limit {
            if meridian_test_support::traffic::all_reach(listen, &host, 20, "zone-a").await {
                shifted = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
        while load.join_next().await.is_some() {}
        let share = per_mille / 10;
        match shifted {
            Some(t) => println!("BENCH   zone failing {share} % of real requests: Envoy traffic shifted {t:?} after"),
            None => println!("BENCH   zone failing {share} % of real requests: Envoy traffic not shifted within {limit:?} (the failover decision does not use load reports)"),
        }
    }
    m.stop().await;
}

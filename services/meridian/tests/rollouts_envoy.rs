//! Rollouts end to end (issue 18): a real Envoy with load reporting, real
//! backends of v1 (stable) and v2 (canary) in two zones, traffic from a
//! small load generator, and the failover leader stepping the canary's
//! weight on what Envoy reports. Behaviour tests: the timeouts are generous.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_test_support::backend::Backend;
use meridian_test_support::database;
use meridian_test_support::envoy::Envoy;
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{eventually, free_port, request};
use reqwest::Client;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const HOST: &str = "rollout.example.com";
const POLICY: &str = "rollout";

fn policy(listen: u16, port: u16, steps: &[u32], min_requests: u32) -> Value {
    json!({
        "metadata": {"name": POLICY},
        "spec": {
            "host": HOST, "port": listen,
            "zones": [
                {"name": "zone-a", "weight": 50, "endpoints": [
                    {"address": "127.0.0.2", "port": port, "version": "v1"},
                    {"address": "127.0.0.4", "port": port, "version": "v2"}]},
                {"name": "zone-b", "weight": 50, "endpoints": [
                    {"address": "127.0.0.3", "port": port, "version": "v1"},
                    {"address": "127.0.0.5", "port": port, "version": "v2"}]}
            ],
            "healthCheck": {"protocol": "http", "path": "/healthz", "intervalMs": 500, "timeoutMs": 300},
            // Nothing fails over: these tests are about the canary.
            "failover": {"mode": "manual"},
            "routes": [{"name": "all", "canary": {"version": "v2", "weight": 0, "rollout": {
                "steps": steps, "stepIntervalMs": 3000,
                "analysis": {"maxFailureRatePercent": 2, "maxFailureRateIncreasePercent": 1,
                             "minRequests": min_requests, "inconclusiveLimit": 20}}}}]
        }
    })
}

/// What the load generator saw: `zone/version` of each answer, or `503`,
/// or another error.
type Seen = Arc<Mutex<BTreeMap<String, u64>>>;

/// Four request loops through Envoy until `stop`.
fn load(listen: u16, stop: CancellationToken) -> (Seen, tokio::task::JoinSet<()>) {
    let seen: Seen = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (seen, stop) = (seen.clone(), stop.clone());
        tasks.spawn(async move {
            let client = Client::new();
            while !stop.is_cancelled() {
                let key = match request(&client, listen, HOST, "/", &[]).await {
                    Ok(v) => format!(
                        "{}/{}",
                        v["zone"].as_str().unwrap_or("?"),
                        v["version"].as_str().unwrap_or("?")
                    ),
                    Err(e) if e.starts_with("status 503") => "503".to_owned(),
                    Err(e) => format!("error: {e}"),
                };
                *seen.lock().unwrap().entry(key).or_default() += 1;
            }
        });
    }
    (seen, tasks)
}

/// Stops the load generator and returns what it saw.
async fn stop_load(
    stop: CancellationToken,
    mut tasks: tokio::task::JoinSet<()>,
    seen: &Seen,
) -> BTreeMap<String, u64> {
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let seen = seen.lock().unwrap().clone();
    seen
}

async fn status(db: &meridian_test_support::TestDb) -> Option<meridian_rollout::Status> {
    db.store
        .rollout_statuses(POLICY)
        .await
        .unwrap()
        .remove("all")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_rolls_out_to_completion_on_its_own() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let _backends = [
        Backend::start("127.0.0.2", port, "zone-a", "v1").await,
        Backend::start("127.0.0.3", port, "zone-b", "v1").await,
        Backend::start("127.0.0.4", port, "zone-a", "v2").await,
        Backend::start("127.0.0.5", port, "zone-b", "v2").await,
    ];
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy(listen, port, &[5, 25, 50, 100], 10))
        .await;
    let envoy = Envoy::start_reporting_load("rollout-healthy", m.xds_port).await;
    eventually("envoy routes", Duration::from_secs(20), || async {
        request(&Client::new(), listen, HOST, "/", &[])
            .await
            .is_ok()
    })
    .await;
    let stop = CancellationToken::new();
    let (seen, tasks) = load(listen, stop.clone());
    let mut phases = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Some(s) = status(&db).await {
                let w = s.weights.values().copied().max().unwrap_or(0);
                let at = (s.phase.as_str().to_owned(), w);
                if phases.last() != Some(&at) {
                    phases.push(at);
                }
                if s.phase == meridian_rollout::Phase::Completed {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let seen = stop_load(stop, tasks, &seen).await;
    let s = done.unwrap_or_else(|_| {
        panic!(
            "no completion in 120 s: phases {phases:?}, traffic {seen:?}\nenvoy log:\n{}",
            envoy.log()
        )
    });
    // Every step was served in turn, without any action.
    let mut weights: Vec<u32> = phases.iter().map(|(_, w)| *w).collect();
    weights.dedup();
    assert_eq!(weights, [5, 25, 50, 100], "{phases:?}");
    assert!(
        phases
            .iter()
            .all(|(p, _)| p == "progressing" || p == "completed"),
        "never paused nor failed: {phases:?}"
    );
    assert_eq!(s.weights.values().copied().collect::<Vec<_>>(), [100, 100]);
    // The completion revision records the weight and drops the rollout.
    let revisions = db.store.revisions(POLICY).await.unwrap();
    let last = &revisions[0];
    assert_eq!(last.source, "rollout", "{revisions:?}");
    let canary = last.spec.routes[0].canary.as_ref().unwrap();
    assert_eq!((canary.weight, canary.rollout.is_none()), (100, true));
    // The canary served, and nothing failed.
    assert!(
        seen.keys().all(|k| !k.starts_with("error") && k != "503"),
        "{seen:?}"
    );
    assert!(seen.get("zone-a/v2").copied().unwrap_or(0) > 0, "{seen:?}");
    // After completion Envoy sends everything to v2.
    let client = Client::new();
    eventually("all traffic on v2", Duration::from_secs(20), || async {
        let mut all = true;
        for _ in 0..20 {
            let v = request(&client, listen, HOST, "/", &[]).await;
            all &= v.is_ok_and(|v| v["version"] == "v2");
        }
        all
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_on_its_own() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let port = free_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let _stable = [
        Backend::start("127.0.0.2", port, "zone-a", "v1").await,
        Backend::start("127.0.0.3", port, "zone-b", "v1").await,
    ];
    let canary = [
        Backend::start("127.0.0.4", port, "zone-a", "v2").await,
        Backend::start("127.0.0.5", port, "zone-b", "v2").await,
    ];
    // v2 answers 503 to 5 % of its requests; v1 is clean.
    for c in &canary {
        c.fail_share(50);
    }
    let listen = free_port(&["127.0.0.1"]);
    m.create_policy(&policy(listen, port, &[25, 50, 100], 50))
        .await;
    let envoy = Envoy::start_reporting_load("rollout-failing", m.xds_port).await;
    eventually("envoy routes", Duration::from_secs(20), || async {
        request(&Client::new(), listen, HOST, "/", &[])
            .await
            .is_ok()
    })
    .await;
    let stop = CancellationToken::new();
    let (seen, tasks) = load(listen, stop.clone());
    wait_status(&db, Duration::from_secs(30), "the rollout starts", |s| {
        s.phase == meridian_rollout::Phase::Progressing
    })
    .await;
    let started = std::time::Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(s) = status(&db).await {
                if s.phase.is_final() {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no rollback in 60 s\nenvoy log:\n{}", envoy.log()));
    assert_eq!(failed.phase, meridian_rollout::Phase::Failed, "{failed:?}");
    assert!(failed.weights.values().all(|w| *w == 0), "{failed:?}");
    // Within two intervals of the first step (the generous bound of the
    // brief: a verdict needs minRequests of canary traffic per interval).
    // Load reports come every second and reach the leader a tick later.
    let took = started.elapsed();
    assert!(
        took <= Duration::from_millis(2 * 3000 + 3000),
        "rolled back after {took:?}: {failed:?}"
    );
    // An event carries the rates.
    let events = db.store.events(Some(POLICY), None, 1000).await.unwrap();
    let rollback = events
        .iter()
        .find(|e| e.kind == "rollout-failed")
        .unwrap_or_else(|| panic!("no rollout-failed event: {events:?}"));
    assert!(rollback.message.contains('%'), "{}", rollback.message);
    // Once Envoy has the rollback, nothing reaches v2 and nothing fails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = seen.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stop_load(stop, tasks, &seen).await;
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        (grew("503"), grew("zone-a/v2"), grew("zone-b/v2")),
        (0, 0, 0),
        "{after:?}"
    );
    assert!(grew("zone-a/v1") + grew("zone-b/v1") > 0, "{after:?}");
    // Every failure the clients saw was the canary's 503: no v1 request
    // failed (v1 answers carry their version; only v2 fails on purpose).
    assert!(after.keys().all(|k| !k.starts_with("error")), "{after:?}");

    // The edges: the status over REST, a resume of a failed rollout is
    // refused (409), an abort of it is already done, an unknown route 404.
    let http = Client::new();
    let got: Value = http
        .get(m.url("/api/v1/policies/rollout/rollouts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["all"]["phase"], "failed", "{got}");
    assert!(got["all"]["lastAnalysis"].is_object(), "{got}");
    let post = |path: &str| http.post(m.url(path)).send();
    let r = post("/api/v1/policies/rollout/rollouts/all/resume")
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("failed"),
        "{body}"
    );
    let r = post("/api/v1/policies/rollout/rollouts/all/abort")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["changes"], false);
    let r = post("/api/v1/policies/rollout/rollouts/nope/pause")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = post("/api/v1/policies/rollout/rollouts/all/restart")
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // The CLI prints the same status.
    let out = std::process::Command::new(BIN)
        .args(["rollout", "status", POLICY, "--server", &m.api])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rollout/all: failed of v2"), "{text}");
}

/// Four backends, v1 and v2 in zone-a (127.0.0.2, .4) and zone-b (.3, .5),
/// on one port: `[a/v1, b/v1, a/v2, b/v2]`.
async fn backends() -> (u16, [Backend; 4]) {
    let port = free_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let b = [
        Backend::start("127.0.0.2", port, "zone-a", "v1").await,
        Backend::start("127.0.0.3", port, "zone-b", "v1").await,
        Backend::start("127.0.0.4", port, "zone-a", "v2").await,
        Backend::start("127.0.0.5", port, "zone-b", "v2").await,
    ];
    (port, b)
}

async fn until_routed(listen: u16) {
    eventually("envoy routes", Duration::from_secs(20), || async {
        request(&Client::new(), listen, HOST, "/", &[])
            .await
            .is_ok()
    })
    .await;
}

/// The first stored status `ok` accepts within `within`, or a panic with
/// the last one seen.
async fn wait_status(
    db: &meridian_test_support::TestDb,
    within: Duration,
    what: &str,
    ok: impl Fn(&meridian_rollout::Status) -> bool,
) -> meridian_rollout::Status {
    let deadline = std::time::Instant::now() + within;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = status(db).await;
        if let Some(s) = last.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within {within:?}; last status {last:?}");
}

async fn event_kinds(db: &meridian_test_support::TestDb) -> Vec<String> {
    // Oldest first.
    db.store
        .events(Some(POLICY), None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("rollout-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_waits_then_pauses_saying_so() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let (port, _backends) = backends().await;
    let listen = free_port(&["127.0.0.1"]);
    // A trickle of traffic far below the minimum for a verdict.
    let mut p = policy(listen, port, &[5, 25, 50, 100], 100_000);
    let rollout = &mut p["spec"]["routes"][0]["canary"]["rollout"];
    rollout["stepIntervalMs"] = json!(2000);
    rollout["analysis"]["inconclusiveLimit"] = json!(2);
    m.create_policy(&p).await;
    let _envoy = Envoy::start_reporting_load("rollout-trickle", m.xds_port).await;
    until_routed(listen).await;
    let stop = CancellationToken::new();
    let trickle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = Client::new();
            while !stop.is_cancelled() {
                let _ = request(&client, listen, HOST, "/", &[]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let paused = wait_status(&db, Duration::from_secs(60), "paused", |s| {
        s.phase == meridian_rollout::Phase::Paused
    })
    .await;
    stop.cancel();
    trickle.await.unwrap();
    let reason = paused.reason.clone().unwrap_or_default();
    assert!(reason.contains("too little traffic"), "{paused:?}");
    // Held where it was: the first step, never forward.
    assert_eq!(paused.step_index, 0, "{paused:?}");
    assert!(paused.weights.values().all(|w| *w == 5), "{paused:?}");
    assert_eq!(paused.inconclusive, 2, "{paused:?}");
    let analysis = paused.last_analysis.as_ref().expect("the last analysis");
    assert_eq!(
        serde_json::to_value(analysis.verdict).unwrap(),
        "inconclusive",
        "{analysis:?}"
    );
    // It waited one interval (an inconclusive event) before pausing.
    let kinds = event_kinds(&db).await;
    assert_eq!(
        kinds,
        ["rollout-started", "rollout-inconclusive", "rollout-paused"],
        "{kinds:?}"
    );
    // Paused stays paused: another two intervals change nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = status(&db).await.unwrap();
    assert_eq!(
        (later.phase, later.step_index),
        (meridian_rollout::Phase::Paused, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_during_a_rollout_pauses_it_and_keeps_the_canary_out_of_the_failed_zone() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let (port, backends) = backends().await;
    let listen = free_port(&["127.0.0.1"]);
    let mut p = policy(listen, port, &[25, 50, 100], 10);
    p["spec"]["failover"] = json!({"mode": "weighted", "failureRatePercent": 5,
        "windowSeconds": 3, "minSamples": 5, "recoverySeconds": 2});
    // Long steps: the failover comes during the first one.
    p["spec"]["routes"][0]["canary"]["rollout"]["stepIntervalMs"] = json!(60_000);
    m.create_policy(&p).await;
    let envoy = Envoy::start_reporting_load("rollout-failover", m.xds_port).await;
    until_routed(listen).await;
    let stop = CancellationToken::new();
    let (seen, tasks) = load(listen, stop.clone());
    wait_status(&db, Duration::from_secs(20), "canary in both zones", |s| {
        s.phase == meridian_rollout::Phase::Progressing && s.weights.values().all(|w| *w == 25)
    })
    .await;
    eventually(
        "canary traffic in zone-b",
        Duration::from_secs(20),
        || async { seen.lock().unwrap().get("zone-b/v2").copied().unwrap_or(0) > 0 },
    )
    .await;

    // zone-b crashes, both versions: the checkers' silent rounds fail it
    // over. From then on any request Envoy sent there would be a 503.
    let [_a_v1, b_v1, _a_v2, b_v2] = backends;
    b_v1.stop().await;
    b_v2.stop().await;
    let paused = wait_status(
        &db,
        Duration::from_secs(30),
        "paused by the failover",
        |s| s.phase == meridian_rollout::Phase::Paused,
    )
    .await;
    assert!(
        paused.reason.as_deref().unwrap_or("").contains("zone-b"),
        "{paused:?}"
    );
    assert_eq!(paused.weights["zone-b"], 0, "{paused:?}");
    assert_eq!(paused.weights["zone-a"], 25, "held in zone-a: {paused:?}");
    assert_eq!(paused.step_index, 0, "{paused:?}");

    // Once Envoy has it: nothing reaches zone-b, canary or not, while zone-a
    // still serves both versions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = seen.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stop_load(stop, tasks, &seen).await;
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        (grew("503"), grew("zone-b/v2"), grew("zone-b/v1")),
        (0, 0, 0),
        "{after:?}\nenvoy log:\n{}",
        envoy.log()
    );
    assert!(grew("zone-a/v2") > 0 && grew("zone-a/v1") > 0, "{after:?}");
    // An outage of both versions is failover's business: the canary was
    // not blamed for it.
    let kinds = event_kinds(&db).await;
    assert!(!kinds.contains(&"rollout-failed".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"rollout-paused".to_owned()), "{kinds:?}");
    // Still paused: a failover never resumes a rollout by itself.
    let later = status(&db).await.unwrap();
    assert_eq!(later.phase, meridian_rollout::Phase::Paused, "{later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_over_its_prometheus_latency_limit_is_rolled_back() {
    use meridian_test_support::prometheus::Prometheus;

    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let (port, backends) = backends().await;
    // v2 answers like v1, only 300 ms later: no failure for the load
    // reports to see, only latency for Prometheus.
    backends[2].delay(300);
    backends[3].delay(300);
    let listen = free_port(&["127.0.0.1"]);
    let prom_port = Prometheus::free_port();
    let p99 = |cluster: &str| {
        format!(
            "histogram_quantile(0.99, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name=\"{cluster}\"}}[15s])))"
        )
    };
    let mut p = policy(listen, port, &[25, 50, 100], 10);
    let rollout = &mut p["spec"]["routes"][0]["canary"]["rollout"];
    rollout["stepIntervalMs"] = json!(4000);
    rollout["analysis"]["prometheus"] = json!({
        "url": format!("http://127.0.0.1:{prom_port}"),
        // The route's own canary cluster (docs/rollouts.md).
        "queries": [{"name": "p99-ms", "query": p99("rollout@v2~all"), "max": 200}]
    });
    m.create_policy(&p).await;
    let envoy = Envoy::start_reporting_load("rollout-prometheus", m.xds_port).await;
    let admin = envoy.admin.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(prom_port, &[&admin]).await;
    until_routed(listen).await;
    let stop = CancellationToken::new();
    let (seen, tasks) = load(listen, stop.clone());
    let failed = tokio::time::timeout(Duration::from_secs(90), async {
        let mut highest = 0;
        loop {
            if let Some(s) = status(&db).await {
                highest = highest.max(s.weights.values().copied().max().unwrap_or(0));
                if s.phase.is_final() {
                    return (s, highest);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    // The stable version's latency, from the same Prometheus, for contrast.
    let stable_p99 = prometheus.query(&p99("rollout~all")).await;
    let seen_at_end = stop_load(stop, tasks, &seen).await;
    let (failed, highest) = failed.unwrap_or_else(|_| {
        panic!(
            "no verdict in 90 s; traffic {:?}\nprometheus log:\n{}\nenvoy log:\n{}",
            seen.lock().unwrap(),
            prometheus.log(),
            envoy.log()
        )
    });
    assert_eq!(failed.phase, meridian_rollout::Phase::Failed, "{failed:?}");
    assert!(failed.weights.values().all(|w| *w == 0), "{failed:?}");
    // Never moved on without a latency verdict.
    assert_eq!(highest, 25, "{failed:?}");
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(reason.contains("p99-ms"), "{reason}");
    let analysis = failed.last_analysis.as_ref().expect("the failing analysis");
    let measured = serde_json::to_value(&analysis.prometheus["p99-ms"]).unwrap();
    let value = measured["value"]
        .as_f64()
        .unwrap_or_else(|| panic!("{measured}"));
    assert!(value > 200.0, "{measured}");
    // The stable version was fast: it is the canary's latency that failed.
    let stable_p99 = stable_p99.expect("a p99 for the stable cluster");
    assert!(stable_p99 < 200.0, "stable p99 {stable_p99}");
    let seen = seen_at_end;
    assert!(
        seen.keys().all(|k| !k.starts_with("error") && k != "503"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_on_from_its_stored_status_when_the_leader_dies() {
    let db = database().await;
    let first = Meridian::start(BIN.as_ref(), &db.url).await;
    let leaders = || async {
        db.store
            .events(None, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "leader-changed")
            .count()
    };
    eventually("a leader", Duration::from_secs(10), || async {
        leaders().await == 1
    })
    .await;
    let second = Meridian::start(BIN.as_ref(), &db.url).await;
    let (port, _backends) = backends().await;
    let listen = free_port(&["127.0.0.1"]);
    second
        .create_policy(&policy(listen, port, &[5, 25, 50, 100], 10))
        .await;
    // Envoy follows the replica that survives.
    let envoy = Envoy::start_reporting_load("rollout-takeover", second.xds_port).await;
    until_routed(listen).await;
    let stop = CancellationToken::new();
    let (seen, tasks) = load(listen, stop.clone());
    wait_status(&db, Duration::from_secs(30), "at the second step", |s| {
        s.step_index == 1
    })
    .await;
    first.kill().await;
    let done = wait_status(&db, Duration::from_secs(120), "completed", |s| {
        s.phase == meridian_rollout::Phase::Completed
    })
    .await;
    let seen_at_end = stop_load(stop, tasks, &seen).await;
    assert_eq!(leaders().await, 2, "one takeover");
    // Each step once, in order, across the two leaders: none repeated or
    // skipped.
    let steps: Vec<u64> = {
        let events = db.store.events(Some(POLICY), None, 1000).await.unwrap();
        events
            .iter()
            .filter(|e| e.kind == "rollout-step" || e.kind == "rollout-started")
            .map(|e| {
                let w = &e.details["weights"];
                w.as_object()
                    .and_then(|w| w.values().filter_map(Value::as_u64).max())
                    .unwrap_or_else(|| panic!("{} without weights: {:?}", e.kind, e.details))
            })
            .collect()
    };
    assert_eq!(steps, [5, 25, 50, 100], "{steps:?}");
    let kinds = event_kinds(&db).await;
    let completed = kinds.iter().filter(|k| *k == "rollout-completed").count();
    assert_eq!(completed, 1, "{kinds:?}");
    let completions = db
        .store
        .revisions(POLICY)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.source == "rollout")
        .count();
    assert_eq!(completions, 1, "one completion revision");
    assert_eq!(
        done.weights.values().copied().collect::<Vec<_>>(),
        [100, 100]
    );
    let seen = seen_at_end;
    assert!(
        seen.keys().all(|k| !k.starts_with("error") && k != "503"),
        "{seen:?}\nenvoy log:\n{}",
        envoy.log()
    );
    second.stop().await;
}

/// The zone-by-zone rollout: with `zoneOrder [zone-a, zone-b]` the
/// healthy canary goes 5 → 25 → 50 → 100 % in zone-a while zone-b stays at
/// 0, then through the same steps in zone-b, and completes with no manual
/// action. While zone-a is at 100 % and zone-b at 0, what Envoy serves is
/// exactly that: v2 answers from zone-a only, zone-b all v1 (the route's own
/// clusters carry each zone's canary percent as locality weights).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_by_zone_rollout_goes_through_each_zone_in_order() {
    const INTERVAL_MS: i64 = 4000;
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let (port, _backends) = backends().await;
    let listen = free_port(&["127.0.0.1"]);
    let mut p = policy(listen, port, &[5, 25, 50, 100], 10);
    let rollout = &mut p["spec"]["routes"][0]["canary"]["rollout"];
    rollout["stepIntervalMs"] = json!(INTERVAL_MS);
    rollout["zoneOrder"] = json!(["zone-a", "zone-b"]);
    m.create_policy(&p).await;
    let envoy = Envoy::start_reporting_load("rollout-zones", m.xds_port).await;
    until_routed(listen).await;
    let stop = CancellationToken::new();
    let (seen, tasks) = load(listen, stop.clone());
    let count = |k: &str| seen.lock().unwrap().get(k).copied().unwrap_or(0);

    // Every (zone-a, zone-b) canary percent served, in order, until completion.
    let mut served: Vec<(u32, u32)> = Vec::new();
    let mut zone_a_full = None;
    // The 503s seen when each stage was first seen: where any came from.
    let mut failed_by_stage: Vec<((u32, u32), u64)> = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(150), async {
        loop {
            if let Some(s) = status(&db).await {
                let at = (s.weights["zone-a"], s.weights["zone-b"]);
                if served.last() != Some(&at) {
                    served.push(at);
                    failed_by_stage.push((at, count("503")));
                    if at == (100, 0) {
                        // zone-b has never been given any canary yet.
                        let b_v2_so_far = count("zone-b/v2");
                        // Once Envoy has zone-a at 100 %, measure what it
                        // serves for the rest of this step.
                        tokio::time::sleep(Duration::from_millis(1000)).await;
                        let before = seen.lock().unwrap().clone();
                        let end = s.step_started_ms + INTERVAL_MS - 500;
                        let left = end - chrono::Utc::now().timestamp_millis();
                        tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
                        let after = seen.lock().unwrap().clone();
                        let still = status(&db)
                            .await
                            .map(|s| (s.weights["zone-a"], s.weights["zone-b"]));
                        zone_a_full = Some((b_v2_so_far, before, after, still, left));
                    }
                }
                if s.phase == meridian_rollout::Phase::Completed {
                    return s;
                }
                assert_eq!(s.phase, meridian_rollout::Phase::Progressing, "{s:?}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
    .await;
    let seen = stop_load(stop, tasks, &seen).await;
    let s = done.unwrap_or_else(|_| {
        panic!(
            "no completion in 150 s: served {served:?}, traffic {seen:?}\nenvoy log:\n{}",
            envoy.log()
        )
    });
    assert_eq!(
        served,
        [
            (5, 0),
            (25, 0),
            (50, 0),
            (100, 0),
            (100, 5),
            (100, 25),
            (100, 50),
            (100, 100)
        ],
        "zone-a through every step, then zone-b; traffic {seen:?}"
    );
    assert_eq!(s.zone_order.as_deref().map(<[String]>::len), Some(2));
    let kinds = event_kinds(&db).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "rollout-step").count(),
        7,
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("rollout-completed"));
    let revisions = db.store.revisions(POLICY).await.unwrap();
    assert_eq!(revisions[0].source, "rollout", "{revisions:?}");

    // While zone-a was at 100 % and zone-b at 0: zone-a answered v2 only,
    // zone-b v1 only, and zone-b had never answered v2 before.
    let (b_v2_so_far, before, after, still, left) = zone_a_full.expect("zone-a at 100 % seen");
    assert_eq!(
        b_v2_so_far, 0,
        "zone-b answered v2 before its turn: {seen:?}"
    );
    assert_eq!(still, Some((100, 0)), "the step moved on while measuring");
    assert!(
        left > 500,
        "too little of the step left to measure: {left} ms"
    );
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        (grew("zone-a/v1"), grew("zone-b/v2"), grew("503")),
        (0, 0, 0),
        "before {before:?}\nafter {after:?}\nenvoy log:\n{}",
        envoy.log()
    );
    assert!(
        grew("zone-a/v2") > 0 && grew("zone-b/v1") > 0,
        "before {before:?}\nafter {after:?}"
    );
    // Nothing failed on the way.
    assert!(
        seen.keys().all(|k| !k.starts_with("error") && k != "503"),
        "{seen:?}; 503s by stage {failed_by_stage:?}"
    );
}

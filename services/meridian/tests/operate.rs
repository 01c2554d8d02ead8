//! Running Meridian as an operator does: `/metrics` moving with traffic,
//! SIGTERM in the middle of writes and xDS streams, and bad settings
//! refused before anything starts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_test_support::backend::Backend;
use meridian_test_support::metrics::{sample, scrape};
use meridian_test_support::pdns::Pdns;
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{eventually, free_port};
use meridian_test_support::{database, repo_root};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use xds_api::pb::google::rpc::Status;

/// The binary under test: the one cargo built for these tests, or the one
/// named by `MERIDIAN_TEST_BIN` (scripts/supply-chain points it at the
/// release build the image ships, and runs these tests again).
static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("MERIDIAN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_meridian").to_owned())
});
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const WAIT: Duration = Duration::from_secs(20);

fn policy(name: &str, host: &str, backend_port: u16) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "host": host, "port": free_port(&["127.0.0.1"]),
            "zones": [
                {"name": "zone-a", "weight": 50, "endpoints": [{"address": "127.0.0.2", "port": backend_port}]},
                {"name": "zone-b", "weight": 50, "endpoints": [{"address": "127.0.0.3", "port": backend_port}]}
            ],
            "healthCheck": {"protocol": "http", "path": "/healthz", "intervalMs": 200, "timeoutMs": 150},
            "failover": {"mode": "weighted", "failureRatePercent": 5, "windowSeconds": 3, "minSamples": 5, "recoverySeconds": 2}
        }
    })
}

async fn xds_client(port: u16) -> AggregatedDiscoveryServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to Meridian xDS");
    AggregatedDiscoveryServiceClient::new(channel)
}

fn cds_request(
    node: Option<&str>,
    answering: Option<&DiscoveryResponse>,
    nack: bool,
) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node.map(|id| Node {
            id: id.into(),
            cluster: "meridian-test".into(),
            ..Default::default()
        }),
        type_url: CDS.into(),
        version_info: answering
            .map(|r| r.version_info.clone())
            .unwrap_or_default(),
        response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
        error_detail: nack.then(|| Status {
            code: 3,
            message: "rejected by the test".into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_listed_from_start_and_move_with_traffic() {
    let pdns = Pdns::start().await;
    let db = database().await;
    let key_var = "MERIDIAN_SECRET_TEST_PDNS_API_KEY";
    let m = Meridian::start_with_env(
        Path::new(BIN.as_str()),
        &db.url,
        &[(key_var, pdns.api_key.as_str())],
    )
    .await;

    // Listed before any traffic, at zero: dashboards see zeros, not gaps.
    let before = scrape(&m.api).await;
    for family in [
        "meridian_xds_connected_clients",
        "meridian_xds_pushes_total",
        "meridian_xds_acks_total",
        "meridian_xds_nacks_total",
        "meridian_db_pool_connections",
        "meridian_db_pool_max_connections",
        "meridian_failover_leader",
        "meridian_failover_steps_total",
        "meridian_build_info",
    ] {
        assert!(
            sample(&before, family, &[]).is_some(),
            "{family} missing:\n{before}"
        );
    }
    assert_eq!(value(&before, "meridian_xds_connected_clients", &[]), 0.0);
    assert_eq!(
        value(&before, "meridian_db_pool_max_connections", &[]),
        32.0
    );

    // Traffic: a provider, a policy whose zone B never answers its probes
    // (so the leader fails it over and DNS follows), a 404, an xDS stream
    // that ACKs one response and NACKs the next.
    let http = reqwest::Client::new();
    let provider = json!({"name": "pdns-test", "kind": "pdns", "apiUrl": pdns.api_url,
                          "zone": "example.com.", "apiKey": {"env": key_var}, "useLua": false});
    let r = http
        .post(m.url("/api/v1/providers"))
        .json(&provider)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let _zone_a = Backend::start("127.0.0.2", port, "zone-a", "v1").await;
    let mut p = policy("orders", "orders.example.com", port);
    p["spec"]["zones"][0]["dns"] = json!({"target": "192.0.2.10", "provider": "pdns-test"});
    p["spec"]["zones"][1]["dns"] = json!({"target": "192.0.2.11", "provider": "pdns-test"});
    m.create_policy(&p).await;
    let missing = http
        .get(m.url("/api/v1/policies/no-such"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("x-request-id"));

    let mut client = xds_client(m.xds_port).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(cds_request(Some("metrics-node"), None, false))
        .await
        .unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open ADS stream")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a CDS response")
        .unwrap()
        .unwrap();
    tx.send(cds_request(None, Some(&first), false))
        .await
        .unwrap();
    // ACK until an ACK is counted, before the change is made: a push (the
    // failover of zone B, which never answers, or the change below) can
    // overtake an ACK and make its nonce stale, and a stale request is
    // neither an ACK nor a NACK. Each newer response is ACKed in turn.
    let mut last = first.clone();
    let deadline = Instant::now() + WAIT;
    while value(
        &scrape(&m.api).await,
        "meridian_xds_acks_total",
        &[("type", "cds")],
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no CDS ACK counted within {WAIT:?}"
        );
        if let Ok(Ok(Some(newer))) =
            tokio::time::timeout(Duration::from_millis(200), stream.message()).await
        {
            tx.send(cds_request(None, Some(&newer), false))
                .await
                .unwrap();
            last = newer;
        }
    }
    // A change after the stream is up is a push measured from the write.
    let r = http
        .patch(m.url("/api/v1/policies/orders"))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"spec": {"protocol": "grpc"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pushed = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a pushed CDS response")
        .unwrap()
        .unwrap();
    assert_ne!(pushed.version_info, last.version_info);
    tx.send(cds_request(None, Some(&pushed), true))
        .await
        .unwrap();

    // Wait for what is asynchronous (probes, the leader, DNS) to show.
    let api = m.api.clone();
    eventually("failover decided and DNS called", WAIT, || {
        let api = api.clone();
        async move {
            let t = scrape(&api).await;
            value(
                &t,
                "meridian_failover_decisions_total",
                &[("policy", "orders")],
            ) >= 1.0
                && value(
                    &t,
                    "meridian_dns_provider_calls_total",
                    &[("provider", "pdns"), ("op", "apply"), ("outcome", "ok")],
                ) >= 1.0
                && value(&t, "meridian_xds_nacks_total", &[("type", "cds")]) >= 1.0
        }
    })
    .await;
    let after = scrape(&m.api).await;
    let v = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels);
    let b = |name: &str, labels: &[(&str, &str)]| value(&before, name, labels);

    let created = [
        ("method", "POST"),
        ("route", "/api/v1/policies"),
        ("status", "201"),
    ];
    assert!(
        v("meridian_http_requests_total", &created) > b("meridian_http_requests_total", &created)
    );
    let not_found = [
        ("method", "GET"),
        ("route", "/api/v1/policies/:name"),
        ("status", "404"),
    ];
    assert_eq!(
        v("meridian_http_requests_total", &not_found),
        1.0,
        "route templates, not raw paths"
    );
    assert!(
        v(
            "meridian_http_request_duration_seconds_count",
            &[("route", "/api/v1/policies")]
        ) >= 1.0
    );
    assert!(
        !after.contains("/api/v1/policies/no-such"),
        "a raw path became a label"
    );

    assert_eq!(
        v("meridian_xds_connected_clients", &[("variant", "sotw")]),
        1.0
    );
    assert!(
        v(
            "meridian_xds_pushes_total",
            &[("variant", "sotw"), ("type", "cds")]
        ) >= 2.0
    );
    assert!(v("meridian_xds_acks_total", &[("type", "cds")]) >= 1.0);
    assert_eq!(v("meridian_xds_nacks_total", &[("type", "cds")]), 1.0);
    assert!(
        v(
            "meridian_xds_push_latency_seconds_count",
            &[("variant", "sotw")]
        ) >= 1.0
    );
    assert!(v("meridian_xds_snapshot_generation", &[]) >= 2.0);

    assert!(
        v(
            "meridian_health_probes_total",
            &[("policy", "orders"), ("zone", "zone-a"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        v(
            "meridian_health_probes_total",
            &[("policy", "orders"), ("zone", "zone-b"), ("result", "fail")]
        ) >= 1.0
    );
    let ratio_b = v(
        "meridian_health_zone_failure_ratio",
        &[("policy", "orders"), ("zone", "zone-b")],
    );
    let ratio_a = v(
        "meridian_health_zone_failure_ratio",
        &[("policy", "orders"), ("zone", "zone-a")],
    );
    assert!(
        ratio_b > 0.9 && ratio_a < 0.1,
        "zone-b {ratio_b}, zone-a {ratio_a}"
    );
    assert!(
        v(
            "meridian_failover_decisions_total",
            &[("policy", "orders"), ("cause", "failover")]
        ) >= 1.0,
        "{after}"
    );
    assert_eq!(v("meridian_failover_leader", &[]), 1.0);
    assert!(v("meridian_failover_steps_total", &[("outcome", "ok")]) >= 1.0);

    assert!(
        v(
            "meridian_dns_provider_calls_total",
            &[("provider", "pdns"), ("op", "read"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        v(
            "meridian_dns_provider_call_duration_seconds_count",
            &[("provider", "pdns")]
        ) >= 2.0
    );

    let in_use = v("meridian_db_pool_connections", &[("state", "in_use")]);
    let idle = v("meridian_db_pool_connections", &[("state", "idle")]);
    assert!(
        in_use + idle >= 1.0 && in_use + idle <= 32.0,
        "{in_use} in use, {idle} idle"
    );

    drop(tx);
    m.stop().await;
}

/// Writers that each create their own policy and then patch a counter
/// label on it, one request at a time, remembering what was acknowledged.
/// What each writer's policy had acknowledged, by policy name.
type Ledger = Arc<Mutex<BTreeMap<String, Acked>>>;

#[derive(Default)]
struct Acked {
    created: bool,
    /// The highest `n` a PATCH answered 200 for.
    last_n: Option<u64>,
}

/// Starts `count` writers against `api`; each creates its own policy, then
/// patches it over and over, recording what was acknowledged, until the
/// server stops answering.
fn spawn_writers(api: &str, count: usize) -> (Ledger, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Ledger = Arc::default();
    let mut writers = Vec::new();
    for w in 0..count {
        let api = api.to_owned();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let name = format!("w{w}");
            let p = policy(&name, &format!("w{w}.example.com"), 9);
            match http
                .post(format!("{api}/api/v1/policies"))
                .json(&p)
                .send()
                .await
            {
                Ok(r) if r.status() == 201 => {}
                Ok(r) => panic!(
                    "create {name}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(_) => return,
            }
            acked
                .lock()
                .unwrap()
                .entry(name.clone())
                .or_default()
                .created = true;
            for n in 1.. {
                // The protocol flips with each write, so the cluster (CDS) changes
                // and the xDS client gets pushes while writes flow.
                let protocol = if n % 2 == 0 { "http" } else { "grpc" };
                let patch = json!({"metadata": {"labels": {"n": n.to_string()}}, "spec": {"protocol": protocol}});
                let sent = http
                    .patch(format!("{api}/api/v1/policies/{name}"))
                    .header("content-type", "application/merge-patch+json")
                    .body(patch.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        acked
                            .lock()
                            .unwrap()
                            .entry(name.clone())
                            .or_default()
                            .last_n = Some(n);
                    }
                    // Refused or cut off by the shutdown: not acknowledged.
                    Ok(r) if r.status().is_server_error() => return,
                    Ok(r) => panic!("patch {name}: {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    (acked, writers)
}

/// Every acknowledged write is in the database, and a write in flight when
/// the replica stopped committed whole or not at all.
async fn check_acknowledged(
    db: &meridian_test_support::TestDb,
    acked: &Mutex<BTreeMap<String, Acked>>,
    count: usize,
) {
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert_eq!(acked.len(), count, "every writer created its policy");
    for (name, a) in acked.iter() {
        assert!(a.created);
        let stored = db
            .store
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} lost: {e}"));
        let n: u64 = stored
            .metadata
            .labels
            .get("n")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        let last = a.last_n.unwrap_or(0);
        assert!(
            n == last || n == last + 1,
            "{name}: acknowledged n={last}, stored n={n}"
        );
        let revisions = db.store.revisions(name).await.unwrap();
        assert_eq!(
            revisions.len() as u64,
            n + 1,
            "{name}: one revision per committed write"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_writes_and_xds_loses_no_acknowledged_write_and_exits_in_time() {
    const DRAIN: u64 = 5;
    const WRITERS: usize = 6;
    let db = database().await;
    let m = Meridian::start_with(
        Path::new(BIN.as_str()),
        &db.url,
        &[],
        &["--drain-seconds", &DRAIN.to_string()],
    )
    .await;

    // An xDS client holding a stream open.
    let mut client = xds_client(m.xds_port).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(cds_request(Some("drain-node"), None, false))
        .await
        .unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open ADS stream")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("first CDS")
        .unwrap()
        .unwrap();
    tx.send(cds_request(None, Some(&first), false))
        .await
        .unwrap();
    // It reads (and ACKs) pushes until the server ends the stream.
    let xds = tokio::spawn(async move {
        let mut pushes = 0u32;
        let ended = loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    pushes += 1;
                    let _ = tx.send(cds_request(None, Some(&r), false)).await;
                }
                Ok(None) => break Instant::now(),
                Err(_) => break Instant::now(),
            }
        };
        (pushes, ended)
    });

    let (acked, writers) = spawn_writers(&m.api, WRITERS);

    // Let writes and pushes flow, then stop the replica as Kubernetes would.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes_before = acked
        .lock()
        .unwrap()
        .values()
        .filter_map(|a| a.last_n)
        .sum::<u64>();
    assert!(
        writes_before >= WRITERS as u64,
        "writers were not writing: {writes_before}"
    );
    let signalled = Instant::now();
    let (status, took) = m.terminate(Duration::from_secs(DRAIN + 10)).await;
    let status = status.expect("meridian still running 10 s past its grace period");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(DRAIN + 2),
        "took {took:?} to exit with a {DRAIN} s grace period"
    );
    for w in writers {
        w.await.expect("a writer panicked");
    }
    let (pushes, ended) = xds.await.unwrap();
    let total: u64 = acked
        .lock()
        .unwrap()
        .values()
        .filter_map(|a| a.last_n)
        .sum();
    println!(
        "SIGTERM after {writes_before} acknowledged patches; {total} in all; exit after {took:?}; {pushes} xDS pushes seen"
    );
    assert!(
        pushes >= 1,
        "the xDS client saw no push while writes flowed"
    );
    assert!(
        ended.duration_since(signalled) < Duration::from_secs(DRAIN),
        "the xDS stream was not ended by the drain"
    );

    check_acknowledged(&db, &acked, WRITERS).await;

    // The lease was given up, not left to expire.
    let released: bool =
        sqlx::query_scalar("SELECT expires_at <= now() FROM leases WHERE name = 'failover'")
            .fetch_one(db.store.pool())
            .await
            .expect("the failover lease row");
    assert!(released, "the failover lease was not released at shutdown");
}

struct Refused {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

async fn serve_with(args: &[&str], env: &[(&str, &str)]) -> Refused {
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(BIN.as_str())
            .arg("serve")
            .args(args)
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a bad setting must stop start-up at once")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("listening"),
        "bound a port before refusing: {stdout}"
    );
    Refused {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let dir = repo_root().join(format!(".meridian/config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // The API port is free and stays free: nothing is bound on refusal.
    let port = free_port(&["127.0.0.1"]);
    let api = format!("127.0.0.1:{port}");
    // The data dir must never be created: no private PostgreSQL starts.
    let data_dir = dir.join("data");
    let data = data_dir.to_str().unwrap();

    // (flags, environment, what the message must say)
    type Case<'a> = (Vec<String>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec!["--db-pool".into(), "0".into()],
            vec![],
            "dbPool (--db-pool, MERIDIAN_DB_POOL)",
        ),
        (
            vec![],
            vec![("MERIDIAN_DRAIN_SECONDS", "100000".into())],
            "drainSeconds",
        ),
        (
            vec![
                "--config".into(),
                file("typo.yaml", "apiAdr: 127.0.0.1:1\n"),
            ],
            vec![],
            "unknown field `apiAdr`",
        ),
        (
            vec!["--config".into(), file("type.yaml", "xdsAddr: nowhere\n")],
            vec![],
            "xdsAddr: invalid socket address",
        ),
        (
            vec!["--config".into(), file("roles.yaml", "roles: [api, dns]\n")],
            vec![],
            "invalid setting roles",
        ),
        (
            vec!["--xds-addr".into(), api.clone()],
            vec![],
            "xdsAddr (--xds-addr, MERIDIAN_XDS_ADDR)",
        ),
        (
            vec![
                "--database-url-file".into(),
                dir.join("absent").to_str().unwrap().into(),
            ],
            vec![],
            "databaseUrlFile",
        ),
        (
            vec![],
            vec![("DATABASE_URL", "mysql://user:hunter2@db/x".into())],
            "databaseUrl",
        ),
        (
            vec!["--admin-addr".into(), api.clone()],
            vec![],
            "adminAddr (--admin-addr, MERIDIAN_ADMIN_ADDR)",
        ),
        (
            vec![
                "--config".into(),
                dir.join("none.yaml").to_str().unwrap().into(),
            ],
            vec![],
            "cannot read the config file",
        ),
        (
            vec![],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317".into())],
            "otlpEndpoint (--otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT)",
        ),
        (
            vec!["--otlp-endpoint".into(), "https://collector:4317".into()],
            vec![],
            "TLS to the collector is not supported",
        ),
        (
            vec![
                "--otlp-endpoint".into(),
                "http://127.0.0.1:4317".into(),
                "--otlp-sample-ratio".into(),
                "2".into(),
            ],
            vec![],
            "otlpSampleRatio",
        ),
        (
            vec![
                "--config".into(),
                file(
                    "otlp.yaml",
                    "otlpEndpoint: http://127.0.0.1:4317\notlpFilter: 'info,['\n",
                ),
            ],
            vec![],
            "otlpFilter (--otlp-filter, MERIDIAN_OTLP_FILTER)",
        ),
    ];
    for (args, env, want) in cases {
        let mut all: Vec<&str> = vec!["--api-addr", &api, "--data-dir", data];
        all.extend(args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = serve_with(&all, &env).await;
        assert_eq!(r.code, Some(2), "{args:?} {env:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{args:?} {env:?}: wanted {want:?} in {:?}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("hunter2"),
            "a secret was echoed: {}",
            r.stderr
        );
        assert!(
            r.took < Duration::from_secs(5),
            "{args:?}: took {:?}",
            r.took
        );
        assert!(!data_dir.exists(), "{args:?}: a database was started");
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the API port stayed free");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn settings_come_from_the_file_and_flags_override_it() {
    let db = database().await;
    let dir = repo_root().join(format!(".meridian/config-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("database-url");
    std::fs::write(&secret, format!("{}\n", db.url)).unwrap();
    let config = dir.join("meridian.yaml");
    // The file asks for a pool of 3 and JSON logs, and gives the database
    // URL through a secret file; the test's flags override only the addresses.
    std::fs::write(
        &config,
        format!(
            "dbPool: 3\nlogFormat: json\ndatabaseUrlFile: {}\napiAddr: 127.0.0.1:1\n",
            secret.display()
        ),
    )
    .unwrap();
    let m = Meridian::start_with(
        Path::new(BIN.as_str()),
        "",
        &[("DATABASE_URL", "")],
        &["--config", config.to_str().unwrap(), "--drain-seconds", "3"],
    )
    .await;
    let text = scrape(&m.api).await;
    assert_eq!(
        value(&text, "meridian_db_pool_max_connections", &[]),
        3.0,
        "dbPool from the file"
    );
    assert!(
        !m.api.ends_with(":1"),
        "the --api-addr flag beats the file: {}",
        m.api
    );
    m.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Deployments that migrate once per upgrade (a Kubernetes Job) start
/// replicas with `--migrate false`: such a replica refuses a schema that
/// is behind instead of serving from it, and starts once it is current.
#[tokio::test]
async fn a_replica_that_does_not_migrate_refuses_an_old_schema() {
    let db = database().await;
    let name = format!("unmigrated_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(db.store.pool())
        .await
        .unwrap();
    let (base, _) = db.url.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");

    let out = tokio::process::Command::new(BIN.as_str())
        .args([
            "serve",
            "--api-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
        ])
        .args(["--migrate", "false", "--grpc-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("run `meridian migrate` first"), "{stderr}");

    let migrated = tokio::process::Command::new(BIN.as_str())
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let m = Meridian::start_with(Path::new(BIN.as_str()), &url, &[], &["--migrate", "false"]).await;
    let m_api = m.api.clone();
    // The image's health check: `meridian ready` (no shell, no curl there).
    let ready = tokio::process::Command::new(BIN.as_str())
        .args(["ready", "--server", &m.api])
        .output()
        .await
        .unwrap();
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    m.stop().await;
    let gone = tokio::process::Command::new(BIN.as_str())
        .args(["ready", "--server", &m_api])
        .output()
        .await
        .unwrap();
    assert!(!gone.status.success(), "ready after the server stopped");
}

/// `--log-format json`: every line on standard error is one JSON object,
/// and the lines a request causes carry its id (the client's, if sent).
#[tokio::test]
async fn json_logs_carry_the_request_id() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let db = database().await;
    let mut child = tokio::process::Command::new(BIN.as_str())
        .args([
            "serve",
            "--api-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
        ])
        .args(["--grpc-addr", "127.0.0.1:0", "--no-auth"])
        .args(["--log-format", "json"])
        .env("DATABASE_URL", &db.url)
        .env("MERIDIAN_LOG", "info,tower_http=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let api = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("exited early");
            if let Some(addr) = line.strip_prefix("Meridian API listening on ") {
                return addr.to_owned();
            }
        }
    })
    .await
    .expect("API address printed");
    let mut stderr = child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.ok();
        text
    });
    let r = reqwest::Client::new()
        .get(format!("{api}/api/v1/policies/absent"))
        .header("x-request-id", "req-json-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "req-json-42");
    let pid = child.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success());
    let text = collected.await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.len() >= 3, "{text}");
    let tagged = events.iter().filter(|e| {
        e["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["request_id"] == "req-json-42"))
    });
    assert!(
        tagged.count() >= 1,
        "no log line carries the request id:\n{text}"
    );
}

/// A crash (SIGKILL) mid-write leaves no half-applied write: each policy's
/// stored state and its revisions agree, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_writes_leaves_no_half_applied_write() {
    const WRITERS: usize = 4;
    let db = database().await;
    let m = Meridian::start(Path::new(BIN.as_str()), &db.url).await;
    let (acked, writers) = spawn_writers(&m.api, WRITERS);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    m.kill().await;
    for w in writers {
        w.await.expect("a writer panicked");
    }
    check_acknowledged(&db, &acked, WRITERS).await;
}

/// A replica without the api role still exposes `/metrics` and its probes
/// on `--admin-addr`, and nothing else there.
#[tokio::test]
async fn an_xds_only_replica_exposes_metrics_on_the_admin_address() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db = database().await;
    let mut child = tokio::process::Command::new(BIN.as_str())
        .args(["serve", "--roles", "xds", "--xds-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("MERIDIAN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut admin, mut api_line) = (None, false);
    tokio::time::timeout(WAIT, async {
        while admin.is_none() {
            let line = lines.next_line().await.unwrap().expect("exited early");
            api_line |= line.starts_with("Meridian API listening");
            if let Some(a) = line.strip_prefix("Meridian admin listening on ") {
                admin = Some(a.to_owned());
            }
        }
    })
    .await
    .expect("admin address printed");
    let admin = admin.unwrap();
    assert!(!api_line, "no API without the api role");
    let ready = format!("{admin}/readyz");
    eventually("ready", WAIT, || {
        let ready = ready.clone();
        async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let text = scrape(&admin).await;
    assert_eq!(value(&text, "meridian_xds_connected_clients", &[]), 0.0);
    assert!(sample(
        &text,
        "meridian_xds_connected_clients",
        &[("variant", "sotw")]
    )
    .is_some());
    let api = reqwest::get(format!("{admin}/api/v1/policies"))
        .await
        .unwrap();
    assert_eq!(
        api.status(),
        404,
        "the REST API is not on the admin address"
    );
    let pid = child.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success());
}

//! `simulate` agrees with reality. For every example policy and every one
//! of its zones: a copy of the policy with its own backends, `simulate`
//! asked what failing that zone would do, then that zone's backends
//! stopped for real; the weights the leader then stores are the simulated
//! ones. A real `meridian` (every role), real HTTP, TCP and gRPC health
//! endpoints on loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meridian_policy::decode::{parse_documents, Format};
use meridian_test_support::backend::Backend;
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::free_port;
use meridian_test_support::{database, repo_root};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A zone's endpoint, stood for by a backend that answers its policy's
/// health check (HTTP and TCP: an HTTP server; gRPC: gRPC health).
enum Stand {
    Http(Backend),
    Grpc(tokio::task::JoinHandle<()>),
}

impl Stand {
    async fn start(ip: &str, port: u16, zone: &str, grpc: bool) -> Stand {
        if !grpc {
            return Stand::Http(Backend::start(ip, port, zone, "v1").await);
        }
        let (mut reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let incoming =
            tonic::transport::server::TcpIncoming::from_listener(listener, true, None).unwrap();
        Stand::Grpc(tokio::spawn(async move {
            let _keep = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        }))
    }

    /// Stops like a crashed zone: nothing answers any more.
    async fn stop(self) {
        match self {
            Stand::Http(b) => b.stop().await,
            Stand::Grpc(task) => {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

struct Case {
    policy: String,
    zone: String,
    stands: Vec<(String, Stand)>,
}

async fn status(m: &Meridian, policy: &str) -> Value {
    reqwest::get(m.url(&format!("/api/v1/policies/{policy}/status")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn effective(status: &Value) -> BTreeMap<String, u64> {
    status["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            (
                z["name"].as_str().unwrap().to_owned(),
                z["effectiveWeight"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_agrees_with_the_leader_for_every_example_zone() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;

    let mut examples = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            examples.extend(parse_documents(&text, Format::Yaml).unwrap());
        }
    }
    assert!(examples.len() >= 3, "the examples: {examples:?}");

    // One copy per (policy, zone), every endpoint on an address of its own
    // (127.0.40.1, 127.0.40.2, ...), so stopping one case's zone touches no
    // other case.
    let mut addresses = Vec::new();
    let mut cases = Vec::new();
    let mut copies = Vec::new();
    for example in &examples {
        let name = example["metadata"]["name"].as_str().unwrap();
        let zones = example["spec"]["zones"].as_array().unwrap();
        for (i, zone) in zones.iter().enumerate() {
            let mut copy = example.clone();
            let policy = format!("{name}-{i}");
            copy["metadata"]["name"] = json!(policy);
            copy["spec"]["host"] = json!(format!(
                "case-{i}.{}",
                example["spec"]["host"].as_str().unwrap()
            ));
            copies.push((
                policy.clone(),
                zone["name"].as_str().unwrap().to_owned(),
                copy,
            ));
        }
    }
    for (_, _, copy) in &mut copies {
        for zone in copy["spec"]["zones"].as_array_mut().unwrap() {
            for endpoint in zone["endpoints"].as_array_mut().unwrap() {
                let n = addresses.len() + 1;
                let ip = format!("127.0.{}.{}", 40 + n / 250, n % 250 + 1);
                endpoint["address"] = json!(ip);
                addresses.push(ip);
            }
        }
    }
    let ips: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let port = free_port(&ips);
    for (policy, failing, mut copy) in copies {
        let grpc = copy["spec"]["healthCheck"]["protocol"] == "grpc";
        let mut stands = Vec::new();
        for zone in copy["spec"]["zones"].as_array_mut().unwrap() {
            let name = zone["name"].as_str().unwrap().to_owned();
            for endpoint in zone["endpoints"].as_array_mut().unwrap() {
                endpoint["port"] = json!(port);
                let ip = endpoint["address"].as_str().unwrap();
                stands.push((name.clone(), Stand::start(ip, port, &name, grpc).await));
            }
        }
        m.create_policy(&copy).await;
        cases.push(Case {
            policy,
            zone: failing,
            stands,
        });
    }

    // Every zone of every copy healthy first (or, without automatic
    // failover, at least known), so the simulations start from the truth.
    let started = Instant::now();
    for case in &cases {
        loop {
            let s = status(&m, &case.policy).await;
            let all = s["zones"].as_array().unwrap();
            if all.iter().all(|z| z["health"] == "healthy") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{} never became healthy: {s}",
                case.policy
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let client = reqwest::Client::new();
    let mut predicted = Vec::new();
    for case in &cases {
        let r = client
            .post(m.url(&format!("/api/v1/policies/{}/simulate", case.policy)))
            .json(&json!({"fail": [case.zone]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let s: Value = r.json().await.unwrap();
        let xds: BTreeMap<String, u64> = serde_json::from_value(s["xds"].clone()).unwrap();
        predicted.push(xds);
    }

    // Now for real.
    for case in &mut cases {
        let stands = std::mem::take(&mut case.stands);
        for (zone, stand) in stands {
            if zone == case.zone {
                stand.stop().await;
            } else {
                case.stands.push((zone, stand));
            }
        }
    }
    let mut mismatches = Vec::new();
    for (case, want) in cases.iter().zip(&predicted) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            let got = effective(&status(&m, &case.policy).await);
            if &got == want || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        eprintln!(
            "{} failing {}: simulated {want:?}, leader {got:?}",
            case.policy, case.zone
        );
        if &got != want {
            mismatches.push(format!(
                "{} failing {}: simulated {want:?}, the leader stored {got:?}",
                case.policy, case.zone
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "simulate disagreed with reality:\n{}",
        mismatches.join("\n")
    );
    assert!(
        cases.len() >= 6,
        "every zone of every example: {}",
        cases.len()
    );
    m.stop().await;
}

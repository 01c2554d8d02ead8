//! One policy cannot break the others: a hand-driven ADS client refuses
//! (NACKs) every egress route configuration that holds a marked policy.
//! Meridian blames the NACK on that policy, leaves it out of the shared
//! route, and the other policies on the port keep getting updates; the
//! refusal shows in `/status`, in the events (and so on the dashboard)
//! naming the policy; a new write of the policy tries it again.

use std::time::Duration;

use meridian_test_support::{database, process::Meridian};
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use xds_api::pb::google::rpc::Status;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ROUTE: &str = "egress_8080";
/// The client refuses any route with this policy in it.
const MARKED: &str = "marked";
const NACK_MESSAGE: &str = "test: this client refuses the marked policy";
const WAIT: Duration = Duration::from_secs(10);

fn policy(name: &str, prefix: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "host": format!("{name}.example.com"),
            "port": 8080,
            "zones": [{"name": "zone-a", "weight": 100, "endpoints": [{"address": "127.0.0.2", "port": 8080}]}],
            "routes": [{"name": "r", "match": {"pathPrefix": prefix}}],
        }
    })
}

async fn put(m: &Meridian, name: &str, prefix: &str) {
    let r = reqwest::Client::new()
        .put(m.url(&format!("/api/v1/policies/{name}")))
        .json(&policy(name, prefix))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// The next route configuration response: (response, vhost names, the
/// path prefix of policy `a`'s first route).
async fn next_route(stream: &mut Streaming<DiscoveryResponse>) -> (DiscoveryResponse, Vec<String>) {
    let resp = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no route configuration within 10 s")
        .expect("ADS stream error")
        .expect("ADS stream ended");
    assert_eq!(resp.type_url, RDS);
    let mut vhosts = Vec::new();
    for any in &resp.resources {
        let rc = RouteConfiguration::decode(any.value.as_slice()).unwrap();
        assert_eq!(rc.name, ROUTE);
        for v in rc.virtual_hosts {
            let prefix = format!("{:?}", v.routes[0].r#match.as_ref().unwrap().path_specifier);
            vhosts.push(format!(
                "{}{}",
                v.name,
                if v.name == "a" { prefix } else { String::new() }
            ));
        }
    }
    (resp, vhosts)
}

/// Answers like a client that takes everything but the marked policy.
async fn answer(
    tx: &mpsc::Sender<DiscoveryRequest>,
    resp: &DiscoveryResponse,
    vhosts: &[String],
    acked: &mut String,
) {
    let refuse = vhosts.iter().any(|v| v == MARKED);
    tx.send(DiscoveryRequest {
        type_url: RDS.into(),
        resource_names: vec![ROUTE.into()],
        version_info: if refuse {
            acked.clone()
        } else {
            resp.version_info.clone()
        },
        response_nonce: resp.nonce.clone(),
        error_detail: refuse.then(|| Status {
            code: 3,
            message: NACK_MESSAGE.into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    if !refuse {
        *acked = resp.version_info.clone();
    }
}

/// Reads and answers responses until one satisfies `done`.
async fn until(
    stream: &mut Streaming<DiscoveryResponse>,
    tx: &mpsc::Sender<DiscoveryRequest>,
    acked: &mut String,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let (resp, vhosts) = next_route(stream).await;
        answer(tx, &resp, &vhosts, acked).await;
        seen.push(vhosts.clone());
        if done(&vhosts) {
            return vhosts;
        }
        assert!(seen.len() < 20, "{what}: never came; got {seen:?}");
    }
}

async fn get(m: &Meridian, path: &str) -> Value {
    reqwest::get(m.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_policy_is_left_out_and_the_others_keep_getting_updates() {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    put(&m, "a", "/a1").await;
    put(&m, "b", "/b").await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", m.xds_port))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "picky".into(),
            cluster: "meridian-test".into(),
            ..Default::default()
        }),
        type_url: RDS.into(),
        resource_names: vec![ROUTE.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acked = String::new();
    let both = |v: &[String]| v.len() == 2;
    until(&mut stream, &tx, &mut acked, "a and b", both).await;

    // The marked policy joins the port: the client refuses the route.
    put(&m, MARKED, "/m").await;
    let with_marked = |v: &[String]| v.iter().any(|x| x == MARKED);
    until(
        &mut stream,
        &tx,
        &mut acked,
        "the route with the marked policy",
        with_marked,
    )
    .await;
    // Meridian leaves it out: the client gets the others again and takes it.
    let without = until(&mut stream, &tx, &mut acked, "the route without it", |v| {
        !v.iter().any(|x| x == MARKED)
    })
    .await;
    assert_eq!(without.len(), 2, "{without:?}");

    // The others keep getting updates: a change of a arrives (without the marked policy).
    put(&m, "a", "/a2").await;
    let updated = until(&mut stream, &tx, &mut acked, "a's change", |v| {
        v.iter().any(|x| x.contains("/a2"))
    })
    .await;
    assert!(!updated.iter().any(|x| x == MARKED), "{updated:?}");

    // Shown in /status, and as an event naming the policy (the dashboard lists events).
    let status = get(&m, &format!("/api/v1/policies/{MARKED}/status")).await;
    let rejected = &status["xdsRejected"];
    assert_eq!(rejected["resource"], ROUTE, "{status}");
    assert_eq!(rejected["nodeId"], "picky", "{status}");
    assert_eq!(rejected["message"], NACK_MESSAGE, "{status}");
    assert!(get(&m, "/api/v1/policies/a/status").await["xdsRejected"].is_null());
    let events = get(&m, &format!("/api/v1/dashboard/events?policy={MARKED}")).await;
    let event = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "xds-rejected")
        .unwrap_or_else(|| panic!("no xds-rejected event: {events}"));
    assert!(
        event["message"].as_str().unwrap().contains(MARKED),
        "{event}"
    );

    // A new write of the marked policy tries it again (and this client
    // refuses it again, so it is left out again).
    put(&m, MARKED, "/m2").await;
    until(
        &mut stream,
        &tx,
        &mut acked,
        "the marked policy tried again",
        with_marked,
    )
    .await;
    until(&mut stream, &tx, &mut acked, "left out again", |v| {
        !v.iter().any(|x| x == MARKED)
    })
    .await;
    m.stop().await;
}

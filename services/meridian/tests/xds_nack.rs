//! A hand-driven xDS client that rejects (NACKs) what Meridian sends, over
//! SotW and delta ADS: the rejection shows in `GET /api/v1/xds/clients`, the
//! server does not resend the rejected configuration, and the next real
//! change arrives and can be ACKed.

use std::time::Duration;

use meridian_test_support::{database, process::Meridian};
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DiscoveryRequest,
};
use xds_api::pb::google::rpc::Status;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const POLICY: &str = "shop";
const NACK_MESSAGE: &str = "test nack: rejected on purpose";
/// How long the server must stay quiet after a NACK: a resend loop would
/// answer within milliseconds, so this is ample to catch one.
const QUIET: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (Meridian, AggregatedDiscoveryServiceClient<Channel>) {
    let db = database().await;
    let m = Meridian::start(BIN.as_ref(), &db.url).await;
    let policy = json!({
        "metadata": {"name": POLICY},
        "spec": {
            "host": "shop.example.com",
            "port": 8080,
            "protocol": "http",
            "zones": [
                {"name": "zone-a", "weight": 70, "endpoints": [{"address": "127.0.0.2", "port": 8080}]},
                {"name": "zone-b", "weight": 30, "endpoints": [{"address": "127.0.0.3", "port": 8080}]},
            ],
        }
    });
    let resp = reqwest::Client::new()
        .post(m.url("/api/v1/policies"))
        .json(&policy)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 201, "{}", resp.text().await.unwrap());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", m.xds_port))
        .unwrap()
        .connect()
        .await
        .expect("connect to Meridian xDS");
    (m, AggregatedDiscoveryServiceClient::new(channel))
}

/// Changes the policy so that its Cluster resource itself changes. Zone
/// weights and endpoints live in the load assignment (EDS), not in the
/// Cluster, so the protocol is what changes here: a grpc cluster talks
/// HTTP/2 upstream.
async fn change_cluster(m: &Meridian) {
    let resp = reqwest::Client::new()
        .patch(m.url(&format!("/api/v1/policies/{POLICY}")))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"spec": {"protocol": "grpc"}}).to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "meridian-test".into(),
        ..Default::default()
    }
}

/// The Cluster-type status of `node_id` in `GET /api/v1/xds/clients`, once
/// `done` holds for it. The registry is updated when the server has handled
/// the request, which is after our send returns, hence the polling.
async fn cds_status_when(m: &Meridian, node_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let body: Value = reqwest::get(m.url("/api/v1/xds/clients"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["nodeId"] == node_id)
            .flat_map(|c| c["resources"].as_array().cloned().unwrap_or_default())
            .find(|r| r["typeUrl"] == CDS);
        if let Some(st) = found {
            if done(&st) {
                return st;
            }
            last = st;
        } else {
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("status of {node_id} for {CDS} never reached the expected state; last seen {last}");
}

fn decode_cluster(bytes: &[u8]) -> Cluster {
    Cluster::decode(bytes).expect("decode Cluster")
}

/// Whether a cluster talks HTTP/2 upstream, as grpc policies do. Meridian
/// sets the deprecated field because xds-api 0.2 does not ship
/// `HttpProtocolOptions` (see the xds crate's translate module).
#[allow(deprecated)]
fn talks_http2(c: &Cluster) -> bool {
    c.http2_protocol_options.is_some()
}

#[tokio::test]
async fn sotw_nack_is_recorded_not_resent_and_next_change_is_sent() {
    let (m, mut client) = start().await;
    let id = "nack-sotw";
    let (tx, rx) = mpsc::channel(8);
    // Wildcard: a first request naming no resource.
    tx.send(DiscoveryRequest {
        node: Some(node(id)),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open ADS stream")
        .into_inner();

    // The policy reaches the xDS snapshot asynchronously (change feed,
    // debounce), so the first answer may predate it: ACK answers until the
    // policy's cluster is in one.
    let mut acked: Option<String> = None;
    let first = tokio::time::timeout(WAIT, async {
        loop {
            let resp = stream
                .message()
                .await
                .expect("ADS stream error")
                .expect("ADS stream ended");
            assert_eq!(resp.type_url, CDS);
            assert!(!resp.version_info.is_empty(), "{resp:?}");
            let names: Vec<String> = resp
                .resources
                .iter()
                .map(|a| decode_cluster(&a.value).name)
                .collect();
            if names == [POLICY] {
                return resp;
            }
            assert!(names.is_empty(), "unexpected clusters {names:?}");
            tx.send(DiscoveryRequest {
                type_url: CDS.into(),
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            acked = Some(resp.version_info);
        }
    })
    .await
    .expect("no CDS response with the policy's cluster within 10 s");

    // NACK: same nonce, version_info still the last ACKed one.
    tx.send(DiscoveryRequest {
        type_url: CDS.into(),
        version_info: acked.clone().unwrap_or_default(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: NACK_MESSAGE.into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    let st = cds_status_when(&m, id, |s| s["status"] == "nacked").await;
    assert_eq!(st["lastNack"]["message"], NACK_MESSAGE, "{st}");
    assert_eq!(
        st["lastNack"]["version"],
        first.version_info.as_str(),
        "{st}"
    );
    assert_eq!(st["lastSentVersion"], first.version_info.as_str(), "{st}");
    // The rejected version is not taken as ACKed.
    assert_eq!(st["lastAckedVersion"], json!(acked), "{st}");
    // Standard tooling sees the same through CSDS.
    assert_csds_nacked(&m, id).await;

    // A server that resends the rejected configuration would loop forever
    // with a client that keeps rejecting it.
    let quiet = tokio::time::timeout(QUIET, stream.message()).await;
    assert!(quiet.is_err(), "server answered a NACK with {quiet:?}");

    change_cluster(&m).await;
    let second = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no CDS response within 10 s of the policy change")
        .expect("ADS stream error")
        .expect("ADS stream ended");
    assert_eq!(second.type_url, CDS);
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    let clusters: Vec<Cluster> = second
        .resources
        .iter()
        .map(|a| decode_cluster(&a.value))
        .collect();
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert!(
        talks_http2(&clusters[0]),
        "the grpc cluster talks HTTP/2: {:?}",
        clusters[0]
    );

    tx.send(DiscoveryRequest {
        type_url: CDS.into(),
        version_info: second.version_info.clone(),
        response_nonce: second.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = cds_status_when(&m, id, |s| s["status"] == "acked").await;
    assert_eq!(st["lastAckedVersion"], second.version_info.as_str(), "{st}");
    assert_eq!(st["lastSentVersion"], second.version_info.as_str(), "{st}");
    assert_eq!(
        st["lastNack"]["version"],
        first.version_info.as_str(),
        "{st}"
    );

    drop(tx);
    drop(stream);
    drop(client);
    m.stop().await;
}

#[tokio::test]
async fn delta_nack_is_recorded_not_resent_and_next_change_is_sent() {
    let (m, mut client) = start().await;
    let id = "nack-delta";
    let (tx, rx) = mpsc::channel(8);
    // Wildcard: a first request subscribing to nothing.
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(id)),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open delta ADS stream")
        .into_inner();

    // As for SotW: ACK answers until one carries the policy's cluster.
    let mut acked: Option<String> = None;
    let first = tokio::time::timeout(WAIT, async {
        loop {
            let resp = stream
                .message()
                .await
                .expect("delta ADS stream error")
                .expect("delta ADS stream ended");
            assert_eq!(resp.type_url, CDS);
            let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
            if names == [POLICY] {
                return resp;
            }
            assert!(names.is_empty(), "unexpected clusters {names:?}");
            tx.send(DeltaDiscoveryRequest {
                type_url: CDS.into(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            acked = Some(resp.system_version_info);
        }
    })
    .await
    .expect("no delta CDS response with the policy's cluster within 10 s");
    let first_resource_version = first.resources[0].version.clone();

    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: NACK_MESSAGE.into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    let st = cds_status_when(&m, id, |s| s["status"] == "nacked").await;
    assert_eq!(st["lastNack"]["message"], NACK_MESSAGE, "{st}");
    assert_eq!(
        st["lastNack"]["version"],
        first.system_version_info.as_str(),
        "{st}"
    );
    assert_eq!(st["lastAckedVersion"], json!(acked), "{st}");

    let quiet = tokio::time::timeout(QUIET, stream.message()).await;
    assert!(quiet.is_err(), "server answered a NACK with {quiet:?}");

    change_cluster(&m).await;
    let second = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no delta CDS response within 10 s of the policy change")
        .expect("delta ADS stream error")
        .expect("delta ADS stream ended");
    assert_eq!(second.type_url, CDS);
    assert_ne!(second.nonce, first.nonce);
    assert_ne!(second.system_version_info, first.system_version_info);
    assert_eq!(second.resources.len(), 1, "{second:?}");
    let changed = &second.resources[0];
    assert_eq!(changed.name, POLICY);
    assert_ne!(changed.version, first_resource_version);
    let cluster = decode_cluster(&changed.resource.as_ref().expect("resource body").value);
    assert!(
        talks_http2(&cluster),
        "the grpc cluster talks HTTP/2: {cluster:?}"
    );

    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: second.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let st = cds_status_when(&m, id, |s| s["status"] == "acked").await;
    assert_eq!(
        st["lastAckedVersion"],
        second.system_version_info.as_str(),
        "{st}"
    );

    drop(tx);
    drop(stream);
    drop(client);
    m.stop().await;
}

/// Asks the Client Status Discovery Service, as `istioctl`-style tools do,
/// and checks it reports this node's rejected cluster with the NACK message.
async fn assert_csds_nacked(m: &Meridian, node_id: &str) {
    use xds_api::pb::envoy::admin::v3::ClientResourceStatus;
    use xds_api::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    use xds_api::pb::envoy::service::status::v3::ClientStatusRequest;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", m.xds_port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = ClientStatusDiscoveryServiceClient::new(channel)
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .expect("CSDS answers")
        .into_inner();
    let mine = reply
        .config
        .iter()
        .find(|c| c.node.as_ref().is_some_and(|n| n.id == node_id))
        .unwrap_or_else(|| panic!("CSDS does not list node {node_id}"));
    let nacked = mine
        .generic_xds_configs
        .iter()
        .find(|g| g.type_url == CDS && g.client_status() == ClientResourceStatus::Nacked)
        .expect("CSDS reports a NACKed cluster");
    let details = nacked
        .error_state
        .as_ref()
        .map(|e| e.details.as_str())
        .unwrap_or_default();
    assert_eq!(details, NACK_MESSAGE);
}

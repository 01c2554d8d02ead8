//! Claimed identities on plaintext xDS. With the CA on, a node that only
//! *claims* a SPIFFE ID (node metadata `meridian.spiffe_id`) gets neither
//! that identity's workload key nor its namespace's policies, unless the
//! replica was started with `--xds-trust-claimed-identities`, which is
//! refused off loopback and announced loudly. A replica with the CA on and
//! xDS reachable from other machines refuses to run without client
//! certificates.

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_test_support::database;
use meridian_test_support::process::Meridian;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use xds_api::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const BANK: &str = "spiffe://meridian.local/ns/bank/sa/teller";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const SDS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const WORKLOAD: &str = "meridian/workload";

fn policy(name: &str, port: u16, namespace: Option<&str>) -> Value {
    let labels = match namespace {
        Some(ns) => json!({"meridian.io/namespace": ns}),
        None => json!({}),
    };
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "host": format!("{name}.test"),
            "port": port,
            "zones": [{"name": "z1", "weight": 100, "endpoints": [
                {"address": "127.0.0.1", "port": 9}]}]
        }
    })
}

/// What a plaintext ADS client claiming `BANK` was sent.
#[derive(Debug, Default)]
struct Seen {
    clusters: BTreeSet<String>,
    /// Secret names that came with a private key.
    keys: BTreeSet<String>,
}

/// Opens one SotW ADS stream as a node claiming `BANK`, asks for every
/// cluster and for its workload secret, ACKs everything, and returns what
/// it was sent once `done` holds or `wait` has passed, with the stream
/// (open while held).
async fn claim_bank(
    xds_port: u16,
    wait: Duration,
    done: impl Fn(&Seen) -> bool,
) -> (Seen, impl Send) {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{xds_port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to Meridian xDS");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let metadata = Struct {
        fields: [(
            "meridian.spiffe_id".to_owned(),
            PbValue {
                kind: Some(Kind::StringValue(BANK.into())),
            },
        )]
        .into(),
    };
    let node = Node {
        id: "claimer".into(),
        cluster: "test".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(metadata),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(8);
    let cds = DiscoveryRequest {
        node: Some(node),
        type_url: CDS.into(),
        ..Default::default()
    };
    let sds = DiscoveryRequest {
        type_url: SDS.into(),
        resource_names: vec![WORKLOAD.into()],
        ..Default::default()
    };
    tx.send(cds.clone()).await.unwrap();
    tx.send(sds.clone()).await.unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open ADS stream")
        .into_inner();
    let mut seen = Seen::default();
    let _ = tokio::time::timeout(wait, async {
        while let Ok(Some(resp)) = stream.message().await {
            let mut ack = if resp.type_url == CDS {
                cds.clone()
            } else {
                sds.clone()
            };
            ack.version_info = resp.version_info.clone();
            ack.response_nonce = resp.nonce.clone();
            ack.node = None;
            let _ = tx.send(ack).await;
            for any in &resp.resources {
                if resp.type_url == CDS {
                    let c = Cluster::decode(any.value.as_slice()).unwrap();
                    seen.clusters.insert(c.name);
                } else {
                    let s = Secret::decode(any.value.as_slice()).unwrap();
                    if let Some(secret::Type::TlsCertificate(t)) = s.r#type {
                        if t.private_key.is_some() {
                            seen.keys.insert(s.name);
                        }
                    }
                }
            }
            if done(&seen) {
                return;
            }
        }
    })
    .await;
    (seen, (tx, stream))
}

async fn certs_issued_for(db_url: &str, id: &str) -> i64 {
    let pool = sqlx::PgPool::connect(db_url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM workload_certs WHERE spiffe_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

async fn xds_client_identity(m: &Meridian, node: &str) -> Option<Value> {
    let clients: Value = reqwest::get(m.url("/api/v1/xds/clients"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = clients["items"].as_array().cloned().unwrap_or_default();
    let client = list.iter().find(|c| c["nodeId"] == node)?;
    Some(client["spiffeId"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_identity_gets_no_key_and_no_namespace_by_default() {
    let db = database().await;
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    let m = Meridian::start_with_env(BIN.as_ref(), &db.url, &[("MERIDIAN_CA_KEY", &key)]).await;
    m.create_policy(&policy("open-api", 18101, None)).await;
    m.create_policy(&policy("vault", 18102, Some("bank"))).await;

    // Long enough for the writer to issue and push a key (the trusted case
    // below gets one in well under a second); it must never come.
    let (seen, _stream) =
        claim_bank(m.xds_port, Duration::from_secs(5), |s| !s.keys.is_empty()).await;
    assert!(seen.keys.is_empty(), "a private key was served: {seen:?}");
    assert_eq!(
        seen.clusters,
        BTreeSet::from(["open-api".to_owned()]),
        "the claim must not open the bank namespace"
    );
    assert_eq!(
        xds_client_identity(&m, "claimer").await,
        Some(Value::Null),
        "the node is connected, without an identity"
    );
    assert_eq!(certs_issued_for(&db.url, BANK).await, 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_claims_work_on_loopback_and_are_announced() {
    let db = database().await;
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    let (log, mut lines) = mpsc::unbounded_channel();
    let m = Meridian::start_logged(
        BIN.as_ref(),
        &db.url,
        &[("MERIDIAN_CA_KEY", &key)],
        &["--xds-trust-claimed-identities"],
        log,
    )
    .await;
    m.create_policy(&policy("open-api", 18101, None)).await;
    m.create_policy(&policy("vault", 18102, Some("bank"))).await;

    let (seen, _stream) = claim_bank(m.xds_port, Duration::from_secs(30), |s| {
        s.keys.contains(WORKLOAD) && s.clusters.contains("vault")
    })
    .await;
    assert!(seen.keys.contains(WORKLOAD), "{seen:?}");
    assert!(seen.clusters.contains("vault"), "{seen:?}");
    assert_eq!(
        xds_client_identity(&m, "claimer").await,
        Some(json!(BANK)),
        "the trusted claim is the node's identity"
    );
    let mut said = false;
    while let Ok(line) = lines.try_recv() {
        said |= line.contains("TRUSTS CLAIMED IDENTITIES") && line.contains("PRIVATE KEY");
    }
    assert!(said, "the start-up log warns about trusted claims");
    m.stop().await;
}

/// `meridian serve` with these arguments exits before binding anything;
/// returns its standard error.
async fn refused(args: &[&str]) -> String {
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    let out = tokio::process::Command::new(BIN)
        .arg("serve")
        .args(["--api-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(args)
        .env("MERIDIAN_CA_KEY", key)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("meridian exits at once")
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a settings error");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_ca_with_reachable_xds_needs_client_certificates() {
    let plain = refused(&["--xds-addr", "0.0.0.0:0", "--xds-client-auth", "none"]).await;
    assert!(
        plain.contains("--xds-client-auth")
            && plain.contains("required")
            && plain.contains("127.0.0.1"),
        "{plain}"
    );
    let trust = refused(&["--xds-addr", "0.0.0.0:0", "--xds-trust-claimed-identities"]).await;
    assert!(
        trust.contains("--xds-trust-claimed-identities") && trust.contains("loopback"),
        "{trust}"
    );
}

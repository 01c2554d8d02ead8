//! Client status (CSDS) on the xDS port is scoped: nobody without a
//! credential or a workload identity reads it, a non-admin token is
//! refused, an admin token sees every node, a workload sees the nodes of
//! its own namespace, and a request's `node_matchers` pick nodes by id
//! (exact, prefix) and metadata.

use std::time::Duration;

use meridian_test_support::database;
use meridian_test_support::process::Meridian;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, struct_matcher::path_segment::Segment,
    struct_matcher::PathSegment, value_matcher, NodeMatcher, StringMatcher, StructMatcher,
    ValueMatcher,
};
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use xds_api::pb::envoy::service::status::v3::{
    client_status_discovery_service_client::ClientStatusDiscoveryServiceClient, ClientStatusRequest,
};
use xds_api::pb::google::protobuf::{value::Kind, Struct, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const SHOP: &str = "spiffe://meridian.local/ns/shop/sa/web";
const SHOP_2: &str = "spiffe://meridian.local/ns/shop/sa/cart";
const BANK: &str = "spiffe://meridian.local/ns/bank/sa/teller";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn node(id: &str, claim: Option<&str>, zone: &str) -> Node {
    let mut fields = std::collections::HashMap::new();
    if let Some(c) = claim {
        fields.insert(
            "meridian.spiffe_id".to_owned(),
            Value {
                kind: Some(Kind::StringValue(c.into())),
            },
        );
    }
    fields.insert(
        "zone".to_owned(),
        Value {
            kind: Some(Kind::StringValue(zone.into())),
        },
    );
    Node {
        id: id.into(),
        cluster: "test".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to Meridian xDS")
}

/// An ADS stream of `node`, open while the returned value is held.
async fn connect(port: u16, node: Node) -> impl Send {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let stream = AggregatedDiscoveryServiceClient::new(channel(port).await)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open ADS stream")
        .into_inner();
    (tx, stream)
}

/// The node ids CSDS lists for this request, or the refusal's code.
async fn csds(
    port: u16,
    token: Option<&str>,
    req: ClientStatusRequest,
) -> Result<Vec<String>, tonic::Code> {
    let mut request = tonic::Request::new(req);
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let reply = ClientStatusDiscoveryServiceClient::new(channel(port).await)
        .fetch_client_status(request)
        .await
        .map_err(|s| s.code())?;
    let mut ids: Vec<String> = reply
        .into_inner()
        .config
        .into_iter()
        .filter_map(|c| c.node.map(|n| n.id))
        .collect();
    ids.sort();
    Ok(ids)
}

fn id_matcher(p: MatchPattern) -> NodeMatcher {
    NodeMatcher {
        node_id: Some(StringMatcher {
            match_pattern: Some(p),
            ignore_case: false,
        }),
        node_metadatas: vec![],
    }
}

async fn token(db_url: &str, name: &str, role: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "create", "--name", name, "--role", role])
        .env("DATABASE_URL", db_url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_is_scoped_to_admins_and_namespaces_and_honours_node_matchers() {
    let db = database().await;
    let admin = token(&db.url, "ops", "admin").await;
    let viewer = token(&db.url, "watcher", "viewer").await;
    // Workloads claim their identities on loopback (the flag); tokens are
    // checked (no --no-auth).
    let m = Meridian::start_with_env(
        BIN.as_ref(),
        &db.url,
        &[
            ("MERIDIAN_NO_AUTH", "false"),
            ("MERIDIAN_XDS_TRUST_CLAIMED_IDENTITIES", "true"),
        ],
    )
    .await;
    let port = m.xds_port;
    let _streams = (
        connect(port, node("shop-1", Some(SHOP), "eu")).await,
        connect(port, node("shop-2", Some(SHOP_2), "us")).await,
        connect(port, node("bank-1", Some(BANK), "eu")).await,
        connect(port, node("anon-1", None, "eu")).await,
    );
    let all = ["anon-1", "bank-1", "shop-1", "shop-2"]
        .map(String::from)
        .to_vec();
    // Streams register on their first request: wait for all four.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = csds(port, Some(&admin), Default::default()).await.unwrap();
        if seen == all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, all, "an admin sees every node");

    // No credential and no identity; a token that is not an admin's; a
    // bogus token.
    let none = csds(port, None, Default::default()).await;
    assert_eq!(none, Err(tonic::Code::Unauthenticated));
    let as_viewer = csds(port, Some(&viewer), Default::default()).await;
    assert_eq!(as_viewer, Err(tonic::Code::PermissionDenied));
    let bogus = csds(port, Some("mrd_not-a-token"), Default::default()).await;
    assert_eq!(bogus, Err(tonic::Code::Unauthenticated));

    // A workload (here its trusted claim) sees its namespace's nodes.
    let from_shop = ClientStatusRequest {
        node: Some(node("shop-cli", Some(SHOP), "eu")),
        ..Default::default()
    };
    assert_eq!(
        csds(port, None, from_shop.clone()).await,
        Ok(vec!["shop-1".into(), "shop-2".into()])
    );
    let from_bank = ClientStatusRequest {
        node: Some(node("bank-cli", Some(BANK), "eu")),
        ..Default::default()
    };
    assert_eq!(csds(port, None, from_bank).await, Ok(vec!["bank-1".into()]));

    // Node matchers: id exact, id prefix, any of several, metadata; within
    // the caller's scope.
    let exact = ClientStatusRequest {
        node_matchers: vec![id_matcher(MatchPattern::Exact("bank-1".into()))],
        ..Default::default()
    };
    assert_eq!(
        csds(port, Some(&admin), exact).await,
        Ok(vec!["bank-1".into()])
    );
    let prefix = ClientStatusRequest {
        node_matchers: vec![id_matcher(MatchPattern::Prefix("shop-".into()))],
        ..Default::default()
    };
    assert_eq!(
        csds(port, Some(&admin), prefix).await,
        Ok(vec!["shop-1".into(), "shop-2".into()])
    );
    let either = ClientStatusRequest {
        node_matchers: vec![
            id_matcher(MatchPattern::Exact("anon-1".into())),
            id_matcher(MatchPattern::Exact("shop-2".into())),
        ],
        ..Default::default()
    };
    assert_eq!(
        csds(port, Some(&admin), either).await,
        Ok(vec!["anon-1".into(), "shop-2".into()])
    );
    let in_eu = NodeMatcher {
        node_id: None,
        node_metadatas: vec![StructMatcher {
            path: vec![PathSegment {
                segment: Some(Segment::Key("zone".into())),
            }],
            value: Some(ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact("eu".into())),
                    ignore_case: false,
                })),
            }),
        }],
    };
    let shop_in_eu = ClientStatusRequest {
        node_matchers: vec![in_eu],
        ..from_shop
    };
    assert_eq!(
        csds(port, None, shop_in_eu).await,
        Ok(vec!["shop-1".into()])
    );
    // A matcher Meridian cannot apply is refused, not ignored.
    let regex = ClientStatusRequest {
        node_matchers: vec![id_matcher(MatchPattern::SafeRegex(Default::default()))],
        ..Default::default()
    };
    assert_eq!(
        csds(port, Some(&admin), regex).await,
        Err(tonic::Code::InvalidArgument)
    );
    m.stop().await;
}

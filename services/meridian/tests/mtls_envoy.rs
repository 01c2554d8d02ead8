//! Workload mTLS end to end: two real Envoys, a client-side sidecar and a
//! server-side sidecar in front of a backend, configured by a real
//! `meridian` with its CA. A `strict` policy: requests pass over mTLS, the
//! backend sees the client's SPIFFE ID in `x-forwarded-client-cert`, a
//! plaintext client is refused, a client identity not in `allowedSans` is
//! refused, and after a forced rotation requests keep passing with new
//! certificates.

use std::time::Duration;

use meridian_test_support::backend::Backend;
use meridian_test_support::database;
use meridian_test_support::envoy::{Ads, Envoy};
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::{self, eventually, free_port};
use reqwest::Client;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const HOST: &str = "api.shop.test";
const CLIENT_ID: &str = "spiffe://meridian.local/ns/web/sa/frontend";
const SERVER_ID: &str = "spiffe://meridian.local/ns/shop/sa/api";
/// Where the server-side sidecar listens: the policy's endpoint.
const INBOUND_IP: &str = "127.0.0.21";
/// The server-side sidecar's own egress listeners go here, out of the
/// client sidecar's way on 127.0.0.1.
const SERVER_EGRESS_IP: &str = "127.0.0.22";

fn policy(port: u16, inbound_port: u16, allowed: &[&str]) -> Value {
    json!({
        "metadata": {"name": "api"},
        "spec": {
            "host": HOST,
            "port": port,
            "zones": [{"name": "z1", "weight": 100, "endpoints": [
                {"address": INBOUND_IP, "port": inbound_port}]}],
            "mtls": {"mode": "strict", "allowedSans": allowed}
        }
    })
}

/// Serial numbers of the workload certificates an Envoy holds (admin `/certs`).
async fn serials(envoy: &Envoy) -> Vec<String> {
    let certs: Value = serde_json::from_str(&envoy.admin_get("/certs").await).unwrap_or_default();
    let mut out = Vec::new();
    for c in certs["certificates"].as_array().into_iter().flatten() {
        for cert in c["cert_chain"].as_array().into_iter().flatten() {
            if let Some(s) = cert["serial_number"].as_str() {
                out.push(s.to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Csds {
    secrets: usize,
    /// Every resource body CSDS returned, lossily as text.
    text: String,
}

async fn csds_dump(xds_port: u16) -> Csds {
    use xds_api::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    use xds_api::pb::envoy::service::status::v3::ClientStatusRequest;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{xds_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = ClientStatusDiscoveryServiceClient::new(channel)
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .expect("CSDS answers")
        .into_inner();
    let mut out = Csds {
        secrets: 0,
        text: String::new(),
    };
    for g in reply.config.iter().flat_map(|c| &c.generic_xds_configs) {
        if g.type_url.ends_with(".Secret") {
            out.secrets += 1;
        }
        if let Some(any) = &g.xds_config {
            out.text.push_str(&String::from_utf8_lossy(&any.value));
        }
    }
    out
}

async fn through_client(client: &Client, port: u16) -> Result<Value, String> {
    traffic::request(client, port, HOST, "/hello", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_between_two_sidecars_with_rotation() {
    let db = database().await;
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    // The sidecars claim their identities over plaintext loopback xDS:
    // trusted only with the flag, which is refused off loopback.
    let m = Meridian::start_with_env(
        BIN.as_ref(),
        &db.url,
        &[
            ("MERIDIAN_CA_KEY", &key),
            ("MERIDIAN_XDS_TRUST_CLAIMED_IDENTITIES", "true"),
        ],
    )
    .await;

    let backend = Backend::start("127.0.0.1", 0, "z1", "v1").await;
    let inbound_port = free_port(&[INBOUND_IP]);
    let port = free_port(&["127.0.0.1", SERVER_EGRESS_IP]);
    m.create_policy(&policy(port, inbound_port, &[CLIENT_ID]))
        .await;

    let workload = backend.addr.to_string();
    let inbound = format!("{INBOUND_IP}:{inbound_port}");
    let server = Envoy::start_with_metadata(
        "server-sidecar",
        m.xds_port,
        Ads::StateOfTheWorld,
        &[
            ("meridian.spiffe_id", SERVER_ID),
            ("meridian.inbound_policy", "api"),
            ("meridian.inbound_address", &inbound),
            ("meridian.workload_address", &workload),
            ("meridian.egress_address", SERVER_EGRESS_IP),
        ],
    )
    .await;
    let client_envoy = Envoy::start_with_metadata(
        "client-sidecar",
        m.xds_port,
        Ads::Delta,
        &[("meridian.spiffe_id", CLIENT_ID)],
    )
    .await;

    let client = Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match through_client(&client, port).await {
            Ok(v) => break v,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no request passed over mTLS within 30 s: {e}\nclient envoy:\n{}\nserver envoy:\n{}",
                client_envoy.log(),
                server.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let xfcc = answer["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no x-forwarded-client-cert in {answer}"));
    assert!(
        xfcc.contains(&format!("URI={CLIENT_ID}")),
        "the server side should see the client's SPIFFE ID: {xfcc}"
    );
    assert!(
        xfcc.contains(&format!("By={SERVER_ID}")),
        "and its own: {xfcc}"
    );

    // CSDS (open on the xDS port) names the secrets Envoys hold but never
    // shows their contents: they carry private keys.
    let csds = csds_dump(m.xds_port).await;
    assert!(
        csds.secrets >= 2,
        "CSDS lists the sidecars' secrets: {}",
        csds.secrets
    );
    assert!(
        !csds.text.contains("PRIVATE KEY"),
        "a key leaked through CSDS"
    );

    // The server side accepts only mTLS: plaintext HTTP to its inbound
    // listener fails (the TLS handshake never happens).
    let plain = client
        .get(format!("http://{inbound}/hello"))
        .header("host", HOST)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "a plaintext client must be refused, got {:?}",
        plain.map(|r| r.status())
    );
    // A spoofed header never reaches the workload as sent.
    let spoofed = traffic::request(
        &client,
        port,
        HOST,
        "/hello",
        &[("x-forwarded-client-cert", "URI=spiffe://evil/ns/x/sa/y")],
    )
    .await
    .unwrap();
    let xfcc = spoofed["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap();
    assert!(!xfcc.contains("evil"), "{xfcc}");

    // Forced rotation: both sidecars get new certificates over SDS, without
    // a restart, and requests keep passing throughout.
    let before_client = serials(&client_envoy).await;
    let before_server = serials(&server).await;
    assert!(!before_client.is_empty(), "client holds a certificate");
    let r = client
        .post(m.url("/api/v1/ca/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Err(e) = through_client(&client, port).await {
            failures.push(e);
        }
        let (c, s) = (serials(&client_envoy).await, serials(&server).await);
        let rotated = !c.is_empty()
            && !s.is_empty()
            && c.iter().all(|x| !before_client.contains(x))
            && s.iter().all(|x| !before_server.contains(x));
        if rotated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificates not rotated within 30 s: client {before_client:?} -> {c:?}, server {before_server:?} -> {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New connections use the new certificates.
    for _ in 0..20 {
        let fresh = Client::new();
        if let Err(e) = through_client(&fresh, port).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed around the rotation: {failures:?}"
    );

    // Permissive: the server side also takes plaintext (told apart by the
    // TLS inspector), and clients stop using mTLS (the endpoint might have
    // no sidecar), so no client identity reaches the workload.
    let r = Client::new()
        .patch(m.url("/api/v1/policies/api"))
        .header("content-type", "application/merge-patch+json")
        .body(
            json!({"spec": {"mtls": {"mode": "permissive", "allowedSans": [CLIENT_ID]}}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let direct = format!("http://{inbound}/hello");
    eventually(
        "plaintext accepted under permissive",
        Duration::from_secs(30),
        || async {
            Client::new()
                .get(&direct)
                .header("host", HOST)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    eventually(
        "clients use plaintext under permissive",
        Duration::from_secs(30),
        || async {
            through_client(&Client::new(), port)
                .await
                .is_ok_and(|v| v["headers"]["x-forwarded-client-cert"].is_null())
        },
    )
    .await;

    // A client identity outside allowedSans is refused by the server side.
    let r = Client::new()
        .patch(m.url("/api/v1/policies/api"))
        .header("content-type", "application/merge-patch+json")
        .body(json!({"spec": {"mtls": {"mode": "strict", "allowedSans": ["spiffe://meridian.local/ns/web/sa/other"]}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    eventually(
        "a client outside allowedSans refused",
        Duration::from_secs(30),
        || async {
            let fresh = Client::new();
            through_client(&fresh, port).await.is_err()
        },
    )
    .await;
    drop((client_envoy, server, backend));
    m.stop().await;
}

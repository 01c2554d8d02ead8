//! The CA's rows and REST surface against a real PostgreSQL: the first CA
//! stored wins, certificates are replaced only by whoever saw the current
//! one (compare-and-set), a forced rotation is audited, and no key leaves
//! through the API.

use chrono::{Duration, Utc};
use meridian_store::ca::{NewCa, WorkloadCertRow};
use meridian_test_support::{database, Server};
use reqwest::Client;
use serde_json::Value;

fn new_ca<'a>(cert: &'a str, key: &'a [u8]) -> NewCa<'a> {
    NewCa {
        trust_domain: "example.org",
        source: "generated",
        cert_pem: cert,
        key_sealed: key,
        chain_pem: "",
        trust_bundle_pem: cert,
        bundle_mac: b"mac",
    }
}

fn cert(id: &str, pem: &str) -> WorkloadCertRow {
    let now = Utc::now();
    WorkloadCertRow {
        spiffe_id: id.to_owned(),
        cert_pem: pem.to_owned(),
        key_sealed: b"sealed".to_vec(),
        not_before: now,
        not_after: now + Duration::hours(24),
        rotation: 0,
    }
}

#[tokio::test]
async fn ca_rows_compare_and_set_and_audited_rotation() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let client = Client::new();

    // No CA yet: 404 to read, 409 to rotate, nothing changes.
    let r = client.get(server.url("/api/v1/ca")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(server.url("/api/v1/ca/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_ca");
    assert!(db.store.ca().await.unwrap().is_none());

    // Two replicas racing to create: the first insert wins for both.
    let first = db
        .store
        .init_ca(&new_ca("-----BEGIN CERTIFICATE-----A", b"key-a"))
        .await
        .unwrap();
    let second = db
        .store
        .init_ca(&new_ca("-----BEGIN CERTIFICATE-----B", b"key-b"))
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(second.cert_pem, "-----BEGIN CERTIFICATE-----A");

    // Compare-and-set on workload certificates.
    let id = "spiffe://example.org/ns/a/sa/b";
    let kept = db
        .store
        .put_workload_cert(&cert(id, "one"), None)
        .await
        .unwrap();
    assert_eq!(kept.cert_pem, "one");
    // A replica that did not see "one" loses.
    let kept = db
        .store
        .put_workload_cert(&cert(id, "two"), None)
        .await
        .unwrap();
    assert_eq!(kept.cert_pem, "one");
    // One that did replaces it.
    let kept = db
        .store
        .put_workload_cert(&cert(id, "three"), Some("one"))
        .await
        .unwrap();
    assert_eq!(kept.cert_pem, "three");
    let all = db
        .store
        .workload_certs(&[id.to_owned(), "spiffe://example.org/ns/x/sa/y".to_owned()])
        .await
        .unwrap();
    assert_eq!(all.len(), 1);

    // A forced rotation bumps the number, is audited, and shows in the API.
    let r = client
        .post(server.url("/api/v1/ca/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rotation"], 1);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'ca-rotate' AND actor = 'anonymous'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let r = client.get(server.url("/api/v1/ca")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["rotation"], 1);
    assert_eq!(body["trustDomain"], "example.org");
    // Exactly these fields: certificates and bookkeeping, no key material.
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "caCertificate",
            "createdAt",
            "rotation",
            "source",
            "trustBundle",
            "trustDomain",
            "updatedAt"
        ]
    );
    server.stop().await;
}

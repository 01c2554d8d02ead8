//! The trust bundle in the `ca` row is authenticated with the master key:
//! a root added to it in PostgreSQL is refused by `meridian ca issue`, by a
//! replica starting, and by a running replica (which keeps serving the
//! bundle it had). A row stored before the seal existed is sealed on the
//! next start when it holds only what Meridian wrote.

use std::time::Duration;

use meridian_test_support::process::Meridian;
use meridian_test_support::{database, repo_root};
use prost::Message;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_api::pb::envoy::config::core::v3::{data_source::Specifier, Node};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use xds_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use xds_api::pb::google::protobuf::{value::Kind, Struct, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const ID: &str = "spiffe://meridian.local/ns/shop/sa/web";
const SDS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const BUNDLE: &str = "meridian/trust-bundle";

/// `meridian ca issue`: its success and standard error.
async fn ca_issue(db_url: &str, key: &str, dir: &std::path::Path) -> (bool, String) {
    let out = tokio::process::Command::new(BIN)
        .args(["ca", "issue", "--spiffe-id", ID, "--out-dir"])
        .arg(dir)
        .env("DATABASE_URL", db_url)
        .env("MERIDIAN_CA_KEY", key)
        .env("MERIDIAN_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap();
}

async fn sealed(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT bundle_mac IS NOT NULL FROM ca")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// An attacker's root: a CA they hold the key of.
fn evil_root() -> String {
    meridian_ca::Authority::generate("meridian.local", chrono::Utc::now())
        .unwrap()
        .cert_pem()
        .to_owned()
}

async fn add_root(pool: &PgPool, root: &str) {
    sqlx::query("UPDATE ca SET trust_bundle_pem = trust_bundle_pem || $1")
        .bind(root)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_root_added_in_the_database_is_refused_at_start() {
    let db = database().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    let dir = repo_root().join(format!(".meridian/ca-seal-{}", std::process::id()));

    let (ok, err) = ca_issue(&db.url, &key, &dir).await;
    assert!(ok, "{err}");
    assert!(sealed(&pool).await, "a new CA is stored sealed");
    let good_bundle = std::fs::read_to_string(dir.join("bundle.pem")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let evil = evil_root();
    add_root(&pool, &evil).await;
    let (ok, err) = ca_issue(&db.url, &key, &dir).await;
    assert!(!ok, "issued under a tampered bundle");
    assert!(err.contains("changed outside Meridian"), "{err}");
    assert!(!dir.join("bundle.pem").exists(), "nothing written");

    // A replica refuses to start on it.
    let out = tokio::process::Command::new(BIN)
        .args(["serve", "--roles", "xds", "--xds-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("MERIDIAN_CA_KEY", &key)
        .env("MERIDIAN_LOG", "warn")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("meridian serve exits")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("changed outside Meridian"), "{err}");

    // Dropping the seal does not help: an unsealed row is trusted only
    // when it holds nothing but the CA certificate itself.
    exec(&pool, "UPDATE ca SET bundle_mac = NULL").await;
    let (ok, err) = ca_issue(&db.url, &key, &dir).await;
    assert!(!ok && err.contains("changed outside Meridian"), "{err}");

    // A row from before the seal, as Meridian wrote it, is sealed.
    sqlx::query("UPDATE ca SET trust_bundle_pem = $1, bundle_mac = NULL")
        .bind(&good_bundle)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, err) = ca_issue(&db.url, &key, &dir).await;
    assert!(ok, "{err}");
    assert!(sealed(&pool).await, "the legacy row was sealed");
    assert_eq!(
        std::fs::read_to_string(dir.join("bundle.pem")).unwrap(),
        good_bundle
    );
    let _ = std::fs::remove_dir_all(&dir);
    pool.close().await;
}

/// The trust bundles a node claiming `ID` is sent, as they come.
async fn bundles(xds_port: u16) -> (mpsc::UnboundedReceiver<String>, tokio::task::JoinHandle<()>) {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{xds_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let node = Node {
        id: "sidecar".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(Struct {
            fields: [(
                "meridian.spiffe_id".to_owned(),
                Value {
                    kind: Some(Kind::StringValue(ID.into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let req = DiscoveryRequest {
        node: Some(node),
        type_url: SDS.into(),
        resource_names: vec![BUNDLE.into()],
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(8);
    tx.send(req.clone()).await.unwrap();
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (out, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            let mut ack = req.clone();
            ack.node = None;
            ack.version_info = resp.version_info.clone();
            ack.response_nonce = resp.nonce.clone();
            let _ = tx.send(ack).await;
            for any in &resp.resources {
                let s = Secret::decode(any.value.as_slice()).unwrap();
                if let Some(secret::Type::ValidationContext(v)) = s.r#type {
                    let text = match v.trusted_ca.and_then(|d| d.specifier) {
                        Some(Specifier::InlineString(t)) => t,
                        Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(&b).into(),
                        _ => String::new(),
                    };
                    let _ = out.send(text);
                }
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_replica_never_serves_a_root_added_in_the_database() {
    let db = database().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
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
    let (mut seen, task) = bundles(m.xds_port).await;
    let first = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("a trust bundle is served")
        .unwrap();
    assert_eq!(first.matches("BEGIN CERTIFICATE").count(), 1, "{first}");

    let evil = evil_root();
    add_root(&pool, &evil).await;
    // A forced rotation makes every replica re-read the row at once.
    let r = reqwest::Client::new()
        .post(m.url("/api/v1/ca/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
    if let Ok(Some(bundle)) = served {
        assert!(!bundle.contains(evil.trim()), "the added root was served");
    }
    let mut alerted = false;
    for _ in 0..50 {
        while let Ok(line) = lines.try_recv() {
            alerted |= line.contains("ca_bundle_tampered");
        }
        if alerted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(alerted, "the replica says the bundle was tampered with");
    task.abort();
    m.stop().await;
    pool.close().await;
}

/// An operator's CA: their files are the truth. A stored copy with an
/// added root is replaced by them at the next start (audited, every
/// certificate re-issued); a copy from before the seal that equals them is
/// sealed in place, without a rotation.
#[tokio::test]
async fn an_operator_ca_is_restored_from_its_files() {
    let db = database().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    let base = repo_root().join(format!(".meridian/ca-seal-op-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let op = meridian_ca::Authority::generate("meridian.local", chrono::Utc::now()).unwrap();
    std::fs::write(base.join("ca.pem"), op.cert_pem()).unwrap();
    std::fs::write(base.join("ca-key.pem"), op.key_pem()).unwrap();
    let issue = |dir: std::path::PathBuf| {
        let base = base.clone();
        let (url, key) = (db.url.clone(), key.clone());
        async move {
            let out = tokio::process::Command::new(BIN)
                .args(["ca", "issue", "--spiffe-id", ID, "--out-dir"])
                .arg(&dir)
                .arg("--ca-cert-file")
                .arg(base.join("ca.pem"))
                .arg("--ca-private-key-file")
                .arg(base.join("ca-key.pem"))
                .env("DATABASE_URL", &url)
                .env("MERIDIAN_CA_KEY", &key)
                .env("MERIDIAN_LOG", "warn")
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::read_to_string(dir.join("bundle.pem")).unwrap()
        }
    };
    let rotation = || async {
        sqlx::query_scalar::<_, i64>("SELECT rotation FROM ca")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(issue(base.join("a")).await, op.cert_pem());
    assert!(sealed(&pool).await);
    let before = rotation().await;

    add_root(&pool, &evil_root()).await;
    assert_eq!(issue(base.join("b")).await, op.cert_pem(), "the files win");
    assert_eq!(rotation().await, before + 1, "replaced, so re-issued");

    exec(&pool, "UPDATE ca SET bundle_mac = NULL").await;
    assert_eq!(issue(base.join("c")).await, op.cert_pem());
    assert!(sealed(&pool).await, "sealed in place");
    assert_eq!(rotation().await, before + 1, "without a rotation");
    let _ = std::fs::remove_dir_all(&base);
    pool.close().await;
}

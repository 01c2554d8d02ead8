//! Proxyless gRPC mTLS through the same policy model: a grpcio xDS client
//! and a grpcio xDS server (tests/interop/grpc_mtls.py), both using xDS
//! security with the `file_watcher` certificate provider, talk mTLS under a
//! `strict` policy; a plaintext client to the server is refused.

use std::path::PathBuf;
use std::time::Duration;

use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::free_port;
use meridian_test_support::{database, repo_root};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const ID: &str = "spiffe://meridian.local/ns/shop/sa/greeter";
const HOST: &str = "greet.shop.test";

fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/install-deps --test (it installs grpcio into .venv)",
        py.display()
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_and_server_talk_mtls_with_file_watcher_certificates() {
    let db = database().await;
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    // The xDS client and server claim their identity over plaintext
    // loopback xDS: trusted only with the flag (refused off loopback).
    let m = Meridian::start_with_env(
        BIN.as_ref(),
        &db.url,
        &[
            ("MERIDIAN_CA_KEY", &key),
            ("MERIDIAN_XDS_TRUST_CLAIMED_IDENTITIES", "true"),
        ],
    )
    .await;
    let server_port = free_port(&["127.0.0.2"]);
    let port = free_port(&["127.0.0.1"]);
    m.create_policy(&json!({
        "metadata": {"name": "greet"},
        "spec": {
            "host": HOST, "port": port, "protocol": "grpc",
            "zones": [{"name": "z1", "weight": 100, "endpoints": [
                {"address": "127.0.0.2", "port": server_port}]}],
            "mtls": {"mode": "strict", "allowedSans": [ID]}
        }
    }))
    .await;

    let dir = repo_root().join(format!(".meridian/grpc-mtls-{}", std::process::id()));
    let out = tokio::process::Command::new(BIN)
        .args(["ca", "issue", "--spiffe-id", ID, "--out-dir"])
        .arg(&dir)
        .env("DATABASE_URL", &db.url)
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

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(repo_root().join("tests/interop/grpc_mtls.py"))
            .args(["--xds-port", &m.xds_port.to_string()])
            .args(["--target", HOST])
            .args(["--listen", &format!("127.0.0.2:{server_port}")])
            .arg("--certs")
            .arg(&dir)
            .args(["--spiffe-id", ID])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the grpcio script finished within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no report ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["ok"], true, "{report}\n{stderr}");
    let seen = &report["server_saw"];
    assert_eq!(seen["transport_security_type"], json!(["tls"]), "{report}");
    assert_eq!(
        seen["peer_spiffe_id"],
        json!([ID]),
        "the server should see the client's SPIFFE ID: {report}"
    );
    assert_ne!(
        report["plaintext"], "OK",
        "plaintext must be refused: {report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    m.stop().await;
}

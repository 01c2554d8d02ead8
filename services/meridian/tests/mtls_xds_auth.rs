//! Authenticated xDS: `meridian serve --xds-client-auth required` serves
//! TLS on the xDS port. A grpcio ADS client (tests/interop/xds_tls_client.py)
//! without a certificate is refused at the handshake; one with a
//! certificate of another namespace gets none of the namespace-scoped
//! policies; one whose metadata claims another identity than its
//! certificate's is refused.

use std::path::{Path, PathBuf};

use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::free_port;
use meridian_test_support::{database, repo_root};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");
const SHOP: &str = "spiffe://meridian.local/ns/shop/sa/web";
const BANK: &str = "spiffe://meridian.local/ns/bank/sa/teller";

fn python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/install-deps --test (it installs grpcio into .venv)",
        py.display()
    );
    py
}

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

/// `meridian ca issue`: a bootstrap certificate for an xDS client.
async fn issue(db_url: &str, key: &str, id: &str, dir: &Path) {
    let out = tokio::process::Command::new(BIN)
        .args(["ca", "issue", "--spiffe-id", id, "--out-dir"])
        .arg(dir)
        .env("DATABASE_URL", db_url)
        .env("MERIDIAN_CA_KEY", key)
        .env("MERIDIAN_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "meridian ca issue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["cert.pem", "key.pem", "bundle.pem"] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
}

/// Runs the grpcio client; `creds` is the directory of a certificate.
async fn fetch(port: u16, bundle: &Path, creds: Option<&Path>, claim: Option<&str>) -> Value {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(repo_root().join("tests/interop/xds_tls_client.py"))
        .args(["--server", &format!("127.0.0.1:{port}")])
        .arg("--bundle")
        .arg(bundle);
    if let Some(dir) = creds {
        cmd.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    if let Some(c) = claim {
        cmd.args(["--claim", c]);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(40), cmd.output())
        .await
        .expect("xds client finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "client output {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_client_auth_required_and_namespace_scoping() {
    let db = database().await;
    let key = meridian_ca::MasterKey::generate().unwrap().to_hex();
    let m = Meridian::start_with_env(
        BIN.as_ref(),
        &db.url,
        &[
            ("MERIDIAN_CA_KEY", &key),
            ("MERIDIAN_XDS_CLIENT_AUTH", "required"),
        ],
    )
    .await;
    let ports = [free_port(&["127.0.0.1"]), free_port(&["127.0.0.1"]) + 1];
    m.create_policy(&policy("open-api", ports[0], None)).await;
    m.create_policy(&policy("vault", ports[1], Some("bank")))
        .await;

    let dir = repo_root().join(format!(".meridian/xds-auth-{}", std::process::id()));
    let (shop, bank) = (dir.join("shop"), dir.join("bank"));
    issue(&db.url, &key, SHOP, &shop).await;
    issue(&db.url, &key, BANK, &bank).await;
    let bundle = shop.join("bundle.pem");

    // No client certificate: refused at the handshake, nothing served.
    let anonymous = fetch(m.xds_port, &bundle, None, None).await;
    assert_eq!(anonymous["ok"], false, "{anonymous}");
    assert_eq!(anonymous["code"], "UNAVAILABLE", "{anonymous}");

    // Another namespace: the unscoped policy only.
    let from_shop = fetch(m.xds_port, &bundle, Some(&shop), None).await;
    assert_eq!(from_shop, json!({"ok": true, "clusters": ["open-api"]}));

    // The policy's own namespace: both.
    let from_bank = fetch(m.xds_port, &bundle, Some(&bank), None).await;
    assert_eq!(
        from_bank,
        json!({"ok": true, "clusters": ["open-api", "vault"]})
    );

    // A shop certificate claiming the bank identity is refused.
    let spoof = fetch(m.xds_port, &bundle, Some(&shop), Some(BANK)).await;
    assert_eq!(spoof["ok"], false, "{spoof}");
    assert_eq!(spoof["code"], "PERMISSION_DENIED", "{spoof}");

    let _ = std::fs::remove_dir_all(&dir);
    m.stop().await;
}

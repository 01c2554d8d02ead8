//! The compose demo's set-up steps, run here without a container engine:
//! the `admin-token` service's `meridian token import` of the demo secret,
//! then `deploy/demo/init.sh` against a real Meridian (authentication on),
//! PowerDNS and moto on loopback. What compose adds (images, networks) is
//! not run here; what the steps do with the API is.

use std::path::{Path, PathBuf};

use meridian_test_support::moto::Moto;
use meridian_test_support::pdns::Pdns;
use meridian_test_support::process::Meridian;
use meridian_test_support::{database, repo_root};
use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn init_sh(m: &Meridian, pdns: &Pdns, moto: &Moto, secrets: &Path) -> std::process::Output {
    Command::new("sh")
        .arg(repo_root().join("deploy/demo/init.sh"))
        .env("MERIDIAN_URL", &m.api)
        .env("PDNS_URL", &pdns.api_url)
        .env("MOTO_URL", &moto.url)
        .env("SECRETS", secrets)
        .env("POLICIES", repo_root().join("deploy/demo/policies"))
        .output()
        .await
        .expect("run sh")
}

#[tokio::test]
async fn the_demo_bootstrap_token_and_init_script_set_up_an_authenticated_meridian() {
    let db = database().await;
    let (pdns, moto) = (Pdns::start().await, Moto::start().await);
    let secrets = Dir(repo_root().join(format!(".meridian/demo-secrets-{}", std::process::id())));
    std::fs::create_dir_all(&secrets.0).unwrap();
    let demo_token = std::fs::read_to_string(repo_root().join("deploy/demo/secrets/admin_token"))
        .unwrap()
        .trim()
        .to_owned();
    for (name, value) in [
        ("admin_token", demo_token.as_str()),
        ("pdns_api_key", pdns.api_key.as_str()),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
    ] {
        std::fs::write(secrets.0.join(name), value).unwrap();
    }

    // The compose `admin-token` service, with its arguments.
    let compose: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/compose.yaml")).unwrap(),
    )
    .unwrap();
    let mut args: Vec<String> = compose["services"]["admin-token"]["command"]
        .as_array()
        .expect("the compose file imports the admin token")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let file_at = args.iter().position(|a| a == "--file").unwrap();
    args[file_at + 1] = secrets.0.join("admin_token").to_str().unwrap().to_owned();
    // The database comes from the secret file, as in compose and the
    // Kubernetes migrate Job: a token imported anywhere else (a private
    // throwaway database) would leave nobody able to log in below.
    let url_at = args
        .iter()
        .position(|a| a == "--database-url-file")
        .unwrap();
    std::fs::write(secrets.0.join("database_url"), &db.url).unwrap();
    args[url_at + 1] = secrets.0.join("database_url").to_str().unwrap().to_owned();
    let imported = Command::new(BIN)
        .args(&args)
        .env_remove("DATABASE_URL")
        .env("MERIDIAN_DATA_DIR", secrets.0.join("no-private-db"))
        .output()
        .await
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");

    // No health or failover role: the demo's endpoints are compose
    // addresses, and nothing may leave loopback.
    let m = Meridian::start_with(
        Path::new(BIN),
        &db.url,
        &[
            ("MERIDIAN_NO_AUTH", "false"),
            ("MERIDIAN_ROLES", "api"),
            // Where compose mounts the secrets the providers name.
            ("MERIDIAN_SECRETS_DIRS", secrets.0.to_str().unwrap()),
        ],
        &[],
    )
    .await;
    let first = init_sh(&m, &pdns, &moto, &secrets.0).await;
    assert!(
        first.status.success(),
        "init.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(m.url(path)).bearer_auth(&demo_token).send();
    for name in ["shop", "catalog"] {
        let r = get(&format!("/api/v1/policies/{name}")).await.unwrap();
        assert_eq!(r.status(), 200, "policy {name}");
    }
    let providers: Value = get("/api/v1/providers")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = providers["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{providers}"))
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pdns-demo", "route53-demo"]);

    // A second run finds everything in place and still succeeds.
    let again = init_sh(&m, &pdns, &moto, &secrets.0).await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("409"));

    // A refused call stops the script: a wrong token is not papered over.
    std::fs::write(
        secrets.0.join("admin_token"),
        format!("mrd_{}", "0".repeat(64)),
    )
    .unwrap();
    let refused = init_sh(&m, &pdns, &moto, &secrets.0).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("failed with 401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    m.stop().await;
}

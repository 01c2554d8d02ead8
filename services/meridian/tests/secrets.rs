//! Meridian's own secrets stay its own (issue 16): the programs it starts
//! do not inherit MERIDIAN_CA_KEY or DATABASE_URL. Here the GitOps role's
//! `ssh` is a script on PATH that records its environment.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meridian_test_support::database;
use meridian_test_support::process::Meridian;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("meridian-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn child_processes_do_not_inherit_meridians_secrets() {
    let db = database().await;
    let bin = Dir::new("fake-ssh");
    let recorded = bin.0.join("env.txt");
    let ssh = bin.0.join("ssh");
    std::fs::write(
        &ssh,
        format!("#!/bin/sh\nenv > '{}'\nexit 1\n", recorded.display()),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = Dir::new("ssh-secrets");
    let key = secrets.0.join("id_ed25519");
    std::fs::write(&key, "not a key\n").unwrap();
    let path = format!("{}:{}", bin.0.display(), std::env::var("PATH").unwrap());
    let ca_key = "00".repeat(32);
    let m = Meridian::start_with_env(
        Path::new(BIN),
        &db.url,
        &[
            ("MERIDIAN_ROLES", "api,gitops"),
            ("MERIDIAN_GITOPS_POLL_MS", "100"),
            ("MERIDIAN_CA_KEY", &ca_key),
            // The GitOps cache (and the key's copy) in the test's directory.
            ("MERIDIAN_DATA_DIR", bin.0.to_str().unwrap()),
            ("MERIDIAN_SECRETS_DIRS", secrets.0.to_str().unwrap()),
            ("PATH", &path),
        ],
    )
    .await;
    let r = reqwest::Client::new()
        .post(m.url("/api/v1/gitops/sources"))
        .json(
            &json!({"name": "s", "url": "ssh://git@127.0.0.1:1/repo.git",
                      "auth": {"sshKey": {"file": key.to_str().unwrap()}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let started = Instant::now();
    while !recorded.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the GitOps sync never ran ssh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let env = std::fs::read_to_string(&recorded).unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains(&ca_key), "ssh inherited the CA master key");
    assert!(!env.contains("MERIDIAN_CA_KEY"), "{env}");
    assert!(!env.contains(&db.url), "ssh inherited the database URL");
}

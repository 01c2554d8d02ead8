//! Access control end to end: the binary refuses to run unauthenticated on
//! a reachable address, tokens made with `meridian token create` work on the
//! REST and gRPC APIs and in the CLI, and no token reaches a log line.

use std::process::Stdio;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::policy_service_client::PolicyServiceClient;
use meridian_test_support::database;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

#[tokio::test]
async fn no_auth_is_refused_on_an_address_other_machines_can_reach() {
    let db = database().await;
    let out = Command::new(BIN)
        .args(["serve", "--no-auth", "--api-addr", "0.0.0.0:0"])
        .args(["--grpc-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("meridian exits at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--no-auth") && stderr.contains("--api-addr 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tokens_work_on_rest_grpc_and_the_cli_and_never_reach_the_logs() {
    let db = database().await;
    let created = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--role", "admin"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("mrd_"), "{token}");
    let bogus = "mrd_LEAKCANARY0123456789";

    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--api-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--xds-addr", "127.0.0.1:0", "--roles", "api,grpc"])
        .env("DATABASE_URL", &db.url)
        .env("MERIDIAN_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut all = String::new();
        stderr.read_to_string(&mut all).await.unwrap();
        all
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut api, mut grpc) = (None, None);
    while api.is_none() || grpc.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("meridian prints its addresses")
            .unwrap()
            .expect("meridian exited early");
        let addr = line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        if line.starts_with("Meridian API listening on") {
            api = Some(addr);
        } else if line.starts_with("Meridian gRPC listening on") {
            grpc = Some(format!("http://{addr}"));
        }
    }
    let (api, grpc) = (api.unwrap(), grpc.unwrap());
    let http = reqwest::Client::new();

    let anonymous = http
        .get(format!("{api}/api/v1/policies"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let bad = http
        .get(format!("{api}/api/v1/policies"))
        .bearer_auth(bogus)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(
        !bad.text().await.unwrap().contains(bogus),
        "errors never echo credentials"
    );
    let policy = serde_json::json!({"metadata": {"name": "guarded"}, "spec": {
        "host": "guarded.example.com", "port": 8080, "failover": {"mode": "manual"},
        "zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "127.0.5.9", "port": 9}]}]}});
    let made = http
        .post(format!("{api}/api/v1/policies"))
        .bearer_auth(&token)
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);

    // gRPC: the same token, the same roles.
    let channel = tonic::transport::Endpoint::from_shared(grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PolicyServiceClient::new(channel);
    let refused = client
        .get_policy(pb::GetPolicyRequest {
            name: "guarded".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(pb::GetPolicyRequest {
        name: "guarded".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let got = client.get_policy(request).await.unwrap().into_inner();
    assert_eq!(got.policy.unwrap().metadata.unwrap().name, "guarded");

    // The CLI sends MERIDIAN_TOKEN.
    let cli = |with_token: bool| {
        let mut c = Command::new(BIN);
        c.args(["get", "guarded", "-o", "json", "--server", &api]);
        if with_token {
            c.env("MERIDIAN_TOKEN", &token);
        } else {
            c.env_remove("MERIDIAN_TOKEN");
        }
        c.output()
    };
    let with = cli(true).await.unwrap();
    assert!(with.status.success(), "{with:?}");
    let without = cli(false).await.unwrap();
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("401"),
        "{without:?}"
    );

    // Stop, and read everything it logged at debug level.
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let logs = logs.await.unwrap();
    assert!(
        logs.contains("guarded"),
        "the debug log has the requests: {logs}"
    );
    let secret_part = &token["mrd_".len()..];
    assert!(!logs.contains(secret_part), "the token reached the log");
    assert!(
        !logs.contains("LEAKCANARY"),
        "a presented credential reached the log"
    );
}

/// What a deployment's bootstrap job does: `meridian token import` of a
/// token kept in a secret, run again on every upgrade.
#[tokio::test]
async fn an_imported_token_bootstraps_a_deployment_and_rotates_with_its_secret() {
    let db = database().await;
    let dir = meridian_test_support::repo_root()
        .join(format!(".meridian/token-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("admin-token");
    let secret = |seed: u64| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("mrd_{nanos:032x}{seed:032x}")
    };
    let import = || {
        Command::new(BIN)
            .args(["token", "import", "--name", "bootstrap", "--role", "admin"])
            .arg("--file")
            .arg(&file)
            .env("DATABASE_URL", &db.url)
            .output()
    };

    // A mangled secret is refused before anything is stored, and not echoed.
    std::fs::write(&file, "mrd_tooshort\n").unwrap();
    let refused = import().await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("too few") && !stderr.contains("tooshort"),
        "{stderr}"
    );

    let first = secret(1);
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let out = import().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));
    let again = import().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("already in place"));

    let m = meridian_test_support::process::Meridian::start_with(
        std::path::Path::new(BIN),
        &db.url,
        &[("MERIDIAN_NO_AUTH", "false"), ("MERIDIAN_ROLES", "api")],
        &[],
    )
    .await;
    let http = reqwest::Client::new();
    let status = |token: String| {
        let request = http.get(m.url("/api/v1/audit")).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(first.clone()).await, 200, "the imported admin token");

    // A new secret replaces the token; the old one stops working.
    let second = secret(2);
    std::fs::write(&file, &second).unwrap();
    let out = import().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("replaced"));
    assert_eq!(status(second.clone()).await, 200);
    let mut old = 0;
    // Other replicas' token caches last 2 s.
    for _ in 0..50 {
        old = status(first.clone()).await;
        if old == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(old, 401, "the replaced token still works");

    // Revocation is for good: the same secret cannot bring it back.
    let revoked = Command::new(BIN)
        .args(["token", "revoke", "bootstrap"])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(revoked.status.success());
    let out = import().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was revoked"));
    m.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

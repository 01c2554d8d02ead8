//! GitOps through the real binary: the gitops role syncing a repository on
//! its own, and the commands a policy repository's CI runs.

use std::path::Path;
use std::time::Duration;

use meridian_test_support::git::{policy_yaml, Repo, TempDir};
use meridian_test_support::metrics::{sample, scrape};
use meridian_test_support::process::Meridian;
use meridian_test_support::traffic::eventually;
use meridian_test_support::{database, Server};
use serde_json::{json, Value};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

async fn status(m: &Meridian, name: &str) -> Value {
    reqwest::get(m.url(&format!("/api/v1/gitops/sources/{name}/status")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_gitops_role_syncs_on_schedule_and_on_request() {
    let db = database().await;
    let data = TempDir::new("gitops-data");
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    repo.write("policies/b.yaml", &policy_yaml("b", "b.example.com", 1000));
    let c1 = repo.commit("a and b");
    let m = Meridian::start_with_env(
        Path::new(BIN),
        &db.url,
        &[
            ("MERIDIAN_DATA_DIR", data.0.to_str().unwrap()),
            ("MERIDIAN_GITOPS_POLL_MS", "100"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let resp = http
        .post(m.url("/api/v1/gitops/sources"))
        .json(
            &json!({"name": "team", "url": repo.file_url(), "path": "policies",
                      "intervalSeconds": 3600}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A new source is due at once.
    eventually(
        "the first commit is applied",
        Duration::from_secs(20),
        || async { status(&m, "team").await["lastAppliedCommit"] == json!(c1) },
    )
    .await;
    let list: Value = reqwest::get(m.url("/api/v1/policies"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sources: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| ["a", "b"].contains(&p["metadata"]["name"].as_str().unwrap()))
        .map(|p| p["metadata"]["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, vec![format!("gitops:team@{c1}"); 2]);

    // The next one waits for its interval (an hour) unless asked for.
    repo.remove("policies/b.yaml");
    let c2 = repo.commit("drop b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&m, "team").await["lastAppliedCommit"], json!(c1));
    let resp = http
        .post(m.url("/api/v1/gitops/sources/team/sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    eventually(
        "the second commit is applied",
        Duration::from_secs(20),
        || async { status(&m, "team").await["lastAppliedCommit"] == json!(c2) },
    )
    .await;
    let st = status(&m, "team").await;
    assert_eq!(st["lastSync"]["plan"]["counts"]["delete"], 1, "{st}");
    assert_eq!(st["lastSync"]["plan"]["delete"], json!(["b"]));
    let resp = http.get(m.url("/api/v1/policies/b")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let syncs: Value = reqwest::get(m.url("/api/v1/gitops/sources/team/syncs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(syncs["items"].as_array().unwrap().len(), 2);

    // Both syncs are in the metrics, with their duration and the time of
    // the last good one.
    let text = scrape(&m.api).await;
    let applied = sample(
        &text,
        "meridian_gitops_syncs_total",
        &[("source", "team"), ("outcome", "applied")],
    );
    assert_eq!(applied, Some(2.0), "{text}");
    let timed = sample(
        &text,
        "meridian_gitops_sync_duration_seconds_count",
        &[("source", "team")],
    );
    assert_eq!(timed, Some(2.0));
    let last = sample(
        &text,
        "meridian_gitops_last_success_timestamp_seconds",
        &[("source", "team")],
    )
    .expect("last success time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 60.0, "last success {last}, now {now}");

    // Credentials are references only; a literal secret is refused.
    let resp = http
        .put(m.url("/api/v1/gitops/sources/team"))
        .json(&json!({"name": "team", "url": repo.file_url(), "webhookSecret": "s3cret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    m.stop().await;
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn meridian(server: Option<&Server>, args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(s) = server {
        cmd.env("MERIDIAN_SERVER", s.url(""));
    }
    let out = cmd.output().await.expect("run meridian");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn validate_diff_and_apply_prune_for_policy_repository_ci() {
    // validate: offline, every error with file, line and field path.
    let bad = TempDir::new("bad-policies");
    std::fs::write(
        bad.0.join("a.yaml"),
        policy_yaml("a", "a.example.com", 1000).replace("weight: 100", "weight: 90"),
    )
    .unwrap();
    std::fs::write(bad.0.join("b.yaml"), policy_yaml("B", "b.example.com", 0)).unwrap();
    let run = meridian(None, &["validate", "-f", bad.0.to_str().unwrap()]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("3 problem(s)"), "{}", run.stderr);
    assert!(
        run.stderr.contains("a.yaml:1: spec.zones"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("b.yaml:1: metadata.name"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("b.yaml:1: spec.port"), "{}", run.stderr);

    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let http = reqwest::Client::new();
    for (name, port) in [("keep", 1000), ("old", 1000)] {
        let p: Value =
            serde_norway::from_str(&policy_yaml(name, &format!("{name}.example.com"), port))
                .unwrap();
        let resp = http
            .post(server.url("/api/v1/policies"))
            .json(&p)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let dir = TempDir::new("policies");
    std::fs::write(
        dir.0.join("keep.yaml"),
        policy_yaml("keep", "keep.example.com", 2000),
    )
    .unwrap();
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    std::fs::write(
        dir.0.join("sub/new.yml"),
        policy_yaml("new", "new.example.com", 3000),
    )
    .unwrap();
    let path = dir.0.to_str().unwrap();
    let run = meridian(None, &["validate", "-f", path]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("2 policies in 2 files are valid"),
        "{}",
        run.stdout
    );

    // diff: the plan, changing nothing.
    let before = db.store.all().await.unwrap();
    let run = meridian(Some(&server), &["diff", "-f", path, "--prune"]).await;
    assert!(run.ok, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "create new",
            "update keep",
            "    ~ spec.port: 1000 -> 2000",
            "delete old",
            "plan: 1 to create, 1 to update, 1 to delete, 0 unchanged"
        ],
        "{}",
        run.stdout
    );
    assert_eq!(db.store.all().await.unwrap(), before);

    // apply --prune: the directory becomes the API-managed set, atomically.
    let run = meridian(Some(&server), &["apply", "-f", path, "--prune"]).await;
    assert!(run.ok, "{}", run.stderr);
    let after: Vec<(String, u32)> = db
        .store
        .all()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.metadata.name, p.spec.port))
        .collect();
    assert_eq!(after, [("keep".to_owned(), 2000), ("new".to_owned(), 3000)]);

    // An invalid directory is refused before anything is sent.
    let run = meridian(
        Some(&server),
        &["apply", "-f", bad.0.to_str().unwrap(), "--prune"],
    )
    .await;
    assert!(!run.ok);
    assert_eq!(db.store.all().await.unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn diff_previews_a_sources_next_sync_for_a_pull_request() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    repo.write("policies/b.yaml", &policy_yaml("b", "b.example.com", 1000));
    repo.commit("a and b");
    let source: meridian_store::gitops::Source =
        serde_json::from_value(json!({"name": "team", "url": repo.file_url(), "path": "policies"}))
            .unwrap();
    let source = db.store.create_source(&source, "test").await.unwrap();
    let syncer = meridian_gitops::sync::Syncer::new(
        db.store.clone(),
        meridian_gitops::sync::Config {
            cache_dir: cache.0.clone(),
            poll: Duration::from_millis(100),
        },
    );
    syncer.sync(&source, "test").await.unwrap();
    let before = db.store.all().await.unwrap();

    // The pull request's tree: a changed, b gone, c new.
    let pr = TempDir::new("policies");
    std::fs::write(pr.0.join("a.yaml"), policy_yaml("a", "a.example.com", 2000)).unwrap();
    std::fs::write(pr.0.join("c.yaml"), policy_yaml("c", "c.example.com", 1000)).unwrap();
    let path = pr.0.to_str().unwrap();
    let run = meridian(Some(&server), &["diff", "-f", path, "--source", "team"]).await;
    assert!(run.ok, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "create c",
            "update a",
            "    ~ spec.port: 1000 -> 2000",
            "delete b",
            "plan: 1 to create, 1 to update, 1 to delete, 0 unchanged"
        ],
        "{}",
        run.stdout
    );
    assert_eq!(db.store.all().await.unwrap(), before);

    let run = meridian(Some(&server), &["diff", "-f", path, "--source", "nobody"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("\"nobody\" not found"),
        "{}",
        run.stderr
    );
    // Applying as a source through the API is refused: only its repository changes it.
    let resp = reqwest::Client::new()
        .post(server.url("/api/v1/gitops/apply?source=team"))
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(db.store.all().await.unwrap(), before);
    server.stop().await;
}

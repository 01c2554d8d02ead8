//! The `meridian` binary as a user runs it: client commands against a
//! running server, and `serve` with no DATABASE_URL.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use meridian_policy::{decode, Format, Policy};
use meridian_test_support::{database, repo_root, Server};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn meridian(server: &Server, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .env("MERIDIAN_SERVER", server.url(""))
        .output()
        .await
        .expect("run meridian");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The examples as the server should hold them: decoded with defaults.
fn examples() -> Vec<Policy> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for doc in decode::parse_documents(&text, Format::Yaml).unwrap() {
            out.push(decode::from_value(doc).unwrap());
        }
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

fn user_view(p: &Policy) -> (String, Vec<(String, String)>, serde_json::Value) {
    let labels = p.metadata.labels.clone().into_iter().collect();
    (
        p.metadata.name.clone(),
        labels,
        serde_json::to_value(&p.spec).unwrap(),
    )
}

#[tokio::test]
async fn apply_then_get_round_trips_the_examples() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let dir = repo_root().join("examples");
    let dir = dir.to_str().unwrap();

    let applied = meridian(&server, &["apply", "-f", dir]).await;
    assert!(applied.ok, "{}", applied.stderr);
    let want = examples();
    assert!(want.len() >= 3);
    assert_eq!(
        applied.stdout.matches(" created").count(),
        want.len(),
        "{}",
        applied.stdout
    );

    let got = meridian(&server, &["get", "-o", "json"]).await;
    assert!(got.ok, "{}", got.stderr);
    let items: Vec<Policy> = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&got.stdout).unwrap()["items"].clone(),
    )
    .unwrap();
    assert_eq!(
        items.iter().map(user_view).collect::<Vec<_>>(),
        want.iter().map(user_view).collect::<Vec<_>>()
    );

    // Applying again changes nothing, and neither does re-applying what `get -o yaml` printed.
    let again = meridian(&server, &["apply", "-f", dir]).await;
    assert_eq!(
        again.stdout.matches(" unchanged").count(),
        want.len(),
        "{}",
        again.stdout
    );
    let yaml = meridian(&server, &["get", "-o", "yaml"]).await;
    let file = repo_root().join(format!(
        ".meridian/cli-roundtrip-{}.yaml",
        std::process::id()
    ));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &yaml.stdout).unwrap();
    let from_yaml = meridian(&server, &["apply", "-f", file.to_str().unwrap()]).await;
    std::fs::remove_file(&file).ok();
    assert!(from_yaml.ok, "{}", from_yaml.stderr);
    assert_eq!(
        from_yaml.stdout.matches(" unchanged").count(),
        want.len(),
        "{}",
        from_yaml.stdout
    );

    let table = meridian(&server, &["get"]).await;
    assert!(
        table.stdout.contains("track.example.com:8080"),
        "{}",
        table.stdout
    );
    let one = meridian(&server, &["get", "track-api", "-o", "json"]).await;
    let p: Policy = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(p.spec.zones[0].weight, 70);

    let deleted = meridian(&server, &["delete", "inventory"]).await;
    assert!(
        deleted.ok && deleted.stdout.contains("policy/inventory deleted"),
        "{}",
        deleted.stderr
    );
    let gone = meridian(&server, &["get", "inventory"]).await;
    assert!(!gone.ok);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
}

#[tokio::test]
async fn apply_with_one_bad_document_applies_nothing() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let dir = repo_root().join(format!(".meridian/cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo_root().join("examples/track-api.yaml"),
        dir.join("a.yaml"),
    )
    .unwrap();
    let bad = std::fs::read_to_string(repo_root().join("examples/track-api.yaml"))
        .unwrap()
        .replace("name: track-api", "name: other")
        .replace("weight: 30", "weight: 31");
    std::fs::write(dir.join("b.yaml"), bad).unwrap();

    let run = meridian(&server, &["apply", "-f", dir.to_str().unwrap()]).await;
    std::fs::remove_dir_all(&dir).ok();
    assert!(!run.ok);
    assert!(
        run.stderr.contains("b.yaml") && run.stderr.contains("spec.zones"),
        "{}",
        run.stderr
    );
    let list = meridian(&server, &["get", "-o", "json"]).await;
    assert!(list.stdout.contains("\"items\": []"), "{}", list.stdout);
}

#[tokio::test]
async fn serve_without_database_url_runs_a_private_postgres_with_the_examples() {
    let data_dir = repo_root().join(format!(".meridian/cli-serve-{}", std::process::id()));
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--api-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--no-auth",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .env_remove("DATABASE_URL")
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Meridian API listening on") {
                return line;
            }
        }
        panic!("meridian serve exited before listening");
    })
    .await
    .expect("meridian serve did not start within 120 s");
    let base = line.split_whitespace().last().unwrap().to_owned();

    let list: serde_json::Value = reqwest::get(format!("{base}/api/v1/policies"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    let want: Vec<String> = examples().iter().map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names, want);
    // Ready once every role has loaded (the first xDS snapshot included).
    meridian_test_support::traffic::eventually("ready", Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // SIGTERM: drains, stops its PostgreSQL, exits 0.
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let pg_dir = std::fs::read_dir(&data_dir)
        .ok()
        .map(|_| data_dir.join("postgres"));
    let still_running = pg_dir
        .as_deref()
        .map(Path::new)
        .is_some_and(|d| d.join("postmaster.pid").exists());
    assert!(
        !still_running,
        "private PostgreSQL still running after shutdown"
    );
    std::fs::remove_dir_all(&data_dir).ok();
}

//! Syncs of real git repositories (made by `git` in temporary directories,
//! read by gix) into a real PostgreSQL.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_gitops::sync::{Config, Outcome, Syncer};
use meridian_store::gitops::Source;
use meridian_store::Store;
use meridian_test_support::git::{policy_yaml, HttpGit, Repo, TempDir};
use meridian_test_support::{database, Server};
use serde_json::{json, Value};

fn source(name: &str, url: &str) -> Source {
    serde_json::from_value(json!({"name": name, "url": url, "path": "policies"})).unwrap()
}

/// Credential files of these tests live in temporary directories: allow
/// those (the rules are process-wide, and every test installs the same).
fn allow_temp_secrets() {
    meridian_secrets::install(
        meridian_secrets::Rules::new("MERIDIAN_SECRET_", vec![std::env::temp_dir()]).unwrap(),
    );
}

fn syncer(store: &Store, cache: &TempDir) -> Syncer {
    allow_temp_secrets();
    Syncer::new(
        store.clone(),
        Config {
            cache_dir: cache.0.clone(),
            poll: Duration::from_millis(50),
        },
    )
}

async fn names_and_sources(store: &Store) -> Vec<(String, u32, String)> {
    store
        .all()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.metadata.name, p.spec.port, p.metadata.source.unwrap()))
        .collect()
}

fn counts(plan: &Value) -> [u64; 4] {
    let c = &plan["counts"];
    ["create", "update", "delete", "unchanged"].map(|k| c[k].as_u64().unwrap())
}

#[tokio::test]
async fn create_update_rename_delete_and_prune_across_commits() {
    let db = database().await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    repo.write(
        "policies/team.yaml",
        &format!(
            "{}---\n{}",
            policy_yaml("orders", "orders.example.com", 8080),
            policy_yaml("billing", "billing.example.com", 8081)
        ),
    );
    repo.write("README.md", "not a policy");
    repo.write("other/ignored.yaml", "not: [valid");
    let c1 = repo.commit("two policies");
    let src = db
        .store
        .create_source(&source("team", &repo.file_url()), "test")
        .await
        .unwrap();
    let s = syncer(&db.store, &cache);

    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(c1.as_str()));
    assert_eq!(counts(&r.plan), [2, 0, 0, 0]);
    let origin = format!("gitops:team@{c1}");
    assert_eq!(
        names_and_sources(&db.store).await,
        vec![
            ("billing".into(), 8081, origin.clone()),
            ("orders".into(), 8080, origin.clone())
        ]
    );

    // The same commit again: nothing to do, nothing written.
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Unchanged);
    assert_eq!(counts(&r.plan), [0, 0, 0, 2]);
    assert_eq!(db.store.revisions("orders").await.unwrap().len(), 1);

    // Update one, move the other to its own file (a file rename is no
    // change), add a third in a subdirectory.
    repo.write(
        "policies/team.yaml",
        &policy_yaml("orders", "orders.example.com", 9090),
    );
    repo.write(
        "policies/billing.yml",
        &policy_yaml("billing", "billing.example.com", 8081),
    );
    repo.write(
        "policies/sub/search.json",
        r#"{"metadata":{"name":"search"},"spec":{"host":"search.example.com","port":7000,"zones":[{"name":"a","weight":100,"endpoints":[{"address":"127.0.0.1","port":9}]}]}}"#,
    );
    let c2 = repo.commit("update, move, add");
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counts(&r.plan), [1, 1, 0, 1]);
    assert_eq!(r.plan["update"][0]["name"], "orders");
    assert_eq!(
        r.plan["update"][0]["changes"],
        json!([{"path": "spec.port", "old": 8080, "new": 9090}])
    );
    let o2 = format!("gitops:team@{c2}");
    assert_eq!(
        names_and_sources(&db.store).await,
        vec![
            ("billing".into(), 8081, origin.clone()),
            ("orders".into(), 9090, o2.clone()),
            ("search".into(), 7000, o2.clone()),
        ]
    );
    let revs = db.store.revisions("orders").await.unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[0].source, o2);

    // Rename a policy (same host, new name) and delete another's file:
    // both old names are pruned, in the same transaction as the create.
    repo.remove("policies/sub/search.json");
    repo.write(
        "policies/search.yaml",
        &policy_yaml("find", "search.example.com", 7000),
    );
    repo.remove("policies/billing.yml");
    let c3 = repo.commit("rename search to find, drop billing");
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counts(&r.plan), [1, 0, 2, 1]);
    assert_eq!(r.plan["delete"], json!(["billing", "search"]));
    let o3 = format!("gitops:team@{c3}");
    assert_eq!(
        names_and_sources(&db.store).await,
        vec![
            ("find".into(), 7000, o3),
            ("orders".into(), 9090, o2.clone())
        ]
    );

    // With prune off, a policy gone from the repository stays.
    let mut keep = src.clone();
    keep.prune = false;
    db.store.replace_source(&keep, "test").await.unwrap();
    repo.remove("policies/search.yaml");
    repo.commit("drop find");
    let r = s.sync(&keep, "test").await.unwrap();
    assert_eq!(counts(&r.plan), [0, 0, 0, 1]);
    assert_eq!(db.store.all().await.unwrap().len(), 2);

    // Every sync is recorded, newest first, with its plan.
    let history = db.store.syncs("team", 50).await.unwrap();
    let outcomes: Vec<&str> = history.iter().map(|s| s.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["unchanged", "applied", "applied", "unchanged", "applied"]
    );
    assert_eq!(history[2].plan.0["counts"]["create"], 1);
    let status = db.store.source_status("team").await.unwrap();
    assert_eq!(status.last_fetched_commit, history[0].commit);
}

#[tokio::test]
async fn an_invalid_commit_changes_nothing_and_lists_every_error() {
    let db = database().await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    repo.write("policies/b.yaml", &policy_yaml("b", "b.example.com", 1000));
    let good = repo.commit("good");
    let src = db
        .store
        .create_source(&source("team", &repo.file_url()), "test")
        .await
        .unwrap();
    let s = syncer(&db.store, &cache);
    assert_eq!(
        s.sync(&src, "test").await.unwrap().outcome,
        Outcome::Applied
    );
    let before = db.store.all().await.unwrap();

    // One valid change, and five problems in three files (the last one,
    // a host used twice, only shows once every file is read).
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 2000));
    repo.write(
        "policies/b.yaml",
        &policy_yaml("b", "b.example.com", 1000).replace("weight: 100", "weight: lots"),
    );
    repo.write(
        "policies/c.yaml",
        &format!(
            "{}---\n{}---\n{}",
            policy_yaml("Bad_Name", "c.example.com", 1000),
            policy_yaml("d", "d.example.com", 0),
            policy_yaml("dup", "a.example.com", 1000)
        ),
    );
    repo.write("policies/e.yaml", "metadata: [unclosed\n");
    let bad = repo.commit("bad");
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Invalid, "{r:?}");
    let got: Vec<(String, String)> = r
        .errors
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_owned(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("b.yaml".into(), "spec.zones[0].weight".into()),
            ("c.yaml".into(), "metadata.name".into()),
            ("c.yaml".into(), "spec.port".into()),
            ("e.yaml".into(), "".into()),
            ("c.yaml".into(), "spec.host".into()),
        ],
        "{:#?}",
        r.errors
    );
    assert!(
        r.errors
            .iter()
            .all(|e| e["line"].as_u64().is_some() || e["field"] == "spec.host"),
        "{:#?}",
        r.errors
    );
    assert_eq!(r.errors[3]["line"], 2, "syntax error line");
    assert_eq!(r.errors[2]["document"], 2);

    // Nothing changed, not even the valid part of the commit.
    assert_eq!(db.store.all().await.unwrap(), before);
    let status = db.store.source_status("team").await.unwrap();
    assert_eq!(status.last_applied_commit.as_deref(), Some(good.as_str()));
    assert_eq!(status.last_fetched_commit.as_deref(), Some(bad.as_str()));
    let last = status.last_sync.unwrap();
    assert_eq!(last.outcome, "invalid");
    assert_eq!(last.errors.0.as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn owners_are_respected_and_a_forced_api_edit_is_restored() {
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let http = reqwest::Client::new();
    let cache = TempDir::new("cache");
    let s = syncer(&db.store, &cache);

    let team = Repo::new();
    team.write("policies/p.yaml", &policy_yaml("p", "p.example.com", 1000));
    team.commit("p");
    let team_src = db
        .store
        .create_source(&source("team", &team.file_url()), "test")
        .await
        .unwrap();
    assert_eq!(
        s.sync(&team_src, "test").await.unwrap().outcome,
        Outcome::Applied
    );

    // Another source naming the same policy is a conflict, and none of its
    // other policies are applied either.
    let other = Repo::new();
    other.write("policies/p.yaml", &policy_yaml("p", "p.example.com", 2000));
    other.write("policies/q.yaml", &policy_yaml("q", "q.example.com", 2000));
    other.commit("clash");
    let other_src = db
        .store
        .create_source(&source("other", &other.file_url()), "test")
        .await
        .unwrap();
    let r = s.sync(&other_src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Conflict);
    assert!(r.errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("\"team\""));
    assert_eq!(db.store.get("p").await.unwrap().spec.port, 1000);
    assert!(db.store.get("q").await.is_err());

    // An API policy is not adopted unless the source says so.
    let api_policy: Value =
        serde_norway::from_str(&policy_yaml("api-made", "api.example.com", 3000)).unwrap();
    let resp = http
        .post(server.url("/api/v1/policies"))
        .json(&api_policy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let adopter = Repo::new();
    adopter.write(
        "policies/x.yaml",
        &policy_yaml("api-made", "api.example.com", 3001),
    );
    adopter.commit("adopt");
    let mut adopt_src = db
        .store
        .create_source(&source("adopter", &adopter.file_url()), "test")
        .await
        .unwrap();
    let r = s.sync(&adopt_src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Conflict);
    assert!(r.errors[0]["message"].as_str().unwrap().contains("adopt"));
    adopt_src.adopt = true;
    db.store.replace_source(&adopt_src, "test").await.unwrap();
    let r = s.sync(&adopt_src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(db.store.get("api-made").await.unwrap().spec.port, 3001);

    // An API write to a GitOps-owned policy is refused, naming the source.
    let mut edited: Value =
        serde_norway::from_str(&policy_yaml("p", "p.example.com", 4444)).unwrap();
    let resp = http
        .put(server.url("/api/v1/policies/p"))
        .json(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "gitops_managed");
    assert!(
        body["message"].as_str().unwrap().contains("\"team\""),
        "{body}"
    );
    let resp = http
        .delete(server.url("/api/v1/policies/p"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(db.store.get("p").await.unwrap().spec.port, 1000);

    // Forced: it goes through, and an event says the next sync restores it.
    edited["metadata"]["labels"] = json!({"hotfix": "yes"});
    let resp = http
        .put(server.url("/api/v1/policies/p?force=true"))
        .json(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(db.store.get("p").await.unwrap().spec.port, 4444);
    let events = db.store.events(Some("p"), None, 10).await.unwrap();
    assert_eq!(events.last().unwrap().kind, "gitops_override");

    let r = s.sync(&team_src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(r.plan["update"][0]["restore"], true);
    let p = db.store.get("p").await.unwrap();
    assert_eq!(p.spec.port, 1000);
    assert!(p.metadata.labels.is_empty());
    assert!(p.metadata.source.unwrap().starts_with("gitops:team@"));
    let events = db.store.events(Some("p"), None, 10).await.unwrap();
    assert_eq!(events.last().unwrap().kind, "gitops_restored");
    server.stop().await;
}

#[tokio::test]
async fn five_hundred_policies_apply_atomically() {
    const N: usize = 500;
    let db = database().await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    let write_all = |port: u16| {
        for i in 0..N {
            repo.write(
                &format!("policies/p{i:03}.yaml"),
                &policy_yaml(&format!("p{i:03}"), &format!("p{i:03}.example.com"), port),
            );
        }
    };
    write_all(1000);
    repo.commit("500 at port 1000");
    let src = db
        .store
        .create_source(&source("bulk", &repo.file_url()), "test")
        .await
        .unwrap();
    let s = syncer(&db.store, &cache);
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(counts(&r.plan), [N as u64, 0, 0, 0]);

    write_all(2000);
    let c2 = repo.commit("500 at port 2000");
    // A reader on its own connection polls while the sync runs: every read
    // must see all 500 at one port, never a mix.
    let reader = Store::connect(&db.url, 2).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, old_reads, new_reads) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let poll = {
        let (stop, reads, old_reads, new_reads) = (
            stop.clone(),
            reads.clone(),
            old_reads.clone(),
            new_reads.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let all = reader.all().await.unwrap();
                assert_eq!(all.len(), N);
                let old = all.iter().filter(|p| p.spec.port == 1000).count();
                assert!(old == 0 || old == N, "a reader saw a mix: {old} old of {N}");
                reads.fetch_add(1, Ordering::Relaxed);
                if old == N {
                    old_reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    new_reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Let the reader get going before the sync starts.
    while reads.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let r = s.sync(&src, "test").await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counts(&r.plan), [0, N as u64, 0, 0]);
    let seen_new_at = reads.load(Ordering::Relaxed);
    while reads.load(Ordering::Relaxed) < seen_new_at + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Release);
    poll.await.expect("the reader never saw a mix");
    eprintln!(
        "500-policy sync took {took:?}; reader made {} reads ({} old, {} new)",
        reads.load(Ordering::Relaxed),
        old_reads.load(Ordering::Relaxed),
        new_reads.load(Ordering::Relaxed)
    );
    assert!(old_reads.load(Ordering::Relaxed) >= 2 && new_reads.load(Ordering::Relaxed) >= 2);
    let origin = format!("gitops:bulk@{c2}");
    assert!(db
        .store
        .all()
        .await
        .unwrap()
        .iter()
        .all(|p| p.metadata.source.as_deref() == Some(origin.as_str())));
}

#[tokio::test]
async fn syncs_over_smart_http() {
    let db = database().await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    let c1 = repo.commit("a");
    let root = repo.path().parent().unwrap().to_owned();
    let dir_name = repo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let http = HttpGit::start(&root).await;
    let src = db
        .store
        .create_source(
            &source("web", &format!("{}/.git", http.url(&dir_name))),
            "test",
        )
        .await
        .unwrap();
    let s = syncer(&db.store, &cache);
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(c1.as_str()));

    // A second commit arrives through an incremental fetch.
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 2000));
    let c2 = repo.commit("a at 2000");
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(c2.as_str()));
    assert_eq!(db.store.get("a").await.unwrap().spec.port, 2000);

    // A missing branch is a failed sync that says so, and changes nothing.
    let mut wrong = src.clone();
    wrong.branch = "nope".into();
    let r = s.sync(&wrong, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.errors[0]["message"].as_str().unwrap().contains("nope"),
        "{r:?}"
    );
    assert_eq!(db.store.get("a").await.unwrap().spec.port, 2000);
}

#[tokio::test]
async fn a_token_is_read_from_its_file_but_never_sent_over_plain_http() {
    let db = database().await;
    let cache = TempDir::new("cache");
    let secrets = TempDir::new("secret");
    let token_file = secrets.0.join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    repo.commit("a");
    let root = repo.path().parent().unwrap().to_owned();
    let dir_name = repo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let http = HttpGit::start_with_auth(&root, Some(("ci", "t0ken"))).await;
    let url = format!("{}/.git", http.url(&dir_name));
    let s = syncer(&db.store, &cache);

    // Without credentials the server says 401: a failed sync, nothing applied.
    let anonymous = db
        .store
        .create_source(&source("anon", &url), "test")
        .await
        .unwrap();
    let r = s.sync(&anonymous, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    eprintln!("401 without credentials: {}", r.errors[0]["message"]);
    assert!(db.store.all().await.unwrap().is_empty());

    let mut authed = source("authed", &url);
    authed.auth = Some(json!({"username": "ci", "token": {"file": token_file.to_str().unwrap()}}));
    let authed = db.store.create_source(&authed, "test").await.unwrap();
    // gix asks for credentials, gets the token from the named file, and
    // refuses to send it in clear text: tokens need https.
    let r = s.sync(&authed, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let message = r.errors[0]["message"].as_str().unwrap();
    assert!(message.contains("clear text"), "{message}");
    eprintln!("token over http: {message}");
    assert!(db.store.all().await.unwrap().is_empty());

    // A token that cannot be read is reported as such.
    let mut missing = source("missing", &url);
    let gone = secrets.0.join("gone");
    missing.auth = Some(json!({"token": {"file": gone.to_str().unwrap()}}));
    let missing = db.store.create_source(&missing, "test").await.unwrap();
    let r = s.sync(&missing, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    let message = r.errors[0]["message"].as_str().unwrap();
    assert!(message.contains(gone.to_str().unwrap()), "{message}");

    // A file outside the secrets directories is refused at sync time too
    // (a row written before the rules, or straight into the table), and
    // the refusal says the rule, not the file's content.
    let mut outside = source("outside", &url);
    outside.auth = Some(json!({"token": {"file": "/etc/hostname"}}));
    let outside = db.store.create_source(&outside, "test").await.unwrap();
    let r = s.sync(&outside, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed);
    let message = r.errors[0]["message"].as_str().unwrap();
    assert!(message.contains("--secrets-dir"), "{message}");
}

/// The audit's proof of concept: an ssh key "path" that is a shell command.
/// Stored straight into the table (the API refuses it), the sync fails and
/// runs nothing: the key path never reaches the shell gix runs ssh with.
#[tokio::test]
async fn an_ssh_key_path_never_reaches_a_shell() {
    let db = database().await;
    let cache = TempDir::new("cache");
    let s = syncer(&db.store, &cache);
    let marker = std::env::temp_dir().join(format!("meridian-pwned-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut src = source("pwn", "ssh://git@127.0.0.1:1/repo.git");
    src.auth =
        Some(json!({"sshKey": {"file": format!("/dev/null; touch {} #", marker.display())}}));
    assert!(meridian_gitops::source::validate(&src).is_err());
    let src = db.store.create_source(&src, "test").await.unwrap();
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(!marker.exists(), "the key path ran as a shell command");

    // The same with the key in a secrets directory, whose path the shell
    // would split: it is copied, and the copy's path is quoted.
    let secrets = TempDir::new("keys");
    let key = secrets.0.join("id_ed25519");
    std::fs::write(&key, "not really a key\n").unwrap();
    let mut src = source("quoted", "ssh://git@127.0.0.1:1/repo.git");
    src.auth = Some(json!({"sshKey": {"file": key.to_str().unwrap()}}));
    let src = db.store.create_source(&src, "test").await.unwrap();
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let copy = cache.0.join("quoted.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn webhooks_need_a_valid_signature() {
    allow_temp_secrets();
    let db = database().await;
    let server = Server::start(db.store.clone()).await;
    let http = reqwest::Client::new();
    let cache = TempDir::new("cache");
    let secret_dir = TempDir::new("secret");
    let secret_file = secret_dir.0.join("hook");
    std::fs::write(&secret_file, "hook-secret\n").unwrap();
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    repo.commit("a");
    let created = http
        .post(server.url("/api/v1/gitops/sources"))
        .json(&json!({
            "name": "hooked", "url": repo.file_url(), "path": "policies",
            "intervalSeconds": 3600,
            "webhookSecret": {"file": secret_file.to_str().unwrap()}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // Run the sync the creation made due, so the source is not due any more.
    let s = syncer(&db.store, &cache);
    assert!(s.step().await.unwrap());
    assert!(!s.step().await.unwrap(), "nothing else is due");
    let due_before = db.store.source_status("hooked").await.unwrap().next_sync_at;

    let body = br#"{"ref":"refs/heads/main"}"#;
    let hook = server.url("/api/v1/gitops/webhook/hooked");
    for (header, value) in [
        (
            "x-hub-signature-256",
            meridian_gitops::source::sign_github(b"wrong", body),
        ),
        ("x-hub-signature-256", "sha256=00".to_owned()),
        ("x-gitlab-token", "wrong".to_owned()),
    ] {
        let resp = http
            .post(&hook)
            .header(header, value)
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{header}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"], "unauthorized");
    }
    let resp = http.post(&hook).body(&body[..]).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // Nothing changed: not due, no sync ran.
    assert_eq!(
        db.store.source_status("hooked").await.unwrap().next_sync_at,
        due_before
    );
    assert!(!s.step().await.unwrap());
    assert_eq!(db.store.syncs("hooked", 10).await.unwrap().len(), 1);

    // Signed right, but a push to another branch: ignored, nothing due.
    let feature = br#"{"ref":"refs/heads/feature"}"#;
    let resp = http
        .post(&hook)
        .header(
            "x-hub-signature-256",
            meridian_gitops::source::sign_github(b"hook-secret", feature),
        )
        .body(&feature[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ignored: Value = resp.json().await.unwrap();
    assert_eq!(ignored["status"], "ignored", "{ignored}");
    assert!(
        !s.step().await.unwrap(),
        "a push to another branch made it due"
    );

    // Signed right (GitHub, then GitLab): a sync follows.
    let sig = meridian_gitops::source::sign_github(b"hook-secret", body);
    let resp = http
        .post(&hook)
        .header("x-hub-signature-256", sig)
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(s.step().await.unwrap());
    let resp = http
        .post(&hook)
        .header("x-gitlab-token", "hook-secret")
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(s.step().await.unwrap());
    assert_eq!(db.store.syncs("hooked", 10).await.unwrap().len(), 3);

    // Status and history over the API.
    let status: Value = http
        .get(server.url("/api/v1/gitops/sources/hooked/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["lastSync"]["outcome"], "unchanged");
    assert!(status["lastAppliedCommit"].is_string());
    let syncs: Value = http
        .get(server.url("/api/v1/gitops/sources/hooked/syncs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(syncs["items"].as_array().unwrap().len(), 3);
    let doc: Value = http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/api/v1/gitops/webhook/{name}"]["post"].is_object());
    server.stop().await;
}

#[tokio::test]
async fn two_replicas_never_sync_one_source_at_once() {
    let db = database().await;
    let (c1, c2) = (TempDir::new("cache"), TempDir::new("cache"));
    let repo = Repo::new();
    repo.write("policies/a.yaml", &policy_yaml("a", "a.example.com", 1000));
    repo.commit("a");
    db.store
        .create_source(&source("team", &repo.file_url()), "test")
        .await
        .unwrap();
    let (a, b) = (syncer(&db.store, &c1), syncer(&db.store, &c2));
    let (ra, rb) = tokio::join!(a.step(), b.step());
    let claimed = [ra.unwrap(), rb.unwrap()];
    assert_eq!(claimed.iter().filter(|c| **c).count(), 1, "{claimed:?}");
    assert_eq!(db.store.syncs("team", 10).await.unwrap().len(), 1);
    // Claimed means rescheduled: not due again before its interval.
    assert!(!a.step().await.unwrap());
}

#[tokio::test]
async fn a_host_moves_to_a_new_policy_in_one_commit() {
    let db = database().await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    repo.write(
        "policies/old.yaml",
        &policy_yaml("old", "shop.example.com", 1000),
    );
    repo.commit("old serves shop");
    let src = db
        .store
        .create_source(&source("team", &repo.file_url()), "test")
        .await
        .unwrap();
    let s = syncer(&db.store, &cache);
    assert_eq!(
        s.sync(&src, "test").await.unwrap().outcome,
        Outcome::Applied
    );

    // "old" gives up the host and "new" takes it: the update frees it
    // before the create needs it, inside the one transaction.
    repo.write(
        "policies/old.yaml",
        &policy_yaml("old", "legacy.example.com", 1000),
    );
    repo.write(
        "policies/new.yaml",
        &policy_yaml("new", "shop.example.com", 2000),
    );
    repo.commit("new serves shop");
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(
        db.store.get("new").await.unwrap().spec.host,
        "shop.example.com"
    );
    assert_eq!(
        db.store.get("old").await.unwrap().spec.host,
        "legacy.example.com"
    );

    // Two policies swapping hosts cannot pass the unique index statement
    // by statement: the sync fails whole and says why.
    repo.write(
        "policies/old.yaml",
        &policy_yaml("old", "shop.example.com", 1000),
    );
    repo.write(
        "policies/new.yaml",
        &policy_yaml("new", "legacy.example.com", 2000),
    );
    repo.commit("swap");
    let r = s.sync(&src, "test").await.unwrap();
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{r:?}"
    );
    assert_eq!(
        db.store.get("new").await.unwrap().spec.host,
        "shop.example.com"
    );
}

//! The audit's findings at the REST edge, each against a real PostgreSQL:
//! credential references within the secret rules, text PostgreSQL cannot
//! store refused with a 4xx naming the field, every write audited with the
//! real caller, and fast 503s while the database is down.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_api::AppState;
use meridian_auth::{token, Authenticator, Config, Role};
use meridian_store::Store;
use meridian_test_support::database;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Api {
    base: String,
    client: reqwest::Client,
    store: Store,
    admin: String,
    stop: CancellationToken,
}

impl Api {
    /// The REST API with authentication on and an admin token, serving
    /// `store`.
    async fn start(store: Store, state: impl FnOnce(&mut AppState)) -> Api {
        let mut s = AppState::new(store.clone());
        s.auth = Arc::new(Authenticator::new(store.clone(), Config::default()));
        state(&mut s);
        let stop = s.shutdown.clone();
        let admin = token::generate();
        store
            .create_token("root", Role::Admin.as_str(), &token::hash(&admin), "test")
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app =
            meridian_api::router(s).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::spawn(async move { serve.await.unwrap() });
        Api {
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            store,
            admin,
            stop,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The audit log's (actor, action) pairs, oldest first.
    async fn audit(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT actor, action FROM audit_log ORDER BY id")
            .fetch_all(self.store.pool())
            .await
            .unwrap()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn field_of(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn pdns(name: &str, api_key: Value) -> Value {
    json!({"name": name, "kind": "pdns", "apiUrl": "http://127.0.0.1:8081",
           "zone": "example.com.", "apiKey": api_key})
}

/// Issue 16, item 2: a reference may name only `MERIDIAN_SECRET_*`
/// variables and files under the secrets directories; anything else is a
/// 422 naming the field and the rule, and nothing is stored.
#[tokio::test]
async fn credential_references_follow_the_secret_rules() {
    let db = database().await;
    let api = Api::start(db.store.clone(), |_| {}).await;
    for (reference, why) in [
        (json!({"env": "MERIDIAN_CA_KEY"}), "Meridian's own"),
        (json!({"env": "DATABASE_URL"}), "Meridian's own"),
        (json!({"env": "PDNS_API_KEY"}), "MERIDIAN_SECRET_"),
        (json!({"file": "/dev/zero"}), "secrets directory"),
        (json!({"file": "/etc/passwd"}), "secrets directory"),
        (
            json!({"file": "/var/run/secrets/../../etc/shadow"}),
            ". or ..",
        ),
    ] {
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/providers",
                Some(pdns("p", reference.clone())),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{reference}: {body}"
        );
        assert_eq!(field_of(&body), ["config.apiKey"], "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{reference}: {message}");
        assert!(
            message.contains("--secrets-dir") && message.contains("MERIDIAN_SECRET_"),
            "the refusal states the rule: {message}"
        );
    }
    assert!(api.store.providers().await.unwrap().is_empty());
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/providers",
            Some(pdns("p", json!({"env": "MERIDIAN_SECRET_PDNS"}))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // GitOps sources: the same rules, and the audit's shell injection.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/gitops/sources",
            Some(json!({"name": "s", "url": "ssh://git@127.0.0.1/r.git",
                        "auth": {"sshKey": {"file": "/dev/null; touch /tmp/pwned #"}},
                        "webhookSecret": {"env": "HOME"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field_of(&body), ["auth.sshKey", "webhookSecret"]);
    // Credentials in a Git URL would be shown to every viewer.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/gitops/sources",
            Some(json!({"name": "s", "url": "https://x-access-token:ghp_abc@github.com/o/r.git"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field_of(&body), ["url"]);
    assert!(!body.to_string().contains("ghp_abc"), "{body}");
    assert!(api.store.sources().await.unwrap().is_empty());
}

/// Issue 16, item 5: a NUL byte, anywhere it would reach PostgreSQL, is a
/// 4xx naming the field (the query parameter, the path, the body field),
/// never a 500.
#[tokio::test]
async fn text_postgres_cannot_store_is_a_4xx_naming_the_field() {
    let db = database().await;
    let api = Api::start(db.store.clone(), |_| {}).await;

    // The fuzzer's find.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/gitops/apply?dryRun=true&source=a%00b",
            Some(json!({"items": []})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"source\""),
        "{body}"
    );

    for path in [
        "/api/v1/policies/a%00b",
        "/api/v1/providers/a%00",
        "/api/v1/gitops/sources/%00/status",
        "/api/v1/policies/%FF%FE",
    ] {
        let (status, body) = api.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("path"), "{body}");
    }
    let (status, body) = api
        .call(Method::GET, "/api/v1/events?since=%00", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // JSON bodies: every handler, with the field's path.
    let policy = json!({"apiVersion": "meridian/v1", "kind": "GlobalTrafficPolicy",
        "metadata": {"name": "shop", "labels": {"team": "a\u{0}b"}},
        "spec": {"host": "shop.example.com", "port": 8080,
                 "zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "10.0.0.1", "port": 8080}]}]}});
    let (status, body) = api
        .call(Method::POST, "/api/v1/policies", Some(policy.clone()))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(field_of(&body), ["metadata.labels.team"], "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/gitops/apply?dryRun=true",
            Some(json!({"items": [policy]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field_of(&body), ["items[0].metadata.labels.team"]);
    let mut provider = pdns("p", json!({"env": "MERIDIAN_SECRET_X"}));
    provider["zone"] = json!("example.com.\u{0}");
    let (status, body) = api
        .call(Method::POST, "/api/v1/providers", Some(provider))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field_of(&body), ["zone"]);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "t\u{0}", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field_of(&body), ["name"]);

    // YAML has its own escape for NUL.
    let yaml = "apiVersion: meridian/v1\nkind: GlobalTrafficPolicy\nmetadata:\n  name: shop\n  \
                labels: {team: \"a\\0b\"}\nspec:\n  host: shop.example.com\n  port: 8080\n  zones:\n  \
                - name: a\n    weight: 100\n    endpoints: [{address: 10.0.0.1, port: 8080}]\n";
    let r = api
        .client
        .post(format!("{}/api/v1/policies", api.base))
        .bearer_auth(&api.admin)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(field_of(&body), ["metadata.labels.team"], "{body}");

    // Nothing was written, and the server is fine.
    assert!(api.store.all().await.unwrap().is_empty());
    let (status, _) = api.call(Method::GET, "/api/v1/policies", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Issue 16, item 9: writes to providers and sources, GitOps applies and
/// CA rotations are audited with the real caller, in the write's own
/// transaction.
#[tokio::test]
async fn every_write_is_audited_with_the_real_caller() {
    let db = database().await;
    let api = Api::start(db.store.clone(), |_| {}).await;
    let actor = "token:root".to_owned();
    let key = json!({"env": "MERIDIAN_SECRET_PDNS"});
    let (s, b) = api
        .call(
            Method::POST,
            "/api/v1/providers",
            Some(pdns("p", key.clone())),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = api
        .call(Method::PUT, "/api/v1/providers/p", Some(pdns("p", key)))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.call(Method::DELETE, "/api/v1/providers/p", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let source = json!({"name": "src", "url": "file:///nonexistent/repo", "intervalSeconds": 3600});
    let (s, b) = api
        .call(Method::POST, "/api/v1/gitops/sources", Some(source.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = api
        .call(Method::PUT, "/api/v1/gitops/sources/src", Some(source))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .call(Method::POST, "/api/v1/gitops/sources/src/sync", None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = api
        .call(Method::DELETE, "/api/v1/gitops/sources/src", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let policy = json!({"apiVersion": "meridian/v1", "kind": "GlobalTrafficPolicy",
        "metadata": {"name": "shop"},
        "spec": {"host": "shop.example.com", "port": 8080,
                 "zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "10.0.0.1", "port": 8080}]}]}});
    let (s, b) = api
        .call(
            Method::POST,
            "/api/v1/gitops/apply",
            Some(json!({"items": [policy]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    api.store
        .init_ca(&meridian_store::ca::NewCa {
            trust_domain: "example.org",
            source: "generated",
            cert_pem: "-----BEGIN CERTIFICATE-----",
            key_sealed: b"sealed",
            chain_pem: "",
            trust_bundle_pem: "-----BEGIN CERTIFICATE-----",
            bundle_mac: b"mac",
        })
        .await
        .unwrap();
    let before = api.audit().await.len();
    let (s, _) = api.call(Method::POST, "/api/v1/ca/rotate", None).await;
    assert_eq!(s, StatusCode::OK);

    let audit = api.audit().await;
    let by_caller: Vec<&str> = audit
        .iter()
        .filter(|(who, _)| *who == actor)
        .map(|(_, what)| what.as_str())
        .collect();
    assert_eq!(
        by_caller,
        [
            "provider-created",
            "provider-replaced",
            "provider-deleted",
            "source-created",
            "source-replaced",
            "source-sync-requested",
            "source-deleted",
            "create",
            "ca-rotate",
        ],
        "{audit:?}"
    );
    assert_eq!(audit.len(), before + 1);
    assert!(
        !audit.iter().any(|(who, _)| who == "anonymous"),
        "{audit:?}"
    );
}

/// A TCP relay to PostgreSQL that a test can cut (connections closed,
/// new ones refused) and restore on the same port: the database "down"
/// for this test alone.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    // Down: the connection is dropped at once, as a
                    // stopped server's port would refuse it.
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay { addr, up, cut }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Issue 16, item 6: with the database down, API requests get 503 with
/// `Retry-After` at once (measured: each took over 10 s before), `/readyz`
/// says so, `/readyz/xds` stays ready (the replica still serves its cached
/// snapshot), and all recovers when the database is back.
#[tokio::test]
async fn with_the_database_down_requests_get_503_at_once() {
    let db = database().await;
    let url: reqwest::Url = db.url.parse().unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
        .parse()
        .unwrap();
    let relay = Relay::start(target).await;
    let mut relayed = url.clone();
    relayed.set_port(Some(relay.addr.port())).unwrap();
    let store = Store::connect(relayed.as_str(), 4).await.unwrap();
    let xds_ready = Arc::new(AtomicBool::new(true));
    let flag = xds_ready.clone();
    let api = Api::start(store.clone(), move |s| {
        s.ready.push(flag);
        s.xds_clients = Some(Arc::new(|| json!([])));
    })
    .await;
    let monitor = (store.clone(), api.stop.clone());
    tokio::spawn(async move {
        monitor
            .0
            .monitor(Duration::from_millis(200), monitor.1)
            .await
    });

    let (s, _) = api.call(Method::GET, "/api/v1/policies", None).await;
    assert_eq!(s, StatusCode::OK);

    relay.down();
    // Give the monitor a few ticks to notice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for path in ["/api/v1/policies", "/api/v1/providers", "/api/v1/audit"] {
        let started = Instant::now();
        let r = api
            .client
            .get(format!("{}{path}", api.base))
            .bearer_auth(&api.admin)
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(r.headers().contains_key("retry-after"), "{path}");
        assert!(took < Duration::from_millis(500), "{path} took {took:?}");
        eprintln!("{path}: 503 in {took:?}");
    }
    let started = Instant::now();
    let r = api
        .client
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(1500));
    let r = api
        .client
        .get(format!("{}/readyz/xds", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["database"], "down");

    relay.up();
    let started = Instant::now();
    loop {
        let (s, _) = api.call(Method::GET, "/api/v1/policies", None).await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the API did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = api
        .client
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Issue 16, item 7: a watch's snapshot pins a consistent view while the
/// writers' fence is held only for an instant, so writes go on while a
/// snapshot is read (they waited for the whole read before).
#[tokio::test]
async fn a_watch_snapshot_does_not_hold_writes_up() {
    let db = database().await;
    let write = meridian_store::Write {
        actor: "test",
        source: "api",
        dry_run: false,
        force: false,
    };
    let policy = |name: &str| {
        meridian_policy::decode::from_value(json!({"apiVersion": "meridian/v1", "kind": "GlobalTrafficPolicy",
            "metadata": {"name": name},
            "spec": {"host": format!("{name}.example.com"), "port": 8080,
                     "zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "10.0.0.1", "port": 8080}]}]}}))
        .unwrap()
    };
    db.store.create(&policy("a"), &write).await.unwrap();
    let mut snapshot = db.store.begin_snapshot().await.unwrap();
    // A write while the snapshot is open completes at once...
    let created = tokio::time::timeout(
        Duration::from_secs(3),
        db.store.create(&policy("b"), &write),
    )
    .await
    .expect("a write waited for an open snapshot")
    .unwrap();
    // ...and the snapshot still shows the state at its version.
    let names: Vec<String> = snapshot
        .policies()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["a"]);
    let b_version: i64 = created
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(snapshot.settled < b_version);
    // The changes after the snapshot's version bring "b".
    let changes = db
        .store
        .changes(
            snapshot.settled,
            db.store.settled_version().await.unwrap(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].policy.metadata.name, "b");
}

/// Issue 16, item 7: long-lived streams are counted per caller and capped;
/// a closed stream frees its place.
#[tokio::test]
async fn event_streams_are_capped_per_caller() {
    let db = database().await;
    let api = Api::start(db.store.clone(), |s| {
        let auth = Authenticator::new(
            s.store.clone(),
            Config {
                streams_per_caller: Some(2),
                ..Config::default()
            },
        );
        s.auth = Arc::new(auth);
    })
    .await;
    let open = || {
        api.client
            .get(format!("{}/api/v1/events/stream", api.base))
            .bearer_auth(&api.admin)
            .send()
    };
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let third = open().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"], "too_many_streams");
    // Another caller has places of its own.
    let viewer = token::generate();
    api.store
        .create_token(
            "viewer",
            Role::Viewer.as_str(),
            &token::hash(&viewer),
            "test",
        )
        .await
        .unwrap();
    let r = api
        .client
        .get(format!("{}/api/v1/events/stream", api.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Closing one stream frees its place (the server notices at its next write).
    drop(first);
    let started = Instant::now();
    loop {
        let again = open().await.unwrap();
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Issue 16, item 8: pruning deletes by age, keeps the newest syncs of a
/// source, records how far the change log was pruned (a watch resuming
/// from before it is told to start again), and measures table sizes.
#[tokio::test]
async fn old_rows_are_pruned_and_audit_rows_kept_longest() {
    use meridian_store::retention::{Retention, KEEP_SYNCS};
    let db = database().await;
    let pool = db.store.pool();
    let exec = |sql: &'static str| async move {
        sqlx::query(sql).execute(pool).await.unwrap();
    };
    exec("INSERT INTO events (at, kind, severity, message) SELECT now() - make_interval(days => d), 'k', 'info', 'm' FROM generate_series(0, 59) d").await;
    exec("INSERT INTO audit_log (at, actor, action, policy_name, resource_version) SELECT now() - make_interval(days => d * 10), 'a', 'update', 'p', 1000 - d FROM generate_series(0, 59) d").await;
    exec("INSERT INTO gitops_sources (name, url, branch, path, interval_seconds, prune, adopt) VALUES ('s', 'file:///r', 'main', '', 60, true, false)").await;
    exec("INSERT INTO gitops_syncs (source_name, trigger, started_at, finished_at, outcome) SELECT 's', 't', now() - make_interval(days => 30), now() - make_interval(days => 30), 'unchanged' FROM generate_series(1, 50)").await;
    exec("INSERT INTO workload_certs (spiffe_id, cert_pem, key_sealed, not_before, not_after, rotation) VALUES ('spiffe://a/ns/x/sa/old', '', '', now() - interval '40 days', now() - interval '30 days', 0), ('spiffe://a/ns/x/sa/live', '', '', now(), now() + interval '1 day', 0)").await;

    let pruned = db
        .store
        .prune(&Retention::default())
        .await
        .unwrap()
        .expect("nobody else prunes");
    // Events: 30 days kept (days 0..=29 stay, 30..=59 go).
    assert_eq!(pruned.events, 30);
    // Audit: 400 days: rows at 0..390 days stay, 400..590 go.
    assert_eq!(pruned.audit, 20);
    assert_eq!(pruned.gitops_syncs, 50 - KEEP_SYNCS as u64);
    assert_eq!(pruned.workload_certs, 1);
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(count("SELECT count(*) FROM events").await, 30);
    assert_eq!(count("SELECT count(*) FROM audit_log").await, 40);
    assert_eq!(count("SELECT count(*) FROM gitops_syncs").await, KEEP_SYNCS);
    // The change log was pruned up to version 960 (the row at 400 days).
    assert_eq!(db.store.compacted_version().await.unwrap(), 960);
    let gone = db.store.changes(900, 1000, 10).await.unwrap_err();
    assert_eq!(gone.kind(), meridian_store::Kind::Gone, "{gone}");
    assert!(db.store.changes(960, 1000, 10).await.is_ok());

    db.store.measure_tables().await.unwrap();
    let text = meridian_telemetry::render();
    assert!(
        text.contains("meridian_db_table_bytes{table=\"audit_log\"}"),
        "{text}"
    );

    // The pruning task stops on the shutdown signal.
    let stop = CancellationToken::new();
    let task = {
        let (store, stop) = (db.store.clone(), stop.clone());
        tokio::spawn(async move {
            store
                .prune_loop(Retention::default(), Duration::from_millis(50), stop)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the pruning task did not stop")
        .unwrap();
}

/// Issue 16, low: every unknown `mrd_` token costs a database query, so
/// failed lookups are limited per source address before any caller is
/// known; a known token, once looked up, is not held back.
#[tokio::test]
async fn unknown_tokens_are_rate_limited_per_source_address() {
    let db = database().await;
    let api = Api::start(db.store.clone(), |_| {}).await;
    let (s, _) = api.call(Method::GET, "/api/v1/policies", None).await;
    assert_eq!(s, StatusCode::OK);
    let (mut refused, mut limited) = (0, 0);
    for _ in 0..40 {
        let r = api
            .client
            .get(format!("{}/api/v1/policies", api.base))
            .bearer_auth(token::generate())
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!((20..=22).contains(&refused), "{refused} looked up");
    assert_eq!(refused + limited, 40);
    // The admin's token is cached from before: it still works.
    let (s, _) = api.call(Method::GET, "/api/v1/policies", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Issue 16, low: `/metrics` is open; `metrics_on_api = false` (the
/// binary's --metrics-admin-only) leaves it to the admin address.
#[tokio::test]
async fn metrics_can_be_kept_off_the_api_address() {
    let db = database().await;
    let open = Api::start(db.store.clone(), |_| {}).await;
    let r = open
        .client
        .get(format!("{}/metrics", open.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let db = database().await;
    let closed = Api::start(db.store.clone(), |s| s.metrics_on_api = false).await;
    let r = closed
        .client
        .get(format!("{}/metrics", closed.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Issue 16, low: a source stored before URLs were checked never shows its
/// credential to a caller.
#[tokio::test]
async fn a_credential_left_in_a_stored_url_is_masked() {
    let db = database().await;
    let api = Api::start(db.store.clone(), |_| {}).await;
    sqlx::query(
        "INSERT INTO gitops_sources (name, url, branch, path, interval_seconds, prune, adopt)
         VALUES ('legacy', 'https://ci:ghp_s3cret@git.example.com/r.git', 'main', '', 3600, true, false)",
    )
    .execute(api.store.pool())
    .await
    .unwrap();
    for path in ["/api/v1/gitops/sources", "/api/v1/gitops/sources/legacy"] {
        let (s, body) = api.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK);
        let text = body.to_string();
        assert!(!text.contains("ghp_s3cret"), "{path}: {text}");
        assert!(text.contains("https://***@git.example.com/r.git"), "{text}");
    }
}

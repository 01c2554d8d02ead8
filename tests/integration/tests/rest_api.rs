//! The REST API against a real PostgreSQL, over real sockets: every row of
//! the API table, the error shapes, dry runs, history, restart, and races.

use meridian_test_support::{database, Server, TestDb};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn policy(name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "meridian/v1",
        "kind": "GlobalTrafficPolicy",
        "metadata": {"name": name, "labels": {"team": "logistics"}},
        "spec": {
            "host": host,
            "port": 8080,
            "zones": [
                {"name": "us-west-2a", "weight": 70, "endpoints": [
                    {"address": "10.0.1.5", "port": 8080},
                    {"address": "10.0.1.6", "port": 8080, "version": "v2"}]},
                {"name": "eu-west-1a", "weight": 30, "endpoints": [{"address": "10.1.0.5", "port": 8080}]}
            ],
            "routes": [{"name": "position", "match": {"pathPrefix": "/track"}, "canary": {"version": "v2", "weight": 10}}]
        }
    })
}

struct Api {
    server: Server,
    client: Client,
    db: TestDb,
}

impl Api {
    async fn start() -> Api {
        let db = database().await;
        let server = Server::start(db.store.clone()).await;
        Api {
            server,
            client: Client::new(),
            db,
        }
    }
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
    async fn create(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/policies"))
            .json(body)
            .send()
            .await
            .unwrap()
    }
    async fn get(&self, name: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/v1/policies/{name}")))
            .send()
            .await
            .unwrap()
    }
    async fn revision_count(&self, name: &str) -> usize {
        let r = self
            .client
            .get(self.url(&format!("/api/v1/policies/{name}/revisions")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["items"]
            .as_array()
            .unwrap()
            .len()
    }
    async fn audit_rows(&self, name: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE policy_name = $1")
            .bind(name)
            .fetch_one(self.db.store.pool())
            .await
            .unwrap()
    }
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()
        .get("etag")
        .expect("ETag header")
        .to_str()
        .unwrap()
        .to_owned()
}

async fn error_of(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn create_returns_the_stored_policy_with_defaults() {
    let api = Api::start().await;
    let r = api.create(&policy("track-api", "track.example.com")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/api/v1/policies/track-api");
    let tag = etag(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        tag,
        format!(
            "\"{}\"",
            body["metadata"]["resourceVersion"].as_str().unwrap()
        )
    );
    assert_eq!(body["metadata"]["generation"], 1);
    assert_eq!(body["metadata"]["source"], "api");
    assert!(body["metadata"]["createdAt"].is_string());
    assert_eq!(body["spec"]["protocol"], "http");
    assert_eq!(body["spec"]["zones"][1]["endpoints"][0]["version"], "v1");
    assert_eq!(
        body["spec"]["routes"][0]["canary"]["header"],
        "x-envoy-upstream-canary"
    );
    assert_eq!(body["spec"]["healthCheck"]["intervalMs"], 1000);
    assert_eq!(body["spec"]["failover"]["mode"], "weighted");
    assert_eq!(body["spec"]["mtls"]["mode"], "disabled");
    assert_eq!(body["spec"]["dns"]["ttl"], 30);

    let got = api.get("track-api").await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(etag(&got), tag);
    assert_eq!(got.json::<Value>().await.unwrap(), body);
    assert_eq!(api.audit_rows("track-api").await, 1);
}

#[tokio::test]
async fn server_set_metadata_in_input_is_ignored() {
    let api = Api::start().await;
    let mut p = policy("a", "a.example.com");
    p["metadata"]["resourceVersion"] = json!("999");
    p["metadata"]["generation"] = json!(42);
    p["metadata"]["source"] = json!("gitops:evil@abc");
    let body: Value = api.create(&p).await.json().await.unwrap();
    assert_ne!(body["metadata"]["resourceVersion"], "999");
    assert_eq!(body["metadata"]["generation"], 1);
    assert_eq!(body["metadata"]["source"], "api");
}

#[tokio::test]
async fn create_conflicts_on_name_and_host() {
    let api = Api::start().await;
    assert_eq!(
        api.create(&policy("a", "a.example.com")).await.status(),
        StatusCode::CREATED
    );
    let body = error_of(
        api.create(&policy("a", "other.example.com")).await,
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("\"a\""));
    let body = error_of(
        api.create(&policy("b", "a.example.com")).await,
        StatusCode::CONFLICT,
        "host_conflict",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("a.example.com"),
        "{body}"
    );
    assert_eq!(api.get("b").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn validation_reports_every_problem_at_once() {
    let api = Api::start().await;
    let mut p = policy("Bad_Name", "not a host");
    p["spec"]["port"] = json!(70000);
    p["spec"]["zones"][1]["weight"] = json!(50);
    p["spec"]["zones"][0]["endpoints"][0]["address"] = json!("not an address");
    p["spec"]["routes"][0]["match"]["pathPrefix"] = json!("track");
    p["spec"]["routes"][0]["canary"]["version"] = json!("v9");
    p["spec"]["dns"] = json!({"ttl": 0});
    let body = error_of(
        api.create(&p).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "spec.host",
            "spec.port",
            "spec.zones[0].endpoints[0].address",
            "spec.zones",
            "spec.routes[0].match.pathPrefix",
            "spec.routes[0].canary.version",
            "spec.dns.ttl",
        ]
    );
    for d in body["details"].as_array().unwrap() {
        assert!(!d["message"].as_str().unwrap().is_empty());
    }
    let list: Value = api
        .client
        .get(api.url("/api/v1/policies"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        0,
        "a rejected request stores nothing"
    );
}

#[tokio::test]
async fn body_format_errors() {
    let api = Api::start().await;
    let url = api.url("/api/v1/policies");
    let post = |ct: &'static str, body: Vec<u8>| {
        api.client
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    error_of(
        post("application/json", b"{\"metadata\":".to_vec())
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed",
    )
    .await;
    error_of(
        post("application/yaml", b"metadata: [unclosed".to_vec())
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed",
    )
    .await;
    error_of(
        post("text/plain", b"hello".to_vec()).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let big = vec![b' '; 1024 * 1024 + 1];
    error_of(
        post("application/json", big).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    let mut wrong_type = policy("a", "a.example.com");
    wrong_type["spec"]["zones"][1]["weight"] = json!("thirty");
    let body = error_of(
        api.create(&wrong_type).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    assert_eq!(body["details"][0]["field"], "spec.zones[1].weight");

    let yaml = "metadata: {name: y}\nspec:\n  host: y.example.com\n  port: 80\n  zones: [{name: z, weight: 100, endpoints: [{address: 10.0.0.1, port: 80}]}]\n";
    let r = post("application/yaml", yaml.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
}

#[tokio::test]
async fn get_and_unknown_routes_answer_json_errors() {
    let api = Api::start().await;
    let body = error_of(api.get("nope").await, StatusCode::NOT_FOUND, "not_found").await;
    assert!(body["message"].as_str().unwrap().contains("nope"));
    error_of(
        api.client
            .get(api.url("/api/v1/nothing"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_of(
        api.client
            .delete(api.url("/api/v1/policies"))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn list_filters_orders_and_pages() {
    let api = Api::start().await;
    for (i, name) in ["delta", "alpha", "echo", "charlie", "bravo"]
        .iter()
        .enumerate()
    {
        let mut p = policy(name, &format!("{name}.example.com"));
        if i % 2 == 0 {
            p["metadata"]["labels"] = json!({"team": "payments", "tier": "gold"});
        }
        assert_eq!(api.create(&p).await.status(), StatusCode::CREATED);
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let get = |q: &str| {
        api.client
            .get(api.url(&format!("/api/v1/policies{q}")))
            .send()
    };

    let all: Value = get("").await.unwrap().json().await.unwrap();
    assert_eq!(names(&all), ["alpha", "bravo", "charlie", "delta", "echo"]);
    assert_eq!(all["continue"], Value::Null);

    let gold: Value = get("?label=team=payments")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&gold), ["bravo", "delta", "echo"]);
    let both: Value = get("?label=team=payments&label=tier=gold")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&both).len(), 3);
    let none: Value = get("?label=team=payments&label=tier=silver")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&none).len(), 0);

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &token {
            Some(t) => format!("?limit=2&continue={t}"),
            None => "?limit=2".to_owned(),
        };
        let page: Value = get(&q).await.unwrap().json().await.unwrap();
        pages += 1;
        assert!(names(&page).len() <= 2);
        seen.extend(names(&page));
        match page["continue"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);

    for bad in [
        "?limit=0",
        "?limit=abc",
        "?limit=100000",
        "?continue=zz",
        "?label=novalue",
        "?colour=red",
    ] {
        error_of(
            get(bad).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    }
}

#[tokio::test]
async fn put_replaces_creates_and_honours_if_match() {
    let api = Api::start().await;
    let url = api.url("/api/v1/policies/a");
    let p = policy("a", "a.example.com");

    let r = api.client.put(&url).json(&p).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/api/v1/policies/a");
    let v1 = etag(&r);

    let mut changed = p.clone();
    changed["spec"]["zones"][0]["weight"] = json!(20);
    changed["spec"]["zones"][1]["weight"] = json!(80);
    let r = api
        .client
        .put(&url)
        .header("if-match", &v1)
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v2 = etag(&r);
    assert_ne!(v1, v2);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["metadata"]["generation"], 2);
    assert_eq!(body["spec"]["zones"][0]["weight"], 20);

    // A label-only change is a new revision but not a new generation.
    let mut relabelled = changed.clone();
    relabelled["metadata"]["labels"] = json!({"team": "other"});
    let body: Value = api
        .client
        .put(&url)
        .json(&relabelled)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["metadata"]["generation"], 2);

    error_of(
        api.client
            .put(&url)
            .header("if-match", &v1)
            .json(&p)
            .send()
            .await
            .unwrap(),
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    error_of(
        api.client
            .put(api.url("/api/v1/policies/ghost"))
            .header("if-match", "\"1\"")
            .json(&policy("ghost", "g.example.com"))
            .send()
            .await
            .unwrap(),
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    assert_eq!(api.get("ghost").await.status(), StatusCode::NOT_FOUND);
    error_of(
        api.client
            .put(&url)
            .json(&policy("b", "a.example.com"))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let mut invalid = p.clone();
    invalid["spec"]["zones"][0]["weight"] = json!(71);
    error_of(
        api.client.put(&url).json(&invalid).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    assert_eq!(
        api.revision_count("a").await,
        3,
        "refused writes add no revision"
    );
}

#[tokio::test]
async fn patch_applies_a_merge_patch() {
    let api = Api::start().await;
    let created = api.create(&policy("a", "a.example.com")).await;
    let v1 = etag(&created);
    let url = api.url("/api/v1/policies/a");
    let patch = |body: Value| {
        api.client
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
    };

    // Arrays replace whole: the zones list is sent complete.
    let mut zones = policy("a", "a.example.com")["spec"]["zones"].clone();
    zones[0]["weight"] = json!(20);
    zones[1]["weight"] = json!(80);
    let r = patch(json!({"spec": {"zones": zones}, "metadata": {"labels": {"tier": "gold"}}}))
        .header("if-match", &v1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["spec"]["zones"][0]["weight"], 20);
    assert_eq!(
        body["metadata"]["labels"],
        json!({"team": "logistics", "tier": "gold"})
    );
    assert_eq!(
        body["spec"]["routes"][0]["name"], "position",
        "untouched fields stay"
    );

    // null deletes: removing routes entirely.
    let body: Value = patch(json!({"spec": {"routes": null}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["spec"]["routes"], json!([]));

    error_of(
        patch(json!({"spec": {"port": 1}}))
            .header("if-match", &v1)
            .send()
            .await
            .unwrap(),
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    let body = error_of(
        patch(json!({"spec": {"dns": {"ttl": 0}, "port": 0}}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    assert_eq!(body["details"].as_array().unwrap().len(), 2);
    error_of(
        patch(json!({"metadata": {"name": "renamed"}}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    error_of(
        api.client
            .patch(&url)
            .json(&json!({"spec": {"port": 1}}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    error_of(
        api.client
            .patch(api.url("/api/v1/policies/ghost"))
            .header("content-type", "application/merge-patch+json")
            .body("{}")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(api.revision_count("a").await, 3);
}

#[tokio::test]
async fn delete_honours_if_match_and_removes_history() {
    let api = Api::start().await;
    let v1 = etag(&api.create(&policy("a", "a.example.com")).await);
    let url = api.url("/api/v1/policies/a");
    error_of(
        api.client
            .delete(&url)
            .header("if-match", "\"0\"")
            .send()
            .await
            .unwrap(),
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
    )
    .await;
    assert_eq!(api.get("a").await.status(), StatusCode::OK);
    let r = api
        .client
        .delete(&url)
        .header("if-match", &v1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(api.get("a").await.status(), StatusCode::NOT_FOUND);
    error_of(
        api.client.delete(&url).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    error_of(
        api.client
            .get(api.url("/api/v1/policies/a/revisions"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        api.audit_rows("a").await,
        2,
        "the audit log keeps create and delete"
    );
    // The name and host are free again.
    assert_eq!(
        api.create(&policy("a", "a.example.com")).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn revisions_and_rollback() {
    let api = Api::start().await;
    api.create(&policy("a", "a.example.com")).await;
    let url = api.url("/api/v1/policies/a");
    for (w0, w1) in [(60, 40), (50, 50)] {
        let mut p = policy("a", "a.example.com");
        p["spec"]["zones"][0]["weight"] = json!(w0);
        p["spec"]["zones"][1]["weight"] = json!(w1);
        assert_eq!(
            api.client.put(&url).json(&p).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    let revs: Value = api
        .client
        .get(api.url("/api/v1/policies/a/revisions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = revs["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|r| r["revision"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(items[2]["spec"]["zones"][0]["weight"], 70);
    assert_eq!(items[0]["source"], "api");
    assert!(items[0]["createdAt"].is_string());

    let rollback = |body: Value| {
        api.client
            .post(api.url("/api/v1/policies/a/rollback"))
            .json(&body)
            .send()
    };
    let r = rollback(json!({"revision": 1})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["spec"], items[2]["spec"]);
    assert_eq!(body["metadata"]["generation"], 4);
    assert_eq!(api.revision_count("a").await, 4);

    let err = error_of(
        rollback(json!({"revision": 99})).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    assert_eq!(err["details"][0]["field"], "revision");
    error_of(
        rollback(json!({"revision": "one"})).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    error_of(
        api.client
            .post(api.url("/api/v1/policies/ghost/rollback"))
            .json(&json!({"revision": 1}))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(api.revision_count("a").await, 4);
}

#[tokio::test]
async fn dry_runs_answer_like_the_write_and_store_nothing() {
    let api = Api::start().await;
    let r = api
        .client
        .post(api.url("/api/v1/policies?dryRun=true"))
        .json(&policy("a", "a.example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["metadata"]["name"], "a");
    assert_eq!(api.get("a").await.status(), StatusCode::NOT_FOUND);

    let v1 = etag(&api.create(&policy("a", "a.example.com")).await);
    let before: Value = api.get("a").await.json().await.unwrap();
    // The dry run still meets the same conflicts as a real write.
    error_of(
        api.client
            .post(api.url("/api/v1/policies?dryRun=true"))
            .json(&policy("b", "a.example.com"))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
        "host_conflict",
    )
    .await;

    let mut p = policy("a", "a.example.com");
    p["spec"]["port"] = json!(9090);
    let r = api
        .client
        .put(api.url("/api/v1/policies/a?dryRun=true"))
        .header("if-match", &v1)
        .json(&p)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["spec"]["port"], 9090);
    let r = api
        .client
        .put(api.url("/api/v1/policies/a?dryRun=true"))
        .header("if-match", "\"0\"")
        .json(&p)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);

    let r = api
        .client
        .patch(api.url("/api/v1/policies/a?dryRun=true"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"spec":{"port":7070}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["spec"]["port"], 7070);

    let r = api
        .client
        .delete(api.url("/api/v1/policies/a?dryRun=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let after: Value = api.get("a").await.json().await.unwrap();
    assert_eq!(after, before, "no dry run changed anything");
    assert_eq!(api.revision_count("a").await, 1);
    assert_eq!(api.audit_rows("a").await, 1);
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let api = Api::start().await;
    assert_eq!(
        api.client
            .get(api.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        api.client
            .get(api.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let doc: Value = api
        .client
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/v1/policies",
        "/api/v1/policies/{name}",
        "/api/v1/policies/{name}/revisions",
        "/api/v1/policies/{name}/rollback",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["Policy"].is_object());

    // A database that stops answering makes the replica unready, not dead.
    api.db.store.pool().close().await;
    let r = api.client.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        api.client
            .get(api.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn policies_survive_a_server_restart() {
    let db = database().await;
    let first = Server::start(db.store.clone()).await;
    let client = Client::new();
    let created: Value = client
        .post(first.url("/api/v1/policies"))
        .json(&policy("a", "a.example.com"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    first.stop().await;

    // A new process would open a new pool: do the same.
    let store = meridian_store::Store::connect(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let second = Server::start(store).await;
    let got: Value = client
        .get(second.url("/api/v1/policies/a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, created);
    second.stop().await;
}

#[tokio::test]
async fn concurrent_puts_with_one_version_let_exactly_one_win() {
    let api = Api::start().await;
    let v1 = etag(&api.create(&policy("race", "race.example.com")).await);
    let before = api.revision_count("race").await;
    let url = api.url("/api/v1/policies/race");
    let attempts = (0..20).map(|i| {
        let mut p = policy("race", "race.example.com");
        p["spec"]["zones"][0]["weight"] = json!(i);
        p["spec"]["zones"][1]["weight"] = json!(100 - i);
        api.client.put(&url).header("if-match", &v1).json(&p).send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(api.revision_count("race").await, before + 1);
}

#[tokio::test]
async fn concurrent_patches_without_if_match_lose_no_update() {
    let api = Api::start().await;
    api.create(&policy("p", "p.example.com")).await;
    let url = api.url("/api/v1/policies/p");
    // Each patch adds its own label; a lost update would drop one.
    let patches = (0..10).map(|i| {
        api.client
            .patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(json!({"metadata": {"labels": {format!("k{i}"): "v"}}}).to_string())
            .send()
    });
    for r in futures::future::join_all(patches).await {
        assert_eq!(r.unwrap().status(), StatusCode::OK);
    }
    let body: Value = api.get("p").await.json().await.unwrap();
    let labels = body["metadata"]["labels"].as_object().unwrap();
    assert_eq!(labels.len(), 11, "{labels:?}");
}

#[tokio::test]
async fn every_write_is_announced_after_commit() {
    let api = Api::start().await;
    let mut listener = api.db.store.listen().await.unwrap();
    let created: Value = api
        .create(&policy("a", "a.example.com"))
        .await
        .json()
        .await
        .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), listener.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next,
        meridian_store::notify::Event::Changed(meridian_store::notify::Change {
            op: "put".into(),
            name: "a".into(),
            resource_version: created["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .into(),
        })
    );
    // A dry run and a refused write announce nothing; the delete does.
    api.client
        .delete(api.url("/api/v1/policies/a?dryRun=true"))
        .send()
        .await
        .unwrap();
    api.create(&policy("a", "a.example.com")).await;
    api.client
        .delete(api.url("/api/v1/policies/a"))
        .send()
        .await
        .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), listener.next())
        .await
        .unwrap()
        .unwrap();
    let meridian_store::notify::Event::Changed(change) = next else {
        panic!("{next:?}")
    };
    assert_eq!((change.op.as_str(), change.name.as_str()), ("delete", "a"));
}

/// Reads server-sent events until one of `kind` arrives; returns its id and data.
async fn next_event(stream: &mut reqwest::Response, buf: &mut String, kind: &str) -> (i64, Value) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            if field("event:").as_deref() == Some(kind) {
                let id = field("id:").unwrap().parse().unwrap();
                return (id, serde_json::from_str(&field("data:").unwrap()).unwrap());
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within 10 s"))
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn overrides_drains_and_the_live_event_stream() {
    let api = Api::start().await;
    api.create(&policy("a", "a.example.com")).await;
    let url = api.url("/api/v1/events/stream?policy=a");
    let mut stream = api.client.get(&url).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buf = String::new();

    let put = |body: Value| {
        api.client
            .put(api.url("/api/v1/policies/a/override"))
            .json(&body)
            .send()
    };
    let r = put(json!({"weights": {"us-west-2a": 0, "eu-west-1a": 100}, "reason": "maintenance"}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (id, event) = next_event(&mut stream, &mut buf, "override-set").await;
    assert_eq!(event["policyName"], "a");
    assert!(event["message"].as_str().unwrap().contains("maintenance"));

    // Invalid overrides are refused with every problem, and change nothing.
    let body = error_of(
        put(json!({"weights": {"nope": 50, "us-west-2a": 40}, "reason": ""}))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    assert!(body["details"].as_array().unwrap().len() >= 2, "{body}");
    error_of(
        api.client
            .put(api.url("/api/v1/policies/ghost/override"))
            .json(&json!({"weights": {}, "reason": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // A client that reconnects with Last-Event-ID gets what it missed, and only that.
    drop(stream);
    assert_eq!(
        api.client
            .delete(api.url("/api/v1/policies/a/override"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    error_of(
        api.client
            .delete(api.url("/api/v1/policies/a/override"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = api
        .client
        .post(api.url("/api/v1/policies/a/zones/eu-west-1a/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    error_of(
        api.client
            .post(api.url("/api/v1/policies/a/zones/nope/drain"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let mut stream = api
        .client
        .get(&url)
        .header("last-event-id", id.to_string())
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let (cleared, _) = next_event(&mut stream, &mut buf, "override-cleared").await;
    let (drained, e) = next_event(&mut stream, &mut buf, "zone-drained").await;
    assert!(id < cleared && cleared < drained);
    assert_eq!(e["details"]["zone"], "eu-west-1a");

    let listed: Value = api
        .client
        .get(api.url("/api/v1/events?policy=a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    // Each write re-derives the effective weights at once, with an event.
    assert_eq!(
        kinds,
        [
            "override-set",
            "weights-changed",
            "override-cleared",
            "weights-changed",
            "zone-drained",
            "weights-changed"
        ]
    );
    error_of(
        api.client
            .get(api.url("/api/v1/events?since=yesterday"))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn dns_providers_store_credential_references_never_secrets() {
    let api = Api::start().await;
    let url = api.url("/api/v1/providers");
    let pdns = json!({"name": "pdns-local", "kind": "pdns", "apiUrl": "http://127.0.0.1:8081",
                      "zone": "example.com.", "apiKey": {"env": "MERIDIAN_SECRET_PDNS_API_KEY"}, "useLua": true});
    let r = api.client.post(&url).json(&pdns).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/api/v1/providers/pdns-local");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["apiKey"],
        json!({"env": "MERIDIAN_SECRET_PDNS_API_KEY"})
    );
    error_of(
        api.client.post(&url).json(&pdns).send().await.unwrap(),
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;

    // A literal secret is refused, with every other problem.
    let mut leaky = pdns.clone();
    leaky["name"] = json!("leaky");
    leaky["apiKey"] = json!("s3cr3t-value");
    leaky["apiUrl"] = json!("not a url");
    let err = error_of(
        api.client.post(&url).json(&leaky).send().await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
    )
    .await;
    let mut fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    // Every problem at once; their order is the validator's business.
    fields.sort_unstable();
    assert_eq!(fields, ["config.apiKey", "config.apiUrl"]);
    assert!(
        !err.to_string().contains("s3cr3t-value"),
        "the error must not echo the secret: {err}"
    );
    error_of(
        api.client
            .get(api.url("/api/v1/providers/leaky"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // A provider used by a policy's zone cannot be deleted from under it.
    let mut p = policy("a", "a.example.com");
    p["spec"]["zones"][0]["dns"] = json!({"target": "192.0.2.10", "provider": "pdns-local"});
    assert_eq!(api.create(&p).await.status(), StatusCode::CREATED);
    let body = error_of(
        api.client
            .delete(api.url("/api/v1/providers/pdns-local"))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
        "in_use",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("\"a\"")
            || body["message"].as_str().unwrap().contains(" a"),
        "{body}"
    );

    let mut replaced = pdns.clone();
    replaced["useLua"] = json!(false);
    let r = api
        .client
        .put(api.url("/api/v1/providers/pdns-local"))
        .json(&replaced)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = api
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["useLua"], false);

    api.client
        .delete(api.url("/api/v1/policies/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api.client
            .delete(api.url("/api/v1/providers/pdns-local"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    error_of(
        api.client
            .delete(api.url("/api/v1/providers/pdns-local"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

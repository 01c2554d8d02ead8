//! Access control of the REST API: every endpoint against every role, OIDC
//! JWTs checked against a real JWKS endpoint, rate limits, and that no
//! token ever comes back in a response.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meridian_api::AppState;
use meridian_auth::{token, Authenticator, Config, OidcConfig, Rate, Role};
use meridian_test_support::database;
use reqwest::{Method, StatusCode};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Api {
    base: String,
    client: reqwest::Client,
    store: meridian_store::Store,
    stop: CancellationToken,
}

impl Api {
    async fn start(config: Config) -> Api {
        let db = database().await;
        let mut state = AppState::new(db.store.clone());
        state.auth = Arc::new(Authenticator::new(db.store.clone(), config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let app = meridian_api::router(state);
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        tokio::spawn(async move { serve.await.unwrap() });
        Api {
            base,
            client: reqwest::Client::new(),
            store: db.store,
            stop,
        }
    }

    async fn token(&self, name: &str, role: Role) -> String {
        let secret = token::generate();
        self.store
            .create_token(name, role.as_str(), &token::hash(&secret), "test")
            .await
            .unwrap();
        secret
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> (StatusCode, String) {
        let mut r = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            let ct = if method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            r = r.header("content-type", ct).body(b.to_string());
        }
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

fn policy(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"host": format!("{name}.example.com"), "port": 8080,
        "zones": [{"name": "a", "weight": 70, "endpoints": [{"address": "127.0.5.1", "port": 9},
                                                             {"address": "127.0.5.3", "port": 9, "version": "v2"}]},
                  {"name": "b", "weight": 30, "endpoints": [{"address": "127.0.5.2", "port": 9}]}],
        "routes": [{"name": "r", "canary": {"version": "v2", "weight": 10}}],
        "failover": {"mode": "manual"}}})
}

/// One request per endpoint, and the least role that may make it.
fn endpoints() -> Vec<(Method, &'static str, Option<Value>, Role)> {
    use Role::*;
    let provider = json!({"name": "pdns-a", "kind": "pdns", "apiUrl": "http://127.0.0.1:8081",
                          "zone": "example.com.", "apiKey": {"env": "MERIDIAN_SECRET_PDNS_API_KEY"}});
    vec![
        (Method::GET, "/api/v1/policies", None, Viewer),
        (Method::GET, "/api/v1/policies/p", None, Viewer),
        (Method::GET, "/api/v1/policies/p/revisions", None, Viewer),
        (Method::GET, "/api/v1/policies/p/status", None, Viewer),
        (Method::GET, "/api/v1/events", None, Viewer),
        (Method::GET, "/api/v1/providers", None, Viewer),
        (Method::GET, "/api/v1/dashboard/overview", None, Viewer),
        (Method::GET, "/api/v1/gitops/sources", None, Viewer),
        (
            Method::POST,
            "/api/v1/gitops/sources",
            Some(
                json!({"name": "repo", "url": "file:///nonexistent/repo.git",
            "branch": "main", "path": "policies/", "intervalSeconds": 60}),
            ),
            Admin,
        ),
        (
            Method::GET,
            "/api/v1/gitops/sources/repo/status",
            None,
            Viewer,
        ),
        (
            Method::GET,
            "/api/v1/gitops/sources/repo/syncs",
            None,
            Viewer,
        ),
        (
            Method::POST,
            "/api/v1/gitops/sources/repo/sync",
            None,
            Admin,
        ),
        (
            Method::GET,
            "/api/v1/dashboard/events?policy=p&limit=5",
            None,
            Viewer,
        ),
        (Method::GET, "/api/v1/providers/pdns-seed", None, Viewer),
        (
            Method::POST,
            "/api/v1/policies",
            Some(policy("fresh")),
            Admin,
        ),
        (Method::PUT, "/api/v1/policies/p", Some(policy("p")), Admin),
        (
            Method::POST,
            "/api/v1/policies/p/rollback",
            Some(json!({"revision": 1})),
            Admin,
        ),
        (
            Method::PATCH,
            "/api/v1/policies/p",
            Some(
                json!({"spec": {"routes": [{"name": "r", "canary": {"version": "v2", "weight": 20}}]}}),
            ),
            Operator,
        ),
        (
            Method::PUT,
            "/api/v1/policies/p/override",
            Some(json!({"weights": {"a": 100, "b": 0}, "reason": "drill"})),
            Operator,
        ),
        (
            Method::DELETE,
            "/api/v1/policies/p/override",
            None,
            Operator,
        ),
        (
            Method::POST,
            "/api/v1/policies/p/zones/b/drain",
            None,
            Operator,
        ),
        (
            Method::POST,
            "/api/v1/policies/p/zones/b/undrain",
            None,
            Operator,
        ),
        (
            Method::POST,
            "/api/v1/providers",
            Some(provider.clone()),
            Admin,
        ),
        (
            Method::PUT,
            "/api/v1/providers/pdns-a",
            Some(provider),
            Admin,
        ),
        (Method::DELETE, "/api/v1/providers/pdns-a", None, Admin),
        (Method::DELETE, "/api/v1/policies/victim", None, Admin),
        (Method::GET, "/api/v1/tokens", None, Admin),
        (
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "made-by-api", "role": "viewer"})),
            Admin,
        ),
        (Method::DELETE, "/api/v1/tokens/spare", None, Admin),
        (Method::GET, "/api/v1/audit", None, Admin),
        (
            Method::GET,
            "/api/v1/audit?policy=p&actor=token:admin",
            None,
            Admin,
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_against_every_role() {
    let api = Api::start(Config::default()).await;
    let tokens = [
        (Role::Viewer, api.token("viewer", Role::Viewer).await),
        (Role::Operator, api.token("operator", Role::Operator).await),
        (Role::Admin, api.token("admin", Role::Admin).await),
    ];
    api.token("spare", Role::Viewer).await;
    let admin = tokens[2].1.clone();
    for name in ["p", "victim"] {
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/policies",
                Some(&policy(name)),
                Some(&admin),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let seed = json!({"name": "pdns-seed", "kind": "pdns", "apiUrl": "http://127.0.0.1:8081",
                      "zone": "example.com.", "apiKey": {"env": "MERIDIAN_SECRET_PDNS_API_KEY"}});
    let (s, b) = api
        .call(Method::POST, "/api/v1/providers", Some(&seed), Some(&admin))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    for (method, path, body, least) in endpoints() {
        let what = format!("{method} {path}");
        for bearer in [None, Some("mrd_not-a-real-token"), Some("not.a.jwt")] {
            let (s, b) = api.call(method.clone(), path, body.as_ref(), bearer).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} with {bearer:?}: {b}");
        }
        let mut first_allowed = true;
        for (role, secret) in &tokens {
            let (s, b) = api
                .call(method.clone(), path, body.as_ref(), Some(secret))
                .await;
            if *role < least {
                assert_eq!(s, StatusCode::FORBIDDEN, "{what} as {role}: {b}");
                let e: Value = serde_json::from_str(&b).unwrap();
                assert_eq!(e["error"], "forbidden");
            } else if first_allowed {
                assert!(s.is_success(), "{what} as {role}: {s} {b}");
                first_allowed = false;
            } else {
                // Later callers may meet what the first one did (409, 404).
                assert!(
                    s != 401 && s != 403 && !s.is_server_error(),
                    "{what} as {role}: {s} {b}"
                );
            }
            for (_, t) in &tokens {
                assert!(!b.contains(t.as_str()), "{what} answered with a token");
            }
        }
    }

    // Open routes need nothing.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let (s, _) = api.call(Method::GET, path, None, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }

    // Every write names its caller in the audit log.
    let (_, audit) = api
        .call(Method::GET, "/api/v1/audit?policy=p", None, Some(&admin))
        .await;
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let actors: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(
        actors.contains(&"token:admin") && actors.contains(&"token:operator"),
        "{actors:?}"
    );
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "create",
        "update",
        "override-set",
        "override-cleared",
        "zone-drained",
        "zone-undrained",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let (_, by_operator) = api
        .call(
            Method::GET,
            "/api/v1/audit?actor=token:operator",
            None,
            Some(&admin),
        )
        .await;
    let by_operator: Value = serde_json::from_str(&by_operator).unwrap();
    assert!(by_operator["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "token:operator"));

    // Tokens are listed without secrets or hashes; a revoked one stops working.
    let (_, listed) = api
        .call(Method::GET, "/api/v1/tokens", None, Some(&admin))
        .await;
    for (_, t) in &tokens {
        assert!(
            !listed.contains(t.as_str()) && !listed.contains(&token::hash(t)),
            "{listed}"
        );
    }
    let viewer = &tokens[0].1;
    let (s, _) = api
        .call(Method::DELETE, "/api/v1/tokens/viewer", None, Some(&admin))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call(Method::GET, "/api/v1/policies", None, Some(viewer))
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a revoked token is refused at once"
    );
    api.stop.cancel();
}

#[tokio::test]
async fn operators_change_canary_weights_but_nothing_else_of_a_policy() {
    let api = Api::start(Config::default()).await;
    let admin = api.token("admin", Role::Admin).await;
    let operator = api.token("operator", Role::Operator).await;
    api.call(
        Method::POST,
        "/api/v1/policies",
        Some(&policy("p")),
        Some(&admin),
    )
    .await;
    let canary =
        json!({"spec": {"routes": [{"name": "r", "canary": {"version": "v2", "weight": 50}}]}});
    let (s, b) = api
        .call(
            Method::PATCH,
            "/api/v1/policies/p",
            Some(&canary),
            Some(&operator),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let weights = json!({"spec": {"zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "127.0.5.1", "port": 9}]}]}});
    let (s, b) = api
        .call(
            Method::PATCH,
            "/api/v1/policies/p",
            Some(&weights),
            Some(&operator),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(b.contains("only canary weights"), "{b}");
    let (_, p) = api
        .call(Method::GET, "/api/v1/policies/p", None, Some(&operator))
        .await;
    let p: Value = serde_json::from_str(&p).unwrap();
    assert_eq!(p["spec"]["routes"][0]["canary"]["weight"], 50);
    assert_eq!(
        p["spec"]["zones"].as_array().unwrap().len(),
        2,
        "the refused patch changed nothing"
    );
    api.stop.cancel();
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let api = Api::start(Config {
        rate: Some(Rate {
            per_second: 1.0,
            burst: 3.0,
        }),
        ..Config::default()
    })
    .await;
    let a = api.token("a", Role::Viewer).await;
    let b = api.token("b", Role::Viewer).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            api.call(Method::GET, "/api/v1/policies", None, Some(&a))
                .await
                .0,
        );
    }
    assert_eq!(&statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
    let r = api
        .client
        .get(format!("{}/api/v1/policies", api.base))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        api.call(Method::GET, "/api/v1/policies", None, Some(&b))
            .await
            .0,
        StatusCode::OK
    );
    // Probes are never limited.
    for _ in 0..10 {
        assert_eq!(
            api.call(Method::GET, "/healthz", None, None).await.0,
            StatusCode::OK
        );
    }
    api.stop.cancel();
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let api = Api::start(Config::default()).await;
    let admin = api.token("admin", Role::Admin).await;
    let r = api
        .client
        .get(format!("{}/api/v1/policies", api.base))
        .bearer_auth(&admin)
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    api.stop.cancel();
}

/// An identity provider on loopback: a JWKS endpoint and a signing key.
struct Idp {
    jwks_url: String,
    key: Ed25519KeyPair,
}

impl Idp {
    async fn start() -> Idp {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
                                    "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref())}]});
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp { jwks_url, key }
    }

    fn jwt(&self, kid: &str, claims: Value) -> String {
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(self.key.sign(signing_input.as_bytes()).as_ref());
        format!("{signing_input}.{sig}")
    }
}

#[tokio::test]
async fn oidc_jwts_are_checked_against_the_jwks_and_carry_the_role() {
    let idp = Idp::start().await;
    let api = Api::start(Config {
        oidc: Some(OidcConfig {
            issuer: "https://idp.test".into(),
            audience: "meridian".into(),
            jwks_url: idp.jwks_url.clone(),
            role_claim: "meridian_role".into(),
        }),
        rate: None,
        streams_per_caller: None,
    })
    .await;
    let admin = api.token("admin", Role::Admin).await;
    api.call(
        Method::POST,
        "/api/v1/policies",
        Some(&policy("p")),
        Some(&admin),
    )
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |role: &str, aud: &str, exp: u64| json!({"iss": "https://idp.test", "aud": aud, "sub": "alice", "exp": exp, "meridian_role": role});
    let operator = idp.jwt("k1", claims("operator", "meridian", now + 600));
    let (s, b) = api
        .call(
            Method::POST,
            "/api/v1/policies/p/zones/b/drain",
            None,
            Some(&operator),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = api
        .call(
            Method::POST,
            "/api/v1/policies",
            Some(&policy("q")),
            Some(&operator),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, audit) = api
        .call(Method::GET, "/api/v1/audit?policy=p", None, Some(&admin))
        .await;
    assert!(
        audit.contains("oidc:alice"),
        "the audit log names the subject: {audit}"
    );

    let refused = [
        (
            "expired",
            idp.jwt("k1", claims("admin", "meridian", now - 600)),
        ),
        (
            "wrong audience",
            idp.jwt("k1", claims("admin", "someone-else", now + 600)),
        ),
        (
            "unknown key",
            idp.jwt("k2", claims("admin", "meridian", now + 600)),
        ),
        (
            "unknown role",
            idp.jwt("k1", claims("root", "meridian", now + 600)),
        ),
    ];
    for (why, jwt) in refused {
        let (s, b) = api
            .call(Method::GET, "/api/v1/policies", None, Some(&jwt))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}: {b}");
    }
    // A token signed by another key under a known key id is refused too.
    let other = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let forged = Idp {
        jwks_url: String::new(),
        key: other,
    }
    .jwt("k1", claims("admin", "meridian", now + 600));
    let (s, _) = api
        .call(Method::GET, "/api/v1/policies", None, Some(&forged))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    api.stop.cancel();
}

//! The key cache against a real (loopback) JWKS endpoint whose answers a
//! test controls: up, down, or slow.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const UP: u8 = 0;
const DOWN: u8 = 1;
const SLOW: u8 = 2;

/// An identity provider: one Ed25519 key `k1`, a JWKS endpoint that
/// counts its requests, and a switch for how it answers.
struct Idp {
    url: String,
    key: Ed25519KeyPair,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU32>,
}

impl Idp {
    async fn start() -> Idp {
        let rng = ring::rand::SystemRandom::new();
        let key =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
                .unwrap();
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
                                     "use": "sig", "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref())}]})
        .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let (mode, hits) = (Arc::new(AtomicU8::new(UP)), Arc::new(AtomicU32::new(0)));
        let (m, h) = (mode.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (m, h, jwks) = (m.clone(), h.clone(), jwks.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = match m.load(Ordering::SeqCst) {
                        DOWN => ("503 Service Unavailable", String::new()),
                        SLOW => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            ("200 OK", jwks)
                        }
                        _ => ("200 OK", jwks),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        Idp {
            url,
            key,
            mode,
            hits,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }

    fn jwt(&self, kid: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({"iss": "https://idp.test", "aud": "meridian", "sub": "alice",
                            "exp": now + 600, "meridian_role": "viewer"});
        let head =
            URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(self.key.sign(input.as_bytes()).as_ref());
        format!("{input}.{sig}")
    }

    fn oidc(&self, ttl: Duration) -> Oidc {
        Oidc::with_ttl(
            OidcConfig {
                issuer: "https://idp.test".into(),
                audience: "meridian".into(),
                jwks_url: self.url.clone(),
                role_claim: "meridian_role".into(),
            },
            ttl,
        )
    }
}

#[tokio::test]
async fn a_failed_fetch_is_remembered_and_backed_off() {
    let idp = Idp::start().await;
    idp.set(DOWN);
    let oidc = idp.oidc(KEYS_TTL);
    let jwt = idp.jwt("k1");
    for _ in 0..5 {
        assert!(matches!(
            oidc.verify(&jwt).await,
            Err(AuthError::Unavailable(_))
        ));
    }
    assert_eq!(idp.hits(), 1, "one fetch, then the failure is cached");
    // After the backoff (1 s after the first failure) it tries again.
    idp.set(UP);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(oidc.verify(&jwt).await.unwrap().0, "oidc:alice");
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn the_last_good_keys_serve_while_the_provider_is_down() {
    let idp = Idp::start().await;
    let oidc = idp.oidc(Duration::from_millis(200));
    let jwt = idp.jwt("k1");
    oidc.verify(&jwt).await.unwrap();
    idp.set(DOWN);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stale keys and an unreachable provider: the stale keys still serve,
    // and the failed refresh is not retried on every request.
    for _ in 0..5 {
        assert_eq!(oidc.verify(&jwt).await.unwrap().0, "oidc:alice");
    }
    assert_eq!(idp.hits(), 2);
    // A key id nobody published is still refused.
    assert!(matches!(
        oidc.verify(&idp.jwt("k9")).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_slow_fetch_stalls_no_caller_with_a_usable_key() {
    let idp = Idp::start().await;
    let oidc = Arc::new(idp.oidc(Duration::from_millis(200)));
    let jwt = idp.jwt("k1");
    oidc.verify(&jwt).await.unwrap();
    idp.set(SLOW);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One caller starts the (3 s) refresh of the stale keys...
    let refreshing = {
        let (oidc, jwt) = (oidc.clone(), jwt.clone());
        tokio::spawn(async move { oidc.verify(&jwt).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and the others go on with the keys they have, without waiting.
    let started = Instant::now();
    for _ in 0..3 {
        oidc.verify(&jwt).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "callers waited for the fetch: {:?}",
        started.elapsed()
    );
    assert!(refreshing.await.unwrap().is_ok());
}

#[test]
fn backoff_doubles_to_a_minute() {
    let got: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
}

//! OIDC: JWTs signed by an identity provider, checked against its JWKS.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

use crate::{AuthError, Role};

/// How to trust an identity provider's tokens.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    /// The claim that names the caller's role (`viewer`, `operator`, `admin`).
    pub role_claim: String,
}

pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    /// What is known of the provider's keys. Held only to read or update,
    /// never across a fetch: a slow or unreachable identity provider must
    /// not stall callers whose keys are already known.
    keys: std::sync::Mutex<Keys>,
    /// One fetch at a time; callers that can make do with the keys they
    /// have do not wait for it.
    fetching: tokio::sync::Mutex<()>,
    ttl: Duration,
}

/// The last good key set, and the failures since.
#[derive(Default)]
struct Keys {
    set: Option<std::sync::Arc<JwkSet>>,
    fetched: Option<Instant>,
    /// Fetches that failed in a row; the next waits [`backoff`] of it.
    failures: u32,
    last_failure: Option<(Instant, String)>,
}

impl Keys {
    fn find(&self, kid: &str) -> Option<DecodingKey> {
        let set = self.set.as_ref()?;
        set.find(kid).and_then(|k| DecodingKey::from_jwk(k).ok())
    }

    /// Whether a fetch may start now: not while a failure's backoff runs,
    /// nor sooner than `MIN_REFRESH` after the last good fetch unless the
    /// keys are stale (so forged key ids cannot hammer the provider).
    fn may_fetch(&self, now: Instant, ttl: Duration) -> bool {
        if let Some((at, _)) = &self.last_failure {
            if now.saturating_duration_since(*at) < backoff(self.failures) {
                return false;
            }
        }
        match self.fetched {
            None => true,
            Some(at) => {
                let age = now.saturating_duration_since(at);
                age >= ttl || age >= MIN_REFRESH
            }
        }
    }
}

/// How long after the `failures`-th failed fetch in a row the next may
/// start: 1 s, doubling, at most 60 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Keys are re-fetched after this, or sooner for an unknown key id (at most
/// once per `MIN_REFRESH`, so forged key ids cannot hammer the provider).
const KEYS_TTL: Duration = Duration::from_secs(300);
const MIN_REFRESH: Duration = Duration::from_secs(10);

impl Oidc {
    pub fn new(config: OidcConfig) -> Oidc {
        Oidc::with_ttl(config, KEYS_TTL)
    }

    fn with_ttl(config: OidcConfig, ttl: Duration) -> Oidc {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        Oidc {
            config,
            http,
            keys: std::sync::Mutex::new(Keys::default()),
            fetching: tokio::sync::Mutex::new(()),
            ttl,
        }
    }

    /// The caller's subject and role, if the token is valid now.
    pub async fn verify(&self, jwt: &str) -> Result<(String, Role), AuthError> {
        let invalid = |why: String| AuthError::Invalid(format!("invalid token: {why}"));
        let header = decode_header(jwt).map_err(|e| invalid(e.to_string()))?;
        let kid = header.kid.clone().unwrap_or_default();
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<serde_json::Map<String, serde_json::Value>>(jwt, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        let subject = data
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        // The subject is the audit log's actor: text PostgreSQL can store,
        // and something a person can read.
        if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
            return Err(invalid(
                "the sub claim must be 1 to 256 characters without control characters".into(),
            ));
        }
        let role = data
            .claims
            .get(&self.config.role_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(format!("no {:?} claim", self.config.role_claim)))?
            .parse::<Role>()
            .map_err(invalid)?;
        Ok((format!("oidc:{subject}"), role))
    }

    /// The key `kid` names: from the keys held while they are fresh; else
    /// from a fetch (one at a time, outside the lock); and when the
    /// provider cannot be reached, from the last good keys, stale or not.
    /// A failed fetch is remembered and not retried before its backoff.
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        let unknown = || AuthError::Invalid(format!("invalid token: unknown key id {kid:?}"));
        let fresh = |keys: &Keys| keys.fetched.is_some_and(|at| at.elapsed() < self.ttl);
        {
            let keys = self.lock();
            match keys.find(kid) {
                Some(key) if fresh(&keys) => return Ok(key),
                found => {
                    if !keys.may_fetch(Instant::now(), self.ttl) {
                        return found.ok_or_else(|| self.unusable(&keys, unknown()));
                    }
                }
            }
        }
        // A caller with a usable (stale) key does not wait for a fetch
        // that another caller runs.
        let _fetch = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(key) = self.lock().find(kid) {
                    return Ok(key);
                }
                self.fetching.lock().await
            }
        };
        // Another caller may have fetched while this one waited.
        {
            let keys = self.lock();
            if let Some(key) = keys.find(kid).filter(|_| fresh(&keys)) {
                return Ok(key);
            }
            if !keys.may_fetch(Instant::now(), self.ttl) {
                return keys
                    .find(kid)
                    .ok_or_else(|| self.unusable(&keys, unknown()));
            }
        }
        let fetched = self.fetch().await;
        let mut keys = self.lock();
        match fetched {
            Ok(set) => {
                keys.set = Some(std::sync::Arc::new(set));
                keys.fetched = Some(Instant::now());
                keys.failures = 0;
                keys.last_failure = None;
                keys.find(kid).ok_or_else(unknown)
            }
            Err(why) => {
                keys.failures = keys.failures.saturating_add(1);
                tracing::warn!(
                    error = %why,
                    failures = keys.failures,
                    retry_in_ms = backoff(keys.failures).as_millis() as u64,
                    "fetching the OIDC keys failed; using the last good keys meanwhile"
                );
                keys.last_failure = Some((Instant::now(), why));
                keys.find(kid)
                    .ok_or_else(|| self.unusable(&keys, unknown()))
            }
        }
    }

    /// Why no key can be had: the provider is unreachable (and no good
    /// key set names `kid`), or the key id is unknown.
    fn unusable(&self, keys: &Keys, unknown: AuthError) -> AuthError {
        match &keys.last_failure {
            Some((_, why)) if keys.set.is_none() => AuthError::Unavailable(why.clone()),
            _ => unknown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        self.http
            .get(&self.config.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching the JWKS: {e}"))?
            .json()
            .await
            .map_err(|e| format!("reading the JWKS: {e}"))
    }
}

#[cfg(test)]
mod tests;

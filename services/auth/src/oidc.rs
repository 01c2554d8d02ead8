//! OIDC: JWTs signed by an identity provider, checked against its JWKS.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use tokio::sync::Mutex;

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
    keys: Mutex<Option<(JwkSet, Instant)>>,
}

/// Keys are re-fetched after this, or sooner for an unknown key id (at most
/// once per `MIN_REFRESH`, so forged key ids cannot hammer the provider).
const KEYS_TTL: Duration = Duration::from_secs(300);
const MIN_REFRESH: Duration = Duration::from_secs(10);

impl Oidc {
    pub fn new(config: OidcConfig) -> Oidc {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        Oidc {
            config,
            http,
            keys: Mutex::new(None),
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
        let role = data
            .claims
            .get(&self.config.role_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(format!("no {:?} claim", self.config.role_claim)))?
            .parse::<Role>()
            .map_err(invalid)?;
        Ok((format!("oidc:{subject}"), role))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        let mut keys = self.keys.lock().await;
        let find = |set: &JwkSet| set.find(kid).and_then(|k| DecodingKey::from_jwk(k).ok());
        if let Some((set, fetched)) = keys.as_ref() {
            if let Some(key) = find(set) {
                if fetched.elapsed() < KEYS_TTL {
                    return Ok(key);
                }
            } else if fetched.elapsed() < MIN_REFRESH {
                return Err(AuthError::Invalid(format!(
                    "invalid token: unknown key id {kid:?}"
                )));
            }
        }
        let set: JwkSet = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Unavailable(format!("fetching the JWKS: {e}")))?
            .json()
            .await
            .map_err(|e| AuthError::Unavailable(format!("reading the JWKS: {e}")))?;
        let key = find(&set);
        *keys = Some((set, Instant::now()));
        key.ok_or_else(|| AuthError::Invalid(format!("invalid token: unknown key id {kid:?}")))
    }
}

//! Who is calling, and whether they may.
//!
//! Callers present `Authorization: Bearer <credential>`: a Meridian token
//! (`mrd_…`, created with `meridian token create`, stored only as a hash) or
//! a JWT from the configured OIDC provider. Each maps to an [`Identity`]: the
//! actor the audit log records, and a [`Role`]. The REST and gRPC edges ask
//! [`Authenticator::authorize`] with the role a request needs.

mod limit;
mod oidc;
mod role;
pub mod token;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use limit::Rate;
pub use oidc::OidcConfig;
pub use role::{operator_may_change, rest_access, Access, Role};

use meridian_store::Store;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// As the audit log records it: `token:<name>` or `oidc:<subject>`.
    pub actor: String,
    pub role: Role,
}

impl Identity {
    /// Everyone, when authentication is off (local use on loopback only).
    pub fn anonymous() -> Identity {
        Identity {
            actor: "anonymous".to_owned(),
            role: Role::Admin,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    /// Never includes the credential itself.
    #[error("{0}")]
    Invalid(String),
    #[error("{actor} has role {role}; this needs {needed}")]
    Forbidden {
        actor: String,
        role: Role,
        needed: Role,
    },
    #[error("too many requests from {actor}; retry in {} ms", retry_after.as_millis())]
    RateLimited {
        actor: String,
        retry_after: Duration,
    },
    #[error("cannot check credentials now: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug, Default)]
pub struct Config {
    pub oidc: Option<OidcConfig>,
    /// Per caller; none means unlimited.
    pub rate: Option<Rate>,
}

/// Token lookups are cached this long, so revoking a token takes effect on
/// other replicas within it (at once on the replica that revoked it).
const TOKEN_CACHE: Duration = Duration::from_secs(2);

pub struct Authenticator {
    mode: Mode,
    limiter: Option<Mutex<limit::Limiter>>,
}

enum Mode {
    Off,
    On(Box<On>),
}

struct On {
    store: Store,
    oidc: Option<oidc::Oidc>,
    cache: Mutex<HashMap<String, (Option<Identity>, Instant)>>,
}

impl Authenticator {
    /// No authentication: every caller is [`Identity::anonymous`].
    pub fn off() -> Authenticator {
        Authenticator {
            mode: Mode::Off,
            limiter: None,
        }
    }

    pub fn new(store: Store, config: Config) -> Authenticator {
        Authenticator {
            mode: Mode::On(Box::new(On {
                store,
                oidc: config.oidc.map(oidc::Oidc::new),
                cache: Mutex::new(HashMap::new()),
            })),
            limiter: config.rate.map(|r| Mutex::new(limit::Limiter::new(r))),
        }
    }

    pub fn is_on(&self) -> bool {
        matches!(self.mode, Mode::On(_))
    }

    /// Authenticates the `Authorization` header's value, checks the role
    /// and the caller's rate limit.
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Role,
    ) -> Result<Identity, AuthError> {
        let who = self.authenticate(authorization).await?;
        if who.role < needed {
            return Err(AuthError::Forbidden {
                actor: who.actor,
                role: who.role,
                needed,
            });
        }
        if let Some(limiter) = &self.limiter {
            let checked = limiter
                .lock()
                .expect("limiter lock")
                .check(&who.actor, Instant::now());
            if let Err(retry_after) = checked {
                return Err(AuthError::RateLimited {
                    actor: who.actor,
                    retry_after,
                });
            }
        }
        Ok(who)
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        let Mode::On(on) = &self.mode else {
            return Ok(Identity::anonymous());
        };
        let On { store, oidc, cache } = on.as_ref();
        let credential = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::Missing)?;
        if credential.starts_with(token::PREFIX) {
            let hash = token::hash(credential);
            let cached = cache
                .lock()
                .expect("token cache lock")
                .get(&hash)
                .filter(|(_, at)| at.elapsed() < TOKEN_CACHE)
                .map(|(who, _)| who.clone());
            let who = match cached {
                Some(who) => who,
                None => {
                    let found = store
                        .token_by_hash(&hash)
                        .await
                        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
                    let who = found.and_then(|t| {
                        Some(Identity {
                            actor: format!("token:{}", t.name),
                            role: t.role.parse().ok()?,
                        })
                    });
                    let mut cache = cache.lock().expect("token cache lock");
                    if cache.len() > 10_000 {
                        cache.clear();
                    }
                    cache.insert(hash, (who.clone(), Instant::now()));
                    who
                }
            };
            return who.ok_or_else(|| AuthError::Invalid("unknown or revoked token".into()));
        }
        match oidc {
            Some(oidc) => {
                let (actor, role) = oidc.verify(credential).await?;
                Ok(Identity { actor, role })
            }
            None => Err(AuthError::Invalid(
                "not a Meridian token, and no OIDC provider is configured".into(),
            )),
        }
    }

    /// Drops cached lookups, so a token revoked here stops working at once.
    pub fn forget_tokens(&self) {
        if let Mode::On(on) = &self.mode {
            on.cache.lock().expect("token cache lock").clear();
        }
    }
}

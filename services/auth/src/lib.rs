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
    /// The caller holds as many long-lived streams as it may.
    #[error("{actor} already holds {limit} streams (event streams and watches); close one first")]
    TooManyStreams { actor: String, limit: u32 },
}

#[derive(Clone, Debug, Default)]
pub struct Config {
    pub oidc: Option<OidcConfig>,
    /// Per caller; none means unlimited.
    pub rate: Option<Rate>,
    /// Long-lived streams (event streams, watches) one caller may hold at
    /// once; none means unlimited. Each holds a database poll or a feed
    /// subscription, so one caller must not be able to take them all.
    pub streams_per_caller: Option<u32>,
}

/// Long-lived streams held per caller.
#[derive(Debug, Default)]
struct Streams {
    limit: Option<u32>,
    held: Mutex<HashMap<String, u32>>,
}

/// One held stream: counted until dropped (when the stream ends).
#[derive(Debug)]
pub struct StreamPermit {
    streams: std::sync::Arc<Streams>,
    actor: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut held = self.streams.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.actor) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.actor);
            }
        }
    }
}

/// Token lookups are cached this long, so revoking a token takes effect on
/// other replicas within it (at once on the replica that revoked it).
const TOKEN_CACHE: Duration = Duration::from_secs(2);

/// Failed token lookups each source address may cause: every unknown
/// `mrd_` token costs a database query, so they are limited before any
/// caller is known.
pub const FAILED_LOOKUPS: Rate = Rate {
    per_second: 2.0,
    burst: 20.0,
};

pub struct Authenticator {
    mode: Mode,
    limiter: Option<Mutex<limit::Limiter>>,
    /// Failed token lookups per source address ([`FAILED_LOOKUPS`]).
    failed: Mutex<limit::Limiter>,
    streams: std::sync::Arc<Streams>,
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
            failed: Mutex::new(limit::Limiter::new(FAILED_LOOKUPS)),
            streams: Default::default(),
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
            failed: Mutex::new(limit::Limiter::new(FAILED_LOOKUPS)),
            streams: std::sync::Arc::new(Streams {
                limit: config.streams_per_caller,
                held: Mutex::default(),
            }),
        }
    }

    /// Counts a long-lived stream against `who`'s limit; the stream holds
    /// the permit until it ends.
    pub fn open_stream(&self, who: &Identity) -> Result<StreamPermit, AuthError> {
        let mut held = self.streams.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(who.actor.clone()).or_insert(0);
        if let Some(limit) = self.streams.limit {
            if *n >= limit {
                return Err(AuthError::TooManyStreams {
                    actor: who.actor.clone(),
                    limit,
                });
            }
        }
        *n += 1;
        Ok(StreamPermit {
            streams: self.streams.clone(),
            actor: who.actor.clone(),
        })
    }

    /// Streams `actor` holds now.
    pub fn streams_held(&self, actor: &str) -> u32 {
        let held = self.streams.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(actor).copied().unwrap_or(0)
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
        self.authorize_from(authorization, needed, None).await
    }

    /// [`Authenticator::authorize`] for a caller at `peer`: failed token
    /// lookups from one address are rate limited ([`FAILED_LOOKUPS`]).
    pub async fn authorize_from(
        &self,
        authorization: Option<&str>,
        needed: Role,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Identity, AuthError> {
        let who = self.authenticate_from(authorization, peer).await?;
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
        self.authenticate_from(authorization, None).await
    }

    async fn authenticate_from(
        &self,
        authorization: Option<&str>,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Identity, AuthError> {
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
            let source = peer.map(|ip| ip.to_string());
            let who = match cached {
                Some(who) => who,
                None => {
                    if let Some(source) = &source {
                        let wait = self
                            .failed
                            .lock()
                            .expect("limiter lock")
                            .empty(source, Instant::now());
                        if let Some(retry_after) = wait {
                            return Err(AuthError::RateLimited {
                                actor: format!("unauthenticated callers at {source}"),
                                retry_after,
                            });
                        }
                    }
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
            if who.is_none() {
                if let Some(source) = &source {
                    // Counted against the address; the answer is 401 either way.
                    let _ = self
                        .failed
                        .lock()
                        .expect("limiter lock")
                        .check(source, Instant::now());
                }
            }
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

    /// Caps streams per caller (on an [`Authenticator::off`] too, where
    /// every caller is the one anonymous admin).
    pub fn with_stream_limit(mut self, limit: Option<u32>) -> Authenticator {
        self.streams = std::sync::Arc::new(Streams {
            limit,
            held: Mutex::default(),
        });
        self
    }

    /// Drops cached lookups, so a token revoked here stops working at once.
    pub fn forget_tokens(&self) {
        if let Mode::On(on) = &self.mode {
            on.cache.lock().expect("token cache lock").clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_caller_and_released() {
        let auth = Authenticator::off().with_stream_limit(Some(2));
        let (a, b) = (
            Identity {
                actor: "token:a".into(),
                role: Role::Viewer,
            },
            Identity {
                actor: "token:b".into(),
                role: Role::Viewer,
            },
        );
        let one = auth.open_stream(&a).unwrap();
        let two = auth.open_stream(&a).unwrap();
        assert!(matches!(
            auth.open_stream(&a),
            Err(AuthError::TooManyStreams { limit: 2, .. })
        ));
        let other = auth.open_stream(&b).unwrap();
        assert_eq!(auth.streams_held("token:a"), 2);
        drop(one);
        let three = auth.open_stream(&a).unwrap();
        drop((two, three, other));
        assert_eq!(auth.streams_held("token:a"), 0);
        assert_eq!(auth.streams_held("token:b"), 0);
    }
}

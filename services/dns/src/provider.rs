//! The provider seam and the reconcile loop that drives it.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use meridian_telemetry::{counter, histogram, Counter, Family, HistogramFamily, Labels};

use crate::desired::{diff, Change, Record};

/// Why a provider call failed. The variant decides whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Worth retrying: connection errors, timeouts, 5xx, 429 / throttling.
    #[error("{provider} unavailable: {message}")]
    Unavailable {
        provider: &'static str,
        message: String,
    },
    /// The provider refused the request (4xx); retrying the same request
    /// cannot help.
    #[error("{provider} rejected the request (HTTP {status}): {message}")]
    Rejected {
        provider: &'static str,
        status: u16,
        message: String,
    },
    /// Meridian cannot express the desired records with this provider or
    /// configuration, or the provider answered something unexpected.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether [`reconcile`] retries after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// A DNS provider that holds Meridian's weighted records.
///
/// Methods return `impl Future + Send` rather than being `async fn` so that
/// callers can spawn reconciles on a multi-threaded runtime; implementations
/// may still write `async fn`.
pub trait Provider: Send + Sync {
    /// Short provider type, e.g. `pdns`; used in logs and errors.
    fn kind(&self) -> &'static str;

    /// Current records this provider holds for `name` (Meridian-managed ones),
    /// in the same shape [`crate::desired_records`] produces, so that a
    /// provider holding exactly the desired state diffs to nothing.
    fn read(&self, name: &str) -> impl Future<Output = Result<Vec<Record>, Error>> + Send;

    /// Applies all changes for one name as one atomic change where the
    /// provider allows. `changes` is what differs; `desired` is the complete
    /// target state, for providers (like PowerDNS) that can only replace
    /// whole record sets. Never called with empty `changes`.
    fn apply(
        &self,
        name: &str,
        changes: &[Change],
        desired: &[Record],
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What one reconcile did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Changes applied; 0 when the provider already held the desired state.
    pub changes: usize,
}

/// Retry schedule for [`Error::Unavailable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Total attempts, including the first (at least 1).
    pub attempts: u32,
    /// Delay before the second attempt; doubles after each further failure.
    pub initial: Duration,
}

impl Default for Backoff {
    /// 3 attempts, waiting 200 ms then 400 ms: rides out a provider restart
    /// or a throttling burst without holding a reconcile for long.
    fn default() -> Self {
        Self {
            attempts: 3,
            initial: Duration::from_millis(200),
        }
    }
}

/// Reads what `provider` holds for `name`, diffs it with `desired`, and
/// applies the difference (nothing when there is none), retrying on
/// [`Error::Unavailable`] with [`Backoff::default`].
pub async fn reconcile(
    provider: &impl Provider,
    name: &str,
    desired: &[Record],
) -> Result<Outcome, Error> {
    reconcile_with(provider, name, desired, Backoff::default()).await
}

/// [`reconcile`] with an explicit retry schedule.
///
/// A retry starts again from `read`: a failed apply may have landed, and the
/// fresh diff is what is still missing.
pub async fn reconcile_with(
    provider: &impl Provider,
    name: &str,
    desired: &[Record],
    backoff: Backoff,
) -> Result<Outcome, Error> {
    let want = crate::desired::fqdn(name);
    if let Some(stray) = desired.iter().find(|r| r.name != want) {
        return Err(Error::Invalid(format!(
            "desired record {} is not for {want}",
            stray.name
        )));
    }
    let mut delay = backoff.initial;
    let mut attempt = 1;
    loop {
        match reconcile_once(provider, &want, desired).await {
            Err(err) if err.is_retryable() && attempt < backoff.attempts.max(1) => {
                tracing::warn!(
                    provider = provider.kind(),
                    name = want,
                    attempt,
                    error = %err,
                    "dns reconcile failed; retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            result => return result,
        }
    }
}

static CALLS: LazyLock<Family<Labels<3>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_dns_provider_calls",
        "DNS provider calls by provider kind, operation (read or apply) and outcome (ok or error).",
    )
});

static ERRORS: LazyLock<Family<Labels<3>, Counter>> = LazyLock::new(|| {
    counter(
        "meridian_dns_provider_errors",
        "Failed DNS provider calls by provider kind, operation and error kind (unavailable, rejected, invalid).",
    )
});

static LATENCY: LazyLock<HistogramFamily<2>> = LazyLock::new(|| {
    histogram(
        "meridian_dns_provider_call_duration_seconds",
        "DNS provider call time by provider kind and operation.",
        meridian_telemetry::LATENCY_SECONDS,
    )
});

/// Runs one provider call and records it.
async fn measured<T>(
    kind: &'static str,
    op: &'static str,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let started = Instant::now();
    let result = call.await;
    LATENCY
        .get_or_create(&[("provider", kind.into()), ("op", op.into())])
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    CALLS
        .get_or_create(&[
            ("provider", kind.into()),
            ("op", op.into()),
            ("outcome", outcome.into()),
        ])
        .inc();
    if let Err(e) = &result {
        let error = match e {
            Error::Unavailable { .. } => "unavailable",
            Error::Rejected { .. } => "rejected",
            Error::Invalid(_) => "invalid",
        };
        ERRORS
            .get_or_create(&[
                ("provider", kind.into()),
                ("op", op.into()),
                ("kind", error.into()),
            ])
            .inc();
    }
    result
}

async fn reconcile_once(
    provider: &impl Provider,
    name: &str,
    desired: &[Record],
) -> Result<Outcome, Error> {
    let kind = provider.kind();
    let current = measured(kind, "read", provider.read(name)).await?;
    let changes = diff(&current, desired);
    if changes.is_empty() {
        return Ok(Outcome::default());
    }
    tracing::info!(
        provider = provider.kind(),
        name,
        changes = changes.len(),
        "applying dns changes"
    );
    measured(kind, "apply", provider.apply(name, &changes, desired)).await?;
    Ok(Outcome {
        changes: changes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::RecordKind;
    use std::sync::Mutex;

    /// Holds records in memory; fails the next calls as scripted.
    #[derive(Default)]
    struct Fake {
        records: Mutex<Vec<Record>>,
        failures: Mutex<Vec<Error>>,
        reads: Mutex<u32>,
        applies: Mutex<u32>,
        /// Its kind label; tests that read metrics use a kind of their own,
        /// since tests run in parallel and share the registry.
        kind: &'static str,
    }

    impl Fake {
        fn fail_next(&self, err: Error) {
            self.failures.lock().unwrap().push(err);
        }
        fn take_failure(&self) -> Result<(), Error> {
            match self.failures.lock().unwrap().pop() {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }
    }

    impl Provider for Fake {
        fn kind(&self) -> &'static str {
            if self.kind.is_empty() {
                "fake"
            } else {
                self.kind
            }
        }
        async fn read(&self, _name: &str) -> Result<Vec<Record>, Error> {
            *self.reads.lock().unwrap() += 1;
            self.take_failure()?;
            Ok(self.records.lock().unwrap().clone())
        }
        async fn apply(
            &self,
            _name: &str,
            changes: &[Change],
            desired: &[Record],
        ) -> Result<(), Error> {
            assert!(!changes.is_empty());
            *self.applies.lock().unwrap() += 1;
            *self.records.lock().unwrap() = desired.to_vec();
            Ok(())
        }
    }

    fn desired() -> Vec<Record> {
        ["a", "b"]
            .iter()
            .zip(["192.0.2.10", "192.0.2.11"])
            .map(|(z, t)| Record {
                name: "track.example.com.".to_owned(),
                kind: RecordKind::A,
                set_id: (*z).to_owned(),
                weight: 50,
                target: t.to_owned(),
                ttl: 30,
            })
            .collect()
    }

    const FAST: Backoff = Backoff {
        attempts: 3,
        initial: Duration::from_millis(1),
    };

    fn unavailable() -> Error {
        Error::Unavailable {
            provider: "fake",
            message: "503".to_owned(),
        }
    }

    #[tokio::test]
    async fn applies_once_then_converged() {
        let p = Fake::default();
        let d = desired();
        let first = reconcile_with(&p, "track.example.com", &d, FAST)
            .await
            .unwrap();
        assert_eq!(first.changes, 2);
        let second = reconcile_with(&p, "track.example.com.", &d, FAST)
            .await
            .unwrap();
        assert_eq!(second.changes, 0);
        assert_eq!(
            *p.applies.lock().unwrap(),
            1,
            "converged reconcile must not apply"
        );
    }

    #[tokio::test]
    async fn calls_errors_and_latency_are_counted_per_provider_and_operation() {
        let p = Fake {
            kind: "metered",
            ..Fake::default()
        };
        p.fail_next(unavailable());
        reconcile_with(&p, "track.example.com.", &desired(), FAST)
            .await
            .unwrap();
        let text = meridian_telemetry::render();
        let has = |line: &str| text.lines().any(|l| l == line);
        // A failed read, a retried read, one apply.
        for line in [
            "meridian_dns_provider_calls_total{provider=\"metered\",op=\"read\",outcome=\"error\"} 1",
            "meridian_dns_provider_calls_total{provider=\"metered\",op=\"read\",outcome=\"ok\"} 1",
            "meridian_dns_provider_calls_total{provider=\"metered\",op=\"apply\",outcome=\"ok\"} 1",
            "meridian_dns_provider_errors_total{provider=\"metered\",op=\"read\",kind=\"unavailable\"} 1",
            "meridian_dns_provider_call_duration_seconds_count{provider=\"metered\",op=\"read\"} 2",
        ] {
            assert!(has(line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn retries_unavailable_up_to_the_limit() {
        let p = Fake::default();
        p.fail_next(unavailable());
        p.fail_next(unavailable());
        let out = reconcile_with(&p, "track.example.com.", &desired(), FAST)
            .await
            .unwrap();
        assert_eq!(out.changes, 2);
        assert_eq!(*p.reads.lock().unwrap(), 3);

        let p = Fake::default();
        for _ in 0..3 {
            p.fail_next(unavailable());
        }
        let err = reconcile_with(&p, "track.example.com.", &desired(), FAST)
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(*p.reads.lock().unwrap(), 3);
        assert_eq!(*p.applies.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn never_retries_rejected() {
        let p = Fake::default();
        p.fail_next(Error::Rejected {
            provider: "fake",
            status: 422,
            message: "bad".to_owned(),
        });
        let err = reconcile_with(&p, "track.example.com.", &desired(), FAST)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Rejected { status: 422, .. }));
        assert_eq!(*p.reads.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn refuses_records_for_another_name() {
        let p = Fake::default();
        let err = reconcile_with(&p, "other.example.com.", &desired(), FAST)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(*p.reads.lock().unwrap(), 0);
    }
}

/// A credential: `Debug` prints `Secret(<redacted>)`, so configs holding it
/// can be logged. Every provider's keys use this one type.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for a header or a signature.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

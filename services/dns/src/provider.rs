//! The provider seam and the reconcile loop that drives it.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use meridian_telemetry::{counter, histogram, Counter, Family, HistogramFamily, Labels};

use crate::desired::{conflicts, diff, Change, Granularity, Held, Owner, Record};

/// Longest any one provider request may take (connect included). The
/// failover lease lives 5 s; a request must end well inside it, so that a
/// replica that loses the lease stops talking to providers before another
/// one can take over (see [`Fence`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a submit keeps free before the lease expires: the request is cut
/// off this long before a new leader could exist.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// A submit that could not run at least this long before the lease margin
/// is not started at all.
pub const MIN_SUBMIT: Duration = Duration::from_millis(500);

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
    /// The permission to change DNS (the failover lease) is gone or about
    /// to go: nothing was submitted.
    #[error("not submitted: {0}")]
    Fenced(String),
    /// The change would overwrite or shadow records Meridian did not
    /// create; they are left alone and nothing was submitted.
    #[error("records in the way: {}", .0.join("; "))]
    NotOwned(Vec<String>),
}

impl Error {
    /// Whether [`reconcile`] retries after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// Longest excerpt of a provider's answer kept in an error: answers can
/// be whole HTML pages, and errors end up in events and statuses.
pub const EXCERPT_LIMIT: usize = 200;

/// `text` trimmed, control characters replaced by spaces, cut to
/// [`EXCERPT_LIMIT`] characters (an ellipsis says it was cut).
pub fn excerpt(text: &str) -> String {
    let text = text.trim();
    let mut out: String = text
        .chars()
        .take(EXCERPT_LIMIT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > EXCERPT_LIMIT {
        out.push('…');
    }
    out
}

/// The permission to change a provider, checked right before every submit.
///
/// The failover leader's fence is its lease: `check` answers by when the
/// lease still certainly holds (from the database's view of its expiry),
/// or [`Error::Fenced`] once it is gone. [`submit`] uses that deadline to
/// cut a request off before another replica could lead.
pub trait Fence: Send + Sync {
    /// The instant until which a submit may run, or why none may start.
    fn check(&self) -> impl Future<Output = Result<tokio::time::Instant, Error>> + Send;
}

/// No fence: for tools and tests that own the provider outright. Submits
/// are still bounded by [`CALL_TIMEOUT`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Unfenced;

impl Fence for Unfenced {
    async fn check(&self) -> Result<tokio::time::Instant, Error> {
        Ok(tokio::time::Instant::now() + CALL_TIMEOUT + LEASE_MARGIN)
    }
}

/// Runs one request that changes a provider, fenced: the fence is checked
/// first, and the request is cut off [`LEASE_MARGIN`] before the fence's
/// deadline (and after [`CALL_TIMEOUT`] at most). A request cut off may
/// have reached the provider before the deadline; one that had not is
/// never sent later (its connection is closed).
pub async fn submit<T>(
    fence: &impl Fence,
    request: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let deadline = fence.check().await?;
    let now = tokio::time::Instant::now();
    let budget = deadline
        .saturating_duration_since(now)
        .saturating_sub(LEASE_MARGIN)
        .min(CALL_TIMEOUT);
    if budget < MIN_SUBMIT {
        return Err(Error::Fenced(format!(
            "the lease expires in {:?}, too soon to submit",
            deadline.saturating_duration_since(now)
        )));
    }
    match tokio::time::timeout(budget, request).await {
        Ok(result) => result,
        Err(_) => Err(Error::Unavailable {
            provider: "dns",
            message: format!("submit cut off after {budget:?}, before the lease could expire"),
        }),
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

    /// How this provider groups a name's records, for ownership conflicts.
    fn granularity(&self) -> Granularity;

    /// What this provider holds for `name`: the records `owner`'s
    /// installation created (by their ownership marks), in the same shape
    /// [`crate::desired_records`] produces, so that a provider holding
    /// exactly the desired state diffs to nothing; and the records of the
    /// published types someone else made.
    fn read(&self, name: &str, owner: &Owner) -> impl Future<Output = Result<Held, Error>> + Send;

    /// Applies all changes for one name as one atomic change where the
    /// provider allows, with ownership marks for every record it writes and
    /// without the marks of records it deletes. `changes` is what differs;
    /// `desired` is the complete target state, for providers (like PowerDNS)
    /// that can only replace whole record sets. Never called with empty
    /// `changes`. Every request that changes the provider goes through
    /// [`submit`] with `fence`.
    fn apply(
        &self,
        name: &str,
        changes: &[Change],
        desired: &[Record],
        owner: &Owner,
        fence: &impl Fence,
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
/// [`Error::Unavailable`] with [`Backoff::default`], as the default
/// [`Owner`] and [`Unfenced`].
pub async fn reconcile(
    provider: &impl Provider,
    name: &str,
    desired: &[Record],
) -> Result<Outcome, Error> {
    reconcile_with(provider, name, desired, Backoff::default()).await
}

/// [`reconcile`] with an explicit retry schedule.
pub async fn reconcile_with(
    provider: &impl Provider,
    name: &str,
    desired: &[Record],
    backoff: Backoff,
) -> Result<Outcome, Error> {
    reconcile_fenced(
        provider,
        name,
        desired,
        &Owner::default(),
        &Unfenced,
        backoff,
    )
    .await
}

/// The reconcile the failover leader runs: as `owner`, every submit
/// checked against `fence`. An empty `desired` removes every record
/// `owner` holds for `name` (cleanup), and nothing else.
///
/// A retry starts again from `read`: a failed apply may have landed, and the
/// fresh diff is what is still missing.
pub async fn reconcile_fenced(
    provider: &impl Provider,
    name: &str,
    desired: &[Record],
    owner: &Owner,
    fence: &impl Fence,
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
        match reconcile_once(provider, &want, desired, owner, fence).await {
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
            Error::Fenced(_) => "fenced",
            Error::NotOwned(_) => "not_owned",
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
    owner: &Owner,
    fence: &impl Fence,
) -> Result<Outcome, Error> {
    let kind = provider.kind();
    let held = measured(kind, "read", provider.read(name, owner)).await?;
    let changes = diff(&held.owned, desired);
    if changes.is_empty() {
        return Ok(Outcome::default());
    }
    let in_the_way = conflicts(desired, &held.foreign, provider.granularity());
    if !in_the_way.is_empty() {
        return Err(Error::NotOwned(in_the_way));
    }
    tracing::info!(
        provider = provider.kind(),
        name,
        changes = changes.len(),
        "applying dns changes"
    );
    measured(
        kind,
        "apply",
        provider.apply(name, &changes, desired, owner, fence),
    )
    .await?;
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
        foreign: Mutex<Vec<Record>>,
        submit_delay: Mutex<Duration>,
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
        fn granularity(&self) -> Granularity {
            Granularity::PerZone
        }
        async fn read(&self, _name: &str, _owner: &Owner) -> Result<Held, Error> {
            *self.reads.lock().unwrap() += 1;
            self.take_failure()?;
            Ok(Held {
                owned: self.records.lock().unwrap().clone(),
                foreign: self.foreign.lock().unwrap().clone(),
            })
        }
        async fn apply(
            &self,
            _name: &str,
            changes: &[Change],
            desired: &[Record],
            _owner: &Owner,
            fence: &impl Fence,
        ) -> Result<(), Error> {
            assert!(!changes.is_empty());
            *self.applies.lock().unwrap() += 1;
            // The test hook: a submit that takes `submit_delay` to land,
            // as behind a slow network.
            let delay = *self.submit_delay.lock().unwrap();
            submit(fence, async {
                tokio::time::sleep(delay).await;
                *self.records.lock().unwrap() = desired.to_vec();
                Ok(())
            })
            .await
        }
    }

    /// A fence whose lease is gone, or ends at a given instant.
    struct Lease(Option<tokio::time::Instant>);

    impl Fence for Lease {
        async fn check(&self) -> Result<tokio::time::Instant, Error> {
            self.0.ok_or_else(|| Error::Fenced("lease lost".to_owned()))
        }
    }

    const ONCE: Backoff = Backoff {
        attempts: 1,
        initial: Duration::from_millis(1),
    };

    #[test]
    fn excerpts_are_bounded_and_printable() {
        assert_eq!(excerpt("  bad\r\nrequest "), "bad  request");
        let long = "x".repeat(5000);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_LIMIT + 1);
        assert!(cut.ends_with('…'));
    }

    #[tokio::test]
    async fn a_lost_lease_submits_nothing() {
        let p = Fake::default();
        let err = reconcile_fenced(
            &p,
            "track.example.com.",
            &desired(),
            &Owner::default(),
            &Lease(None),
            FAST,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Fenced(_)), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(
            *p.reads.lock().unwrap(),
            1,
            "a fenced reconcile is not retried"
        );
        assert!(p.records.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_submit_is_cut_off_before_the_lease_can_expire() {
        let p = Fake::default();
        *p.submit_delay.lock().unwrap() = Duration::from_secs(3);
        let expires = tokio::time::Instant::now() + Duration::from_millis(1600);
        let started = std::time::Instant::now();
        let err = reconcile_fenced(
            &p,
            "track.example.com.",
            &desired(),
            &Owner::default(),
            &Lease(Some(expires)),
            ONCE,
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "cut off {LEASE_MARGIN:?} before expiry, not at the provider's pace: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            p.records.lock().unwrap().is_empty(),
            "the delayed submit must never land"
        );

        // Too little lease left to start at all.
        let soon = tokio::time::Instant::now() + LEASE_MARGIN + Duration::from_millis(100);
        let err = reconcile_fenced(
            &p,
            "track.example.com.",
            &desired(),
            &Owner::default(),
            &Lease(Some(soon)),
            ONCE,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Fenced(_)), "{err}");
    }

    #[tokio::test]
    async fn records_of_others_in_the_way_are_never_written_over() {
        let p = Fake::default();
        let mut theirs = desired()[0].clone();
        theirs.target = "198.51.100.1".to_owned();
        p.foreign.lock().unwrap().push(theirs);
        let err = reconcile_with(&p, "track.example.com.", &desired(), FAST)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::NotOwned(ref why) if why.len() == 1),
            "{err}"
        );
        assert_eq!(*p.applies.lock().unwrap(), 0);
        // Cleaning up (nothing desired) leaves them and succeeds.
        assert_eq!(
            reconcile_with(&p, "track.example.com.", &[], FAST)
                .await
                .unwrap()
                .changes,
            0
        );
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

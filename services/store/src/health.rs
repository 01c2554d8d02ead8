//! Whether the database answers, as last seen: so that while it is known
//! to be down a request is refused at once (503 with `Retry-After`)
//! instead of each waiting out the pool's acquire timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Store;

/// How long one check may take: a database slower than this to answer
/// `SELECT 1` is as good as down for a request.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The database's last known state; shared by every clone of a [`Store`].
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: AtomicBool,
    /// Checks in a row that failed, for the log and the metric.
    failures: AtomicU64,
}

impl Health {
    pub(crate) fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }
}

impl Store {
    /// True while the last check failed. Costs nothing: no query.
    pub fn is_down(&self) -> bool {
        self.health.down.load(Ordering::Acquire)
    }

    /// Asks the database now (within [`CHECK_TIMEOUT`]) and records the
    /// answer.
    pub async fn check(&self) -> bool {
        let up = tokio::time::timeout(CHECK_TIMEOUT, self.ping())
            .await
            .unwrap_or(false);
        let was_down = self.health.down.swap(!up, Ordering::AcqRel);
        if up {
            self.health.failures.store(0, Ordering::Relaxed);
            if was_down {
                tracing::info!("the database answers again");
            }
        } else {
            let n = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if !was_down {
                tracing::warn!("the database does not answer; API requests get 503 until it does");
            } else if n.is_multiple_of(30) {
                tracing::warn!(checks = n, "the database still does not answer");
            }
        }
        crate::metrics::DB_UP.set(i64::from(up));
        up
    }

    /// Checks every `every` until `shutdown`.
    pub async fn monitor(&self, every: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.check().await;
        }
    }
}

//! Retention: the tables that grow with time (events, the audit log, GitOps
//! syncs, expired workload certificates) are pruned by age, in small
//! batches, by one replica at a time; and their sizes are in `/metrics`.
//!
//! Audit rows are kept longest ([`Retention::check`] refuses settings that
//! would drop them before the records they explain).

use std::sync::LazyLock;
use std::time::Duration;

use meridian_telemetry::{gauge, Family, Gauge, Labels};

use crate::{Error, Store};

/// How long each kind of row is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Failover and operator events.
    pub events: Duration,
    /// The audit log (also the watch's change log): the longest.
    pub audit: Duration,
    /// GitOps sync records; the newest [`KEEP_SYNCS`] of each source stay
    /// whatever their age, and no source keeps more than [`MAX_SYNCS`].
    pub gitops_syncs: Duration,
    /// Workload certificates this long past their expiry (a workload that
    /// still runs has been renewed long before).
    pub expired_certs: Duration,
}

const DAY: u64 = 86_400;

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            events: Duration::from_secs(30 * DAY),
            audit: Duration::from_secs(400 * DAY),
            gitops_syncs: Duration::from_secs(7 * DAY),
            expired_certs: Duration::from_secs(7 * DAY),
        }
    }
}

/// Sync records of each source kept whatever their age: the status and
/// history pages show the recent ones.
pub const KEEP_SYNCS: i64 = 20;
/// Most sync records kept per source whatever their age: a source polled
/// every second writes 86,400 a day.
pub const MAX_SYNCS: i64 = 10_000;
/// Rows deleted per statement, so pruning never holds long locks.
const BATCH: i64 = 5_000;
/// Advisory lock key for pruning (the bytes of "mrdprune"): one replica at
/// a time does it; the others skip that round.
const PRUNE_LOCK: i64 = 0x6d72_6470_7275_6e65;
/// Tables whose size `/metrics` shows.
pub const TABLES: [&str; 6] = [
    "events",
    "audit_log",
    "gitops_syncs",
    "workload_certs",
    "policy_revisions",
    "health_reports",
];

impl Retention {
    /// Audit rows explain the other records: they must outlive them.
    pub fn check(&self) -> Result<(), String> {
        let longest_other = self.events.max(self.gitops_syncs);
        if self.audit < longest_other {
            return Err(format!(
                "audit rows are kept longest: the audit retention ({} days) must be at least \
                 that of events and GitOps syncs ({} days)",
                self.audit.as_secs() / DAY,
                longest_other.as_secs() / DAY
            ));
        }
        if [
            self.events,
            self.audit,
            self.gitops_syncs,
            self.expired_certs,
        ]
        .iter()
        .any(|d| *d < Duration::from_secs(3600))
        {
            return Err("every retention must be at least an hour".into());
        }
        Ok(())
    }
}

/// Rows one pruning round deleted, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub audit: u64,
    pub gitops_syncs: u64,
    pub workload_certs: u64,
}

static TABLE_BYTES: LazyLock<Family<Labels<1>, Gauge>> = LazyLock::new(|| {
    gauge(
        "meridian_db_table_bytes",
        "Size of a table that grows with time, with its indexes and TOAST, in bytes.",
    )
});
static TABLE_ROWS: LazyLock<Family<Labels<1>, Gauge>> = LazyLock::new(|| {
    gauge(
        "meridian_db_table_rows",
        "Rows of a table that grows with time (PostgreSQL's estimate).",
    )
});
static PRUNED: LazyLock<Family<Labels<1>, Gauge>> = LazyLock::new(|| {
    gauge(
        "meridian_db_pruned_rows",
        "Rows the last pruning round of this replica deleted, by table.",
    )
});

impl Store {
    /// One pruning round, unless another replica is pruning now (`None`).
    pub async fn prune(&self, r: &Retention) -> Result<Option<Pruned>, Error> {
        let mut lock = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !got {
            return Ok(None);
        }
        let result = self.prune_locked(r).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PRUNE_LOCK)
            .execute(&mut *lock)
            .await;
        let pruned = result?;
        for (table, n) in [
            ("events", pruned.events),
            ("audit_log", pruned.audit),
            ("gitops_syncs", pruned.gitops_syncs),
            ("workload_certs", pruned.workload_certs),
        ] {
            PRUNED
                .get_or_create(&[("table", table.to_owned())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(Some(pruned))
    }

    async fn prune_locked(&self, r: &Retention) -> Result<Pruned, Error> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Ok(Pruned {
            events: self
                .delete_batches(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events
                     WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
                    secs(r.events),
                )
                .await?,
            audit: self.prune_audit(secs(r.audit)).await?,
            gitops_syncs: self
                .delete_batches(
                    &format!(
                        "DELETE FROM gitops_syncs WHERE id IN (
                           SELECT id FROM (
                             SELECT id, finished_at,
                                    row_number() OVER (PARTITION BY source_name ORDER BY id DESC) AS n
                             FROM gitops_syncs) s
                           WHERE n > {MAX_SYNCS}
                              OR (n > {KEEP_SYNCS} AND finished_at < now() - make_interval(secs => $1))
                           LIMIT $2)"
                    ),
                    secs(r.gitops_syncs),
                )
                .await?,
            workload_certs: self
                .delete_batches(
                    "DELETE FROM workload_certs WHERE spiffe_id IN (SELECT spiffe_id FROM workload_certs
                     WHERE not_after < now() - make_interval(secs => $1) LIMIT $2)",
                    secs(r.expired_certs),
                )
                .await?,
        })
    }

    /// Runs `sql` (`$1` the age in seconds, `$2` the batch size) until a
    /// batch deletes less than a full one.
    async fn delete_batches(&self, sql: &str, age: i64) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let n = sqlx::query(sql)
                .bind(age)
                .bind(BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Audit rows older than `age` seconds, recording in the same
    /// statement the newest resource version pruned (see
    /// [`Store::changes`]).
    async fn prune_audit(&self, age: i64) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let n: i64 = sqlx::query_scalar(
                "WITH gone AS (
                   DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log
                     WHERE at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2)
                   RETURNING resource_version)
                 UPDATE log_compaction
                 SET resource_version = GREATEST(resource_version,
                     COALESCE((SELECT max(resource_version) FROM gone), 0))
                 RETURNING (SELECT count(*) FROM gone)",
            )
            .bind(age)
            .bind(BATCH)
            .fetch_one(&self.pool)
            .await?;
            total += n as u64;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// Resource versions up to this were pruned from the change log.
    pub async fn compacted_version(&self) -> Result<i64, Error> {
        Ok(
            sqlx::query_scalar("SELECT resource_version FROM log_compaction WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(0),
        )
    }

    /// Reads the sizes of [`TABLES`] into `/metrics`.
    pub async fn measure_tables(&self) -> Result<(), Error> {
        let rows: Vec<(String, i64, f32)> = sqlx::query_as(
            "SELECT c.relname::text, pg_total_relation_size(c.oid), c.reltuples
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relname = ANY($1)",
        )
        .bind(&TABLES[..])
        .fetch_all(&self.pool)
        .await?;
        for (table, bytes, tuples) in rows {
            TABLE_BYTES
                .get_or_create(&[("table", table.clone())])
                .set(bytes);
            // -1: never analysed yet.
            TABLE_ROWS
                .get_or_create(&[("table", table)])
                .set((tuples.max(0.0)) as i64);
        }
        Ok(())
    }

    /// Prunes and measures every `every` (and once at start) until
    /// `shutdown`. A failed round is logged and retried next time.
    pub async fn prune_loop(
        &self,
        retention: Retention,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let round = async {
                if let Some(p) = self.prune(&retention).await? {
                    if p != Pruned::default() {
                        tracing::info!(?p, "pruned old rows");
                    }
                }
                self.measure_tables().await
            };
            // A round in progress is abandoned at shutdown; each batch is
            // its own statement, so nothing is left half done.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = round => if let Err(e) = result {
                    tracing::warn!(error = %e, "pruning old rows failed; retrying next round");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rows_are_kept_longest() {
        assert!(Retention::default().check().is_ok());
        let short_audit = Retention {
            audit: Duration::from_secs(DAY),
            ..Retention::default()
        };
        assert!(short_audit.check().unwrap_err().contains("longest"));
        let tiny = Retention {
            expired_certs: Duration::from_secs(60),
            ..Retention::default()
        };
        assert!(tiny.check().is_err());
    }
}

//! Request and failure counts from load reports (LRS), per zone, per
//! reporting xDS replica and per one-second bucket, pooled by the failover
//! leader over each policy's window.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Error, Store};

/// How long buckets are kept: well beyond any policy's window.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// Requests and failures of one zone over a window, from every reporter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadTotals {
    /// Completed requests, failed ones included.
    pub requests: u64,
    pub failures: u64,
    /// How many replicas' reports went into it.
    pub reporters: u32,
}

impl Store {
    /// Adds `rows` of (policy, zone, requests, failures) to the current
    /// bucket of `reporter`, in one transaction. Counts for policies that
    /// do not exist are dropped.
    pub async fn add_load_reports(
        &self,
        reporter: &str,
        rows: &[(String, String, u64, u64)],
    ) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let policies: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let zones: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        let requests: Vec<i64> = rows.iter().map(|r| clamp(r.2)).collect();
        let failures: Vec<i64> = rows.iter().map(|r| clamp(r.3)).collect();
        sqlx::query(
            "INSERT INTO load_reports (policy_name, zone, reporter, bucket, requests, failures)
             SELECT r.policy, r.zone, $1, date_trunc('second', now()), r.requests, r.failures
             FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[])
                  AS r(policy, zone, requests, failures)
             WHERE EXISTS (SELECT 1 FROM policies WHERE name = r.policy)
             ON CONFLICT (policy_name, zone, reporter, bucket) DO UPDATE
             SET requests = load_reports.requests + EXCLUDED.requests,
                 failures = load_reports.failures + EXCLUDED.failures",
        )
        .bind(reporter)
        .bind(&policies)
        .bind(&zones)
        .bind(&requests)
        .bind(&failures)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Per (policy, zone): the requests and failures every reporter
    /// reported over the last `windows[policy]` (by the database's clock).
    /// Policies not in `windows` are left out; a zone without reports in
    /// its window is absent (no traffic is not zero failures).
    pub async fn load_totals(
        &self,
        windows: &BTreeMap<String, Duration>,
    ) -> Result<BTreeMap<(String, String), LoadTotals>, Error> {
        if windows.is_empty() {
            return Ok(BTreeMap::new());
        }
        let names: Vec<&str> = windows.keys().map(String::as_str).collect();
        let seconds: Vec<f64> = windows.values().map(Duration::as_secs_f64).collect();
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT l.policy_name, l.zone, sum(l.requests)::int8, sum(l.failures)::int8,
                    count(DISTINCT l.reporter)::int8
             FROM load_reports l
             JOIN unnest($1::text[], $2::float8[]) AS w(policy, secs) ON w.policy = l.policy_name
             WHERE l.bucket > now() - make_interval(secs => w.secs)
             GROUP BY l.policy_name, l.zone",
        )
        .bind(&names)
        .bind(&seconds)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(policy, zone, requests, failures, reporters)| {
                (
                    (policy, zone),
                    LoadTotals {
                        requests: requests.max(0) as u64,
                        failures: failures.max(0) as u64,
                        reporters: reporters.clamp(0, i64::from(u32::MAX)) as u32,
                    },
                )
            })
            .collect())
    }

    /// Deletes buckets older than [`RETENTION`].
    pub async fn prune_load_reports(&self) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM load_reports WHERE bucket < now() - make_interval(secs => $1)",
        )
        .bind(RETENTION.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

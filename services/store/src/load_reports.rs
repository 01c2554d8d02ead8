//! Request and failure counts from load reports (LRS), per zone and
//! version, per reporting xDS replica and per one-second bucket, pooled by
//! the failover leader over each policy's window (all versions of a zone
//! together) and by rollouts (the canary against the stable version).

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_failover::TrafficTally;

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

/// One reporter's counts of one (policy, zone, version, route) to add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadRow {
    pub policy: String,
    pub zone: String,
    /// `""`: the stable version; otherwise the canary's.
    pub version: String,
    /// `""`: the policy's shared clusters; otherwise the route under a
    /// rollout whose own clusters carried the requests.
    pub route: String,
    pub requests: u64,
    pub failures: u64,
}

/// What [`Store::version_traffic`] counts apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrafficKey {
    pub zone: String,
    /// As in [`LoadRow::version`].
    pub version: String,
    /// As in [`LoadRow::route`].
    pub route: String,
}

/// One time bucket of [`Store::version_series`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionBucket {
    /// When the bucket began (Unix ms, this process's clock).
    pub start_ms: i64,
    /// The canary's version.
    pub canary: LoadTotals,
    /// Every other version of the policy.
    pub stable: LoadTotals,
}

impl Store {
    /// Adds `rows` to the current bucket of `reporter`, in one
    /// transaction. Counts for policies that do not exist are dropped.
    pub async fn add_load_reports(&self, reporter: &str, rows: &[LoadRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let policies: Vec<&str> = rows.iter().map(|r| r.policy.as_str()).collect();
        let zones: Vec<&str> = rows.iter().map(|r| r.zone.as_str()).collect();
        let versions: Vec<&str> = rows.iter().map(|r| r.version.as_str()).collect();
        let routes: Vec<&str> = rows.iter().map(|r| r.route.as_str()).collect();
        let requests: Vec<i64> = rows.iter().map(|r| clamp(r.requests)).collect();
        let failures: Vec<i64> = rows.iter().map(|r| clamp(r.failures)).collect();
        sqlx::query(
            "INSERT INTO load_reports (policy_name, zone, version, route, reporter, bucket, requests, failures)
             SELECT r.policy, r.zone, r.version, r.route, $1, date_trunc('second', now()), r.requests, r.failures
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[])
                  AS r(policy, zone, version, route, requests, failures)
             WHERE EXISTS (SELECT 1 FROM policies WHERE name = r.policy)
             ON CONFLICT (policy_name, zone, version, route, reporter, bucket) DO UPDATE
             SET requests = load_reports.requests + EXCLUDED.requests,
                 failures = load_reports.failures + EXCLUDED.failures",
        )
        .bind(reporter)
        .bind(&policies)
        .bind(&zones)
        .bind(&versions)
        .bind(&routes)
        .bind(&requests)
        .bind(&failures)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Per (policy, zone): every reporter's one-second buckets of the last
    /// `windows[policy]`, as the failover decision takes them. Buckets are
    /// stamped by the database's clock; their ends are given on this
    /// process's clock (now minus their age), so replicas whose clocks
    /// disagree still pool the same window. Policies not in `windows` are
    /// left out; a zone without reports in its window is absent (no traffic
    /// is not zero failures).
    pub async fn traffic_tallies(
        &self,
        windows: &BTreeMap<String, Duration>,
    ) -> Result<BTreeMap<(String, String), Vec<TrafficTally>>, Error> {
        if windows.is_empty() {
            return Ok(BTreeMap::new());
        }
        let names: Vec<&str> = windows.keys().map(String::as_str).collect();
        let seconds: Vec<f64> = windows.values().map(Duration::as_secs_f64).collect();
        // A zone's versions are summed: failover judges the zone.
        let rows: Vec<(String, String, String, f64, i64, i64)> = sqlx::query_as(
            "SELECT l.policy_name, l.zone, l.reporter,
                    (extract(epoch FROM now() - l.bucket) * 1000)::float8 - 1000,
                    sum(l.requests)::int8, sum(l.failures)::int8
             FROM load_reports l
             JOIN unnest($1::text[], $2::float8[]) AS w(policy, secs) ON w.policy = l.policy_name
             WHERE l.bucket > now() - make_interval(secs => w.secs)
             GROUP BY l.policy_name, l.zone, l.reporter, l.bucket
             ORDER BY l.policy_name, l.zone, l.bucket, l.reporter",
        )
        .bind(&names)
        .bind(&seconds)
        .fetch_all(&self.pool)
        .await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut out: BTreeMap<(String, String), Vec<TrafficTally>> = BTreeMap::new();
        for (policy, zone, reporter, age_ms, requests, failures) in rows {
            out.entry((policy, zone)).or_default().push(TrafficTally {
                reporter,
                // A bucket ends a second after it starts; one still filling
                // counts as ending now.
                end_ms: now_ms - age_ms.max(0.0) as i64,
                requests: requests.max(0) as u64,
                failures: failures.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Per (policy, zone): the requests and failures every reporter
    /// reported over the last `windows[policy]`, summed.
    pub async fn load_totals(
        &self,
        windows: &BTreeMap<String, Duration>,
    ) -> Result<BTreeMap<(String, String), LoadTotals>, Error> {
        Ok(self
            .traffic_tallies(windows)
            .await?
            .into_iter()
            .map(|(key, tallies)| {
                let reporters: std::collections::BTreeSet<&str> =
                    tallies.iter().map(|t| t.reporter.as_str()).collect();
                let totals = LoadTotals {
                    requests: tallies.iter().map(|t| t.requests).sum(),
                    failures: tallies.iter().map(|t| t.failures).sum(),
                    reporters: u32::try_from(reporters.len()).unwrap_or(u32::MAX),
                };
                (key, totals)
            })
            .collect())
    }

    /// Per (zone, version, route) of one policy: the requests and failures
    /// every reporter reported in buckets that began at or after `since_ms`
    /// (Unix ms, this process's clock; a rollout asks for its step's
    /// interval). Versions and routes as in [`LoadRow`].
    pub async fn version_traffic(
        &self,
        policy: &str,
        since_ms: i64,
    ) -> Result<BTreeMap<TrafficKey, LoadTotals>, Error> {
        let age_ms = (chrono::Utc::now().timestamp_millis() - since_ms).max(0);
        let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT zone, version, route, sum(requests)::int8, sum(failures)::int8,
                    count(DISTINCT reporter)::int8
             FROM load_reports
             WHERE policy_name = $1
               AND bucket >= date_trunc('second', now() - make_interval(secs => $2))
             GROUP BY zone, version, route",
        )
        .bind(policy)
        .bind(age_ms as f64 / 1000.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(zone, version, route, requests, failures, reporters)| {
                let totals = LoadTotals {
                    requests: requests.max(0) as u64,
                    failures: failures.max(0) as u64,
                    reporters: u32::try_from(reporters).unwrap_or(u32::MAX),
                };
                let key = TrafficKey {
                    zone,
                    version,
                    route,
                };
                (key, totals)
            })
            .collect())
    }

    /// One route's traffic over the last `window` (at most
    /// [`RETENTION`]), in buckets of `bucket` each, split into the
    /// `canary` version and everything else (the stable version, and other
    /// routes' canaries): a rollout's failure rates over time for the
    /// dashboard. A bucket with reports of the route's own clusters (a
    /// route under a rollout) counts those alone, as the analysis does;
    /// one without (before the route had them) counts the policy's shared
    /// clusters. Oldest first; a bucket without reports of either is
    /// absent (no traffic is not zero failures). Bucket starts are on this
    /// process's clock, as in [`Store::traffic_tallies`].
    pub async fn version_series(
        &self,
        policy: &str,
        route: &str,
        canary: &str,
        window: Duration,
        bucket: Duration,
    ) -> Result<Vec<VersionBucket>, Error> {
        let window = window.min(RETENTION);
        // A zero stride would be refused by date_bin; one second is the
        // reports' own resolution.
        let bucket = bucket.max(Duration::from_secs(1));
        let rows: Vec<(f64, bool, i64, i64, i64)> = sqlx::query_as(
            "WITH binned AS (
                SELECT date_bin(make_interval(secs => $3), bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS start,
                       version = $2 AS canary, route, requests, failures, reporter
                FROM load_reports
                WHERE policy_name = $1 AND route IN ('', $5)
                  AND bucket >= date_bin(make_interval(secs => $3), now() - make_interval(secs => $4),
                                         TIMESTAMPTZ '2000-01-01 00:00:00+00')),
             chosen AS (
                SELECT *, bool_or(route = $5) OVER (PARTITION BY start) AS own FROM binned)
             SELECT (extract(epoch FROM now() - start) * 1000)::float8, canary,
                    sum(requests)::int8, sum(failures)::int8, count(DISTINCT reporter)::int8
             FROM chosen
             WHERE route = CASE WHEN own THEN $5 ELSE '' END
             GROUP BY start, canary
             ORDER BY start, canary",
        )
        .bind(policy)
        .bind(canary)
        .bind(bucket.as_secs_f64())
        .bind(window.as_secs_f64())
        .bind(route)
        .fetch_all(&self.pool)
        .await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut out: Vec<VersionBucket> = Vec::new();
        for (age_ms, is_canary, requests, failures, reporters) in rows {
            let start_ms = now_ms - age_ms.max(0.0) as i64;
            let totals = LoadTotals {
                requests: requests.max(0) as u64,
                failures: failures.max(0) as u64,
                reporters: u32::try_from(reporters).unwrap_or(u32::MAX),
            };
            // Rows come ordered by bucket, and now() is the same for every
            // row: a bucket's second row (canary after stable) has the
            // first one's start.
            let same = out.last().is_some_and(|b| b.start_ms == start_ms);
            if !same {
                out.push(VersionBucket {
                    start_ms,
                    ..VersionBucket::default()
                });
            }
            let last = out.last_mut().expect("pushed above");
            if is_canary {
                last.canary = totals;
            } else {
                last.stable = totals;
            }
        }
        Ok(out)
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

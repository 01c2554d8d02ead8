//! PostgreSQL persistence for policies.
//!
//! Every write is one transaction that changes the policy row, appends an
//! immutable revision, writes an audit row with the before and after, and
//! sends a `NOTIFY` on [`CHANNEL`] so every replica learns of it. Optimistic
//! concurrency rests on the row lock: a write locks the row, compares the
//! caller's expected resourceVersion, and only then changes it, so two
//! writers holding the same version can never both succeed.
//!
//! This is the only crate that speaks SQL.

mod audit;
pub mod ca;
mod dashboard;
mod error;
pub mod failover;
pub mod gitops;
mod health;
pub mod load_reports;
mod metrics;
pub mod notify;
mod policies;
pub mod providers;
pub mod retention;
pub mod rollouts;
pub mod status;
pub mod tokens;
pub mod watch;
pub mod xds_rejections;

pub use error::{Error, Kind};
pub use health::CHECK_TIMEOUT;
pub use load_reports::{LoadRow, TrafficKey, VersionBucket};
pub use policies::{gitops_origin, ListQuery, Precondition, Write};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// Channel on which every policy write is announced.
pub const CHANNEL: &str = "meridian_policy";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    health: std::sync::Arc<health::Health>,
}

impl Store {
    /// Connects a pool. Fails fast if the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, Error> {
        let options = PgConnectOptions::from_str(url)
            .map_err(Error::Database)?
            .application_name("meridian");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Store::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store {
            pool,
            health: health::Health::new(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Exposes this store's pool in `/metrics` (connections idle and in
    /// use, and the maximum). Call once per process, for its main store.
    pub fn export_metrics(&self) {
        metrics::export(self.pool.clone());
    }

    /// Applies pending migrations; safe to run from several replicas at once
    /// (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), Error> {
        MIGRATOR.run(&self.pool).await.map_err(Error::Migrate)
    }

    /// Versions of the migrations this build has that the database has not
    /// applied yet: a replica that does not migrate by itself (the
    /// operator runs `meridian migrate` once per upgrade) checks this
    /// instead. A database never migrated has them all pending.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, Error> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

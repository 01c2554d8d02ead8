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

pub mod ca;
mod error;
pub mod failover;
pub mod notify;
mod policies;
pub mod providers;
pub mod status;
pub mod watch;

pub use error::Error;
pub use policies::{ListQuery, Precondition, Write};

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
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; safe to run from several replicas at once
    /// (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), Error> {
        MIGRATOR.run(&self.pool).await.map_err(Error::Migrate)
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

//! The change log of policies, read in resource-version order, for watches
//! that resume from a version without missing or repeating a change.
//!
//! Every committed write has a row in `audit_log` with its resource version.
//! Versions come from a sequence, so two writers can commit out of version
//! order; a reader that moved its cursor past a version still committing
//! would skip it for good. Writers therefore hold a shared "fence" lock from
//! taking a version until they commit ([`crate::policies::next_version`]),
//! and a reader first learns the *settled* version: it takes the fence
//! exclusively for an instant, so nobody is between taking a version and
//! committing, and reads the sequence. Every version up to there is either
//! committed or gone. Writers never wait on each other for the fence; they
//! wait at most for the reader's instant.

use chrono::{DateTime, Utc};
use meridian_policy::Policy;
use sqlx::types::Json;

use crate::policies::VERSION_FENCE;
use crate::{Error, Store};

/// What happened to a policy at one resource version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

/// One committed write, as the watch delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub resource_version: i64,
    pub kind: ChangeKind,
    /// The policy after the write; for a delete, as it was before.
    pub policy: Policy,
    pub actor: String,
    pub at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LogRow {
    resource_version: i64,
    action: String,
    actor: String,
    at: DateTime<Utc>,
    before: Option<Json<Policy>>,
    after: Option<Json<Policy>>,
}

impl LogRow {
    fn into_change(self) -> Option<Change> {
        let (kind, policy) = match (self.action.as_str(), self.before, self.after) {
            ("create", _, Some(after)) => (ChangeKind::Created, after.0),
            ("update", _, Some(after)) => (ChangeKind::Updated, after.0),
            ("delete", Some(before), _) => (ChangeKind::Deleted, before.0),
            _ => return None,
        };
        Some(Change {
            resource_version: self.resource_version,
            kind,
            policy,
            actor: self.actor,
            at: self.at,
        })
    }
}

impl Store {
    /// The highest value of `sequence` below which every value handed out
    /// has been committed or rolled back; `fence` is the writers' lock.
    pub(crate) async fn settled(&self, fence: i64, sequence: &str) -> Result<i64, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(fence)
            .execute(&mut *tx)
            .await?;
        let sql = format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}");
        let settled: i64 = sqlx::query_scalar(&sql).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(settled)
    }

    /// The settled resource version: a watch may read the log up to here.
    pub async fn settled_version(&self) -> Result<i64, Error> {
        self.settled(VERSION_FENCE, "resource_version_seq").await
    }

    /// Policy changes with a version in `(after, upto]`, oldest first, at
    /// most `limit`. Pass a settled version as `upto`.
    /// Fails with [`Error::Compacted`] when changes after `after` were
    /// pruned: the caller must start again from a snapshot.
    pub async fn changes(&self, after: i64, upto: i64, limit: i64) -> Result<Vec<Change>, Error> {
        let compacted = self.compacted_version().await?;
        if after < compacted {
            return Err(Error::Compacted { after, compacted });
        }
        let rows: Vec<LogRow> = sqlx::query_as(
            "SELECT resource_version, action, actor, at, before, after FROM audit_log
             WHERE resource_version > $1 AND resource_version <= $2
               AND action IN ('create', 'update', 'delete')
             ORDER BY resource_version LIMIT $3",
        )
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(LogRow::into_change).collect())
    }

    /// Every policy, and the settled version they are the state at: a watch
    /// that starts from nothing sends these, then the changes after it.
    pub async fn snapshot(&self) -> Result<(i64, Vec<Policy>), Error> {
        let mut snapshot = self.begin_snapshot().await?;
        let policies = snapshot.policies().await?;
        snapshot.tx.commit().await?;
        Ok((snapshot.settled, policies))
    }

    /// Pins a database snapshot at a settled version. The writers' fence is
    /// held only while the snapshot is taken (an instant), not while the
    /// policies are read, so a large snapshot or a slow watch client never
    /// holds writes up: the reading runs in a REPEATABLE READ transaction
    /// whose snapshot was taken while nobody was between taking a version
    /// and committing.
    pub async fn begin_snapshot(&self) -> Result<Snapshot, Error> {
        // The reading connection first, so the fence is never held while
        // waiting for a pool slot.
        let mut tx = self.pool.begin().await?;
        // Takes no snapshot itself; the first query below does.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut fence = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(VERSION_FENCE)
            .execute(&mut *fence)
            .await?;
        let settled: i64 = sqlx::query_scalar(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM resource_version_seq",
        )
        .fetch_one(&mut *tx)
        .await?;
        fence.commit().await?;
        Ok(Snapshot { settled, tx })
    }
}

/// A pinned, consistent view of the policies at [`Snapshot::settled`].
pub struct Snapshot {
    /// Every version up to this is committed (or gone) in the view, and
    /// none after it is visible.
    pub settled: i64,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl Snapshot {
    /// The policies as of [`Snapshot::settled`].
    pub async fn policies(&mut self) -> Result<Vec<Policy>, Error> {
        crate::policies::all_in(&mut self.tx).await
    }
}

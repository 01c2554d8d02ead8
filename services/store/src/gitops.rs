//! GitOps sources, the record of their syncs, and the one-transaction
//! apply of a sync's plan.

use chrono::{DateTime, Utc};
use meridian_policy::Policy;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use crate::failover::NewEvent;
use crate::policies::{self, Mode, PutError};
use crate::{Error, Precondition, Store, Write};

/// A policy repository, as configured. Credentials are named (`{"env":
/// "NAME"}` or `{"file": "/path"}`), never given, so this is safe to store
/// and return.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    pub name: String,
    /// `file://`, `http(s)://` or `ssh://`.
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Directory inside the repository; empty for the whole tree.
    #[serde(default)]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    /// Delete owned policies that are gone from the repository.
    #[serde(default = "default_true")]
    pub prune: bool,
    /// Take over policies of the same name created through the API.
    #[serde(default)]
    pub adopt: bool,
    /// `{"token": ref, "username": "..."}` for https, `{"sshKey": ref}` for ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Value>,
    /// Shared secret of push webhooks (GitHub HMAC or GitLab token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Value>,
}

fn default_branch() -> String {
    "main".to_owned()
}
fn default_interval() -> u32 {
    60
}
fn default_true() -> bool {
    true
}

/// What a source last did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub name: String,
    pub last_fetched_commit: Option<String>,
    pub last_fetched_at: Option<DateTime<Utc>>,
    pub last_applied_commit: Option<String>,
    pub last_applied_at: Option<DateTime<Utc>>,
    pub next_sync_at: DateTime<Utc>,
    /// The newest sync, with its plan counts and errors.
    pub last_sync: Option<SyncRecord>,
}

/// One sync attempt, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    pub id: i64,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub commit: Option<String>,
    /// `applied`, `unchanged`, `invalid`, `conflict` or `failed`.
    pub outcome: String,
    pub plan: Json<Value>,
    pub errors: Json<Value>,
}

/// A sync to record.
#[derive(Clone, Debug)]
pub struct NewSync {
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub commit: Option<String>,
    pub outcome: String,
    pub plan: Value,
    pub errors: Value,
}

/// Which policies an apply may change besides those it names.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// The policies this GitOps source owns.
    Source(&'a str),
    /// The policies no GitOps source owns (`meridian apply --prune`).
    Unowned,
}

/// A stored policy and the GitOps source that owns it, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    pub policy: Policy,
    pub owner: Option<String>,
}

/// A source write's audit row: the source as stored (credential
/// references only, never a secret).
async fn audit_source(
    conn: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    s: &Source,
) -> Result<(), Error> {
    let after = serde_json::to_value(s).unwrap_or_default();
    crate::audit::record(conn, actor, action, after).await
}

const SOURCE_COLUMNS: &str =
    "name, url, branch, path, interval_seconds, prune, adopt, auth, webhook_secret";

#[derive(sqlx::FromRow)]
struct SourceRow {
    name: String,
    url: String,
    branch: String,
    path: String,
    interval_seconds: i32,
    prune: bool,
    adopt: bool,
    auth: Option<Json<Value>>,
    webhook_secret: Option<Json<Value>>,
}

impl SourceRow {
    fn into_source(self) -> Source {
        Source {
            name: self.name,
            url: self.url,
            branch: self.branch,
            path: self.path,
            interval_seconds: u32::try_from(self.interval_seconds).unwrap_or(0),
            prune: self.prune,
            adopt: self.adopt,
            auth: self.auth.map(|j| j.0),
            webhook_secret: self.webhook_secret.map(|j| j.0),
        }
    }
}

impl Store {
    pub async fn sources(&self) -> Result<Vec<Source>, Error> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM gitops_sources ORDER BY name");
        let rows: Vec<SourceRow> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(SourceRow::into_source).collect())
    }

    pub async fn source(&self, name: &str) -> Result<Source, Error> {
        let sql = format!("SELECT {SOURCE_COLUMNS} FROM gitops_sources WHERE name = $1");
        let row: Option<SourceRow> = sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(SourceRow::into_source)
            .ok_or_else(|| Error::SourceNotFound {
                name: name.to_owned(),
            })
    }

    /// Stores a new source, audited as `actor`; it is due for a sync at once.
    pub async fn create_source(&self, s: &Source, actor: &str) -> Result<Source, Error> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "INSERT INTO gitops_sources (name, url, branch, path, interval_seconds, prune, adopt,
                                         auth, webhook_secret)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.name)
        .bind(&s.url)
        .bind(&s.branch)
        .bind(&s.path)
        .bind(interval(s))
        .bind(s.prune)
        .bind(s.adopt)
        .bind(s.auth.as_ref().map(Json))
        .bind(s.webhook_secret.as_ref().map(Json))
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {
                audit_source(&mut tx, actor, "source-created", s).await?;
                tx.commit().await?;
                self.source(&s.name).await
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(Error::SourceExists {
                    name: s.name.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or replaces; the flag says whether it was created. A changed
    /// source is due for a sync at once.
    pub async fn replace_source(&self, s: &Source, actor: &str) -> Result<(Source, bool), Error> {
        let mut tx = self.pool.begin().await?;
        let created: bool = sqlx::query_scalar(
            "INSERT INTO gitops_sources (name, url, branch, path, interval_seconds, prune, adopt,
                                         auth, webhook_secret)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET url = $2, branch = $3, path = $4,
                 interval_seconds = $5, prune = $6, adopt = $7, auth = $8, webhook_secret = $9,
                 updated_at = now(), next_sync_at = now()
             RETURNING (xmax = 0)",
        )
        .bind(&s.name)
        .bind(&s.url)
        .bind(&s.branch)
        .bind(&s.path)
        .bind(interval(s))
        .bind(s.prune)
        .bind(s.adopt)
        .bind(s.auth.as_ref().map(Json))
        .bind(s.webhook_secret.as_ref().map(Json))
        .fetch_one(&mut *tx)
        .await?;
        let action = if created {
            "source-created"
        } else {
            "source-replaced"
        };
        audit_source(&mut tx, actor, action, s).await?;
        tx.commit().await?;
        Ok((self.source(&s.name).await?, created))
    }

    /// Deletes a source. Its policies stay, and become API-managed: deleting
    /// a repository's registration must not take its services down.
    pub async fn delete_source(&self, name: &str, actor: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM gitops_sources WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(Error::SourceNotFound {
                name: name.to_owned(),
            });
        }
        sqlx::query("UPDATE policies SET gitops_source = NULL WHERE gitops_source = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let after = serde_json::json!({"name": name});
        crate::audit::record(&mut tx, actor, "source-deleted", after).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes a source due now (manual sync or webhook); whichever replica
    /// runs the gitops role claims it within a moment.
    /// Audited as `actor` (a caller, or `webhook:<source>`).
    pub async fn request_sync(&self, name: &str, actor: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("UPDATE gitops_sources SET next_sync_at = now() WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::SourceNotFound {
                name: name.to_owned(),
            });
        }
        let after = serde_json::json!({"name": name});
        crate::audit::record(&mut tx, actor, "source-sync-requested", after).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims the source most overdue for a sync, if any, and schedules its
    /// next one. The claim is one statement with `SKIP LOCKED`, so two
    /// replicas never sync the same source at once.
    pub async fn claim_due_source(&self) -> Result<Option<Source>, Error> {
        let sql = format!(
            "UPDATE gitops_sources
             SET next_sync_at = now() + make_interval(secs => interval_seconds)
             WHERE name = (SELECT name FROM gitops_sources WHERE next_sync_at <= now()
                           ORDER BY next_sync_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {SOURCE_COLUMNS}"
        );
        let row: Option<SourceRow> = sqlx::query_as(&sql).fetch_optional(&self.pool).await?;
        Ok(row.map(SourceRow::into_source))
    }

    pub async fn source_status(&self, name: &str) -> Result<SourceStatus, Error> {
        type StatusRow = (
            String,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<String>,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
            Option<i64>,
        );
        let row: Option<StatusRow> = sqlx::query_as(
            "SELECT name, last_fetched_commit, last_fetched_at, last_applied_commit,
                    last_applied_at, next_sync_at, last_sync_id
             FROM gitops_sources WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some((name, fetched, fetched_at, applied, applied_at, next, last_id)) = row else {
            return Err(Error::SourceNotFound {
                name: name.to_owned(),
            });
        };
        let last_sync = match last_id {
            Some(id) => {
                sqlx::query_as(
                    "SELECT id, trigger, started_at, finished_at, commit, outcome, plan, errors
                 FROM gitops_syncs WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            None => None,
        };
        Ok(SourceStatus {
            name,
            last_fetched_commit: fetched,
            last_fetched_at: fetched_at,
            last_applied_commit: applied,
            last_applied_at: applied_at,
            next_sync_at: next,
            last_sync,
        })
    }

    /// The source's syncs, newest first.
    pub async fn syncs(&self, name: &str, limit: i64) -> Result<Vec<SyncRecord>, Error> {
        self.source(name).await?;
        Ok(sqlx::query_as(
            "SELECT id, trigger, started_at, finished_at, commit, outcome, plan, errors
             FROM gitops_syncs WHERE source_name = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a sync that applied nothing (invalid, conflict, failed,
    /// unchanged). Applied syncs are recorded by [`ApplyTx::record_sync`],
    /// inside their own transaction.
    pub async fn record_sync(&self, source: &str, sync: &NewSync) -> Result<i64, Error> {
        let mut tx = self.pool.begin().await?;
        let id = record_in(&mut tx, source, sync, false).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Starts the one transaction of an apply: locks, in name order, every
    /// stored policy the apply may touch (those named, and those in
    /// `scope`), and returns them with their owners, so the caller plans
    /// against a state no one can change until it commits.
    pub async fn begin_apply(
        &self,
        scope: Scope<'_>,
        names: &[String],
    ) -> Result<(ApplyTx, Vec<Current>), Error> {
        let mut tx = self.pool.begin().await?;
        let (owner_filter, source) = match scope {
            Scope::Source(s) => ("gitops_source = $2", Some(s)),
            Scope::Unowned => ("gitops_source IS NULL", None),
        };
        let sql = format!(
            "SELECT {}, gitops_source FROM policies
             WHERE name = ANY($1) OR {owner_filter}
             ORDER BY name FOR UPDATE",
            policies::COLUMNS
        );
        let rows: Vec<policies::OwnedRow> = sqlx::query_as(&sql)
            .bind(names)
            .bind(source)
            .fetch_all(&mut *tx)
            .await?;
        let current = rows
            .into_iter()
            .map(|r| Current {
                owner: r.gitops_source.clone(),
                policy: r.into_policy(),
            })
            .collect();
        Ok((ApplyTx { tx }, current))
    }
}

fn interval(s: &Source) -> i32 {
    i32::try_from(s.interval_seconds).unwrap_or(i32::MAX)
}

async fn record_in(
    tx: &mut Transaction<'_, Postgres>,
    source: &str,
    sync: &NewSync,
    applied: bool,
) -> Result<i64, Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO gitops_syncs (source_name, trigger, started_at, commit, outcome, plan, errors)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(source)
    .bind(&sync.trigger)
    .bind(sync.started_at)
    .bind(&sync.commit)
    .bind(&sync.outcome)
    .bind(Json(&sync.plan))
    .bind(Json(&sync.errors))
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE gitops_sources SET last_sync_id = $2,
             last_fetched_commit = coalesce($3, last_fetched_commit),
             last_fetched_at = CASE WHEN $3::text IS NULL THEN last_fetched_at ELSE now() END,
             last_applied_commit = CASE WHEN $4 THEN $3 ELSE last_applied_commit END,
             last_applied_at = CASE WHEN $4 THEN now() ELSE last_applied_at END
         WHERE name = $1",
    )
    .bind(source)
    .bind(id)
    .bind(&sync.commit)
    .bind(applied)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// The one transaction of an apply: every write of a plan goes through the
/// store's single-policy write path (revision, audit row, `NOTIFY`), and
/// readers see all of them at commit or none.
pub struct ApplyTx {
    tx: Transaction<'static, Postgres>,
}

impl ApplyTx {
    /// Creates or replaces a policy and sets its owner (`None`: API-managed).
    pub async fn put(
        &mut self,
        policy: &Policy,
        w: &Write<'_>,
        owner: Option<&str>,
    ) -> Result<Policy, Error> {
        let name = &policy.metadata.name;
        let result = policies::put_in(
            &mut self.tx,
            name,
            &Precondition::None,
            w,
            Mode::Replace,
            |_| Ok::<_, Error>(policy.clone()),
        )
        .await;
        let (stored, _) = result.map_err(|e| match e {
            PutError::Caller(e) | PutError::Store(e) => e,
        })?;
        sqlx::query(
            "UPDATE policies SET gitops_source = $2
             WHERE name = $1 AND gitops_source IS DISTINCT FROM $2",
        )
        .bind(name)
        .bind(owner)
        .execute(&mut *self.tx)
        .await?;
        Ok(stored)
    }

    pub async fn delete(&mut self, name: &str, w: &Write<'_>) -> Result<Policy, Error> {
        policies::delete_in(&mut self.tx, name, &Precondition::None, w).await
    }

    pub async fn event(&mut self, event: &NewEvent) -> Result<(), Error> {
        crate::failover::insert_event(&mut self.tx, event).await
    }

    /// Records the sync in the same transaction as its writes: the history
    /// says "applied" exactly when the policies changed.
    pub async fn record_sync(&mut self, source: &str, sync: &NewSync) -> Result<i64, Error> {
        record_in(&mut self.tx, source, sync, true).await
    }

    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), Error> {
        self.tx.rollback().await?;
        Ok(())
    }
}

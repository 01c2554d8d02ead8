//! Reads and transactional writes of policies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use meridian_policy::{Metadata, Policy, Revision, Spec, API_VERSION, KIND};
use serde_json::json;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use crate::{Error, Store, CHANNEL};

/// What the caller expects of the current state before a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No expectation: last writer wins.
    None,
    /// `If-Match: *`: the policy must exist.
    Exists,
    /// `If-Match: "<resourceVersion>"`: the policy must be at this version.
    Version(String),
}

/// Who writes, and whether the write is kept.
#[derive(Clone, Debug)]
pub struct Write<'a> {
    /// Recorded in the audit log.
    pub actor: &'a str,
    /// Recorded on the policy and its revision: `api` or a GitOps origin.
    pub source: &'a str,
    /// Run the whole transaction, then roll it back: the answer is exactly
    /// what the write would give, and nothing is stored or announced.
    pub dry_run: bool,
    /// Write even a policy that a GitOps source owns (`?force=true`). The
    /// source keeps owning it, an event records the override, and the
    /// source's next sync puts the repository's version back.
    pub force: bool,
}

/// A page request for [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Every pair must be among the policy's labels.
    pub labels: BTreeMap<String, String>,
    /// Only names sorting after this one (the previous page's last name).
    pub after: Option<String>,
    pub limit: u32,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    labels: Json<BTreeMap<String, String>>,
    // Decoded straight into the model: no intermediate `Value` on the hot read path.
    spec: Json<Spec>,
    resource_version: i64,
    generation: i64,
    source: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str =
    "name, labels, spec, resource_version, generation, source, created_at, updated_at";

/// A policy row with the GitOps source that owns it.
#[derive(sqlx::FromRow)]
pub(crate) struct OwnedRow {
    #[sqlx(flatten)]
    row: Row,
    pub(crate) gitops_source: Option<String>,
}

impl OwnedRow {
    pub(crate) fn into_policy(self) -> Policy {
        self.row.into_policy()
    }
}

impl Row {
    fn into_policy(self) -> Policy {
        let spec = self.spec.0;
        Policy {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: Metadata {
                name: self.name,
                labels: self.labels.0,
                resource_version: Some(self.resource_version.to_string()),
                generation: Some(self.generation),
                created_at: Some(self.created_at),
                updated_at: Some(self.updated_at),
                source: Some(self.source),
            },
            spec,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// Fails if the name exists.
    Create,
    /// Creates or replaces.
    Replace,
    /// Changes an existing policy; fails if there is none.
    Modify,
}

impl Store {
    pub async fn get(&self, name: &str) -> Result<Policy, Error> {
        let sql = format!("SELECT {COLUMNS} FROM policies WHERE name = $1");
        sqlx::query_as::<_, Row>(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(Row::into_policy)
            .ok_or_else(|| Error::NotFound {
                name: name.to_owned(),
            })
    }

    /// One page ordered by name, and the name to continue after when more remain.
    pub async fn list(&self, q: &ListQuery) -> Result<(Vec<Policy>, Option<String>), Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM policies
             WHERE labels @> $1 AND ($2::text IS NULL OR name > $2)
             ORDER BY name LIMIT $3"
        );
        let mut rows = sqlx::query_as::<_, Row>(&sql)
            .bind(Json(&q.labels))
            .bind(q.after.as_deref())
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let more = rows.len() > q.limit as usize;
        rows.truncate(q.limit as usize);
        let next = more.then(|| rows.last().map(|r| r.name.clone())).flatten();
        let items = rows.into_iter().map(Row::into_policy).collect();
        Ok((items, next))
    }

    /// Every policy, ordered by name (for caches and the xDS snapshot).
    pub async fn all(&self) -> Result<Vec<Policy>, Error> {
        let mut conn = self.pool.acquire().await?;
        all_in(&mut conn).await
    }

    /// Stores a new policy; fails with [`Error::NameTaken`] if the name exists.
    pub async fn create(&self, policy: &Policy, w: &Write<'_>) -> Result<Policy, Error> {
        let name = &policy.metadata.name;
        let (stored, _) = self
            .transact(name, &Precondition::None, w, Mode::Create, |_| {
                Ok::<_, Error>(policy.clone())
            })
            .await?;
        Ok(stored)
    }

    /// Creates or replaces; the flag says whether it was created.
    pub async fn replace(
        &self,
        policy: &Policy,
        pre: &Precondition,
        w: &Write<'_>,
    ) -> Result<(Policy, bool), Error> {
        let name = &policy.metadata.name;
        let attempt = || {
            self.transact(name, pre, w, Mode::Replace, |_| {
                Ok::<_, Error>(policy.clone())
            })
        };
        match attempt().await {
            // Two writers both found no row and both inserted; the loser's
            // insert hit the primary key. The row exists now, so a second
            // attempt locks it and updates it, as if it had come second.
            Err(Error::NameTaken { .. }) => attempt().await,
            other => other,
        }
    }

    /// Read-modify-write of an existing policy in one transaction: `change`
    /// sees the current policy under the row lock, so concurrent modifiers
    /// queue up instead of overwriting each other, and none needs a retry.
    /// Its error type carries both the caller's refusals and store errors.
    pub async fn modify<E: From<Error>>(
        &self,
        name: &str,
        pre: &Precondition,
        w: &Write<'_>,
        change: impl FnOnce(Policy) -> Result<Policy, E>,
    ) -> Result<Policy, E> {
        let change =
            |current: Option<Policy>| change(current.expect("Mode::Modify locks an existing row"));
        let (stored, _) = self.transact(name, pre, w, Mode::Modify, change).await?;
        Ok(stored)
    }

    /// Deletes and returns what was deleted.
    pub async fn delete(
        &self,
        name: &str,
        pre: &Precondition,
        w: &Write<'_>,
    ) -> Result<Policy, Error> {
        let mut tx = self.pool.begin().await?;
        let before = delete_in(&mut tx, name, pre, w).await?;
        finish(tx, w.dry_run).await?;
        Ok(before)
    }

    /// History, newest first.
    pub async fn revisions(&self, name: &str) -> Result<Vec<Revision>, Error> {
        let rows: Vec<RevisionRow> = sqlx::query_as(
            "SELECT revision, resource_version, generation, labels, spec, source, created_at
             FROM policy_revisions WHERE policy_name = $1 ORDER BY revision DESC",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        // Every stored policy has at least one revision; none means no policy.
        if rows.is_empty() {
            return Err(Error::NotFound {
                name: name.to_owned(),
            });
        }
        Ok(rows.into_iter().map(RevisionRow::into_revision).collect())
    }

    /// One revision of a policy.
    pub async fn revision(&self, name: &str, revision: i64) -> Result<Revision, Error> {
        let row: Option<RevisionRow> = sqlx::query_as(
            "SELECT revision, resource_version, generation, labels, spec, source, created_at
             FROM policy_revisions WHERE policy_name = $1 AND revision = $2",
        )
        .bind(name)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(r.into_revision()),
            None => {
                self.get(name).await?;
                Err(Error::RevisionNotFound {
                    name: name.to_owned(),
                    revision,
                })
            }
        }
    }

    /// The one write path for a single policy: [`put_in`] in a transaction
    /// of its own, then commit (or roll back for a dry run).
    #[tracing::instrument(
        name = "store.write",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", policy = name, dry_run = w.dry_run)
    )]
    async fn transact<E: From<Error>>(
        &self,
        name: &str,
        pre: &Precondition,
        w: &Write<'_>,
        mode: Mode,
        make: impl FnOnce(Option<Policy>) -> Result<Policy, E>,
    ) -> Result<(Policy, bool), E> {
        let mut tx = self.pool.begin().await.map_err(Error::from)?;
        match put_in(&mut tx, name, pre, w, mode, make).await {
            Ok(done) => {
                finish(tx, w.dry_run).await?;
                Ok(done)
            }
            Err(PutError::Caller(e)) => Err(e),
            Err(PutError::Store(Error::HostTaken { host, owner })) if owner.is_empty() => {
                // The transaction is aborted; ask again outside it who won.
                drop(tx);
                let owner = host_owner(&self.pool, &host, name)
                    .await?
                    .unwrap_or_default();
                Err(Error::HostTaken { host, owner }.into())
            }
            Err(PutError::Store(e)) => Err(e.into()),
        }
    }
}

/// Why [`put_in`] failed: the caller's `make` refused, or the store did.
pub(crate) enum PutError<E> {
    Caller(E),
    Store(Error),
}

impl<E> From<Error> for PutError<E> {
    fn from(e: Error) -> Self {
        PutError::Store(e)
    }
}

impl<E> From<sqlx::Error> for PutError<E> {
    fn from(e: sqlx::Error) -> Self {
        PutError::Store(e.into())
    }
}

/// The body of every policy write, on the caller's transaction: lock,
/// check the precondition and GitOps ownership, build the new policy from
/// the current one, store it with its revision, audit row and
/// notification. Committing is the caller's job, so several writes can be
/// one transaction (a GitOps sync); such a caller must lock the rows it
/// will touch in name order first, so that two of them never deadlock.
pub(crate) async fn put_in<E>(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    pre: &Precondition,
    w: &Write<'_>,
    mode: Mode,
    make: impl FnOnce(Option<Policy>) -> Result<Policy, E>,
) -> Result<(Policy, bool), PutError<E>> {
    let before = lock(tx, name).await?;
    match (&before, mode) {
        (Some(_), Mode::Create) => {
            return Err(Error::NameTaken {
                name: name.to_owned(),
            }
            .into())
        }
        (None, Mode::Modify) => {
            return Err(Error::NotFound {
                name: name.to_owned(),
            }
            .into())
        }
        (None, _) if *pre != Precondition::None => {
            return Err(Error::PreconditionOnMissing {
                name: name.to_owned(),
            }
            .into())
        }
        (Some(current), _) => check(current, pre)?,
        (None, _) => {}
    }
    if before.is_some() {
        check_owner(tx, name, w, "update").await?;
    }
    let policy = make(before.clone()).map_err(PutError::Caller)?;
    debug_assert_eq!(policy.metadata.name, name);
    let host = policy.spec.host.as_str();
    if let Some(owner) = host_owner(&mut **tx, host, name).await? {
        return Err(Error::HostTaken {
            host: host.to_owned(),
            owner,
        }
        .into());
    }
    let rv = next_version(tx).await?;
    let sql = match &before {
        Some(_) => format!(
            "UPDATE policies SET host = $2, labels = $3, spec = $4, resource_version = $5,
                 generation = generation + CASE WHEN spec = $4 THEN 0 ELSE 1 END,
                 revision = revision + 1, source = $6, updated_at = now()
             WHERE name = $1 RETURNING {COLUMNS}"
        ),
        None => format!(
            "INSERT INTO policies (name, host, labels, spec, resource_version, generation, revision,
                                   source, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 1, 1, $6, now(), now()) RETURNING {COLUMNS}"
        ),
    };
    let row = sqlx::query_as::<_, Row>(&sql)
        .bind(name)
        .bind(host)
        .bind(Json(&policy.metadata.labels))
        .bind(Json(&policy.spec))
        .bind(rv)
        .bind(w.source)
        .fetch_one(&mut **tx)
        .await;
    let row = match row {
        Ok(row) => row,
        // A concurrent insert got past the checks above; the unique
        // indexes stop it. Report it as the checks would have; the
        // transaction is aborted, so the host's owner is left for the
        // caller to look up (empty here).
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            return Err(if db.constraint() == Some("policies_host_key") {
                Error::HostTaken {
                    host: host.to_owned(),
                    owner: String::new(),
                }
            } else {
                Error::NameTaken {
                    name: name.to_owned(),
                }
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    sqlx::query(
        "INSERT INTO policy_revisions
             (policy_name, revision, resource_version, generation, labels, spec, source, created_at)
         SELECT name, revision, resource_version, generation, labels, spec, source, updated_at
         FROM policies WHERE name = $1",
    )
    .bind(name)
    .execute(&mut **tx)
    .await?;
    let after = row.into_policy();
    let action = if before.is_some() { "update" } else { "create" };
    audit(tx, w.actor, action, name, rv, before.as_ref(), Some(&after)).await?;
    announce(tx, "put", name, rv).await?;
    crate::failover::reconcile_weights(tx, name, &after.spec, "a policy write").await?;
    Ok((after, before.is_none()))
}

/// Deletes on the caller's transaction, with the same checks, audit row and
/// notification as every write; returns what was deleted.
pub(crate) async fn delete_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    pre: &Precondition,
    w: &Write<'_>,
) -> Result<Policy, Error> {
    let before = lock(tx, name).await?.ok_or_else(|| Error::NotFound {
        name: name.to_owned(),
    })?;
    check(&before, pre)?;
    check_owner(tx, name, w, "delete").await?;
    let rv: i64 = next_version(tx).await?;
    sqlx::query("DELETE FROM policies WHERE name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    audit(tx, w.actor, "delete", name, rv, Some(&before), None).await?;
    announce(tx, "delete", name, rv).await?;
    Ok(before)
}

/// The GitOps prefix of a source written by a sync: `gitops:<source>@`.
pub fn gitops_origin(source: &str) -> String {
    format!("gitops:{source}@")
}

/// A policy a GitOps source owns is written only by that source's syncs,
/// or by a forced write, which is recorded as an event so that operators
/// see why the next sync changes it back.
async fn check_owner(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    w: &Write<'_>,
    action: &str,
) -> Result<(), Error> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT gitops_source FROM policies WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .flatten();
    let Some(owner) = owner else { return Ok(()) };
    // The revision completing a rollout writes what the source's spec
    // already asked for (the canary's version at 100 %); the source keeps
    // owning the policy and its next sync writes the repository's spec back.
    if w.source.starts_with(&gitops_origin(&owner)) || w.source == crate::rollouts::ROLLOUT_SOURCE {
        return Ok(());
    }
    if !w.force {
        return Err(Error::OwnedByGitops {
            name: name.to_owned(),
            owner,
        });
    }
    let event = crate::failover::NewEvent {
        policy_name: Some(name.to_owned()),
        kind: "gitops_override".to_owned(),
        severity: "warning".to_owned(),
        message: format!(
            "{} forced an {action} of policy {name:?}, which GitOps source {owner:?} owns; \
             the source's next sync restores the repository's version",
            w.actor
        ),
        details: json!({"source": owner, "actor": w.actor, "action": action}),
    };
    crate::failover::insert_event(tx, &event).await
}

/// Every policy, ordered by name, read on the caller's connection.
pub(crate) async fn all_in(conn: &mut sqlx::PgConnection) -> Result<Vec<Policy>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM policies ORDER BY name");
    let rows = sqlx::query_as::<_, Row>(&sql).fetch_all(conn).await?;
    Ok(rows.into_iter().map(Row::into_policy).collect())
}

async fn host_owner<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    host: &str,
    except: &str,
) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT name FROM policies WHERE host = $1 AND name <> $2")
            .bind(host)
            .bind(except)
            .fetch_optional(exec)
            .await?,
    )
}

/// Reads the current row and locks it until the transaction ends, so the
/// version check and the write that follows are one atomic step.
pub(crate) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Option<Policy>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM policies WHERE name = $1 FOR UPDATE");
    Ok(sqlx::query_as::<_, Row>(&sql)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .map(Row::into_policy))
}

fn check(current: &Policy, pre: &Precondition) -> Result<(), Error> {
    let current_rv = current
        .metadata
        .resource_version
        .as_deref()
        .unwrap_or_default();
    match pre {
        Precondition::Version(expected) if expected != current_rv => Err(Error::StaleVersion {
            name: current.metadata.name.clone(),
            expected: expected.clone(),
            current: current_rv.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Advisory lock key that fences resource versions (the bytes of "meridian").
pub(crate) const VERSION_FENCE: i64 = 0x6d65_7269_6469_616e;

/// Takes the next resource version. The shared fence lock is held from here
/// until the transaction ends: writers never wait on each other for it, but
/// a watcher that takes it exclusively for an instant knows that every
/// version handed out before that instant is committed or rolled back, so
/// it can read the change log up to there without skipping a write that
/// commits out of version order (see `watch.rs`).
pub(crate) async fn next_version(tx: &mut Transaction<'_, Postgres>) -> Result<i64, Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(VERSION_FENCE)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query_scalar("SELECT nextval('resource_version_seq')")
        .fetch_one(&mut **tx)
        .await?)
}

async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    actor: &str,
    action: &str,
    name: &str,
    rv: i64,
    before: Option<&Policy>,
    after: Option<&Policy>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, policy_name, resource_version, before, after)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(actor)
    .bind(action)
    .bind(name)
    .bind(rv)
    .bind(before.map(Json))
    .bind(after.map(Json))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Queues the change notification; PostgreSQL delivers it only on commit.
async fn announce(
    tx: &mut Transaction<'_, Postgres>,
    op: &str,
    name: &str,
    rv: i64,
) -> Result<(), Error> {
    let payload = json!({"op": op, "name": name, "resourceVersion": rv.to_string()}).to_string();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn finish(tx: Transaction<'_, Postgres>, dry_run: bool) -> Result<(), Error> {
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RevisionRow {
    revision: i64,
    resource_version: i64,
    generation: i64,
    labels: Json<BTreeMap<String, String>>,
    spec: Json<Spec>,
    source: String,
    created_at: DateTime<Utc>,
}

impl RevisionRow {
    fn into_revision(self) -> Revision {
        Revision {
            revision: self.revision,
            resource_version: self.resource_version.to_string(),
            generation: self.generation,
            labels: self.labels.0,
            spec: self.spec.0,
            created_at: self.created_at,
            source: self.source,
        }
    }
}

impl Store {
    /// The named policies that exist, in name order; missing names are skipped.
    pub async fn get_many(&self, names: &[String]) -> Result<Vec<Policy>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM policies WHERE name = ANY($1) ORDER BY name");
        let rows = sqlx::query_as::<_, Row>(&sql)
            .bind(names)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Row::into_policy).collect())
    }
}

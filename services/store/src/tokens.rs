//! API tokens (hashes only) and the audit log's read side.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::types::Json;

use crate::audit::record as audit;
use crate::{Error, Store};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    /// Empty for writes that are not about a policy (tokens).
    pub policy: String,
    pub resource_version: Option<i64>,
    pub before: Option<Json<Value>>,
    pub after: Option<Json<Value>>,
}

/// What [`Store::import_token`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    Created,
    /// The same token and role were there already.
    Unchanged,
    /// The name held another token or role; the old token no longer works.
    Replaced,
}

/// Filters of [`Store::audit`].
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub policy: Option<String>,
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

impl Store {
    /// Stores a token's hash; fails with [`Error::TokenExists`] for a taken name.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        hash: &str,
        actor: &str,
    ) -> Result<Token, Error> {
        let mut tx = self.pool.begin().await?;
        let token = insert(&mut tx, name, role, hash, actor)
            .await?
            .ok_or_else(|| Error::TokenExists {
                name: name.to_owned(),
            })?;
        audit(
            &mut tx,
            actor,
            "token-created",
            json!({"name": name, "role": role}),
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Makes the token named `name` the one with `hash` and `role`: the
    /// declarative form of [`Store::create_token`], for a bootstrap job run
    /// on every upgrade with a token kept in a secret. Running it again
    /// with the same secret changes nothing; a new secret replaces the old
    /// token (which stops working). A revoked token is never brought back:
    /// that needs a new secret.
    pub async fn import_token(
        &self,
        name: &str,
        role: &str,
        hash: &str,
        actor: &str,
    ) -> Result<Imported, Error> {
        let mut tx = self.pool.begin().await?;
        let current: Option<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT role, hash, revoked_at FROM api_tokens WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let imported = match current {
            None => {
                // Two bootstrap jobs at once: the loser finds the winner's row.
                if insert(&mut tx, name, role, hash, actor).await?.is_none() {
                    drop(tx);
                    return Box::pin(self.import_token(name, role, hash, actor)).await;
                }
                Imported::Created
            }
            Some((_, old, Some(_))) if old == hash => {
                return Err(Error::TokenRevoked {
                    name: name.to_owned(),
                })
            }
            Some((old_role, old, None)) if old == hash && old_role == role => {
                return Ok(Imported::Unchanged)
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE api_tokens SET role = $2, hash = $3, created_by = $4,
                            created_at = now(), revoked_at = NULL
                     WHERE name = $1",
                )
                .bind(name)
                .bind(role)
                .bind(hash)
                .bind(actor)
                .execute(&mut *tx)
                .await?;
                Imported::Replaced
            }
        };
        let action = match imported {
            Imported::Created => "token-created",
            _ => "token-replaced",
        };
        audit(
            &mut tx,
            actor,
            action,
            json!({"name": name, "role": role, "imported": true}),
        )
        .await?;
        tx.commit().await?;
        Ok(imported)
    }

    /// The live (not revoked) token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, Error> {
        Ok(sqlx::query_as(
            "SELECT name, role, created_by, created_at, revoked_at FROM api_tokens
             WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn tokens(&self) -> Result<Vec<Token>, Error> {
        Ok(sqlx::query_as(
            "SELECT name, role, created_by, created_at, revoked_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a token for good; false when it was revoked already.
    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let state: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_tokens WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        match state {
            None => Err(Error::TokenNotFound {
                name: name.to_owned(),
            }),
            Some(Some(_)) => Ok(false),
            Some(None) => {
                sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                audit(&mut tx, actor, "token-revoked", json!({"name": name})).await?;
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    /// The audit log, newest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, policy_name AS policy, resource_version, before, after
             FROM audit_log
             WHERE ($1::text IS NULL OR policy_name = $1) AND ($2::text IS NULL OR actor = $2)
               AND ($3::timestamptz IS NULL OR at >= $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(&q.policy)
        .bind(&q.actor)
        .bind(q.since)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Inserts a token unless its name is taken (then `None`).
async fn insert(
    conn: &mut sqlx::PgConnection,
    name: &str,
    role: &str,
    hash: &str,
    actor: &str,
) -> Result<Option<Token>, Error> {
    Ok(sqlx::query_as(
        "INSERT INTO api_tokens (name, role, hash, created_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING
         RETURNING name, role, created_by, created_at, revoked_at",
    )
    .bind(name)
    .bind(role)
    .bind(hash)
    .bind(actor)
    .fetch_optional(conn)
    .await?)
}

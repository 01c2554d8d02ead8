//! DNS provider entries. Only settings and credential references are
//! stored; the store never sees a secret.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

use crate::{Error, Store};

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRow {
    pub name: String,
    pub kind: String,
    pub config: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A written row, and whether the write created it.
#[derive(sqlx::FromRow)]
struct Written {
    #[sqlx(flatten)]
    row: ProviderRow,
    created: bool,
}

impl Store {
    pub async fn providers(&self) -> Result<Vec<ProviderRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT name, kind, config, created_at, updated_at FROM dns_providers ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn provider(&self, name: &str) -> Result<ProviderRow, Error> {
        sqlx::query_as(
            "SELECT name, kind, config, created_at, updated_at FROM dns_providers WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::ProviderNotFound {
            name: name.to_owned(),
        })
    }

    /// Creates (`create == true`, 409 if it exists) or replaces a
    /// provider, audited as `actor` in the same transaction.
    pub async fn put_provider(
        &self,
        name: &str,
        kind: &str,
        config: &Value,
        create: bool,
        actor: &str,
    ) -> Result<(ProviderRow, bool), Error> {
        let mut tx = self.pool.begin().await?;
        let sql = if create {
            "INSERT INTO dns_providers (name, kind, config) VALUES ($1, $2, $3)
             RETURNING name, kind, config, created_at, updated_at, true AS created"
        } else {
            "INSERT INTO dns_providers (name, kind, config) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, config = EXCLUDED.config, updated_at = now()
             RETURNING name, kind, config, created_at, updated_at, (xmax = 0) AS created"
        };
        let written: Result<Written, _> = sqlx::query_as(sql)
            .bind(name)
            .bind(kind)
            .bind(Json(config))
            .fetch_one(&mut *tx)
            .await;
        match written {
            Ok(w) => {
                let action = if w.created {
                    "provider-created"
                } else {
                    "provider-replaced"
                };
                let after = serde_json::json!({"name": name, "kind": kind, "config": config});
                crate::audit::record(&mut tx, actor, action, after).await?;
                tx.commit().await?;
                Ok((w.row, w.created))
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(Error::ProviderExists {
                    name: name.to_owned(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a provider, audited as `actor` in the same transaction.
    pub async fn delete_provider(&self, name: &str, actor: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM dns_providers WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::ProviderNotFound {
                name: name.to_owned(),
            });
        }
        let after = serde_json::json!({"name": name});
        crate::audit::record(&mut tx, actor, "provider-deleted", after).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Policies with a zone that publishes through `provider`.
    pub async fn policies_using_provider(&self, provider: &str) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM policies WHERE spec -> 'zones' @> jsonb_build_array(jsonb_build_object('dns', jsonb_build_object('provider', $1::text)))
             ORDER BY name",
        )
        .bind(provider)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// What the reconciler last did for one policy and provider.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DnsStatus {
    pub provider: String,
    /// `synced`, `pending` or `error`.
    pub state: String,
    pub last_change_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    pub async fn set_dns_status(
        &self,
        policy: &str,
        provider: &str,
        state: &str,
        changed: bool,
        error: Option<&str>,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO dns_status (policy_name, provider, state, last_change_at, last_error, updated_at)
             SELECT $1, $2, $3, CASE WHEN $4 THEN now() END, $5, now()
             WHERE EXISTS (SELECT 1 FROM policies WHERE name = $1)
             ON CONFLICT (policy_name, provider) DO UPDATE
             SET state = EXCLUDED.state,
                 last_change_at = CASE WHEN $4 THEN now() ELSE dns_status.last_change_at END,
                 last_error = EXCLUDED.last_error, updated_at = now()",
        )
        .bind(policy)
        .bind(provider)
        .bind(state)
        .bind(changed)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn dns_status(&self, policy: &str) -> Result<Vec<DnsStatus>, Error> {
        Ok(sqlx::query_as(
            "SELECT provider, state, last_change_at, last_error, updated_at FROM dns_status
             WHERE policy_name = $1 ORDER BY provider",
        )
        .bind(policy)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether `token` still holds lease `name`: checked right before a
    /// provider call, which the database cannot fence.
    pub async fn lease_held(&self, name: &str, token: i64) -> Result<bool, Error> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT token FROM leases WHERE name = $1 AND token = $2 AND expires_at > now()",
        )
        .bind(name)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }
}

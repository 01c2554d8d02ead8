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
    /// Policies with a zone that publishes through `provider`, and policies
    /// (deleted ones too) whose records the leader has not removed from it
    /// yet: the provider's credentials are needed until then.
    pub async fn policies_using_provider(&self, provider: &str) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM policies WHERE spec -> 'zones' @> jsonb_build_array(jsonb_build_object('dns', jsonb_build_object('provider', $1::text)))
             UNION
             SELECT policy_name FROM dns_published WHERE provider = $1
             ORDER BY 1",
        )
        .bind(provider)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A (provider, host) the leader published records to.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Published {
    pub provider: String,
    pub host: String,
    /// The policy that last published there (it may be deleted since).
    pub policy_name: String,
}

impl Store {
    /// This installation's DNS owner id (see migration 0020).
    pub async fn dns_owner_id(&self) -> Result<String, Error> {
        Ok(sqlx::query_scalar("SELECT id FROM dns_owner")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every (provider, host) with records of ours, as far as we know.
    pub async fn dns_published(&self) -> Result<Vec<Published>, Error> {
        Ok(sqlx::query_as(
            "SELECT provider, host, policy_name FROM dns_published ORDER BY provider, host",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Remembers that `policy` publishes `host` through `provider`; called
    /// before a change is submitted, so a crash never forgets records.
    pub async fn mark_dns_published(
        &self,
        provider: &str,
        host: &str,
        policy: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO dns_published (provider, host, policy_name) VALUES ($1, $2, $3)
             ON CONFLICT (provider, host) DO UPDATE
             SET policy_name = EXCLUDED.policy_name, updated_at = now()
             WHERE dns_published.policy_name <> EXCLUDED.policy_name",
        )
        .bind(provider)
        .bind(host)
        .bind(policy)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets (provider, host) once the provider holds nothing of ours there.
    pub async fn forget_dns_published(&self, provider: &str, host: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM dns_published WHERE provider = $1 AND host = $2")
            .bind(provider)
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(())
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

    /// How long `token` still holds lease `name`, as the database sees it;
    /// `None` once it does not. Checked right before every provider submit,
    /// which the database cannot fence.
    pub async fn lease_remaining(
        &self,
        name: &str,
        token: i64,
    ) -> Result<Option<std::time::Duration>, Error> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM expires_at - now())::float8 FROM leases
             WHERE name = $1 AND token = $2 AND expires_at > now()",
        )
        .bind(name)
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        Ok(seconds.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
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

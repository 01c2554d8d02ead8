//! Tables of the health and failover roles: health reports, zone states,
//! effective weights, overrides, drains, events, and the fenced lease.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::types::Json;

use crate::{Error, Store, CHANNEL};

/// What one checker reported for one zone.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HealthReport {
    pub policy_name: String,
    pub zone: String,
    pub checker: String,
    pub samples: i32,
    pub failures: i32,
    pub last_error: Option<String>,
    pub reported_at: DateTime<Utc>,
}

/// The weights the leader decided for a policy, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveWeights {
    pub weights: BTreeMap<String, u32>,
    pub cause: String,
    pub reasons: BTreeMap<String, String>,
    pub decided_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub weights: BTreeMap<String, u32>,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub policy_name: Option<String>,
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub details: Json<Value>,
}

/// New effective weights for [`Store::decide`].
#[derive(Clone, Copy, Debug)]
pub struct WeightDecision<'a> {
    pub weights: &'a BTreeMap<String, u32>,
    pub cause: &'a str,
    pub reasons: &'a BTreeMap<String, String>,
}

/// An event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub policy_name: Option<String>,
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub details: Value,
}

impl Store {
    /// Upserts this checker's tallies (one row per policy and zone).
    pub async fn report_health(
        &self,
        checker: &str,
        rows: &[(String, String, i32, i32, Option<String>)],
    ) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let (mut policies, mut zones, mut samples, mut failures, mut errors) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (p, z, s, f, e) in rows {
            policies.push(p.clone());
            zones.push(z.clone());
            samples.push(*s);
            failures.push(*f);
            errors.push(e.clone());
        }
        // Reports for a policy deleted meanwhile are dropped by the join.
        sqlx::query(
            "INSERT INTO health_reports (policy_name, zone, checker, samples, failures, last_error, reported_at)
             SELECT r.p, r.z, $1, r.s, r.f, r.e, now()
             FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::text[]) AS r(p, z, s, f, e)
             JOIN policies ON policies.name = r.p
             ON CONFLICT (policy_name, zone, checker) DO UPDATE
             SET samples = EXCLUDED.samples, failures = EXCLUDED.failures,
                 last_error = EXCLUDED.last_error, reported_at = EXCLUDED.reported_at",
        )
        .bind(checker)
        .bind(&policies)
        .bind(&zones)
        .bind(&samples)
        .bind(&failures)
        .bind(&errors)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Reports newer than `fresh_for` (older ones are from checkers that stopped).
    pub async fn health_reports(
        &self,
        fresh_for: std::time::Duration,
    ) -> Result<Vec<HealthReport>, Error> {
        Ok(sqlx::query_as(
            "SELECT policy_name, zone, checker, samples, failures, last_error, reported_at
             FROM health_reports WHERE reported_at > now() - make_interval(secs => $1)
             ORDER BY policy_name, zone, checker",
        )
        .bind(fresh_for.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn zone_states(&self) -> Result<BTreeMap<(String, String), Value>, Error> {
        let rows: Vec<(String, String, Json<Value>)> =
            sqlx::query_as("SELECT policy_name, zone, state FROM zone_states")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(p, z, s)| ((p, z), s.0)).collect())
    }

    /// Effective weights of every policy that has a decision.
    pub async fn effective_weights(&self) -> Result<BTreeMap<String, EffectiveWeights>, Error> {
        self.effective_weights_where(None).await
    }

    /// Effective weights of the named policies.
    pub async fn effective_weights_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, EffectiveWeights>, Error> {
        self.effective_weights_where(Some(names)).await
    }

    async fn effective_weights_where(
        &self,
        names: Option<&[String]>,
    ) -> Result<BTreeMap<String, EffectiveWeights>, Error> {
        type Row = (
            String,
            Json<BTreeMap<String, u32>>,
            String,
            Json<BTreeMap<String, String>>,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT policy_name, weights, cause, reasons, decided_at FROM effective_weights
             WHERE $1::text[] IS NULL OR policy_name = ANY($1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(p, w, cause, reasons, decided_at)| {
                (
                    p,
                    EffectiveWeights {
                        weights: w.0,
                        cause,
                        reasons: reasons.0,
                        decided_at,
                    },
                )
            })
            .collect())
    }

    /// Takes or renews the lease `name` for `holder`. Returns the fencing
    /// token while held, `None` while another holder's lease is live.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(
            "INSERT INTO leases (name, holder, token, expires_at)
             VALUES ($1, $2, 1, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE
             SET token = CASE WHEN leases.holder = $2 AND leases.expires_at > now()
                              THEN leases.token ELSE leases.token + 1 END,
                 holder = $2,
                 expires_at = now() + make_interval(secs => $3)
             WHERE leases.holder = $2 OR leases.expires_at <= now()
             RETURNING token",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Gives the lease up at shutdown so another replica takes over at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), Error> {
        sqlx::query("UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a decision, its zone states and its events in one transaction,
    /// only if `token` still holds lease `lease` (fencing), then announces it.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        lease: &str,
        token: i64,
        policy: &str,
        weights: Option<WeightDecision<'_>>,
        states: &BTreeMap<String, Value>,
        events: &[NewEvent],
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT token FROM leases WHERE name = $1 AND token = $2 AND expires_at > now() FOR SHARE",
        )
        .bind(lease)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(Error::LeaseLost {
                lease: lease.to_owned(),
                token,
            });
        }
        for (zone, state) in states {
            sqlx::query(
                "INSERT INTO zone_states (policy_name, zone, state) SELECT $1, $2, $3
                 WHERE EXISTS (SELECT 1 FROM policies WHERE name = $1)
                 ON CONFLICT (policy_name, zone) DO UPDATE SET state = EXCLUDED.state",
            )
            .bind(policy)
            .bind(zone)
            .bind(Json(state))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(WeightDecision {
            weights: w,
            cause,
            reasons,
        }) = weights
        {
            sqlx::query(
                "INSERT INTO effective_weights (policy_name, weights, cause, reasons, decided_at, lease_token)
                 SELECT $1, $2, $3, $4, now(), $5 WHERE EXISTS (SELECT 1 FROM policies WHERE name = $1)
                 ON CONFLICT (policy_name) DO UPDATE
                 SET weights = EXCLUDED.weights, cause = EXCLUDED.cause, reasons = EXCLUDED.reasons,
                     decided_at = EXCLUDED.decided_at, lease_token = EXCLUDED.lease_token",
            )
            .bind(policy)
            .bind(Json(w))
            .bind(cause)
            .bind(Json(reasons))
            .bind(token)
            .execute(&mut *tx)
            .await?;
            let payload =
                json!({"op": "weights", "name": policy, "resourceVersion": ""}).to_string();
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        for e in events {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn override_of(&self, policy: &str) -> Result<Option<Override>, Error> {
        Ok(self.overrides_where(Some(policy)).await?.remove(policy))
    }

    pub async fn overrides(&self) -> Result<BTreeMap<String, Override>, Error> {
        self.overrides_where(None).await
    }

    async fn overrides_where(
        &self,
        policy: Option<&str>,
    ) -> Result<BTreeMap<String, Override>, Error> {
        type Row = (
            String,
            Json<BTreeMap<String, u32>>,
            String,
            Option<DateTime<Utc>>,
            String,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT policy_name, weights, reason, expires_at, actor, created_at FROM overrides
             WHERE $1::text IS NULL OR policy_name = $1",
        )
        .bind(policy)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(p, w, reason, expires_at, actor, created_at)| {
                (
                    p,
                    Override {
                        weights: w.0,
                        reason,
                        expires_at,
                        actor,
                        created_at,
                    },
                )
            })
            .collect())
    }

    /// Sets (replaces) a policy's override, with its event, in one transaction.
    pub async fn set_override(
        &self,
        policy: &str,
        weights: &BTreeMap<String, u32>,
        reason: &str,
        expires_at: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Result<Override, Error> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM policies WHERE name = $1 FOR SHARE")
                .bind(policy)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(Error::NotFound {
                name: policy.to_owned(),
            });
        }
        let created_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO overrides (policy_name, weights, reason, expires_at, actor) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (policy_name) DO UPDATE SET weights = EXCLUDED.weights, reason = EXCLUDED.reason,
                 expires_at = EXCLUDED.expires_at, actor = EXCLUDED.actor, created_at = now()
             RETURNING created_at",
        )
        .bind(policy)
        .bind(Json(weights))
        .bind(reason)
        .bind(expires_at)
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        let event = NewEvent {
            policy_name: Some(policy.to_owned()),
            kind: "override-set".into(),
            severity: "warning".into(),
            message: format!("weights pinned by {actor}: {reason}"),
            details: json!({"weights": weights, "expiresAt": expires_at}),
        };
        insert_event(&mut tx, &event).await?;
        let after = json!({"weights": weights, "reason": reason, "expiresAt": expires_at});
        audit(&mut tx, actor, "override-set", policy, Some(after)).await?;
        tx.commit().await?;
        Ok(Override {
            weights: weights.clone(),
            reason: reason.to_owned(),
            expires_at,
            actor: actor.to_owned(),
            created_at,
        })
    }

    /// Clears an override; false when there was none.
    pub async fn clear_override(&self, policy: &str, actor: &str) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM overrides WHERE policy_name = $1")
            .bind(policy)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(false);
        }
        let event = NewEvent {
            policy_name: Some(policy.to_owned()),
            kind: "override-cleared".into(),
            severity: "info".into(),
            message: format!("override cleared by {actor}"),
            details: json!({}),
        };
        insert_event(&mut tx, &event).await?;
        audit(&mut tx, actor, "override-cleared", policy, None).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Drains (`true`) or restores (`false`) a zone; returns whether anything changed.
    pub async fn set_drain(
        &self,
        policy: &str,
        zone: &str,
        drained: bool,
        actor: &str,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let changed = if drained {
            sqlx::query(
                "INSERT INTO drains (policy_name, zone, actor) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(policy)
            .bind(zone)
            .bind(actor)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query("DELETE FROM drains WHERE policy_name = $1 AND zone = $2")
                .bind(policy)
                .bind(zone)
                .execute(&mut *tx)
                .await?
        };
        if changed.rows_affected() > 0 {
            let (kind, verb) = if drained {
                ("zone-drained", "drained")
            } else {
                ("zone-undrained", "restored")
            };
            let event = NewEvent {
                policy_name: Some(policy.to_owned()),
                kind: kind.into(),
                severity: "info".into(),
                message: format!("zone {zone} {verb} by {actor}"),
                details: json!({"zone": zone}),
            };
            insert_event(&mut tx, &event).await?;
            let after = json!({"zone": zone, "drained": drained});
            audit(&mut tx, actor, kind, policy, Some(after)).await?;
        }
        tx.commit().await?;
        Ok(changed.rows_affected() > 0)
    }

    /// Drained zones per policy.
    pub async fn drains(&self) -> Result<BTreeMap<String, Vec<String>>, Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT policy_name, zone FROM drains ORDER BY policy_name, zone")
                .fetch_all(&self.pool)
                .await?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (p, z) in rows {
            out.entry(p).or_default().push(z);
        }
        Ok(out)
    }

    pub async fn record_event(&self, event: &NewEvent) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Events, oldest first, optionally of one policy and after a time.
    pub async fn events(
        &self,
        policy: Option<&str>,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<Event>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, at, policy_name, kind, severity, message, details FROM events
             WHERE ($1::text IS NULL OR policy_name = $1) AND ($2::timestamptz IS NULL OR at > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(policy)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// An operator action in the audit log, beside the policy writes there.
async fn audit(
    conn: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    policy: &str,
    after: Option<Value>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, policy_name, after) VALUES ($1, $2, $3, $4)",
    )
    .bind(actor)
    .bind(action)
    .bind(policy)
    .bind(after.map(Json))
    .execute(conn)
    .await?;
    Ok(())
}

/// Advisory lock key that fences event ids, as `VERSION_FENCE` does resource
/// versions: a reader of `events` by id never skips one that commits late.
pub(crate) const EVENT_FENCE: i64 = 0x6d65_7269_6469_6576;

pub(crate) async fn insert_event(conn: &mut sqlx::PgConnection, e: &NewEvent) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(EVENT_FENCE)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO events (policy_name, kind, severity, message, details) VALUES ($1, $2, $3, $4, $5)")
        .bind(&e.policy_name)
        .bind(&e.kind)
        .bind(&e.severity)
        .bind(&e.message)
        .bind(Json(&e.details))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Events with an id above `after`, oldest first: the cursor of a live stream.
    pub async fn events_after(
        &self,
        after: i64,
        policy: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, Error> {
        // Only up to the settled id: an event with a lower id may still be
        // committing, and a cursor past it would skip it for good.
        let settled = self.settled(EVENT_FENCE, "events_id_seq").await?;
        Ok(sqlx::query_as(
            "SELECT id, at, policy_name, kind, severity, message, details FROM events
             WHERE id > $1 AND id <= $4 AND ($2::text IS NULL OR policy_name = $2)
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(policy)
        .bind(limit)
        .bind(settled)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The newest event id (0 when there is none): where a new live stream starts.
    pub async fn last_event_id(&self) -> Result<i64, Error> {
        self.settled(EVENT_FENCE, "events_id_seq").await
    }
}

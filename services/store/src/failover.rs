//! Tables of the health and failover roles: health reports, zone states,
//! effective weights, overrides, drains, events, and the fenced lease.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::types::Json;

use crate::{Error, Store, CHANNEL};
pub use meridian_failover::endpoints::Unhealthy;

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
    /// Probe rounds in a row without any answer from the zone.
    pub unanswered_rounds: i32,
    /// The checker's window per endpoint (`ip:port`).
    pub endpoints: Json<BTreeMap<String, meridian_failover::endpoints::EndpointTally>>,
}

impl HealthReport {
    /// The report as the pure evaluation takes it.
    pub fn tally(&self) -> meridian_failover::ZoneTally {
        meridian_failover::ZoneTally {
            checker: self.checker.clone(),
            samples: self.samples.max(0) as u32,
            failures: self.failures.max(0) as u32,
            unanswered_rounds: self.unanswered_rounds.max(0) as u32,
            endpoints: self.endpoints.0.clone(),
        }
    }
}

/// One row of a checker's report for [`Store::report_health_rounds`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    pub policy: String,
    pub zone: String,
    pub samples: i32,
    pub failures: i32,
    pub unanswered_rounds: i32,
    pub last_error: Option<String>,
    /// The same window per endpoint (`ip:port`).
    pub endpoints: BTreeMap<String, meridian_failover::endpoints::EndpointTally>,
}

/// The weights the leader decided for a policy, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveWeights {
    pub weights: BTreeMap<String, u32>,
    pub cause: String,
    pub reasons: BTreeMap<String, String>,
    pub decided_at: DateTime<Utc>,
    /// Guard rails that shaped the weights (`{rule, message}` each).
    pub guard_rails: Vec<Value>,
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
    /// Guard rails that shaped the weights, as JSON (`[]` for none).
    pub guard_rails: &'a Value,
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
    /// Upserts this checker's tallies (one row per policy and zone), none
    /// of them silent: see [`Store::report_health_rounds`].
    pub async fn report_health(
        &self,
        checker: &str,
        rows: &[(String, String, i32, i32, Option<String>)],
    ) -> Result<(), Error> {
        let rows: Vec<ReportRow> = rows
            .iter()
            .map(|(p, z, s, f, e)| ReportRow {
                policy: p.clone(),
                zone: z.clone(),
                samples: *s,
                failures: *f,
                unanswered_rounds: 0,
                last_error: e.clone(),
                endpoints: BTreeMap::new(),
            })
            .collect();
        self.report_health_rounds(checker, &rows).await
    }

    /// Upserts this checker's tallies (one row per policy and zone).
    pub async fn report_health_rounds(
        &self,
        checker: &str,
        rows: &[ReportRow],
    ) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let (mut policies, mut zones, mut samples, mut failures, mut rounds, mut errors) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut endpoints = Vec::with_capacity(rows.len());
        for r in rows {
            endpoints.push(serde_json::to_value(&r.endpoints).unwrap_or_default());
            policies.push(r.policy.clone());
            zones.push(r.zone.clone());
            samples.push(r.samples);
            failures.push(r.failures);
            rounds.push(r.unanswered_rounds);
            errors.push(r.last_error.clone());
        }
        // Reports for a policy deleted meanwhile are dropped by the join.
        sqlx::query(
            "INSERT INTO health_reports (policy_name, zone, checker, samples, failures, unanswered_rounds, last_error, endpoints, reported_at)
             SELECT r.p, r.z, $1, r.s, r.f, r.u, r.e, r.j, now()
             FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::int[], $7::text[], $8::jsonb[]) AS r(p, z, s, f, u, e, j)
             JOIN policies ON policies.name = r.p
             ON CONFLICT (policy_name, zone, checker) DO UPDATE
             SET samples = EXCLUDED.samples, failures = EXCLUDED.failures,
                 unanswered_rounds = EXCLUDED.unanswered_rounds,
                 last_error = EXCLUDED.last_error, endpoints = EXCLUDED.endpoints,
                 reported_at = EXCLUDED.reported_at",
        )
        .bind(checker)
        .bind(&policies)
        .bind(&zones)
        .bind(&samples)
        .bind(&failures)
        .bind(&rounds)
        .bind(&errors)
        .bind(&endpoints)
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
            "SELECT policy_name, zone, checker, samples, failures, last_error, reported_at, unanswered_rounds, endpoints
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
            Json<Vec<Value>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT policy_name, weights, cause, reasons, decided_at, guard_rails FROM effective_weights
             WHERE $1::text[] IS NULL OR policy_name = ANY($1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(p, w, cause, reasons, decided_at, rails)| {
                (
                    p,
                    EffectiveWeights {
                        weights: w.0,
                        cause,
                        reasons: reasons.0,
                        decided_at,
                        guard_rails: rails.0,
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
    /// only if `token` still holds lease `lease` (fencing) and the policy is
    /// still at `resource_version`, the version the decision was made for;
    /// then announces it. Returns false, storing nothing, when the policy
    /// changed (or went) meanwhile: its write re-derived the weights for the
    /// new zones already, and the leader's next pass decides on the new spec.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        lease: &str,
        token: i64,
        policy: &str,
        resource_version: &str,
        weights: Option<WeightDecision<'_>>,
        states: &BTreeMap<String, Value>,
        events: &[NewEvent],
    ) -> Result<bool, Error> {
        self.decide_with_endpoints(
            lease,
            token,
            policy,
            resource_version,
            weights,
            None,
            states,
            events,
        )
        .await
    }

    /// [`Store::decide`], also storing the endpoints marked unhealthy
    /// when `unhealthy` is given (announced like weights, in the same
    /// transaction).
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_with_endpoints(
        &self,
        lease: &str,
        token: i64,
        policy: &str,
        resource_version: &str,
        weights: Option<WeightDecision<'_>>,
        unhealthy: Option<&Unhealthy>,
        states: &BTreeMap<String, Value>,
        events: &[NewEvent],
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, lease, token).await?;
        // FOR SHARE queues this behind a policy write in progress (which
        // holds the row FOR UPDATE), and a write behind this decision.
        let current: Option<i64> =
            sqlx::query_scalar("SELECT resource_version FROM policies WHERE name = $1 FOR SHARE")
                .bind(policy)
                .fetch_optional(&mut *tx)
                .await?;
        if current.map(|v| v.to_string()).as_deref() != Some(resource_version) {
            return Ok(false);
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
            guard_rails,
        }) = weights
        {
            sqlx::query(
                "INSERT INTO effective_weights (policy_name, weights, cause, reasons, decided_at, lease_token, guard_rails)
                 SELECT $1, $2, $3, $4, now(), $5, $6 WHERE EXISTS (SELECT 1 FROM policies WHERE name = $1)
                 ON CONFLICT (policy_name) DO UPDATE
                 SET weights = EXCLUDED.weights, cause = EXCLUDED.cause, reasons = EXCLUDED.reasons,
                     decided_at = EXCLUDED.decided_at, lease_token = EXCLUDED.lease_token,
                     guard_rails = EXCLUDED.guard_rails",
            )
            .bind(policy)
            .bind(Json(w))
            .bind(cause)
            .bind(Json(reasons))
            .bind(token)
            .bind(Json(guard_rails))
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
        if let Some(u) = unhealthy {
            sqlx::query(
                "INSERT INTO endpoint_health (policy_name, unhealthy, decided_at, lease_token)
                 SELECT $1, $2, now(), $3 WHERE EXISTS (SELECT 1 FROM policies WHERE name = $1)
                 ON CONFLICT (policy_name) DO UPDATE
                 SET unhealthy = EXCLUDED.unhealthy, decided_at = EXCLUDED.decided_at,
                     lease_token = EXCLUDED.lease_token",
            )
            .bind(policy)
            .bind(Json(u))
            .bind(token)
            .execute(&mut *tx)
            .await?;
            let payload =
                json!({"op": "endpoints", "name": policy, "resourceVersion": ""}).to_string();
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
        Ok(true)
    }

    /// Endpoints marked unhealthy, of every policy that has some.
    pub async fn endpoint_health(&self) -> Result<BTreeMap<String, Unhealthy>, Error> {
        self.endpoint_health_where(None).await
    }

    /// Endpoints marked unhealthy, of the named policies.
    pub async fn endpoint_health_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Unhealthy>, Error> {
        self.endpoint_health_where(Some(names)).await
    }

    async fn endpoint_health_where(
        &self,
        names: Option<&[String]>,
    ) -> Result<BTreeMap<String, Unhealthy>, Error> {
        let rows: Vec<(String, Json<Unhealthy>)> = sqlx::query_as(
            "SELECT policy_name, unhealthy FROM endpoint_health
             WHERE $1::text[] IS NULL OR policy_name = ANY($1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, u)| !u.0.is_empty())
            .map(|(p, u)| (p, u.0))
            .collect())
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

    /// Sets (replaces) a policy's override, with its event, in one
    /// transaction; refused by `minHealthyZones` like [`Store::set_override_forced`]
    /// without `force`.
    pub async fn set_override(
        &self,
        policy: &str,
        weights: &BTreeMap<String, u32>,
        reason: &str,
        expires_at: Option<DateTime<Utc>>,
        actor: &str,
    ) -> Result<Override, Error> {
        self.set_override_forced(policy, weights, reason, expires_at, actor, None)
            .await
    }

    /// Sets (replaces) a policy's override, with its event, in one
    /// transaction. An override that would leave fewer zones serving than
    /// the policy's `failover.minHealthyZones` fails with
    /// [`Error::GuardRail`], unless `force` gives a reason: then it is
    /// applied, and the reason is in the audit log and a warning event.
    pub async fn set_override_forced(
        &self,
        policy: &str,
        weights: &BTreeMap<String, u32>,
        reason: &str,
        expires_at: Option<DateTime<Utc>>,
        actor: &str,
        force: Option<&str>,
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
        let forced = guard_min_healthy(&mut tx, policy, actor, force).await?;
        let after = json!({"weights": weights, "reason": reason, "expiresAt": expires_at,
                           "forced": forced});
        audit(&mut tx, actor, "override-set", policy, Some(after)).await?;
        reconcile_locked(&mut tx, policy, "an override").await?;
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
        reconcile_locked(&mut tx, policy, "clearing the override").await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Drains (`true`) or restores (`false`) a zone; returns whether
    /// anything changed. A drain is refused by `minHealthyZones` as in
    /// [`Store::set_drain_forced`] without `force`.
    pub async fn set_drain(
        &self,
        policy: &str,
        zone: &str,
        drained: bool,
        actor: &str,
    ) -> Result<bool, Error> {
        self.set_drain_forced(policy, zone, drained, actor, None)
            .await
    }

    /// Drains (`true`) or restores (`false`) a zone; returns whether
    /// anything changed. A drain that would leave fewer zones serving than
    /// the policy's `failover.minHealthyZones` fails with
    /// [`Error::GuardRail`] unless `force` gives a reason, which is audited.
    pub async fn set_drain_forced(
        &self,
        policy: &str,
        zone: &str,
        drained: bool,
        actor: &str,
        force: Option<&str>,
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
            let forced = if drained {
                guard_min_healthy(&mut tx, policy, actor, force).await?
            } else {
                None
            };
            let after = json!({"zone": zone, "drained": drained, "forced": forced});
            audit(&mut tx, actor, kind, policy, Some(after)).await?;
            reconcile_locked(
                &mut tx,
                policy,
                if drained { "a drain" } else { "an undrain" },
            )
            .await?;
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

/// Re-derives a policy's effective weights on the caller's transaction,
/// after a write that changes what they depend on (the policy itself, its
/// override, its drains), so that the stored decision never names a zone
/// set other than the policy's own. Without this, a renamed zone got
/// weight 0 in xDS until a failover leader decided again, and without a
/// leader it never did.
///
/// The decision is the pure one the leader makes (crate
/// `meridian-failover`), on the zone health the leader last stored: a zone
/// it found unhealthy stays failed over, and a new or renamed zone, of
/// unknown health, is served. Health states of zones the policy no longer
/// has are dropped. A changed decision is announced and recorded as an
/// event; an unchanged one writes nothing.
/// What a decision for one policy depends on besides its spec, as stored.
struct Inputs {
    health: BTreeMap<String, meridian_failover::Health>,
    ov: Option<meridian_failover::Override>,
    drained: std::collections::BTreeSet<String>,
}

async fn inputs(tx: &mut sqlx::PgConnection, policy: &str) -> Result<Inputs, Error> {
    use meridian_failover::{Health, ZoneState};
    let states: Vec<(String, Json<Value>)> =
        sqlx::query_as("SELECT zone, state FROM zone_states WHERE policy_name = $1")
            .bind(policy)
            .fetch_all(&mut *tx)
            .await?;
    let health: BTreeMap<String, Health> = states
        .into_iter()
        .filter_map(|(zone, state)| {
            let state: ZoneState = serde_json::from_value(state.0).ok()?;
            Some((zone, state.health))
        })
        .collect();
    type OverrideRow = (Json<BTreeMap<String, u32>>, String, Option<DateTime<Utc>>);
    let ov: Option<OverrideRow> =
        sqlx::query_as("SELECT weights, reason, expires_at FROM overrides WHERE policy_name = $1")
            .bind(policy)
            .fetch_optional(&mut *tx)
            .await?;
    let ov = ov.map(
        |(weights, reason, expires_at)| meridian_failover::Override {
            weights: weights.0,
            reason,
            expires_at_ms: expires_at.map(|t| t.timestamp_millis()),
        },
    );
    let drained = sqlx::query_scalar("SELECT zone FROM drains WHERE policy_name = $1")
        .bind(policy)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    Ok(Inputs {
        health,
        ov,
        drained,
    })
}

/// Checks `minHealthyZones` on the state the caller's transaction has
/// written (the new drain or override in place), on the zone health the
/// leader stored. Refuses with [`Error::GuardRail`] unless `force` gives a
/// reason; a forced move is recorded as a warning event, and the reason is
/// returned for the caller's audit row.
async fn guard_min_healthy(
    tx: &mut sqlx::PgConnection,
    policy: &str,
    actor: &str,
    force: Option<&str>,
) -> Result<Option<String>, Error> {
    let spec: Option<Json<meridian_policy::Spec>> =
        sqlx::query_scalar("SELECT spec FROM policies WHERE name = $1 FOR SHARE")
            .bind(policy)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(spec) = spec else { return Ok(None) };
    let i = inputs(tx, policy).await?;
    let now = Utc::now().timestamp_millis();
    let Err(rail) =
        meridian_failover::check_min_healthy(&spec.0, &i.health, i.ov.as_ref(), &i.drained, now)
    else {
        return Ok(None);
    };
    let Some(reason) = force.map(str::trim).filter(|r| !r.is_empty()) else {
        return Err(Error::GuardRail {
            rule: rail.rule,
            message: rail.message,
        });
    };
    let event = NewEvent {
        policy_name: Some(policy.to_owned()),
        kind: "guard-rail-forced".into(),
        severity: "warning".into(),
        message: format!(
            "{actor} forced past {}: {reason} ({})",
            rail.rule, rail.message
        ),
        details: json!({"rule": rail.rule, "reason": reason, "actor": actor}),
    };
    insert_event(tx, &event).await?;
    Ok(Some(reason.to_owned()))
}

/// [`reconcile_weights`] for a write that does not hold the policy row yet:
/// locks it first (FOR SHARE, as [`Store::decide`] does), so the spec read
/// is the one the decision is stored with. Nothing to do for a policy that
/// is gone.
async fn reconcile_locked(
    tx: &mut sqlx::PgConnection,
    policy: &str,
    why: &str,
) -> Result<(), Error> {
    let spec: Option<Json<meridian_policy::Spec>> =
        sqlx::query_scalar("SELECT spec FROM policies WHERE name = $1 FOR SHARE")
            .bind(policy)
            .fetch_optional(&mut *tx)
            .await?;
    match spec {
        Some(spec) => reconcile_weights(tx, policy, &spec.0, why).await,
        None => Ok(()),
    }
}

pub(crate) async fn reconcile_weights(
    tx: &mut sqlx::PgConnection,
    policy: &str,
    spec: &meridian_policy::Spec,
    why: &str,
) -> Result<(), Error> {
    use meridian_failover::{decide_with, Current};
    let zones: Vec<String> = spec.zones.iter().map(|z| z.name.clone()).collect();
    sqlx::query("DELETE FROM zone_states WHERE policy_name = $1 AND NOT (zone = ANY($2))")
        .bind(policy)
        .bind(&zones)
        .execute(&mut *tx)
        .await?;
    let Inputs {
        health,
        ov,
        drained,
    } = inputs(tx, policy).await?;
    type WeightsRow = (Json<BTreeMap<String, u32>>, String, DateTime<Utc>);
    let current: Option<WeightsRow> = sqlx::query_as(
        "SELECT weights, cause, decided_at FROM effective_weights WHERE policy_name = $1 FOR UPDATE",
    )
    .bind(policy)
    .fetch_optional(&mut *tx)
    .await?;
    let now = Utc::now().timestamp_millis();
    let stored = current.as_ref().map(|(w, cause, at)| Current {
        weights: w.0.clone(),
        cause: cause.clone(),
        decided_at_ms: at.timestamp_millis(),
    });
    let decision = decide_with(spec, &health, ov.as_ref(), &drained, stored.as_ref(), now);
    let cause = decision.cause.as_str();
    let spec_weights: BTreeMap<String, u32> = spec
        .zones
        .iter()
        .map(|z| (z.name.clone(), z.weight))
        .collect();
    let (was_weights, was_cause) = match &current {
        Some((w, c, _)) => (w.0.clone(), c.as_str()),
        // No row: xDS and DNS serve the spec weights.
        None => (spec_weights, "spec"),
    };
    if decision.weights == was_weights && cause == was_cause {
        return Ok(());
    }
    // lease_token records which leader decided; 0 marks a write's re-derivation.
    sqlx::query(
        "INSERT INTO effective_weights (policy_name, weights, cause, reasons, decided_at, lease_token, guard_rails)
         VALUES ($1, $2, $3, $4, now(), 0, $5)
         ON CONFLICT (policy_name) DO UPDATE
         SET weights = EXCLUDED.weights, cause = EXCLUDED.cause, reasons = EXCLUDED.reasons,
             decided_at = EXCLUDED.decided_at, lease_token = EXCLUDED.lease_token,
             guard_rails = EXCLUDED.guard_rails",
    )
    .bind(policy)
    .bind(Json(&decision.weights))
    .bind(cause)
    .bind(Json(&decision.reasons))
    .bind(Json(&decision.guard_rails))
    .execute(&mut *tx)
    .await?;
    let payload = json!({"op": "weights", "name": policy, "resourceVersion": ""}).to_string();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    let fmt = |w: &BTreeMap<String, u32>| {
        w.iter()
            .map(|(z, n)| format!("{z}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let event = NewEvent {
        policy_name: Some(policy.to_owned()),
        kind: "weights-changed".into(),
        severity: if decision.critical.is_some() {
            "critical"
        } else {
            "info"
        }
        .into(),
        message: format!(
            "weights {} -> {} ({cause}, re-derived after {why})",
            fmt(&was_weights),
            fmt(&decision.weights)
        ),
        details: json!({"from": was_weights, "to": decision.weights, "cause": cause,
                        "reasons": decision.reasons, "trigger": why}),
    };
    insert_event(tx, &event).await
}

/// Every stored input of the failover decision, as read at one moment.
#[derive(Clone, Debug, Default)]
pub struct FailoverRows {
    pub reports: Vec<HealthReport>,
    pub states: BTreeMap<(String, String), Value>,
    pub overrides: BTreeMap<String, Override>,
    pub drains: BTreeMap<String, Vec<String>>,
    pub current: BTreeMap<String, EffectiveWeights>,
    /// (policy, zone) → the data planes' load-report buckets of its window.
    pub traffic: BTreeMap<(String, String), Vec<meridian_failover::TrafficTally>>,
    /// Endpoints marked unhealthy, by policy.
    pub unhealthy: BTreeMap<String, Unhealthy>,
}

impl Store {
    /// Every policy and what the leader's pass decides on: the reports
    /// fresher than `fresh_for`, zone states, overrides, drains and the
    /// stored weights. Shared by the leader, `/status` and `simulate`, so
    /// they all decide on the same inputs.
    pub async fn failover_inputs(
        &self,
        fresh_for: std::time::Duration,
    ) -> Result<(Vec<meridian_policy::Policy>, FailoverRows), Error> {
        let policies = self.all().await?;
        let windows = policies
            .iter()
            .map(|p| {
                let secs = u64::from(p.spec.failover.window_seconds);
                (
                    p.metadata.name.clone(),
                    std::time::Duration::from_secs(secs),
                )
            })
            .collect();
        let rows = FailoverRows {
            traffic: self.traffic_tallies(&windows).await?,
            reports: self.health_reports(fresh_for).await?,
            states: self.zone_states().await?,
            overrides: self.overrides().await?,
            drains: self.drains().await?,
            current: self.effective_weights().await?,
            unhealthy: self.endpoint_health().await?,
        };
        Ok((policies, rows))
    }
}

impl FailoverRows {
    /// One pure input per policy, in the order given. A zone state that does
    /// not parse is treated as absent (the zone starts over as unknown)
    /// rather than stopping the pass.
    pub fn inputs<'a>(
        &self,
        policies: &'a [meridian_policy::Policy],
    ) -> Vec<meridian_failover::step::Input<'a>> {
        use meridian_failover::{Current, Override as Pinned, ZoneState, ZoneTally};
        let mut probes: BTreeMap<&str, BTreeMap<String, Vec<ZoneTally>>> = BTreeMap::new();
        for r in &self.reports {
            probes
                .entry(r.policy_name.as_str())
                .or_default()
                .entry(r.zone.clone())
                .or_default()
                .push(r.tally());
        }
        policies
            .iter()
            .map(|p| {
                let name = p.metadata.name.as_str();
                let states = p
                    .spec
                    .zones
                    .iter()
                    .filter_map(|z| {
                        let v = self.states.get(&(name.to_owned(), z.name.clone()))?;
                        match serde_json::from_value::<ZoneState>(v.clone()) {
                            Ok(s) => Some((z.name.clone(), s)),
                            Err(e) => {
                                tracing::warn!(policy = %name, zone = %z.name, error = %e, "unreadable zone state; starting it over");
                                None
                            }
                        }
                    })
                    .collect();
                meridian_failover::step::Input {
                    policy: Some(p),
                    probes: probes.remove(name).unwrap_or_default(),
                    traffic: p
                        .spec
                        .zones
                        .iter()
                        .filter_map(|z| {
                            let t = self.traffic.get(&(name.to_owned(), z.name.clone()))?;
                            Some((z.name.clone(), t.clone()))
                        })
                        .collect(),
                    states,
                    override_: self.overrides.get(name).map(|o| Pinned {
                        weights: o.weights.clone(),
                        reason: o.reason.clone(),
                        expires_at_ms: o.expires_at.map(|t| t.timestamp_millis()),
                    }),
                    drained: self.drains.get(name).into_iter().flatten().cloned().collect(),
                    current: self.current.get(name).map(|e| Current {
                        weights: e.weights.clone(),
                        cause: e.cause.clone(),
                        decided_at_ms: e.decided_at.timestamp_millis(),
                    }),
                    unhealthy: self.unhealthy.get(name).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// Fencing: fails with [`Error::LeaseLost`] unless `token` still holds lease
/// `lease`, and keeps the lease row from changing until `tx` ends, so a
/// leader that lost its lease mid-write writes nothing.
pub(crate) async fn hold_lease(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    lease: &str,
    token: i64,
) -> Result<(), Error> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT token FROM leases WHERE name = $1 AND token = $2 AND expires_at > now() FOR SHARE",
    )
    .bind(lease)
    .bind(token)
    .fetch_optional(&mut **tx)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::LeaseLost {
            lease: lease.to_owned(),
            token,
        }),
    }
}

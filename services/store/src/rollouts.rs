//! Rollouts (issue 18): where each route's rollout is, stored by the
//! failover leader after each step under its lease, and the operators'
//! actions queued for its next step. docs/rollouts.md has the design.

use std::collections::BTreeMap;

use meridian_policy::Policy;
use meridian_rollout::Action;
pub use meridian_rollout::Status;
use serde_json::json;
use sqlx::types::Json;

use crate::failover::{hold_lease, insert_event, NewEvent};
use crate::policies::{put_in, Mode, PutError};
use crate::{Error, Precondition, Store, Write, CHANNEL};

/// An operator's action waiting for the leader's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedCommand {
    pub id: i64,
    pub route: String,
    pub action: Action,
    pub actor: String,
}

/// What the leader stores after a step that changed a rollout.
#[derive(Clone, Debug)]
pub struct RolloutSave<'a> {
    pub status: &'a Status,
    pub events: &'a [NewEvent],
    /// The queued command this step consumed.
    pub consumed: Option<i64>,
    /// The step completed the rollout: write the completion revision.
    pub complete: bool,
}

/// The source (and actor) of the revision that completes a rollout.
pub const ROLLOUT_SOURCE: &str = "rollout";

impl Store {
    /// The stored statuses of a policy's rollouts, by route.
    pub async fn rollout_statuses(&self, policy: &str) -> Result<BTreeMap<String, Status>, Error> {
        Ok(self
            .rollout_statuses_of(&[policy.to_owned()])
            .await?
            .remove(policy)
            .unwrap_or_default())
    }

    /// The stored statuses of the named policies' rollouts, by policy and
    /// route (every policy with one when `names` is empty is not offered:
    /// use [`Store::all_rollout_statuses`]).
    pub async fn rollout_statuses_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, Status>>, Error> {
        let rows: Vec<(String, String, Json<Status>)> = sqlx::query_as(
            "SELECT policy_name, route, status FROM rollout_status WHERE policy_name = ANY($1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(group(rows))
    }

    /// Every stored rollout status, by policy and route.
    pub async fn all_rollout_statuses(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, Status>>, Error> {
        let rows: Vec<(String, String, Json<Status>)> =
            sqlx::query_as("SELECT policy_name, route, status FROM rollout_status")
                .fetch_all(&self.pool)
                .await?;
        Ok(group(rows))
    }

    /// An operator's action on a route's rollout (REST, gRPC, CLI,
    /// dashboard), in one transaction: checked against the stored status
    /// ([`meridian_rollout::check`]: [`Error::RolloutRefused`] when it does
    /// not apply in the rollout's phase), then, unless the rollout is
    /// already so, queued for the leader's next step with its audit row
    /// and an event. Returns the queued command's id, or `None` when there
    /// was nothing to do. A step that finds the action no longer applies
    /// (the rollout moved meanwhile) ignores it with an event.
    pub async fn request_rollout_action(
        &self,
        policy: &str,
        route: &str,
        action: Action,
        actor: &str,
    ) -> Result<Option<i64>, Error> {
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
        let status: Option<Json<Status>> = sqlx::query_scalar(
            "SELECT status FROM rollout_status WHERE policy_name = $1 AND route = $2 FOR SHARE",
        )
        .bind(policy)
        .bind(route)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(Json(status)) = status else {
            return Err(Error::NoRollout {
                policy: policy.to_owned(),
                route: route.to_owned(),
            });
        };
        match meridian_rollout::check(&status, action) {
            Err(message) => return Err(Error::RolloutRefused { message }),
            Ok(meridian_rollout::Effect::AlreadyDone) => return Ok(None),
            Ok(meridian_rollout::Effect::Changes) => {}
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollout_commands (policy_name, route, action, actor)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(policy)
        .bind(route)
        .bind(action.as_str())
        .bind(actor)
        .fetch_one(&mut *tx)
        .await?;
        let event = NewEvent {
            policy_name: Some(policy.to_owned()),
            kind: "rollout-action-requested".into(),
            severity: "info".into(),
            message: format!(
                "{actor} asked to {} the rollout on route {route}",
                action.as_str()
            ),
            details: json!({"route": route, "action": action.as_str(), "actor": actor}),
        };
        insert_event(&mut tx, &event).await?;
        sqlx::query(
            "INSERT INTO audit_log (actor, action, policy_name, after) VALUES ($1, $2, $3, $4)",
        )
        .bind(actor)
        .bind(format!("rollout-{}", action.as_str()))
        .bind(policy)
        .bind(Json(json!({"route": route, "action": action.as_str()})))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// The oldest queued action of each route of a policy.
    pub async fn rollout_commands(
        &self,
        policy: &str,
    ) -> Result<BTreeMap<String, QueuedCommand>, Error> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (route) id, route, action, actor FROM rollout_commands
             WHERE policy_name = $1 ORDER BY route, id",
        )
        .bind(policy)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for (id, route, action, actor) in rows {
            let Ok(action) = serde_json::from_value::<Action>(json!(action)) else {
                // Unreadable (a newer replica's action): dropped when the
                // step consumes it, as refused.
                tracing::warn!(policy, route, action, "unknown rollout action queued");
                continue;
            };
            out.insert(
                route.clone(),
                QueuedCommand {
                    id,
                    route,
                    action,
                    actor,
                },
            );
        }
        Ok(out)
    }

    /// Stores one rollout step in one transaction, only while `token` holds
    /// lease `lease` (fencing, as [`Store::decide_with_endpoints`]) and the
    /// policy is still at `resource_version` (the spec the step ran on):
    /// the status, its events, the consumed command and, when the step
    /// completed the rollout, the revision (`source = rollout`) that sets
    /// the canary's weight to 100 and removes its `rollout`. Announces the
    /// change so every replica's xDS serves the new weight. Returns false,
    /// storing nothing, when the policy changed meanwhile.
    pub async fn save_rollout(
        &self,
        lease: &str,
        token: i64,
        policy: &str,
        resource_version: &str,
        save: &RolloutSave<'_>,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, lease, token).await?;
        // FOR UPDATE: the completion revision below writes this row, and a
        // policy write in progress must finish first (or come after).
        let current: Option<i64> =
            sqlx::query_scalar("SELECT resource_version FROM policies WHERE name = $1 FOR UPDATE")
                .bind(policy)
                .fetch_optional(&mut *tx)
                .await?;
        if current.map(|v| v.to_string()).as_deref() != Some(resource_version) {
            return Ok(false);
        }
        let route = &save.status.route;
        sqlx::query(
            "INSERT INTO rollout_status (policy_name, route, status, updated_at, lease_token)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (policy_name, route) DO UPDATE
             SET status = EXCLUDED.status, updated_at = now(), lease_token = EXCLUDED.lease_token",
        )
        .bind(policy)
        .bind(route)
        .bind(Json(save.status))
        .bind(token)
        .execute(&mut *tx)
        .await?;
        if let Some(id) = save.consumed {
            sqlx::query("DELETE FROM rollout_commands WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for e in save.events {
            insert_event(&mut tx, e).await?;
        }
        if save.complete {
            let w = Write {
                actor: ROLLOUT_SOURCE,
                source: ROLLOUT_SOURCE,
                dry_run: false,
                force: false,
            };
            let pre = Precondition::Version(resource_version.to_owned());
            let done = put_in(&mut tx, policy, &pre, &w, Mode::Modify, |p| {
                Ok::<_, Error>(completed(
                    p.expect("Mode::Modify locks an existing row"),
                    route,
                ))
            })
            .await;
            match done {
                Ok(_) => {}
                Err(PutError::Caller(e) | PutError::Store(e)) => return Err(e),
            }
        }
        let payload = json!({"op": "rollout", "name": policy, "resourceVersion": ""}).to_string();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The policy a completed rollout of `route` leaves: the canary at 100 %
/// and no `rollout`, so the revision changes nothing on the wire. The
/// canary block stays: its version's endpoints are the only ones serving
/// the route (the stable cluster is every endpoint not of a canary version).
pub fn completed(mut policy: Policy, route: &str) -> Policy {
    for r in &mut policy.spec.routes {
        if r.name == route {
            if let Some(c) = &mut r.canary {
                c.weight = 100;
                c.rollout = None;
            }
        }
    }
    policy
}

fn group(rows: Vec<(String, String, Json<Status>)>) -> BTreeMap<String, BTreeMap<String, Status>> {
    let mut out: BTreeMap<String, BTreeMap<String, Status>> = BTreeMap::new();
    for (p, r, s) in rows {
        out.entry(p).or_default().insert(r, s.0);
    }
    out
}

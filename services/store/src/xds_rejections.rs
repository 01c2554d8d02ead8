//! Policies an xDS client refused inside a shared route configuration:
//! recorded by the snapshot writer that heard the NACK, read by every
//! replica's writer (which leaves them out of that route) and by `/status`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::failover::{insert_event, NewEvent};
use crate::{Error, Store, CHANNEL};

/// A refusal in force: the policy is still at the version refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct XdsRejection {
    #[serde(skip)]
    pub policy_name: String,
    pub resource_version: String,
    /// The shared resource refused, e.g. `egress_8080`.
    pub resource: String,
    pub node_id: String,
    /// The client's error message.
    pub message: String,
    pub at: DateTime<Utc>,
}

impl Store {
    /// Records that `node_id` refused `resource` with `policy` in it, at
    /// the policy's current version, in one transaction with an event
    /// naming the policy and the announcement that makes every replica
    /// leave the policy out of `resource`. Returns false, recording
    /// nothing, when the policy is gone or already recorded at this version.
    pub async fn record_xds_rejection(
        &self,
        policy: &str,
        resource: &str,
        node_id: &str,
        message: &str,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT resource_version FROM policies WHERE name = $1 FOR SHARE")
                .bind(policy)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(version) = version.map(|v| v.to_string()) else {
            return Ok(false);
        };
        let inserted = sqlx::query(
            "INSERT INTO xds_rejections (policy_name, resource_version, resource, node_id, message)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (policy_name) DO UPDATE
             SET resource_version = EXCLUDED.resource_version, resource = EXCLUDED.resource,
                 node_id = EXCLUDED.node_id, message = EXCLUDED.message, at = now()
             WHERE xds_rejections.resource_version <> EXCLUDED.resource_version",
        )
        .bind(policy)
        .bind(&version)
        .bind(resource)
        .bind(node_id)
        .bind(message)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        insert_event(
            &mut tx,
            &NewEvent {
                policy_name: Some(policy.to_owned()),
                kind: "xds-rejected".into(),
                severity: "warning".into(),
                message: format!(
                    "xDS client {node_id} refused {resource} with policy {policy} (version {version}) in it: {message}; {policy} is left out of {resource} until it changes, so the other policies there keep getting updates"
                ),
                details: json!({"resource": resource, "nodeId": node_id, "message": message,
                                "resourceVersion": version}),
            },
        )
        .await?;
        let payload = json!({"op": "xds-rejected", "name": policy, "resourceVersion": version});
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Refusals in force (the policy still at the refused version), of
    /// every policy or of the named ones.
    pub async fn xds_rejections(
        &self,
        names: Option<&[String]>,
    ) -> Result<BTreeMap<String, XdsRejection>, Error> {
        let rows: Vec<XdsRejection> = sqlx::query_as(
            "SELECT r.policy_name, r.resource_version, r.resource, r.node_id, r.message, r.at
             FROM xds_rejections r JOIN policies p ON p.name = r.policy_name
             WHERE p.resource_version::text = r.resource_version
               AND ($1::text[] IS NULL OR r.policy_name = ANY($1))",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.policy_name.clone(), r))
            .collect())
    }
}

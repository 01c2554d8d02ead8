//! Reads for the dashboard's overview: the state of every policy at once,
//! in a fixed number of queries however many policies there are.

use std::collections::BTreeMap;

use crate::failover::Event;
use crate::providers::DnsStatus;
use crate::{Error, Store};

impl Store {
    /// Every policy's DNS provider states, keyed by policy name.
    pub async fn dns_status_all(&self) -> Result<BTreeMap<String, Vec<DnsStatus>>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            policy_name: String,
            #[sqlx(flatten)]
            status: DnsStatus,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT policy_name, provider, state, last_change_at, last_error, updated_at
             FROM dns_status ORDER BY policy_name, provider",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, Vec<DnsStatus>> = BTreeMap::new();
        for r in rows {
            out.entry(r.policy_name).or_default().push(r.status);
        }
        Ok(out)
    }

    /// The newest `limit` events (optionally of one policy), newest first:
    /// what a timeline shows when it opens, however many events are older.
    pub async fn recent_events(
        &self,
        policy: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Event>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, at, policy_name, kind, severity, message, details FROM events
             WHERE $1::text IS NULL OR policy_name = $1
             ORDER BY id DESC LIMIT $2",
        )
        .bind(policy)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

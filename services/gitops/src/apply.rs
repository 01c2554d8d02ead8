//! Planning and applying a set of desired policies in one transaction:
//! shared by a source's sync and `meridian apply --prune` through the API.

use meridian_policy::Policy;
use meridian_store::failover::NewEvent;
use meridian_store::gitops::{ApplyTx, Scope};
use meridian_store::{Store, Write};
use serde_json::json;

use crate::plan::{self, Conflict, Plan, Planner};

/// Why an apply did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan would take policies the planner does not own; nothing changed.
    #[error("{} conflict(s): {}", .0.len(), .0.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("; "))]
    Conflicts(Vec<Conflict>),
    /// A write was refused (e.g. a host another policy uses) or the database
    /// failed; the transaction is rolled back, nothing changed.
    #[error(transparent)]
    Store(#[from] meridian_store::Error),
}

/// A plan whose writes are done in an open transaction: the caller records
/// what it needs and commits, or rolls back (a dry run).
pub struct Applied {
    pub tx: ApplyTx,
    pub plan: Plan,
}

/// Locks the policies in scope, plans against them, and performs every
/// write of the plan in one transaction that the caller commits. Hosts are
/// unique at every statement, so writes that free hosts go first: deletes
/// (a renamed policy keeps its host), then updates (a host moved to a new
/// policy), then creates, which never free one.
pub async fn apply(
    store: &Store,
    planner: Planner<'_>,
    desired: &[Policy],
    prune: bool,
    w: &Write<'_>,
) -> Result<Applied, Error> {
    let names: Vec<String> = desired.iter().map(|p| p.metadata.name.clone()).collect();
    let (scope, owner) = match planner {
        Planner::Source { name, .. } => (Scope::Source(name), Some(name)),
        Planner::Api => (Scope::Unowned, None),
    };
    let (mut tx, current) = store.begin_apply(scope, &names).await?;
    let plan = match plan::compute(planner, desired, &current, prune) {
        Ok(plan) => plan,
        Err(conflicts) => {
            tx.rollback().await?;
            return Err(Error::Conflicts(conflicts));
        }
    };
    let result = async {
        for name in &plan.delete {
            tx.delete(name, w).await?;
        }
        for u in &plan.update {
            tx.put(&u.policy, w, owner).await?;
            if let (true, Some(source)) = (u.restore, owner) {
                tx.event(&NewEvent {
                    policy_name: Some(u.policy.metadata.name.clone()),
                    kind: "gitops_restored".to_owned(),
                    severity: "info".to_owned(),
                    message: format!(
                        "GitOps source {source:?} restored the repository's version of policy {:?}, \
                         which had been changed outside the repository",
                        u.policy.metadata.name
                    ),
                    details: json!({"source": source, "changes": u.changes}),
                })
                .await?;
            }
        }
        for p in &plan.create {
            tx.put(p, w, owner).await?;
        }
        Ok::<_, meridian_store::Error>(())
    }
    .await;
    match result {
        Ok(()) => Ok(Applied { tx, plan }),
        Err(e) => {
            // Dropping an aborted transaction rolls it back; an explicit
            // rollback could only add a second error.
            drop(tx);
            Err(Error::Store(e))
        }
    }
}

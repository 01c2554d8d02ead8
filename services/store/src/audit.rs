//! Audit rows of writes that are not policy writes (tokens, DNS providers,
//! GitOps sources, the CA): who did what, in the write's own transaction,
//! so a write and its audit row commit or roll back together.

use serde_json::Value;
use sqlx::types::Json;

use crate::Error;

/// Records `action` by `actor` with `after` (what the write left; never a
/// secret: providers and sources hold only credential references).
pub(crate) async fn record(
    conn: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    after: Value,
) -> Result<(), Error> {
    // The audit log is keyed by policy; these actions name no policy.
    sqlx::query(
        "INSERT INTO audit_log (actor, action, policy_name, after) VALUES ($1, $2, '', $3)",
    )
    .bind(actor)
    .bind(action)
    .bind(Json(after))
    .execute(conn)
    .await?;
    Ok(())
}

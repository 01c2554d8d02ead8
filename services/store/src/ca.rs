//! The certificate authority's rows: the CA (key sealed by the caller) and
//! the workload certificates it issued. Changes are announced on
//! [`CA_CHANNEL`] so every replica's snapshot writer picks them up.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;

use crate::{Error, Store};

/// Channel on which CA changes (a forced rotation, a new CA) are announced.
pub const CA_CHANNEL: &str = "meridian_ca";

/// The stored CA. `key_sealed` is opaque here: only the CA crate opens it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CaRow {
    pub trust_domain: String,
    pub source: String,
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub chain_pem: String,
    pub trust_bundle_pem: String,
    /// MAC over the trust domain, certificate, chain and trust bundle under
    /// a key derived from the master key; `None` on rows stored before it
    /// existed. Only the CA crate computes and checks it.
    pub bundle_mac: Option<Vec<u8>>,
    pub rotation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for CaRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRow")
            .field("trust_domain", &self.trust_domain)
            .field("source", &self.source)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

/// A CA to store when there is none yet.
pub struct NewCa<'a> {
    pub trust_domain: &'a str,
    pub source: &'a str,
    pub cert_pem: &'a str,
    pub key_sealed: &'a [u8],
    pub chain_pem: &'a str,
    pub trust_bundle_pem: &'a str,
    pub bundle_mac: &'a [u8],
}

/// One issued workload certificate; the key is sealed by the caller.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WorkloadCertRow {
    pub spiffe_id: String,
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub rotation: i64,
}

impl std::fmt::Debug for WorkloadCertRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertRow")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

const CA_COLUMNS: &str = "trust_domain, source, cert_pem, key_sealed, chain_pem, trust_bundle_pem, bundle_mac, rotation, created_at, updated_at";
const CERT_COLUMNS: &str = "spiffe_id, cert_pem, key_sealed, not_before, not_after, rotation";

impl Store {
    /// The stored CA, if any.
    pub async fn ca(&self) -> Result<Option<CaRow>, Error> {
        Ok(
            sqlx::query_as(&format!("SELECT {CA_COLUMNS} FROM ca WHERE id = 1"))
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores `new` unless a CA exists, and returns the stored CA. Two
    /// replicas starting at once may both generate one; the first insert
    /// wins and both use it.
    pub async fn init_ca(&self, new: &NewCa<'_>) -> Result<CaRow, Error> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO ca (trust_domain, source, cert_pem, key_sealed, chain_pem, trust_bundle_pem, bundle_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(new.trust_domain)
        .bind(new.source)
        .bind(new.cert_pem)
        .bind(new.key_sealed)
        .bind(new.chain_pem)
        .bind(new.trust_bundle_pem)
        .bind(new.bundle_mac)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            sqlx::query("SELECT pg_notify($1, 'ca')")
                .bind(CA_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query_as(&format!("SELECT {CA_COLUMNS} FROM ca WHERE id = 1"))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Replaces the CA (an operator provided a new one): every workload
    /// certificate is re-issued under it, since the rotation number moves.
    pub async fn replace_ca(&self, new: &NewCa<'_>, actor: &str) -> Result<CaRow, Error> {
        let mut tx = self.pool.begin().await?;
        let row: CaRow = sqlx::query_as(&format!(
            "INSERT INTO ca (trust_domain, source, cert_pem, key_sealed, chain_pem, trust_bundle_pem, bundle_mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET trust_domain = EXCLUDED.trust_domain,
                 source = EXCLUDED.source, cert_pem = EXCLUDED.cert_pem,
                 key_sealed = EXCLUDED.key_sealed, chain_pem = EXCLUDED.chain_pem,
                 trust_bundle_pem = EXCLUDED.trust_bundle_pem, bundle_mac = EXCLUDED.bundle_mac,
                 rotation = ca.rotation + 1, updated_at = now()
             RETURNING {CA_COLUMNS}"
        ))
        .bind(new.trust_domain)
        .bind(new.source)
        .bind(new.cert_pem)
        .bind(new.key_sealed)
        .bind(new.chain_pem)
        .bind(new.trust_bundle_pem)
        .bind(new.bundle_mac)
        .fetch_one(&mut *tx)
        .await?;
        audit(&mut tx, actor, "ca-replace", row.rotation).await?;
        sqlx::query("SELECT pg_notify($1, 'ca')")
            .bind(CA_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Stores the MAC of a CA row stored before MACs existed, if the row
    /// still holds exactly what the caller checked (`seen`); true when it
    /// did. Changes no certificate, so nothing is re-issued.
    pub async fn seal_ca_bundle(&self, seen: &CaRow, mac: &[u8]) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE ca SET bundle_mac = $1, updated_at = now()
             WHERE id = 1 AND bundle_mac IS NULL AND trust_domain = $2 AND cert_pem = $3
               AND chain_pem = $4 AND trust_bundle_pem = $5",
        )
        .bind(mac)
        .bind(&seen.trust_domain)
        .bind(&seen.cert_pem)
        .bind(&seen.chain_pem)
        .bind(&seen.trust_bundle_pem)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Forces every workload certificate to be re-issued now; returns the
    /// new rotation number. Audited and announced in one transaction.
    pub async fn rotate_workload_certs(&self, actor: &str) -> Result<i64, Error> {
        let mut tx = self.pool.begin().await?;
        let rotation: Option<i64> = sqlx::query_scalar(
            "UPDATE ca SET rotation = rotation + 1, updated_at = now() WHERE id = 1 RETURNING rotation",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let rotation = rotation.ok_or(Error::NoCa)?;
        audit(&mut tx, actor, "ca-rotate", rotation).await?;
        sqlx::query("SELECT pg_notify($1, 'rotate')")
            .bind(CA_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rotation)
    }

    /// The stored certificates of these identities.
    pub async fn workload_certs(&self, ids: &[String]) -> Result<Vec<WorkloadCertRow>, Error> {
        Ok(sqlx::query_as(&format!(
            "SELECT {CERT_COLUMNS} FROM workload_certs WHERE spiffe_id = ANY($1) ORDER BY spiffe_id"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores `new` if the stored certificate of its identity is still
    /// `replaces` (`None`: there was none), and returns what is stored then.
    /// Two replicas renewing at once thus agree on one certificate.
    pub async fn put_workload_cert(
        &self,
        new: &WorkloadCertRow,
        replaces: Option<&str>,
    ) -> Result<WorkloadCertRow, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workload_certs (spiffe_id, cert_pem, key_sealed, not_before, not_after, rotation)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (spiffe_id) DO UPDATE SET cert_pem = EXCLUDED.cert_pem,
                 key_sealed = EXCLUDED.key_sealed, not_before = EXCLUDED.not_before,
                 not_after = EXCLUDED.not_after, rotation = EXCLUDED.rotation, issued_at = now()
             WHERE workload_certs.cert_pem = $7",
        )
        .bind(&new.spiffe_id)
        .bind(&new.cert_pem)
        .bind(&new.key_sealed)
        .bind(new.not_before)
        .bind(new.not_after)
        .bind(new.rotation)
        .bind(replaces.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query_as(&format!(
            "SELECT {CERT_COLUMNS} FROM workload_certs WHERE spiffe_id = $1"
        ))
        .bind(&new.spiffe_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Listens for CA changes. Any event, a reconnect included, means
    /// "read the CA row again".
    pub async fn listen_ca(&self) -> Result<CaListener, Error> {
        let mut inner = PgListener::connect_with(&self.pool).await?;
        inner.listen(CA_CHANNEL).await?;
        Ok(CaListener { inner })
    }
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    rotation: i64,
) -> Result<(), Error> {
    crate::audit::record(
        tx,
        actor,
        action,
        serde_json::json!({ "rotation": rotation }),
    )
    .await
}

/// A subscription to [`CA_CHANNEL`].
pub struct CaListener {
    inner: PgListener,
}

impl CaListener {
    /// Waits for the next CA change (or a reconnect, after which changes
    /// may have been missed: either way, re-read).
    pub async fn next(&mut self) -> Result<(), Error> {
        self.inner.try_recv().await?;
        Ok(())
    }
}

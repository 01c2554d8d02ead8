//! The CA's I/O: load it from the store (opening its sealed key), or create
//! it on first start, or take the operator's; and keep workload
//! certificates for connected identities fresh.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use meridian_ca::{open, renewal_due, seal, Authority, MasterKey, SpiffeId};
use meridian_store::ca::{NewCa, WorkloadCertRow};
use meridian_store::Store;

use crate::Error;

/// Label binding the sealed CA key to its purpose (see [`meridian_ca::seal`]).
const CA_KEY_LABEL: &str = "meridian-ca-key";

fn workload_label(id: &str) -> String {
    format!("meridian-workload-key:{id}")
}

/// Where the CA comes from.
pub enum Source {
    /// The stored CA, or a root generated now when there is none.
    Generate,
    /// An operator's CA (typically an intermediate under their root).
    Provided {
        cert_pem: String,
        key_pem: String,
        chain_pem: String,
        trust_bundle_pem: String,
    },
}

/// Loads or creates the CA. A stored CA whose key does not open with
/// `key` is an error (never silently replaced: its certificates are in use).
pub async fn bootstrap(
    store: &Store,
    key: &MasterKey,
    trust_domain: &str,
    source: Source,
) -> Result<Authority, Error> {
    let stored = store.ca().await?;
    match source {
        Source::Provided {
            cert_pem,
            key_pem,
            chain_pem,
            trust_bundle_pem,
        } => {
            let ca = Authority::from_pem(
                trust_domain,
                &cert_pem,
                &key_pem,
                &chain_pem,
                &trust_bundle_pem,
            )?;
            let same = stored
                .as_ref()
                .is_some_and(|r| r.cert_pem == ca.cert_pem() && r.trust_domain == trust_domain);
            if !same {
                let sealed = seal(key, CA_KEY_LABEL, ca.key_pem().as_bytes())?;
                store
                    .replace_ca(
                        &NewCa {
                            trust_domain,
                            source: "provided",
                            cert_pem: ca.cert_pem(),
                            key_sealed: &sealed,
                            chain_pem: ca.chain_pem(),
                            trust_bundle_pem: ca.trust_bundle_pem(),
                        },
                        "meridian-serve",
                    )
                    .await?;
                tracing::info!(trust_domain, "stored the operator-provided CA");
            }
            Ok(ca)
        }
        Source::Generate => {
            let row = match stored {
                Some(r) => r,
                None => {
                    let ca = Authority::generate(trust_domain, Utc::now())?;
                    let sealed = seal(key, CA_KEY_LABEL, ca.key_pem().as_bytes())?;
                    let row = store
                        .init_ca(&NewCa {
                            trust_domain,
                            source: "generated",
                            cert_pem: ca.cert_pem(),
                            key_sealed: &sealed,
                            chain_pem: "",
                            trust_bundle_pem: ca.trust_bundle_pem(),
                        })
                        .await?;
                    tracing::info!(trust_domain, "generated a root CA");
                    row
                }
            };
            load(&row, key, trust_domain)
        }
    }
}

fn load(
    row: &meridian_store::ca::CaRow,
    key: &MasterKey,
    trust_domain: &str,
) -> Result<Authority, Error> {
    if row.trust_domain != trust_domain {
        return Err(Error::TrustDomainMismatch {
            stored: row.trust_domain.clone(),
            configured: trust_domain.to_owned(),
        });
    }
    let key_pem = open(key, CA_KEY_LABEL, &row.key_sealed)?;
    let key_pem = String::from_utf8(key_pem).map_err(|_| meridian_ca::Error::Unseal)?;
    Ok(Authority::from_pem(
        &row.trust_domain,
        &row.cert_pem,
        &key_pem,
        &row.chain_pem,
        &row.trust_bundle_pem,
    )?)
}

/// Issues and renews the certificates of connected identities.
pub struct Issuer {
    pub(crate) ca: Authority,
    key: MasterKey,
    lifetime: chrono::Duration,
}

/// What the issuer settled on: the certificates to serve and when to look again.
pub struct Issued {
    pub trust_bundle_pem: String,
    pub certs: BTreeMap<String, (String, String)>,
    pub next_renewal: Option<DateTime<Utc>>,
}

impl Issuer {
    pub fn new(ca: Authority, key: MasterKey, lifetime: chrono::Duration) -> Self {
        Issuer { ca, key, lifetime }
    }

    /// One bounded step: for each wanted identity of the trust domain, the
    /// stored certificate if it is fresh (same CA, not past half life, not
    /// older than the last forced rotation), else a new one, stored so
    /// every replica serves the same. Identities of other trust domains get
    /// nothing.
    pub async fn refresh(
        &mut self,
        store: &Store,
        wanted: &BTreeSet<String>,
    ) -> Result<Issued, Error> {
        let row = store.ca().await?.ok_or(meridian_store::Error::NoCa)?;
        if row.cert_pem != self.ca.cert_pem() {
            // Another replica installed a new CA: follow it.
            self.ca = load(&row, &self.key, self.ca.trust_domain())?;
        }
        let ids: Vec<SpiffeId> = wanted
            .iter()
            .filter_map(|w| SpiffeId::parse(w).ok())
            .filter(|id| id.trust_domain == self.ca.trust_domain())
            .collect();
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let stored: BTreeMap<String, WorkloadCertRow> = store
            .workload_certs(&names)
            .await?
            .into_iter()
            .map(|r| (r.spiffe_id.clone(), r))
            .collect();
        let now = Utc::now();
        let mut out = Issued {
            trust_bundle_pem: row.trust_bundle_pem.clone(),
            certs: BTreeMap::new(),
            next_renewal: None,
        };
        for id in ids {
            let name = id.to_string();
            let current = stored.get(&name);
            let fresh = current.filter(|c| {
                // A new CA bumps the rotation too, so this also drops
                // certificates of a replaced CA.
                c.rotation >= row.rotation && !renewal_due(c.not_before, c.not_after, now)
            });
            let cert = match fresh {
                Some(c) => c.clone(),
                None => {
                    let issued = self.ca.issue(&id, &[], now, self.lifetime)?;
                    let sealed =
                        seal(&self.key, &workload_label(&name), issued.key_pem.as_bytes())?;
                    let new = WorkloadCertRow {
                        spiffe_id: name.clone(),
                        cert_pem: issued.cert_chain_pem,
                        key_sealed: sealed,
                        not_before: issued.not_before,
                        not_after: issued.not_after,
                        rotation: row.rotation,
                    };
                    let kept = store
                        .put_workload_cert(&new, current.map(|c| c.cert_pem.as_str()))
                        .await?;
                    tracing::info!(spiffe_id = %name, not_after = %kept.not_after, "workload certificate issued");
                    kept
                }
            };
            let key_pem = open(&self.key, &workload_label(&name), &cert.key_sealed)?;
            let key_pem = String::from_utf8(key_pem).map_err(|_| meridian_ca::Error::Unseal)?;
            let due = cert.not_before + (cert.not_after - cert.not_before) / 2;
            out.next_renewal = Some(out.next_renewal.map_or(due, |n: DateTime<Utc>| n.min(due)));
            out.certs.insert(name, (cert.cert_pem, key_pem));
        }
        Ok(out)
    }
}

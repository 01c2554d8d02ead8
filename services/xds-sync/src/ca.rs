//! The CA's I/O: load it from the store (opening its sealed key), or create
//! it on first start, or take the operator's; and keep workload
//! certificates for connected identities fresh.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use meridian_ca::{
    bundle_mac, open, renewal_due, seal, verify_bundle_mac, Authority, MasterKey, PublicParts,
    SpiffeId,
};
use meridian_store::ca::{CaRow, NewCa, WorkloadCertRow};
use meridian_store::Store;

use crate::Error;

/// Label binding the sealed CA key to its purpose (see [`meridian_ca::seal`]).
const CA_KEY_LABEL: &str = "meridian-ca-key";

fn workload_label(id: &str) -> String {
    format!("meridian-workload-key:{id}")
}

fn parts(row: &CaRow) -> PublicParts<'_> {
    PublicParts {
        trust_domain: &row.trust_domain,
        cert_pem: &row.cert_pem,
        chain_pem: &row.chain_pem,
        trust_bundle_pem: &row.trust_bundle_pem,
    }
}

fn parts_of(ca: &Authority) -> PublicParts<'_> {
    PublicParts {
        trust_domain: ca.trust_domain(),
        cert_pem: ca.cert_pem(),
        chain_pem: ca.chain_pem(),
        trust_bundle_pem: ca.trust_bundle_pem(),
    }
}

/// What the check of a stored CA row found.
#[derive(Debug, PartialEq, Eq)]
enum Sealing {
    /// Its MAC verifies.
    Sealed,
    /// Stored before MACs existed, and holds only what Meridian writes for
    /// a root it generated (the bundle is the CA certificate, no chain): no
    /// root was added, so it may be sealed now.
    LegacyOwn,
}

/// Checks that the row's certificates and trust bundle are what a holder
/// of the master key stored. Anything else is refused, loudly: a root added
/// to the bundle would make every workload trust certificates it mints.
fn check(row: &CaRow, key: &MasterKey) -> Result<Sealing, Error> {
    let found = match &row.bundle_mac {
        Some(mac) => verify_bundle_mac(key, &parts(row), mac).map(|()| Sealing::Sealed),
        None if row.source == "generated"
            && row.chain_pem.is_empty()
            && row.trust_bundle_pem == row.cert_pem =>
        {
            Ok(Sealing::LegacyOwn)
        }
        None => Err(meridian_ca::Error::BundleTampered),
    };
    found.map_err(|e| {
        tracing::error!(
            alert = "ca_bundle_tampered",
            trust_domain = %row.trust_domain,
            "{e}"
        );
        Error::Ca(e)
    })
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
            // The operator's files are the truth: a stored copy that differs
            // in any public part, or whose MAC does not verify, is replaced.
            let same = stored.as_ref().filter(|r| {
                r.trust_domain == trust_domain
                    && r.cert_pem == ca.cert_pem()
                    && r.chain_pem == ca.chain_pem()
                    && r.trust_bundle_pem == ca.trust_bundle_pem()
            });
            let sealed_ok = same.is_some_and(|r| {
                r.bundle_mac
                    .as_ref()
                    .is_some_and(|m| verify_bundle_mac(key, &parts(r), m).is_ok())
            });
            if let (Some(row), None) = (same, same.and_then(|r| r.bundle_mac.as_ref())) {
                // Stored before MACs existed, and equal to the operator's
                // files: seal it without re-issuing anything.
                store
                    .seal_ca_bundle(row, &bundle_mac(key, &parts(row)))
                    .await?;
                tracing::info!(trust_domain, "sealed the stored CA's trust bundle");
            } else if !sealed_ok {
                let sealed = seal(key, CA_KEY_LABEL, ca.key_pem().as_bytes())?;
                let mac = bundle_mac(key, &parts_of(&ca));
                store
                    .replace_ca(
                        &NewCa {
                            trust_domain,
                            source: "provided",
                            cert_pem: ca.cert_pem(),
                            key_sealed: &sealed,
                            chain_pem: ca.chain_pem(),
                            trust_bundle_pem: ca.trust_bundle_pem(),
                            bundle_mac: &mac,
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
                    let mac = bundle_mac(key, &parts_of(&ca));
                    let row = store
                        .init_ca(&NewCa {
                            trust_domain,
                            source: "generated",
                            cert_pem: ca.cert_pem(),
                            key_sealed: &sealed,
                            chain_pem: "",
                            trust_bundle_pem: ca.trust_bundle_pem(),
                            bundle_mac: &mac,
                        })
                        .await?;
                    tracing::info!(trust_domain, "generated a root CA");
                    row
                }
            };
            // Opening the key first proves the master key is the right one
            // before a legacy row is sealed with it.
            let ca = load(&row, key, trust_domain)?;
            if check(&row, key)? == Sealing::LegacyOwn
                && store
                    .seal_ca_bundle(&row, &bundle_mac(key, &parts(&row)))
                    .await?
            {
                tracing::info!(trust_domain, "sealed the stored CA's trust bundle");
            }
            Ok(ca)
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
        // Every read: a bundle changed behind a running replica is never
        // served (the writer keeps the last good snapshot and retries).
        check(&row, &self.key)?;
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

//! Meridian's DNS publishing.
//!
//! * [`desired`]: pure translation of a policy and its effective weights into
//!   one weighted record per zone and provider, and the diff against what a
//!   provider holds.
//! * [`provider`]: the [`Provider`] trait, its error classes, and
//!   [`reconcile`] (read, diff, apply only on difference, retry when the
//!   provider is unavailable). Every request that changes a provider is
//!   fenced ([`Fence`], [`submit`]): checked against the failover lease right
//!   before it is sent and cut off before the lease could expire.
//! * Ownership: every record Meridian writes has a mark naming the
//!   installation, policy and zone ([`desired::ownership_text`]); records
//!   without one are never changed or deleted ([`Held::foreign`]).
//! * [`pdns`]: PowerDNS Authoritative through its HTTP API.
//!
//! ```no_run
//! # async fn run(
//! #     policy: meridian_policy::Policy,
//! #     effective: std::collections::BTreeMap<String, u32>,
//! #     config: meridian_dns::PdnsConfig,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let by_provider = meridian_dns::desired_records(&policy, &effective)?;
//! let pdns = meridian_dns::PdnsProvider::new(config)?;
//! let desired = by_provider.get("pdns").map(Vec::as_slice).unwrap_or_default();
//! let outcome = meridian_dns::reconcile(&pdns, &policy.spec.host, desired).await?;
//! # Ok(())
//! # }
//! ```

pub mod alidns;
pub mod any;
pub mod desired;
pub mod pdns;
pub mod provider;
pub mod route53;

pub use alidns::{AlidnsConfig, AlidnsProvider};
pub use any::AnyProvider;
pub use desired::{
    desired_records, diff, fqdn, Change, DesiredError, Granularity, Held, Owner, Record, RecordKind,
};
pub use pdns::{ApiKey, PdnsConfig, PdnsProvider};
pub use provider::{
    reconcile, reconcile_fenced, reconcile_with, submit, Backoff, Error, Fence, Outcome, Provider,
    Secret, Unfenced,
};
pub use route53::{AwsSecret, Route53Config, Route53Provider};

//! The leader's DNS reconciler: desired records (pure, from the policy and
//! its effective weights) against what each provider holds, applying only
//! differences. It runs beside the decision loop, never inside it, so a
//! slow or failing provider delays neither xDS nor the other providers.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_dns::desired::{desired_records, Record};
use meridian_dns::{
    reconcile, AlidnsConfig, AlidnsProvider, ApiKey, AwsSecret, PdnsConfig, PdnsProvider, Provider,
    Route53Config, Route53Provider,
};
use meridian_store::providers::ProviderRow;
use meridian_store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{event, LEASE};

/// Longest a provider may take for one policy before it is reported failed.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// What was last applied per (policy, provider): tells drift (the provider
/// changed while our desired state did not) from our own changes.
type Applied = BTreeMap<(String, String), Vec<Record>>;

pub struct Reconciler {
    store: Store,
    every: Duration,
    applied: Applied,
    /// Last error per (policy, provider), so a persisting failure is one event.
    failing: BTreeMap<(String, String), String>,
}

impl Reconciler {
    pub fn new(store: Store, every: Duration) -> Reconciler {
        Reconciler {
            store,
            every,
            applied: Applied::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Reconciles while `leader` holds a token, every tick and at once when
    /// `decided` fires, until `shutdown`.
    pub async fn run(
        mut self,
        mut leader: watch::Receiver<Option<i64>>,
        decided: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = leader.changed() => {}
                _ = decided.notified() => {}
            }
            let token = *leader.borrow_and_update();
            if let Some(token) = token {
                if let Err(e) = self.step(token).await {
                    tracing::warn!(error = %e, "DNS reconcile step failed; retrying next tick");
                }
            }
        }
    }

    /// One pass over every policy that publishes in DNS.
    pub async fn step(&mut self, token: i64) -> Result<(), meridian_store::Error> {
        let policies = self.store.all().await?;
        let providers: BTreeMap<String, ProviderRow> = self
            .store
            .providers()
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let effective = self.store.effective_weights().await?;
        let mut jobs = Vec::new();
        for policy in policies
            .iter()
            .filter(|p| p.spec.zones.iter().any(|z| z.dns.is_some()))
        {
            let name = &policy.metadata.name;
            let weights = effective
                .get(name)
                .map(|e| e.weights.clone())
                .unwrap_or_else(|| {
                    policy
                        .spec
                        .zones
                        .iter()
                        .map(|z| (z.name.clone(), z.weight))
                        .collect()
                });
            let wanted = match desired_records(policy, &weights) {
                Ok(w) => w,
                Err(e) => {
                    self.fail(name, "*", &e.to_string()).await?;
                    continue;
                }
            };
            for (provider_name, records) in wanted {
                jobs.push((
                    name.clone(),
                    policy.spec.host.clone(),
                    provider_name,
                    records,
                ));
            }
        }
        // The database fences decisions; provider calls it cannot, so check
        // the lease right before them.
        if jobs.is_empty() || !self.store.lease_held(LEASE, token).await? {
            return Ok(());
        }
        // A decision changed what a provider should hold: say so before
        // calling it (status pending), so an SRE sees the change in flight.
        for (name, _, provider_name, records) in &jobs {
            let key = (name.clone(), provider_name.clone());
            if self.applied.get(&key).is_some_and(|last| last != records) {
                self.store
                    .set_dns_status(name, provider_name, "pending", false, None)
                    .await?;
                let to: Vec<_> = records
                    .iter()
                    .map(|r| json!({"zone": r.set_id, "weight": r.weight, "target": r.target}))
                    .collect();
                let message = format!("{provider_name}: change submitted");
                let details = json!({"provider": provider_name, "records": to});
                self.store
                    .record_event(&event(
                        name,
                        "dns-change-submitted",
                        "info",
                        message,
                        details,
                    ))
                    .await?;
            }
        }
        // Every provider at once, each bounded by CALL_LIMIT: one slow or
        // failing provider delays neither the others nor the next decision.
        let (this, providers) = (&*self, &providers);
        let results = futures::future::join_all(jobs.iter().map(
            |(name, host, provider_name, records)| {
                // A reconcile that should change records is traced at info;
                // the periodic drift check, which usually changes nothing,
                // only at debug.
                let changing = self
                    .applied
                    .get(&(name.clone(), provider_name.clone()))
                    .is_none_or(|last| last != records);
                let span = if changing {
                    tracing::info_span!("dns.reconcile", otel.kind = "client", policy = %name, %host, provider = %provider_name, changes = tracing::field::Empty, otel.status_code = tracing::field::Empty)
                } else {
                    tracing::debug_span!("dns.reconcile", otel.kind = "client", policy = %name, %host, provider = %provider_name, changes = tracing::field::Empty, otel.status_code = tracing::field::Empty)
                };
                let recorded = span.clone();
                async move {
                    let result = match providers.get(provider_name) {
                        None => Err(format!("no DNS provider named {provider_name:?}")),
                        Some(row) => this.apply(row, host, records).await,
                    };
                    match &result {
                        Ok(changes) => {
                            recorded.record("changes", changes);
                        }
                        // `fail` logs and reports it, once the round is over.
                        Err(_) => {
                            recorded.record("otel.status_code", "ERROR");
                        }
                    }
                    result
                }
                .instrument(span)
            },
        ))
        .await;
        for ((name, _, provider_name, records), result) in jobs.into_iter().zip(results) {
            let name = &name;
            let key = (name.clone(), provider_name.clone());
            match result {
                Ok(changes) => {
                    let drift = changes > 0 && self.applied.get(&key) == Some(&records);
                    self.store
                        .set_dns_status(name, &provider_name, "synced", changes > 0, None)
                        .await?;
                    if self.failing.remove(&key).is_some() || changes > 0 {
                        let (kind, severity, message) = if drift {
                            (
                                "dns-drift-restored",
                                "warning",
                                format!("{provider_name}: records changed outside Meridian were restored ({changes} changes)"),
                            )
                        } else {
                            (
                                "dns-change-applied",
                                "info",
                                format!("{provider_name}: {changes} record changes applied"),
                            )
                        };
                        let details = json!({"provider": provider_name, "changes": changes});
                        self.store
                            .record_event(&event(name, kind, severity, message, details))
                            .await?;
                    }
                    self.applied.insert(key, records);
                }
                Err(message) => self.fail(name, &provider_name, &message).await?,
            }
        }
        Ok(())
    }

    async fn fail(
        &mut self,
        policy: &str,
        provider: &str,
        message: &str,
    ) -> Result<(), meridian_store::Error> {
        self.store
            .set_dns_status(policy, provider, "error", false, Some(message))
            .await?;
        let key = (policy.to_owned(), provider.to_owned());
        if self.failing.get(&key).map(String::as_str) != Some(message) {
            tracing::warn!(
                policy,
                provider,
                error = message,
                "DNS change failed; will retry"
            );
            let e = event(
                policy,
                "dns-change-failed",
                "warning",
                format!("{provider}: {message}"),
                json!({"provider": provider}),
            );
            self.store.record_event(&e).await?;
            self.failing.insert(key, message.to_owned());
        }
        Ok(())
    }

    /// Brings one provider to `records` for `host`; the number of changes made.
    async fn apply(
        &self,
        row: &ProviderRow,
        host: &str,
        records: &[Record],
    ) -> Result<usize, String> {
        let config = &row.config.0;
        let text = |k: &str| {
            config
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let optional = |k: &str| config.get(k).and_then(Value::as_str).map(str::to_owned);
        let err = |e: meridian_dns::Error| e.to_string();
        match row.kind.as_str() {
            "pdns" => {
                let provider = PdnsProvider::new(PdnsConfig {
                    api_url: text("apiUrl"),
                    api_key: ApiKey::new(secret(config.get("apiKey"))?),
                    zone: text("zone"),
                    use_lua: config
                        .get("useLua")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                })
                .map_err(err)?;
                bounded(&provider, host, records).await
            }
            "route53" => {
                let provider = Route53Provider::new(Route53Config {
                    hosted_zone_id: text("hostedZoneId"),
                    region: optional("region"),
                    endpoint_url: optional("endpointUrl"),
                    access_key_id: AwsSecret::new(secret(config.get("accessKeyId"))?),
                    secret_access_key: AwsSecret::new(secret(config.get("secretAccessKey"))?),
                })
                .map_err(err)?;
                bounded(&provider, host, records).await
            }
            "alidns" => {
                let provider = AlidnsProvider::new(AlidnsConfig {
                    endpoint: optional("endpoint")
                        .unwrap_or_else(|| meridian_dns::alidns::DEFAULT_ENDPOINT.to_owned()),
                    domain_name: text("domainName"),
                    access_key_id: meridian_dns::alidns::Secret::new(secret(
                        config.get("accessKeyId"),
                    )?),
                    access_key_secret: meridian_dns::alidns::Secret::new(secret(
                        config.get("accessKeySecret"),
                    )?),
                })
                .map_err(err)?;
                bounded(&provider, host, records).await
            }
            other => Err(format!("unknown provider kind {other:?}")),
        }
    }
}

/// One reconcile, bounded by [`CALL_LIMIT`].
async fn bounded(
    provider: &impl Provider,
    host: &str,
    records: &[Record],
) -> Result<usize, String> {
    match tokio::time::timeout(CALL_LIMIT, reconcile(provider, host, records)).await {
        Ok(Ok(outcome)) => Ok(outcome.changes),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_LIMIT:?}")),
    }
}

/// Reads a credential from where its reference points, through the one
/// resolver every role shares (its rules say which variables and files a
/// reference may name). The value is never logged or stored; errors name
/// the reference and the rule, not the secret.
fn secret(reference: Option<&Value>) -> Result<String, String> {
    let r = reference.ok_or("credential reference missing")?;
    meridian_secrets::resolve(r)
        .map(meridian_secrets::Secret::into_string)
        .map_err(|e| e.to_string())
}

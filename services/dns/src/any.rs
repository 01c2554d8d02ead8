//! A provider of any kind, built from its [`ProviderConfig`]: the one
//! description of provider settings (crate `meridian-policy`).

use meridian_policy::provider::{ProviderConfig, SecretRef};

use crate::desired::{Change, Granularity, Held, Owner, Record};
use crate::provider::{Error, Fence, Provider, Secret};
use crate::{
    AlidnsConfig, AlidnsProvider, PdnsConfig, PdnsProvider, Route53Config, Route53Provider,
};

/// One of Meridian's providers.
#[derive(Clone, Debug)]
pub enum AnyProvider {
    Pdns(PdnsProvider),
    Route53(Route53Provider),
    Alidns(AlidnsProvider),
}

impl AnyProvider {
    /// Builds the provider `config` describes, with credentials from
    /// `resolve` (which reads a reference; its error names the reference,
    /// never a secret). Makes no request.
    pub fn build(
        config: &ProviderConfig,
        resolve: impl Fn(&SecretRef) -> Result<String, String>,
    ) -> Result<AnyProvider, Error> {
        let secret = |r: &SecretRef| resolve(r).map(Secret::new).map_err(Error::Invalid);
        Ok(match config {
            ProviderConfig::Pdns(c) => AnyProvider::Pdns(PdnsProvider::new(PdnsConfig {
                api_url: c.api_url.as_str().to_owned(),
                api_key: secret(&c.api_key)?,
                zone: c.zone.as_str().to_owned(),
                use_lua: c.use_lua,
            })?),
            ProviderConfig::Route53(c) => {
                AnyProvider::Route53(Route53Provider::new(Route53Config {
                    hosted_zone_id: c.hosted_zone_id.as_str().to_owned(),
                    region: c.region.as_ref().map(|r| r.as_str().to_owned()),
                    endpoint_url: c.endpoint_url.as_ref().map(|u| u.as_str().to_owned()),
                    access_key_id: secret(&c.access_key_id)?,
                    secret_access_key: secret(&c.secret_access_key)?,
                })?)
            }
            ProviderConfig::Alidns(c) => AnyProvider::Alidns(AlidnsProvider::new(AlidnsConfig {
                endpoint: c
                    .endpoint
                    .as_ref()
                    .map_or(crate::alidns::DEFAULT_ENDPOINT, |e| e.as_str())
                    .to_owned(),
                domain_name: c.domain_name.as_str().to_owned(),
                access_key_id: secret(&c.access_key_id)?,
                access_key_secret: secret(&c.access_key_secret)?,
            })?),
        })
    }
}

impl Provider for AnyProvider {
    fn kind(&self) -> &'static str {
        match self {
            AnyProvider::Pdns(p) => p.kind(),
            AnyProvider::Route53(p) => p.kind(),
            AnyProvider::Alidns(p) => p.kind(),
        }
    }

    fn granularity(&self) -> Granularity {
        match self {
            AnyProvider::Pdns(p) => p.granularity(),
            AnyProvider::Route53(p) => p.granularity(),
            AnyProvider::Alidns(p) => p.granularity(),
        }
    }

    async fn read(&self, name: &str, owner: &Owner) -> Result<Held, Error> {
        match self {
            AnyProvider::Pdns(p) => p.read(name, owner).await,
            AnyProvider::Route53(p) => p.read(name, owner).await,
            AnyProvider::Alidns(p) => p.read(name, owner).await,
        }
    }

    async fn apply(
        &self,
        name: &str,
        changes: &[Change],
        desired: &[Record],
        owner: &Owner,
        fence: &impl Fence,
    ) -> Result<(), Error> {
        match self {
            AnyProvider::Pdns(p) => p.apply(name, changes, desired, owner, fence).await,
            AnyProvider::Route53(p) => p.apply(name, changes, desired, owner, fence).await,
            AnyProvider::Alidns(p) => p.apply(name, changes, desired, owner, fence).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_each_kind_with_resolved_credentials() {
        let resolve = |r: &SecretRef| match r {
            SecretRef::Env(n) if n == "MISSING" => {
                Err(format!("environment variable {n} is not set"))
            }
            SecretRef::Env(n) => Ok(format!("value-of-{n}")),
            SecretRef::File(p) => Ok(format!("value-of-{}", p.display())),
        };
        let cases = [
            (
                "pdns",
                json!({"apiUrl": "http://127.0.0.1:1", "zone": "example.com.", "apiKey": {"env": "K"}}),
                "pdns",
            ),
            (
                "route53",
                json!({"hostedZoneId": "Z1", "accessKeyId": {"env": "A"}, "secretAccessKey": {"file": "/s"}}),
                "route53",
            ),
            (
                "alidns",
                json!({"domainName": "example.com", "accessKeyId": {"env": "A"}, "accessKeySecret": {"env": "B"}}),
                "alidns",
            ),
        ];
        for (kind, body, want) in cases {
            let config = ProviderConfig::parse(kind, &body).unwrap();
            let built = AnyProvider::build(&config, resolve).unwrap();
            assert_eq!(built.kind(), want);
            assert!(
                !format!("{built:?}").contains("value-of-"),
                "{kind} prints a secret"
            );
        }
        let config = ProviderConfig::parse(
            "pdns",
            &json!({"apiUrl": "http://x", "zone": "z.", "apiKey": {"env": "MISSING"}}),
        )
        .unwrap();
        let err = AnyProvider::build(&config, resolve).unwrap_err();
        assert!(err.to_string().contains("MISSING"), "{err}");
    }
}

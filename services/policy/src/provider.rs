//! The DNS provider resource: which kinds exist, what each takes, and the
//! rule that a provider entry names where a credential lives, never the
//! credential itself.
//!
//! [`ProviderConfig`] is the one description of a provider's settings: the
//! API validates a body by parsing it into one ([`ProviderConfig::parse`],
//! every problem named by field), the store keeps its JSON, and the DNS
//! reconciler builds providers from it. No I/O here: credentials stay
//! references ([`SecretRef`]) that the caller resolves.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::validate::dns_label;
use crate::FieldError;

/// Provider kinds Meridian knows.
pub const KINDS: [&str; 3] = ["route53", "alidns", "pdns"];

/// A DNS provider's settings, tagged by `kind`, as stored (without the
/// tag, beside the `kind` column) and as the API takes them (flat, with
/// `name` and `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// PowerDNS Authoritative, through its HTTP API.
    Pdns(Pdns),
    /// AWS Route 53, through the AWS API.
    Route53(Route53),
    /// Alibaba Cloud DNS.
    Alidns(Alidns),
}

/// PowerDNS settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pdns {
    /// Base URL of the PowerDNS webserver, e.g. `http://127.0.0.1:8081`.
    pub api_url: ApiUrl,
    /// The PowerDNS zone holding the names, e.g. `example.com.`.
    pub zone: Text,
    pub api_key: SecretRef,
    /// Weighted answers through LUA records (needs `enable-lua-records`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_lua: bool,
}

/// Route 53 settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route53 {
    pub hosted_zone_id: Text,
    /// Signing region; `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Text>,
    /// Endpoint override (LocalStack, moto); AWS's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<ApiUrl>,
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
}

/// Alibaba Cloud DNS settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alidns {
    /// The domain in Alidns holding the names, e.g. `example.com`.
    pub domain_name: Text,
    /// API endpoint; the public one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<ApiUrl>,
    pub access_key_id: SecretRef,
    pub access_key_secret: SecretRef,
}

/// A non-empty string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl TryFrom<String> for Text {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("must be a non-empty string".into())
        } else {
            Ok(Self(s))
        }
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The base URL of a provider's API: http(s), with a host, and without a
/// query or fragment, which would turn every request path into part of
/// them (a trailing `?` or `#` sends requests to an arbitrary path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiUrl(String);

impl TryFrom<String> for ApiUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or("must be an http:// or https:// URL")?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err("must name a host".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "must be a base URL without {}: a query or fragment would swallow the API paths",
                match c {
                    '?' => "'?'".to_owned(),
                    '#' => "'#'".to_owned(),
                    _ => "spaces or control characters".to_owned(),
                }
            ));
        }
        Ok(Self(s))
    }
}

impl From<ApiUrl> for String {
    fn from(u: ApiUrl) -> String {
        u.0
    }
}

impl ApiUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a credential is: `{"env": "NAME"}` or `{"file": "/absolute/path"}`,
/// never the credential itself. The one description of a reference lives in
/// `meridian-secrets`, beside the rules that say which ones may be read.
pub use meridian_secrets::Reference as SecretRef;

/// A credential is named, never given: `{"env": "NAME"}` or `{"file": "/path"}`.
pub fn secret_reference(v: &Value) -> Result<(), String> {
    meridian_secrets::parse(v)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl ProviderConfig {
    /// The kind, as stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Pdns(_) => "pdns",
            ProviderConfig::Route53(_) => "route53",
            ProviderConfig::Alidns(_) => "alidns",
        }
    }

    /// The settings without the tag, as stored in the `config` column.
    pub fn settings(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.remove("kind");
        }
        v
    }

    /// Parses the settings of a `kind` provider; `Err` names every field
    /// in trouble (`config.<field>`): unknown ones, bad values, and the
    /// required ones missing.
    pub fn parse(kind: &str, config: &Value) -> Result<ProviderConfig, Vec<FieldError>> {
        if !KINDS.contains(&kind) {
            return Err(vec![FieldError::new(
                "kind",
                format!("must be one of {}", KINDS.join(", ")),
            )]);
        }
        let empty = Map::new();
        let Some(map) = config.as_object().or(config.is_null().then_some(&empty)) else {
            return Err(vec![FieldError::new("config", "must be an object")]);
        };
        match kind {
            "pdns" => parse_as(kind, map).map(ProviderConfig::Pdns),
            "route53" => parse_as(kind, map).map(ProviderConfig::Route53),
            _ => parse_as(kind, map).map(ProviderConfig::Alidns),
        }
    }
}

/// Parses one kind's settings, naming every field in trouble.
fn parse_as<T: serde::de::DeserializeOwned>(
    kind: &str,
    map: &Map<String, Value>,
) -> Result<T, Vec<FieldError>> {
    let attempt = |map: &Map<String, Value>| {
        serde_path_to_error::deserialize::<_, T>(Value::Object(map.clone()))
    };
    let first = match attempt(map) {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    // Serde stops at the first problem; to name them all, try each field
    // alone (its value's problem, or that it is unknown), then the good
    // fields together (what is missing: serde names the first).
    let mut errors = Vec::new();
    let mut good = Map::new();
    for (key, value) in map {
        let alone: Map<String, Value> = [(key.clone(), value.clone())].into_iter().collect();
        match attempt(&alone) {
            Err(e) if e.path().to_string() == *key => {
                errors.push(FieldError::new(format!("config.{key}"), clean(e.inner())))
            }
            Err(e) if e.inner().to_string().starts_with("unknown field") => {
                let text = e.inner().to_string();
                let known = text
                    .split_once("expected ")
                    .map(|(_, k)| clean_str(k).replace('`', ""))
                    .unwrap_or_default();
                errors.push(FieldError::new(
                    format!("config.{key}"),
                    format!("unknown field for {kind}; expected {known}"),
                ));
            }
            _ => {
                good.insert(key.clone(), value.clone());
            }
        }
    }
    if let Err(e) = attempt(&good) {
        let text = e.inner().to_string();
        if text.starts_with("missing field") {
            let field = text.split('`').nth(1).unwrap_or_default();
            let at = format!("config.{field}");
            if !errors.iter().any(|e| e.field == at) {
                errors.push(FieldError::new(at, "required"));
            }
        }
    }
    // In the order the settings declare their fields (serde lists them
    // when asked about a field it does not know), unknown fields last.
    let declared: Vec<String> = attempt(&[("\u{0}".to_owned(), Value::Null)].into_iter().collect())
        .err()
        .map(|e| {
            e.inner()
                .to_string()
                .split('`')
                .skip(3)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    errors.sort_by_key(|e| {
        let field = e.field.strip_prefix("config.").unwrap_or(&e.field);
        declared
            .iter()
            .position(|d| d == field)
            .unwrap_or(usize::MAX)
    });
    if errors.is_empty() {
        let path = first.path().to_string();
        let at = if path == "." {
            "config".to_owned()
        } else {
            format!("config.{path}")
        };
        errors.push(FieldError::new(at, clean(first.inner())));
    }
    Err(errors)
}

/// serde's message without its position suffix.
fn clean(e: &serde_json::Error) -> String {
    clean_str(&e.to_string())
}

fn clean_str(s: &str) -> String {
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// Checks a provider entry; `Err` lists every problem.
pub fn validate_provider(name: &str, kind: &str, config: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(m) = dns_label(name) {
        errors.push(FieldError::new("name", m));
    }
    if let Err(mut more) = ProviderConfig::parse(kind, config) {
        errors.append(&mut more);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{validate_provider, ProviderConfig, SecretRef};

    fn fields(name: &str, kind: &str, config: serde_json::Value) -> Vec<String> {
        validate_provider(name, kind, &config)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn provider_rules() {
        let pdns = json!({"apiUrl": "http://127.0.0.1:8081", "zone": "example.com.", "apiKey": {"env": "PDNS_API_KEY"}, "useLua": true});
        assert_eq!(
            fields("pdns-local", "pdns", pdns.clone()),
            Vec::<String>::new()
        );
        let r53 = json!({"hostedZoneId": "Z123", "secretAccessKey": {"file": "/etc/meridian/aws"}, "accessKeyId": {"env": "AWS_KEY_ID"}});
        assert_eq!(fields("aws-prod", "route53", r53), Vec::<String>::new());

        let cases = [
            ("Bad_Name", "pdns", pdns.clone(), vec!["name"]),
            ("x", "azure", pdns.clone(), vec!["kind"]),
            (
                "x",
                "pdns",
                json!({"apiUrl": "ftp://x", "zone": "", "apiKey": "s3cr3t", "colour": 1}),
                vec![
                    "config.apiUrl",
                    "config.zone",
                    "config.apiKey",
                    "config.colour",
                ],
            ),
            (
                "x",
                "pdns",
                // Problems come in the settings' order, whatever the body's.
                json!({"apiKey": "s3cr3t", "zone": "z.", "apiUrl": "not a url"}),
                vec!["config.apiUrl", "config.apiKey"],
            ),
            (
                "x",
                "alidns",
                json!({"domainName": "example.com", "accessKeyId": {"env": "lower"}, "accessKeySecret": {"file": "relative"}}),
                vec!["config.accessKeyId", "config.accessKeySecret"],
            ),
            (
                "x",
                "route53",
                json!({}),
                // serde names the first missing field.
                vec!["config.hostedZoneId"],
            ),
            (
                "x",
                "pdns",
                json!({"apiUrl": "http://x", "zone": "z.", "apiKey": {"env": "A", "file": "/b"}}),
                vec!["config.apiKey"],
            ),
        ];
        for (name, kind, config, want) in cases {
            assert_eq!(
                fields(name, kind, config.clone()),
                want,
                "{name} {kind} {config}"
            );
        }
    }

    #[test]
    fn api_urls_take_no_query_or_fragment() {
        let cases = [
            ("http://127.0.0.1:8081", true),
            ("https://pdns.example.net/base/", true),
            ("http://127.0.0.1:8081#", false),
            ("http://127.0.0.1:8081?", false),
            ("http://127.0.0.1:8081/x?y=1", false),
            ("http://pdns example", false),
            ("http://", false),
            ("ftp://x", false),
        ];
        for (url, ok) in cases {
            let config = json!({"apiUrl": url, "zone": "z.", "apiKey": {"env": "K"}});
            let got = fields("p", "pdns", config);
            assert_eq!(got.is_empty(), ok, "{url}: {got:?}");
            if !ok {
                assert_eq!(got, ["config.apiUrl"], "{url}");
            }
        }
    }

    /// The typed config is what is stored: parsing its settings gives it back.
    #[test]
    fn settings_round_trip() {
        let bodies = [
            (
                "pdns",
                json!({"apiUrl": "http://127.0.0.1:8081", "zone": "example.com.", "apiKey": {"env": "PDNS_KEY"}, "useLua": true}),
            ),
            (
                "pdns",
                json!({"apiUrl": "http://127.0.0.1:8081", "zone": "example.com.", "apiKey": {"file": "/run/secrets/pdns"}}),
            ),
            (
                "route53",
                json!({"hostedZoneId": "Z1", "region": "eu-west-1", "endpointUrl": "http://127.0.0.1:5000", "accessKeyId": {"env": "A"}, "secretAccessKey": {"env": "B"}}),
            ),
            (
                "alidns",
                json!({"domainName": "example.com", "accessKeyId": {"env": "A"}, "accessKeySecret": {"file": "/s"}}),
            ),
        ];
        for (kind, body) in bodies {
            let parsed = ProviderConfig::parse(kind, &body).unwrap();
            assert_eq!(parsed.kind(), kind);
            assert_eq!(parsed.settings(), body, "{kind}");
            assert_eq!(
                ProviderConfig::parse(kind, &parsed.settings()).unwrap(),
                parsed
            );
        }
        let ProviderConfig::Pdns(p) =
            ProviderConfig::parse("pdns", &bodies_pdns_minimal()).unwrap()
        else {
            panic!("kind");
        };
        assert!(!p.use_lua, "useLua defaults to false");
        assert_eq!(p.api_key, SecretRef::Env("K".into()));
    }

    fn bodies_pdns_minimal() -> serde_json::Value {
        json!({"apiUrl": "http://x", "zone": "z.", "apiKey": {"env": "K"}})
    }
}

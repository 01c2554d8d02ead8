//! The DNS provider resource: which kinds exist, what each needs, and the
//! rule that a provider entry names where a credential lives, never the
//! credential itself.

use serde_json::{Map, Value};

use crate::validate::dns_label;
use crate::FieldError;

/// Provider kinds Meridian knows.
pub const KINDS: [&str; 3] = ["route53", "alidns", "pdns"];

/// How a field is checked.
#[derive(Clone, Copy)]
enum Field {
    /// Any non-empty string.
    Text,
    /// An http(s) URL.
    Url,
    Bool,
    /// `{"env": "NAME"}` or `{"file": "/absolute/path"}`.
    Secret,
}

/// (field, required, how) for each kind.
fn schema(kind: &str) -> &'static [(&'static str, bool, Field)] {
    match kind {
        "pdns" => &[
            ("apiUrl", true, Field::Url),
            ("zone", true, Field::Text),
            ("apiKey", true, Field::Secret),
            ("useLua", false, Field::Bool),
        ],
        "route53" => &[
            ("hostedZoneId", true, Field::Text),
            ("region", false, Field::Text),
            ("endpointUrl", false, Field::Url),
            ("accessKeyId", true, Field::Secret),
            ("secretAccessKey", true, Field::Secret),
        ],
        "alidns" => &[
            ("domainName", true, Field::Text),
            ("endpoint", false, Field::Url),
            ("accessKeyId", true, Field::Secret),
            ("accessKeySecret", true, Field::Secret),
        ],
        _ => &[],
    }
}

/// Checks a provider entry; `Err` lists every problem.
pub fn validate_provider(name: &str, kind: &str, config: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(m) = dns_label(name) {
        errors.push(FieldError::new("name", m));
    }
    if !KINDS.contains(&kind) {
        errors.push(FieldError::new(
            "kind",
            format!("must be one of {}", KINDS.join(", ")),
        ));
        return Err(errors);
    }
    let empty = Map::new();
    let Some(map) = config.as_object().or(config.is_null().then_some(&empty)) else {
        errors.push(FieldError::new("config", "must be an object"));
        return Err(errors);
    };
    let fields = schema(kind);
    for key in map.keys() {
        if !fields.iter().any(|(f, _, _)| f == key) {
            let known: Vec<&str> = fields.iter().map(|(f, _, _)| *f).collect();
            errors.push(FieldError::new(
                format!("config.{key}"),
                format!("unknown field for {kind}; known: {}", known.join(", ")),
            ));
        }
    }
    for (field, required, how) in fields {
        let at = format!("config.{field}");
        match (map.get(*field), required) {
            (None, true) => errors.push(FieldError::new(at, "required")),
            (None, false) => {}
            (Some(v), _) => {
                if let Err(m) = check(v, *how) {
                    errors.push(FieldError::new(at, m));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check(v: &Value, how: Field) -> Result<(), String> {
    match how {
        Field::Text => v
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .map(drop)
            .ok_or_else(|| "must be a non-empty string".into()),
        Field::Bool => v
            .as_bool()
            .map(drop)
            .ok_or_else(|| "must be true or false".into()),
        Field::Url => v
            .as_str()
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .map(drop)
            .ok_or_else(|| "must be an http:// or https:// URL".into()),
        Field::Secret => secret_reference(v),
    }
}

/// A credential is named, never given: `{"env": "NAME"}` or `{"file": "/path"}`.
pub fn secret_reference(v: &Value) -> Result<(), String> {
    let bad = || {
        "must say where the secret is, {\"env\": \"NAME\"} or {\"file\": \"/absolute/path\"}; secrets are never stored".to_owned()
    };
    let map = v.as_object().ok_or_else(bad)?;
    if map.len() != 1 {
        return Err(bad());
    }
    match (
        map.get("env").and_then(Value::as_str),
        map.get("file").and_then(Value::as_str),
    ) {
        (Some(env), None)
            if !env.is_empty()
                && env
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !env.as_bytes()[0].is_ascii_digit() =>
        {
            Ok(())
        }
        (None, Some(path)) if path.starts_with('/') => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::validate_provider;

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
                    "config.colour",
                    "config.apiUrl",
                    "config.zone",
                    "config.apiKey",
                ],
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
                vec![
                    "config.hostedZoneId",
                    "config.accessKeyId",
                    "config.secretAccessKey",
                ],
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
}

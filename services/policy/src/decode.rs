//! Decoding policies from JSON and YAML.
//!
//! Two failure classes, because clients need to tell them apart: a body that
//! is not JSON/YAML at all ([`DecodeError::Malformed`], HTTP 400) and a
//! well-formed document whose fields have the wrong shape
//! ([`DecodeError::Invalid`], HTTP 422, with the field path).

use serde_json::Value;

use crate::{FieldError, Policy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The bytes are not a JSON or YAML document.
    #[error("malformed {format}: {message}")]
    Malformed {
        format: &'static str,
        message: String,
    },
    /// The document is well-formed but a field has the wrong type or is unknown.
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(FieldError),
}

/// Parses one document into a generic value.
pub fn parse_value(bytes: &[u8], format: Format) -> Result<Value, DecodeError> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed {
            format: "JSON",
            message: e.to_string(),
        }),
        Format::Yaml => serde_norway::from_slice(bytes).map_err(|e| DecodeError::Malformed {
            format: "YAML",
            message: e.to_string(),
        }),
    }
}

/// Parses every document of a (possibly multi-document) YAML or JSON text.
/// Empty YAML documents (a stray `---`) are skipped.
pub fn parse_documents(text: &str, format: Format) -> Result<Vec<Value>, DecodeError> {
    match format {
        Format::Json => Ok(vec![parse_value(text.as_bytes(), format)?]),
        Format::Yaml => {
            let mut docs = Vec::new();
            for doc in serde_norway::Deserializer::from_str(text) {
                let value: Value =
                    serde::Deserialize::deserialize(doc).map_err(|e| DecodeError::Malformed {
                        format: "YAML",
                        message: e.to_string(),
                    })?;
                if !value.is_null() {
                    docs.push(value);
                }
            }
            Ok(docs)
        }
    }
}

/// Turns a generic value into a policy, filling defaults. Field names in
/// errors are the wire (camelCase) paths, e.g. `spec.zones[1].weight`.
pub fn from_value(value: Value) -> Result<Policy, DecodeError> {
    serde_path_to_error::deserialize::<_, Policy>(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        DecodeError::Invalid(FieldError::new(field, e.into_inner().to_string()))
    })
}

/// Parses and decodes one policy document.
pub fn from_bytes(bytes: &[u8], format: Format) -> Result<Policy, DecodeError> {
    from_value(parse_value(bytes, format)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
metadata: {name: track-api}
spec:
  host: track.example.com
  port: 8080
  zones:
    - {name: a, weight: 100, endpoints: [{address: 10.0.0.1, port: 80}]}
"#;

    #[test]
    fn yaml_fills_every_default() {
        let p = from_bytes(MINIMAL.as_bytes(), Format::Yaml).unwrap();
        assert_eq!(p.api_version, "meridian/v1");
        assert_eq!(p.kind, "GlobalTrafficPolicy");
        assert_eq!(p.spec.zones[0].endpoints[0].version, "v1");
        assert_eq!(p.spec.health_check.path, "/healthz");
        assert_eq!(p.spec.failover.failure_rate_percent, 5);
        assert_eq!(p.spec.dns.ttl, 30);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["spec"]["healthCheck"]["expectedStatus"], "200-399");
        assert_eq!(json["spec"]["mtls"]["mode"], "disabled");
    }

    #[test]
    fn partial_nested_object_keeps_other_defaults() {
        let text = MINIMAL.replace("port: 8080", "port: 8080\n  healthCheck: {protocol: tcp}");
        let p = from_bytes(text.as_bytes(), Format::Yaml).unwrap();
        assert_eq!(p.spec.health_check.protocol, crate::HealthProtocol::Tcp);
        assert_eq!(p.spec.health_check.interval_ms, 1000);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = MINIMAL.replace("weight: 100", "weight: lots");
        let err = from_bytes(text.as_bytes(), Format::Yaml).unwrap_err();
        match err {
            DecodeError::Invalid(f) => assert_eq!(f.field, "spec.zones[0].weight"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_field_is_rejected_with_its_path() {
        let text = MINIMAL.replace("port: 8080", "port: 8080\n  wieght: 3");
        let err = from_bytes(text.as_bytes(), Format::Yaml).unwrap_err();
        let DecodeError::Invalid(f) = err else {
            panic!()
        };
        assert_eq!(f.field, "spec.wieght");
        assert!(f.message.contains("unknown field"), "{}", f.message);
    }

    #[test]
    fn malformed_is_not_invalid() {
        assert!(matches!(
            from_bytes(b"{not json", Format::Json),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            from_bytes(b"a: [1, 2", Format::Yaml),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn multi_document_yaml() {
        let text = format!(
            "{MINIMAL}\n---\n{}\n---\n",
            MINIMAL.replace("track-api", "b")
        );
        let docs = parse_documents(&text, Format::Yaml).unwrap();
        assert_eq!(docs.len(), 2);
    }
}

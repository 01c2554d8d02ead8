//! TLS pieces of the translation: the transport-socket messages xds-api 0.2
//! does not ship, the SDS secrets, and the policy's `mtls` mode.
//!
//! xds-api 0.2 generates `Secret`, `TlsCertificate` and
//! `CertificateValidationContext` but not `UpstreamTlsContext`,
//! `DownstreamTlsContext` or `CommonTlsContext` (Envoy's `tls.proto`), so
//! those three are written here with the field numbers of
//! `envoy/extensions/transport_sockets/tls/v3/tls.proto` (Envoy 1.40), and
//! only the fields Meridian sets. Unknown fields are fine for protobuf, so a
//! subset encodes to exactly what Envoy decodes.
//!
//! # Secret names
//!
//! Every Envoy asks for the same two SDS names, so listeners and clusters
//! stay node-independent: [`WORKLOAD_SECRET`] is resolved per stream to the
//! certificate of the node's own identity, and [`TRUST_BUNDLE_SECRET`] is
//! the CA bundle. No other secret name resolves, so a node can never fetch
//! another identity's key by naming it.

use prost::Message;
use xds_api::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, subject_alt_name_matcher::SanType, CertificateProviderPluginInstance,
    CertificateValidationContext, SdsSecretConfig, Secret, SubjectAltNameMatcher, TlsCertificate,
};
use xds_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use xds_api::pb::google::protobuf::{Any, BoolValue};

/// SDS name of a node's own workload certificate.
pub const WORKLOAD_SECRET: &str = "meridian/workload";
/// SDS name of the trust bundle (the CA certificates peers are checked against).
pub const TRUST_BUNDLE_SECRET: &str = "meridian/trust-bundle";
/// Certificate-provider instance a proxyless gRPC bootstrap must define
/// (`certificate_providers.meridian`, e.g. the `file_watcher` plugin).
pub const GRPC_CERT_PROVIDER_INSTANCE: &str = "meridian";

const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// `envoy.extensions.transport_sockets.tls.v3.CommonTlsContext` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct CommonTlsContext {
    #[prost(message, repeated, tag = "6")]
    pub tls_certificate_sds_secret_configs: Vec<SdsSecretConfig>,
    #[prost(message, optional, tag = "8")]
    pub combined_validation_context: Option<CombinedCertificateValidationContext>,
    #[prost(message, optional, tag = "3")]
    pub validation_context: Option<CertificateValidationContext>,
    #[prost(message, optional, tag = "14")]
    pub tls_certificate_provider_instance: Option<CertificateProviderPluginInstance>,
    #[prost(string, repeated, tag = "4")]
    pub alpn_protocols: Vec<String>,
}

/// `CommonTlsContext.CombinedCertificateValidationContext`.
#[derive(Clone, PartialEq, Message)]
pub struct CombinedCertificateValidationContext {
    #[prost(message, optional, tag = "1")]
    pub default_validation_context: Option<CertificateValidationContext>,
    #[prost(message, optional, tag = "2")]
    pub validation_context_sds_secret_config: Option<SdsSecretConfig>,
}

/// `envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct UpstreamTlsContext {
    #[prost(message, optional, tag = "1")]
    pub common_tls_context: Option<CommonTlsContext>,
    #[prost(string, tag = "2")]
    pub sni: String,
}

/// `envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct DownstreamTlsContext {
    #[prost(message, optional, tag = "1")]
    pub common_tls_context: Option<CommonTlsContext>,
    #[prost(message, optional, tag = "2")]
    pub require_client_certificate: Option<BoolValue>,
}

/// Which peer identities a TLS context accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Exactly these SPIFFE IDs.
    Exact(Vec<String>),
    /// Any identity of the trust domain (`spiffe://<td>/` prefix).
    TrustDomain(String),
}

impl Peers {
    fn matchers(&self) -> Vec<SubjectAltNameMatcher> {
        let m = |p: MatchPattern| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(p),
                ignore_case: false,
            }),
        };
        match self {
            Peers::Exact(ids) => ids
                .iter()
                .map(|i| m(MatchPattern::Exact(i.clone())))
                .collect(),
            Peers::TrustDomain(td) => vec![m(MatchPattern::Prefix(format!("spiffe://{td}/")))],
        }
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(crate::envoy::ads()),
    }
}

/// The common context Envoy uses: our certificate and the bundle over SDS,
/// peers checked by URI SAN.
fn envoy_common(peers: &Peers) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
        combined_validation_context: Some(CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_typed_subject_alt_names: peers.matchers(),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(sds(TRUST_BUNDLE_SECRET)),
        }),
        ..Default::default()
    }
}

/// The common context a proxyless gRPC client understands: certificates
/// from the bootstrap's certificate-provider instance (gRPC does not take
/// keys over xDS). gRPC servers reject SAN matchers ("not supported on
/// servers"): a proxyless server checks the trust bundle only, so
/// `allowedSans` is not enforced there (it would take gRPC's RBAC filter).
fn grpc_common(peers: &Peers, server: bool) -> CommonTlsContext {
    let peers: &[SubjectAltNameMatcher] = &if server { Vec::new() } else { peers.matchers() };
    let instance = |name: &str| CertificateProviderPluginInstance {
        instance_name: GRPC_CERT_PROVIDER_INSTANCE.to_owned(),
        certificate_name: name.to_owned(),
    };
    CommonTlsContext {
        tls_certificate_provider_instance: Some(instance("default")),
        combined_validation_context: Some(CombinedCertificateValidationContext {
            default_validation_context: Some({
                #[allow(deprecated)]
                let v = CertificateValidationContext {
                    ca_certificate_provider_instance: Some(instance("ROOTCA")),
                    match_typed_subject_alt_names: peers.to_vec(),
                    // Older gRPC releases read only the untyped field.
                    match_subject_alt_names: peers
                        .iter()
                        .filter_map(|m| m.matcher.clone())
                        .collect(),
                    ..Default::default()
                };
                v
            }),
            validation_context_sds_secret_config: None,
        }),
        ..Default::default()
    }
}

/// Who consumes a TLS context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    Envoy,
    ProxylessGrpc,
}

fn socket(type_url: &str, value: Vec<u8>) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url: type_url.to_owned(),
            value,
        })),
    }
}

/// Client side: mTLS to a server whose identity is one of `peers`.
pub fn upstream_socket(consumer: Consumer, peers: &Peers, sni: &str) -> TransportSocket {
    let common = match consumer {
        Consumer::Envoy => envoy_common(peers),
        Consumer::ProxylessGrpc => grpc_common(peers, false),
    };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: sni.to_owned(),
    };
    socket(UPSTREAM_TLS_TYPE, ctx.encode_to_vec())
}

/// Server side: TLS that requires a client certificate from one of `peers`.
pub fn downstream_socket(consumer: Consumer, peers: &Peers) -> TransportSocket {
    let common = match consumer {
        Consumer::Envoy => envoy_common(peers),
        Consumer::ProxylessGrpc => grpc_common(peers, true),
    };
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
    };
    socket(DOWNSTREAM_TLS_TYPE, ctx.encode_to_vec())
}

fn inline(s: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(s.to_owned())),
        ..Default::default()
    }
}

/// The SDS secret of a workload certificate (named [`WORKLOAD_SECRET`]).
pub fn workload_secret(cert_chain_pem: &str, key_pem: &str) -> Secret {
    Secret {
        name: WORKLOAD_SECRET.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert_chain_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        })),
    }
}

/// The SDS secret of the trust bundle (named [`TRUST_BUNDLE_SECRET`]).
pub fn trust_bundle_secret(bundle_pem: &str) -> Secret {
    Secret {
        name: TRUST_BUNDLE_SECRET.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(bundle_pem)),
                ..Default::default()
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written messages must decode as Envoy's: check field numbers
    /// against the generated `Secret`/`SdsSecretConfig` by round-tripping
    /// through a message that shares them.
    #[test]
    fn upstream_context_round_trips_and_names_the_sds_secrets() {
        let s = upstream_socket(
            Consumer::Envoy,
            &Peers::TrustDomain("example.org".into()),
            "a.example.com",
        );
        let Some(transport_socket::ConfigType::TypedConfig(any)) = s.config_type else {
            panic!("typed config expected");
        };
        assert_eq!(any.type_url, UPSTREAM_TLS_TYPE);
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(ctx.sni, "a.example.com");
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            WORKLOAD_SECRET
        );
        let cvc = common.combined_validation_context.unwrap();
        assert_eq!(
            cvc.validation_context_sds_secret_config.unwrap().name,
            TRUST_BUNDLE_SECRET
        );
        let m = &cvc
            .default_validation_context
            .unwrap()
            .match_typed_subject_alt_names[0];
        assert_eq!(m.san_type, SanType::Uri as i32);
        assert_eq!(
            m.matcher.as_ref().unwrap().match_pattern,
            Some(MatchPattern::Prefix("spiffe://example.org/".into()))
        );
    }

    #[test]
    fn downstream_context_requires_client_certs_and_lists_exact_sans() {
        let peers = Peers::Exact(vec![
            "spiffe://td/ns/a/sa/x".into(),
            "spiffe://td/ns/b/sa/y".into(),
        ]);
        for consumer in [Consumer::Envoy, Consumer::ProxylessGrpc] {
            let s = downstream_socket(consumer, &peers);
            let Some(transport_socket::ConfigType::TypedConfig(any)) = s.config_type else {
                panic!("typed config expected");
            };
            let ctx = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
            assert_eq!(
                ctx.require_client_certificate,
                Some(BoolValue { value: true })
            );
            let common = ctx.common_tls_context.unwrap();
            let sans = common
                .combined_validation_context
                .clone()
                .unwrap()
                .default_validation_context
                .unwrap()
                .match_typed_subject_alt_names;
            // gRPC servers reject SAN matchers; Envoy checks both IDs.
            let want = if consumer == Consumer::Envoy { 2 } else { 0 };
            assert_eq!(sans.len(), want, "{consumer:?}");
            match consumer {
                Consumer::Envoy => {
                    assert!(common.tls_certificate_provider_instance.is_none());
                    assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
                }
                Consumer::ProxylessGrpc => {
                    assert!(common.tls_certificate_sds_secret_configs.is_empty());
                    assert_eq!(
                        common
                            .tls_certificate_provider_instance
                            .unwrap()
                            .instance_name,
                        GRPC_CERT_PROVIDER_INSTANCE
                    );
                }
            }
        }
    }
}

/// JSON of a TLS context `Any` that pbjson cannot expand (the messages
/// above are not in xds-api's registry), for `meridian xds render`: Envoy's
/// JSON loader rejects the raw `value` bytes pbjson would print.
pub(crate) fn expand_json(type_url: &str, bytes: &[u8]) -> Option<serde_json::Value> {
    use serde_json::{json, Map, Value};
    fn common(c: &CommonTlsContext) -> Value {
        let mut m = Map::new();
        let v = |x: &dyn erased::ToJson| x.to_json();
        if !c.tls_certificate_sds_secret_configs.is_empty() {
            m.insert(
                "tlsCertificateSdsSecretConfigs".into(),
                Value::Array(
                    c.tls_certificate_sds_secret_configs
                        .iter()
                        .map(|s| v(s))
                        .collect(),
                ),
            );
        }
        if let Some(p) = &c.tls_certificate_provider_instance {
            m.insert("tlsCertificateProviderInstance".into(), v(p));
        }
        if let Some(cvc) = &c.combined_validation_context {
            let mut inner = Map::new();
            if let Some(d) = &cvc.default_validation_context {
                inner.insert("defaultValidationContext".into(), v(d));
            }
            if let Some(s) = &cvc.validation_context_sds_secret_config {
                inner.insert("validationContextSdsSecretConfig".into(), v(s));
            }
            m.insert("combinedValidationContext".into(), Value::Object(inner));
        }
        if let Some(d) = &c.validation_context {
            m.insert("validationContext".into(), v(d));
        }
        Value::Object(m)
    }
    if type_url == UPSTREAM_TLS_TYPE {
        let ctx = UpstreamTlsContext::decode(bytes).ok()?;
        let mut out = json!({"@type": type_url, "sni": ctx.sni});
        if let Some(c) = &ctx.common_tls_context {
            out["commonTlsContext"] = common(c);
        }
        Some(out)
    } else if type_url == DOWNSTREAM_TLS_TYPE {
        let ctx = DownstreamTlsContext::decode(bytes).ok()?;
        let mut out = json!({"@type": type_url});
        if let Some(c) = &ctx.common_tls_context {
            out["commonTlsContext"] = common(c);
        }
        if let Some(r) = ctx.require_client_certificate {
            out["requireClientCertificate"] = json!(r.value);
        }
        Some(out)
    } else {
        None
    }
}

mod erased {
    /// Serialisable through pbjson, as a trait object.
    pub(super) trait ToJson {
        fn to_json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> ToJson for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

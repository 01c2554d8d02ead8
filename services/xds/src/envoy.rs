//! Small Envoy message helpers shared by the translation and the TLS pieces.

use prost::Message;
use xds_api::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
    SelfConfigSource,
};
use xds_api::pb::google::protobuf::Any;

/// "Over the same ADS stream": where every Meridian resource points for the next.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// "The server that sent this": where proxyless gRPC clients send load
/// reports for a cluster (`Cluster.lrs_server`). Envoy ignores the field
/// and reports where its bootstrap's `load_stats_config` says.
pub(crate) fn this_server() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Self_(SelfConfigSource {
            transport_api_version: ApiVersion::V3 as i32,
        })),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A typed config `Any` of a generated message.
pub(crate) fn any_of<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

//! Who may read client status (CSDS), and which nodes a request names.
//!
//! CSDS shows every connected node's configuration, so it is scoped: the
//! server asks a [`StatusAccess`] (which knows the deployment's credentials
//! and namespaces) what a caller may see, and then keeps the nodes that the
//! request's `node_matchers` name (Envoy's `NodeMatcher`: node id and
//! metadata; a node matching any matcher is listed, an empty list lists
//! all). See <https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/status/v3/csds.proto>.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::Status;
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern as StringPattern, struct_matcher::path_segment::Segment,
    value_matcher::MatchPattern as ValuePattern, NodeMatcher, StringMatcher, StructMatcher,
};
use xds_api::pb::google::protobuf::{value::Kind, Struct, Value};

/// A CSDS caller, as the transport knows it.
#[derive(Debug)]
pub struct Caller<'a> {
    /// The call's gRPC metadata (e.g. `authorization`).
    pub metadata: &'a tonic::metadata::MetadataMap,
    /// The peer's address, for per-address limits.
    pub remote: Option<SocketAddr>,
    /// The caller's SPIFFE ID: its verified client certificate's, or the
    /// identity its request's node claims where claims are trusted.
    pub identity: Option<String>,
}

/// A test on a node's settled identity (`None`: the node has none).
pub type NodeTest = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Which connected nodes a caller may see.
#[derive(Clone)]
pub enum Scope {
    /// Every node (an administrator).
    All,
    /// Nodes whose settled identity passes the test (e.g. the caller's
    /// namespace). Nodes without an identity get `None`.
    Nodes(NodeTest),
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("All"),
            Scope::Nodes(_) => f.write_str("Nodes(..)"),
        }
    }
}

impl Scope {
    pub(crate) fn allows(&self, identity: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Nodes(test) => test(identity),
        }
    }
}

/// Decides what a CSDS caller may see, or refuses it (`UNAUTHENTICATED`,
/// `PERMISSION_DENIED`, ...).
#[tonic::async_trait]
pub trait StatusAccess: Send + Sync + 'static {
    async fn scope(&self, caller: Caller<'_>) -> Result<Scope, Status>;
}

/// The default: CSDS refuses everyone until the server is given a
/// [`StatusAccess`] that knows who callers are.
#[derive(Clone, Copy, Debug, Default)]
pub struct Closed;

#[tonic::async_trait]
impl StatusAccess for Closed {
    async fn scope(&self, _caller: Caller<'_>) -> Result<Scope, Status> {
        Err(Status::permission_denied(
            "client status is not available on this server",
        ))
    }
}

/// Every caller sees every node: for tests and embedded uses only.
#[derive(Clone, Copy, Debug, Default)]
pub struct Open;

#[tonic::async_trait]
impl StatusAccess for Open {
    async fn scope(&self, _caller: Caller<'_>) -> Result<Scope, Status> {
        Ok(Scope::All)
    }
}

/// Checks that every matcher uses what is supported, so a request is
/// refused rather than answered as if an unsupported matcher matched.
pub fn check_matchers(matchers: &[NodeMatcher]) -> Result<(), String> {
    for (i, m) in matchers.iter().enumerate() {
        if let Some(s) = &m.node_id {
            check_string(s).map_err(|e| format!("node_matchers[{i}].node_id: {e}"))?;
        }
        for (j, sm) in m.node_metadatas.iter().enumerate() {
            check_struct(sm).map_err(|e| format!("node_matchers[{i}].node_metadatas[{j}]: {e}"))?;
        }
    }
    Ok(())
}

fn check_string(s: &StringMatcher) -> Result<(), String> {
    match &s.match_pattern {
        Some(
            StringPattern::Exact(_)
            | StringPattern::Prefix(_)
            | StringPattern::Suffix(_)
            | StringPattern::Contains(_),
        ) => Ok(()),
        Some(StringPattern::SafeRegex(_)) => {
            Err("safe_regex is not supported; use exact, prefix, suffix or contains".into())
        }
        Some(StringPattern::Custom(_)) => Err("custom string matchers are not supported".into()),
        None => Err("a string matcher needs a pattern".into()),
    }
}

fn check_struct(m: &StructMatcher) -> Result<(), String> {
    if m.path.is_empty() {
        return Err("path is empty".into());
    }
    if m.path.iter().any(|p| p.segment.is_none()) {
        return Err("every path segment needs a key".into());
    }
    match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(ValuePattern::StringMatch(s)) => check_string(s),
        Some(
            ValuePattern::BoolMatch(_) | ValuePattern::PresentMatch(_) | ValuePattern::NullMatch(_),
        ) => Ok(()),
        Some(_) => Err("only string, bool, present and null value matchers are supported".into()),
        None => Err("value matcher missing".into()),
    }
}

/// Whether `node` is named by `matchers` (any of them; all nodes when
/// empty). Call [`check_matchers`] first: unsupported matchers match nothing.
pub fn node_matches(matchers: &[NodeMatcher], node: &Node) -> bool {
    matchers.is_empty() || matchers.iter().any(|m| matcher_matches(m, node))
}

fn matcher_matches(m: &NodeMatcher, node: &Node) -> bool {
    m.node_id
        .as_ref()
        .is_none_or(|s| string_matches(s, &node.id))
        && m.node_metadatas
            .iter()
            .all(|sm| struct_matches(sm, node.metadata.as_ref()))
}

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let fold = |s: &str| {
        if m.ignore_case {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    let value = fold(value);
    match &m.match_pattern {
        Some(StringPattern::Exact(p)) => value == fold(p),
        Some(StringPattern::Prefix(p)) => value.starts_with(&fold(p)),
        Some(StringPattern::Suffix(p)) => value.ends_with(&fold(p)),
        Some(StringPattern::Contains(p)) => value.contains(&fold(p)),
        _ => false,
    }
}

fn struct_matches(m: &StructMatcher, metadata: Option<&Struct>) -> bool {
    let mut current: Option<&Value> = None;
    let mut within = metadata;
    for seg in &m.path {
        let Some(Segment::Key(key)) = &seg.segment else {
            return false;
        };
        current = within.and_then(|s| s.fields.get(key));
        within = match current.and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(s)) => Some(s),
            _ => None,
        };
    }
    let kind = current.and_then(|v| v.kind.as_ref());
    match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(ValuePattern::PresentMatch(want)) => current.is_some() == *want,
        Some(ValuePattern::NullMatch(_)) => matches!(kind, Some(Kind::NullValue(_))),
        Some(ValuePattern::BoolMatch(want)) => {
            matches!(kind, Some(Kind::BoolValue(b)) if b == want)
        }
        Some(ValuePattern::StringMatch(s)) => {
            matches!(kind, Some(Kind::StringValue(v)) if string_matches(s, v))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_api::pb::envoy::r#type::matcher::v3::{
        struct_matcher::PathSegment, RegexMatcher, ValueMatcher,
    };

    fn node(id: &str, meta: &[(&str, Kind)]) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            Value {
                                kind: Some(v.clone()),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    fn id(p: StringPattern, ignore_case: bool) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(p),
                ignore_case,
            }),
            node_metadatas: vec![],
        }
    }

    fn meta(path: &[&str], v: ValuePattern) -> NodeMatcher {
        NodeMatcher {
            node_id: None,
            node_metadatas: vec![StructMatcher {
                path: path
                    .iter()
                    .map(|k| PathSegment {
                        segment: Some(Segment::Key((*k).to_owned())),
                    })
                    .collect(),
                value: Some(ValueMatcher {
                    match_pattern: Some(v),
                }),
            }],
        }
    }

    fn s(p: &str) -> String {
        p.to_owned()
    }

    #[test]
    fn node_matchers_as_envoy_defines_them() {
        use StringPattern::{Contains, Exact, Prefix, Suffix};
        let shop = node(
            "shop-1.sidecar",
            &[
                ("zone", Kind::StringValue(s("eu-1"))),
                ("canary", Kind::BoolValue(true)),
            ],
        );
        let exact_zone = |z: &str| {
            ValuePattern::StringMatch(StringMatcher {
                match_pattern: Some(Exact(s(z))),
                ignore_case: false,
            })
        };
        // (matchers, matches shop-1.sidecar)
        let cases: Vec<(Vec<NodeMatcher>, bool)> = vec![
            (vec![], true),
            (vec![id(Exact(s("shop-1.sidecar")), false)], true),
            (vec![id(Exact(s("shop-1")), false)], false),
            (vec![id(Exact(s("SHOP-1.sidecar")), false)], false),
            (vec![id(Exact(s("SHOP-1.sidecar")), true)], true),
            (vec![id(Prefix(s("shop-")), false)], true),
            (vec![id(Prefix(s("bank-")), false)], false),
            (vec![id(Suffix(s(".sidecar")), false)], true),
            (vec![id(Contains(s("-1.")), false)], true),
            // Any matcher of the list.
            (
                vec![id(Prefix(s("bank-")), false), id(Prefix(s("shop")), false)],
                true,
            ),
            (vec![meta(&["zone"], exact_zone("eu-1"))], true),
            (vec![meta(&["zone"], exact_zone("us-1"))], false),
            (vec![meta(&["canary"], ValuePattern::BoolMatch(true))], true),
            (
                vec![meta(&["missing"], ValuePattern::PresentMatch(false))],
                true,
            ),
            (
                vec![meta(&["zone"], ValuePattern::PresentMatch(false))],
                false,
            ),
            (vec![meta(&["zone", "deeper"], exact_zone("eu-1"))], false),
        ];
        for (matchers, want) in cases {
            check_matchers(&matchers).unwrap();
            assert_eq!(node_matches(&matchers, &shop), want, "{matchers:?}");
        }
    }

    #[test]
    fn unsupported_matchers_are_refused_by_name() {
        let regex = id(StringPattern::SafeRegex(RegexMatcher::default()), false);
        let e = check_matchers(&[id(StringPattern::Prefix(s("a")), false), regex]).unwrap_err();
        assert!(
            e.contains("node_matchers[1].node_id") && e.contains("safe_regex"),
            "{e}"
        );
        let double = meta(&["x"], ValuePattern::DoubleMatch(Default::default()));
        let e = check_matchers(&[double]).unwrap_err();
        assert!(e.contains("node_metadatas[0]"), "{e}");
    }
}

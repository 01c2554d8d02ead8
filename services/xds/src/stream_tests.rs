//! The engine's state machines with Meridian's translation and node views.

use std::collections::HashMap;

use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_api::pb::google::rpc::Status;

use meridian_xds_engine::protocol::{Answer, DeltaStream, ResourceStatus, SotwStream, StreamState};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::google::protobuf::value::Kind;

use crate::assemble::translate;
use crate::node::{Inbound, MeridianNode};
use crate::translate::{tests::policy, Weights, EGRESS_ADDRESS_METADATA_KEY};
use meridian_policy::Policy;
use meridian_xds_engine::{ResourceType, Resources, SotwRequest};
use prost::Message;
use std::collections::BTreeMap;

/// The streams, answering with the generated messages.
trait Proto {
    type Req;
    type Resp;
    fn handle(&mut self, r: &Self::Req, res: Option<&Resources>, now: u64) -> Vec<Self::Resp>;
    fn snapshot(&mut self, res: &Resources) -> Vec<Self::Resp>;
}

impl Proto for SotwStream {
    type Req = SotwRequest;
    type Resp = DiscoveryResponse;
    fn handle(&mut self, r: &Self::Req, res: Option<&Resources>, now: u64) -> Vec<Self::Resp> {
        SotwStream::handle_request(self, r, res, now)
            .iter()
            .map(|r| r.to_proto())
            .collect()
    }
    fn snapshot(&mut self, res: &Resources) -> Vec<Self::Resp> {
        SotwStream::on_snapshot(self, res)
            .iter()
            .map(|r| r.to_proto())
            .collect()
    }
}

impl Proto for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    fn handle(&mut self, r: &Self::Req, res: Option<&Resources>, now: u64) -> Vec<Self::Resp> {
        DeltaStream::handle_request(self, r, res, now)
            .iter()
            .map(|r| r.to_proto())
            .collect()
    }
    fn snapshot(&mut self, res: &Resources) -> Vec<Self::Resp> {
        DeltaStream::on_snapshot(self, res)
            .iter()
            .map(|r| r.to_proto())
            .collect()
    }
}

fn boxed(view: MeridianNode) -> Box<MeridianNode> {
    Box::new(view)
}

const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::RouteConfiguration;
const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

fn snap(names: &[(&str, Option<(&str, u32)>)]) -> Resources {
    let ps: Vec<_> = names
        .iter()
        .map(|(n, c)| policy(n, 8080, *c, false))
        .collect();
    translate(&ps, &Weights::new())
}

fn req(ty: ResourceType, names: &[&str], version: &str, nonce: &str, nack: bool) -> SotwRequest {
    DiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: nack.then(|| Status {
            code: 3,
            message: "bad".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

fn names_of(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| {
            use prost::Message;
            match ResourceType::from_type_url(&a.type_url) {
                Some(ResourceType::Listener) => {
                    xds_api::pb::envoy::config::listener::v3::Listener::decode(a.value.as_slice())
                        .map(|l| l.name)
                        .unwrap_or_default()
                }
                Some(ResourceType::Cluster) => {
                    xds_api::pb::envoy::config::cluster::v3::Cluster::decode(a.value.as_slice())
                        .map(|l| l.name)
                        .unwrap_or_default()
                }
                Some(ResourceType::RouteConfiguration) => {
                    xds_api::pb::envoy::config::route::v3::RouteConfiguration::decode(
                        a.value.as_slice(),
                    )
                    .map(|l| l.name)
                    .unwrap_or_default()
                }
                Some(ResourceType::ClusterLoadAssignment) => {
                    xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                        a.value.as_slice(),
                    )
                    .map(|l| l.cluster_name)
                    .unwrap_or_default()
                }
                _ => String::new(),
            }
        })
        .collect()
}

fn types(out: &[DiscoveryResponse]) -> Vec<ResourceType> {
    out.iter()
        .filter_map(|r| ResourceType::from_type_url(&r.type_url))
        .collect()
}

/// Subscribes a sidecar to everything and ACKs; returns the stream.
fn synced_sidecar(res: &Resources) -> SotwStream {
    let mut s = SotwStream::new(boxed(MeridianNode::default()));
    for (ty, names) in [
        (CDS, vec![]),
        (EDS, vec!["a", "a@v2", "b"]),
        (LDS, vec![]),
        (RDS, vec!["egress_8080"]),
    ] {
        let out = s.handle(&req(ty, &names, "", "", false), Some(res), 0);
        for r in out {
            let t = ResourceType::from_type_url(&r.type_url).expect("known");
            s.handle(
                &req(t, &names_for(&s, t), &r.version_info, &r.nonce, false),
                Some(res),
                0,
            );
        }
    }
    s
}

/// The names `synced_sidecar` subscribed with.
fn names_for(_s: &SotwStream, t: ResourceType) -> Vec<&'static str> {
    match t {
        EDS => vec!["a", "a@v2", "b"],
        RDS => vec!["egress_8080"],
        _ => vec![],
    }
}

#[test]
fn wildcard_lds_gets_egress_only_named_gets_exactly_what_exists() {
    let res = snap(&[("a", None)]);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec!["egress_8080"]),
        (vec!["*"], vec!["egress_8080"]),
        (vec!["a.example.com"], vec!["a.example.com"]),
        (
            vec!["a.example.com:8080", "missing.example.com"],
            vec!["a.example.com:8080"],
        ),
        (
            vec!["egress_8080", "a.example.com"],
            vec!["a.example.com", "egress_8080"],
        ),
    ];
    for (asked, want) in cases {
        let mut s = SotwStream::new(boxed(MeridianNode::default()));
        let out = s.handle(&req(LDS, &asked, "", "", false), Some(&res), 0);
        assert_eq!(out.len(), 1, "{asked:?}");
        assert_eq!(names_of(&out[0]), want, "{asked:?}");
    }
}

#[test]
fn ack_then_nack_does_not_loop_and_later_good_version_is_sent() {
    let r1 = snap(&[("a", None)]);
    let mut s = SotwStream::new(boxed(MeridianNode::default()));
    let out = s.handle(&req(CDS, &[], "", "", false), Some(&r1), 0);
    assert_eq!(out.len(), 1);
    let v1 = out[0].version_info.clone();
    // ACK: nothing more.
    assert!(s
        .handle(&req(CDS, &[], &v1, &out[0].nonce, false), Some(&r1), 0)
        .is_empty());
    // New snapshot, NACKed: recorded, not resent.
    let r2 = snap(&[("a", None), ("b", None)]);
    let out2 = s.snapshot(&r2);
    assert_eq!(types(&out2), [CDS]);
    let nack = req(CDS, &[], &v1, &out2[0].nonce, true);
    assert!(s.handle(&nack, Some(&r2), 7).is_empty());
    assert!(
        s.snapshot(&r2).is_empty(),
        "same snapshot again: no resend loop"
    );
    let rep = s
        .reports()
        .into_iter()
        .find(|r| r.resource_type == CDS)
        .expect("cds");
    assert_eq!(rep.status, ResourceStatus::Nacked);
    assert_eq!(
        rep.last_nack.map(|n| (n.version, n.at_ms)),
        Some((out2[0].version_info.clone(), 7))
    );
    assert_eq!(rep.last_acked_version, Some(v1));
    // A different version goes out.
    let r3 = snap(&[("b", None)]);
    assert_eq!(types(&s.snapshot(&r3)), [CDS]);
}

#[test]
fn stale_nonce_is_ignored() {
    let r1 = snap(&[("a", None)]);
    let mut s = SotwStream::new(boxed(MeridianNode::default()));
    let out = s.handle(&req(RDS, &["grpc_a"], "", "", false), Some(&r1), 0);
    assert_eq!(out.len(), 1);
    let stale = req(RDS, &["grpc_a", "egress_8080"], "", "999", false);
    assert!(s.handle(&stale, Some(&r1), 0).is_empty());
    let fresh = req(RDS, &["grpc_a", "egress_8080"], "", &out[0].nonce, false);
    let out = s.handle(&fresh, Some(&r1), 0);
    // SotW RDS carries what the client does not have yet: the new name only.
    assert_eq!(names_of(&out[0]), ["egress_8080"]);
}

#[test]
fn sotw_reconnect_with_current_version_gets_nothing() {
    let res = snap(&[("a", None)]);
    let mut first = SotwStream::new(boxed(MeridianNode::default()));
    let v = first.handle(&req(CDS, &[], "", "", false), Some(&res), 0)[0]
        .version_info
        .clone();
    let mut again = SotwStream::new(boxed(MeridianNode::default()));
    assert!(again
        .handle(&req(CDS, &[], &v, "", false), Some(&res), 0)
        .is_empty());
    // Something changes: now it is sent.
    assert_eq!(
        types(&again.snapshot(&snap(&[("a", None), ("b", None)]))),
        [CDS]
    );
    // An old version is answered at once.
    let mut old = SotwStream::new(boxed(MeridianNode::default()));
    assert_eq!(
        old.handle(&req(CDS, &[], "0000", "", false), Some(&res), 0)
            .len(),
        1
    );
}

#[test]
fn requests_before_first_snapshot_are_answered_on_it() {
    let mut s = SotwStream::new(boxed(MeridianNode::default()));
    assert!(s.handle(&req(LDS, &[], "", "", false), None, 0).is_empty());
    assert!(s.handle(&req(CDS, &[], "", "", false), None, 0).is_empty());
    assert_eq!(types(&s.snapshot(&snap(&[("a", None)]))), [CDS, LDS]);
}

#[test]
fn snapshot_change_is_ordered_cds_eds_lds_rds_and_removal_waits_for_route_ack() {
    let r1 = snap(&[("a", Some(("v2", 10))), ("b", None)]);
    let mut s = synced_sidecar(&r1);
    // Policy a deleted, b gains a canary on another port => new listener, cluster, routes.
    let r2 = translate(
        &[
            policy("b", 8080, Some(("v2", 50)), false),
            policy("c", 9090, None, false),
        ],
        &Weights::new(),
    );
    let out = s.snapshot(&r2);
    assert_eq!(types(&out), [CDS, EDS, LDS, RDS]);
    // a and a@v2 stay: the ACKed routes still point at them.
    assert_eq!(names_of(&out[0]), ["a", "a@v2", "b", "b@v2", "c"]);
    // Client ACKs CDS and LDS, then the new routes: now a is dropped from CDS.
    for r in &out[..3] {
        let t = ResourceType::from_type_url(&r.type_url).expect("t");
        let names = names_for(&s, t);
        assert!(s
            .handle(
                &req(t, &names, &r.version_info, &r.nonce, false),
                Some(&r2),
                0
            )
            .is_empty());
    }
    let rds = &out[3];
    let out = s.handle(
        &req(RDS, &["egress_8080"], &rds.version_info, &rds.nonce, false),
        Some(&r2),
        0,
    );
    // Full-state CDS omits the removed clusters; SotW EDS cannot say
    // "removed" and nothing else changed, so no EDS response.
    assert_eq!(types(&out), [CDS]);
    assert_eq!(names_of(&out[0]), ["b", "b@v2", "c"]);
}

#[test]
fn node_egress_address_rebinds_egress_listener_only() {
    use xds_api::pb::google::protobuf::{Struct, Value};
    let mut node = Node::default();
    let cases = [
        ("10.1.2.3", Some("10.1.2.3")),
        ("not-an-ip", None),
        ("127.0.0.1", None),
    ];
    for (given, want) in cases {
        node.metadata = Some(Struct {
            fields: HashMap::from([(
                EGRESS_ADDRESS_METADATA_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(given.into())),
                },
            )]),
        });
        assert_eq!(
            MeridianNode::from_node(Some(&node))
                .egress_address
                .as_deref(),
            want
        );
    }
    let res = snap(&[("a", None)]);
    let mut s = SotwStream::new(boxed(MeridianNode {
        egress_address: Some("10.1.2.3".into()),
        ..Default::default()
    }));
    let out = s.handle(&req(LDS, &[], "", "", false), Some(&res), 0);
    let shared = res.get(LDS, "egress_8080").expect("egress");
    use prost::Message;
    let l = xds_api::pb::envoy::config::listener::v3::Listener::decode(
        out[0].resources[0].value.as_slice(),
    )
    .expect("l");
    assert_ne!(out[0].resources[0].value, shared.bytes.to_vec());
    assert!(format!("{:?}", l.address).contains("10.1.2.3"));
}

fn dreq(
    ty: ResourceType,
    sub: &[&str],
    unsub: &[&str],
    nonce: &str,
    nack: bool,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        error_detail: nack.then(|| Status {
            code: 3,
            message: "bad".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dnames(r: &DeltaDiscoveryResponse) -> (Vec<String>, Vec<String>) {
    (
        r.resources.iter().map(|x| x.name.clone()).collect(),
        r.removed_resources.clone(),
    )
}

#[test]
fn delta_subscribe_unknown_unsubscribe_ack_nack() {
    let r1 = snap(&[("a", None)]);
    let mut d = DeltaStream::new(boxed(MeridianNode::default()));
    let out = d.handle(&dreq(EDS, &["a", "zzz"], &[], "", false), Some(&r1), 0);
    assert_eq!(
        dnames(&out[0]),
        (vec!["a".into()], vec!["zzz".into()]),
        "unknown names are reported removed"
    );
    assert!(d
        .handle(&dreq(EDS, &[], &[], &out[0].nonce, false), Some(&r1), 0)
        .is_empty());
    // Unsubscribe: no response, and later changes to it are not sent.
    assert!(d
        .handle(&dreq(EDS, &[], &["a"], "", false), Some(&r1), 0)
        .is_empty());
    let r2 = translate(&[policy("a", 8080, None, true)], &Weights::new());
    assert!(d.snapshot(&r2).is_empty());
    // NACK: not resent, a later version is.
    let out = d.handle(&dreq(CDS, &[], &[], "", false), Some(&r1), 0);
    assert_eq!(dnames(&out[0]).0, ["a"]);
    let out = d.snapshot(&r2);
    assert_eq!(dnames(&out[0]).0, ["a"]);
    assert!(d
        .handle(&dreq(CDS, &[], &[], &out[0].nonce, true), Some(&r2), 0)
        .is_empty());
    assert!(d.snapshot(&r2).is_empty());
    assert_eq!(dnames(&d.snapshot(&r1)[0]).0, ["a"]);
}

#[test]
fn delta_reconnect_with_initial_versions_and_removal() {
    let r1 = snap(&[("a", None), ("b", None)]);
    let mut first = DeltaStream::new(boxed(MeridianNode::default()));
    let out = first.handle(&dreq(CDS, &[], &[], "", false), Some(&r1), 0);
    let have: HashMap<String, String> = out[0]
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    // b changed (grpc => http2) meanwhile, a did not; c is gone from the client's view.
    let r2 = translate(
        &[
            policy("a", 8080, None, false),
            policy("b", 8080, None, true),
        ],
        &Weights::new(),
    );
    let mut again = DeltaStream::new(boxed(MeridianNode::default()));
    let mut rq = dreq(CDS, &[], &[], "", false);
    rq.initial_resource_versions = have;
    rq.initial_resource_versions
        .insert("gone".into(), "x".into());
    let out = again.handle(&rq, Some(&r2), 0);
    assert_eq!(dnames(&out[0]), (vec!["b".into()], vec!["gone".into()]));
    // Policy delete on a wildcard delta stream without routes in use: removed.
    again.handle(&dreq(CDS, &[], &[], &out[0].nonce, false), Some(&r2), 0);
    let r3 = snap(&[("b", None)]);
    let out = again.snapshot(&r3);
    assert_eq!(dnames(&out[0]).1, ["a"]);
}

#[test]
fn delta_wildcard_lds_excludes_api_listeners() {
    let res = snap(&[("a", None)]);
    let mut d = DeltaStream::new(boxed(MeridianNode::default()));
    let out = d.handle(&dreq(LDS, &[], &[], "", false), Some(&res), 0);
    assert_eq!(dnames(&out[0]).0, ["egress_8080"]);
    let mut g = DeltaStream::new(boxed(MeridianNode::default()));
    let out = g.handle(
        &dreq(LDS, &["a.example.com"], &[], "", false),
        Some(&res),
        0,
    );
    assert_eq!(dnames(&out[0]).0, ["a.example.com"]);
}

#[test]
fn deleting_the_last_policy_on_a_port_removes_listener_then_clusters() {
    let r1 = snap(&[("a", Some(("v2", 10)))]);
    let mut s = synced_sidecar(&r1);
    let r2 = translate(&[], &Weights::new());
    let out = s.snapshot(&r2);
    // The listener goes at once (full-state LDS without it); its routes go
    // with it, so nothing references a's clusters any more.
    let lds = out
        .iter()
        .find(|r| r.type_url == LDS.type_url())
        .expect("an LDS response");
    assert!(names_of(lds).is_empty(), "{:?}", names_of(lds));
    let cds_now = out.iter().find(|r| r.type_url == CDS.type_url());
    // Either CDS drops them in this push, or after the client ACKs the LDS removal.
    let cds = match cds_now {
        Some(c) if names_of(c).is_empty() => c.clone(),
        _ => {
            let names = names_for(&s, LDS);
            let after = s.handle(
                &req(LDS, &names, &lds.version_info, &lds.nonce, false),
                Some(&r2),
                0,
            );
            after
                .into_iter()
                .find(|r| r.type_url == CDS.type_url())
                .expect("CDS after the LDS ACK")
        }
    };
    assert!(
        names_of(&cds).is_empty(),
        "clusters of a deleted policy linger: {:?}",
        names_of(&cds)
    );
}

#[test]
fn answers_are_reported_once_and_stale_nonces_are_not_answers() {
    let r1 = snap(&[("a", None)]);
    let mut s = SotwStream::new(boxed(MeridianNode::default()));
    let out = s.handle(&req(CDS, &[], "", "", false), Some(&r1), 0);
    assert_eq!(s.take_answer(), None, "a first request answers nothing");
    let v1 = out[0].version_info.clone();
    s.handle(&req(CDS, &[], &v1, &out[0].nonce, false), Some(&r1), 0);
    assert_eq!(s.take_answer(), Some((CDS, Answer::Ack)));
    assert_eq!(s.take_answer(), None, "taken once");
    // A NACK of a newer response, then a stale nonce that answers nothing.
    let r2 = snap(&[("a", None), ("b", None)]);
    let out2 = s.snapshot(&r2);
    s.handle(&req(CDS, &[], &v1, &out2[0].nonce, true), Some(&r2), 1);
    assert_eq!(s.take_answer(), Some((CDS, Answer::Nack)));
    s.handle(&req(CDS, &[], &v1, "old-nonce", false), Some(&r2), 2);
    assert_eq!(s.take_answer(), None);
}

mod security {
    use super::*;
    use crate::assemble::translate_mesh;
    use crate::tls::{TRUST_BUNDLE_SECRET, WORKLOAD_SECRET};
    use crate::translate::Mesh;
    use meridian_policy::MtlsMode;
    use prost::Message;
    use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};

    const SDS: ResourceType = ResourceType::Secret;
    const A: &str = "spiffe://td/ns/shop/sa/web";
    const B: &str = "spiffe://td/ns/bank/sa/vault";

    fn mesh_snapshot(mode: MtlsMode) -> Resources {
        let mut p = policy("a", 8080, None, false);
        p.spec.mtls.mode = mode;
        let mesh = Mesh {
            trust_domain: "td".into(),
            trust_bundle_pem: Some("BUNDLE".into()),
            workload_certs: [
                (A.to_owned(), ("CERT-A".to_owned(), "KEY-A".to_owned())),
                (B.to_owned(), ("CERT-B".to_owned(), "KEY-B".to_owned())),
            ]
            .into(),
        };
        translate_mesh(&[p], &Weights::new(), &mesh)
    }

    fn secrets(r: &DiscoveryResponse) -> Vec<(String, String)> {
        r.resources
            .iter()
            .map(|a| {
                let s = Secret::decode(a.value.as_slice()).unwrap();
                let body = match s.r#type {
                    Some(secret::Type::TlsCertificate(t)) => format!("{:?}", t.certificate_chain),
                    Some(secret::Type::ValidationContext(v)) => format!("{:?}", v.trusted_ca),
                    _ => String::new(),
                };
                (s.name, body)
            })
            .collect()
    }

    #[test]
    fn a_node_gets_only_its_own_workload_secret() {
        let res = mesh_snapshot(MtlsMode::Strict);
        let cases: &[(Option<&str>, &str, bool)] = &[
            (Some(A), "CERT-A", true),
            (Some(B), "CERT-B", true),
            (None, "", false),
            (Some("spiffe://td/ns/x/sa/unknown"), "", false),
        ];
        for (identity, want_cert, has_cert) in cases {
            let mut s = SotwStream::new(boxed(MeridianNode {
                identity: identity.map(str::to_owned),
                ..Default::default()
            }));
            // Naming another identity's entry, or a bogus name, yields nothing.
            let out = s.handle(
                &req(
                    SDS,
                    &[WORKLOAD_SECRET, TRUST_BUNDLE_SECRET, A, B, "x"],
                    "",
                    "",
                    false,
                ),
                Some(&res),
                0,
            );
            let got = secrets(&out[0]);
            let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
            if *has_cert {
                // Sorted by name.
                assert_eq!(
                    names,
                    [TRUST_BUNDLE_SECRET, WORKLOAD_SECRET],
                    "{identity:?}"
                );
                assert!(got[1].1.contains(want_cert), "{identity:?}: {:?}", got[1]);
                assert!(got[0].1.contains("BUNDLE"));
            } else {
                assert_eq!(names, [TRUST_BUNDLE_SECRET], "{identity:?}");
            }
            assert!(got.iter().all(|(_, b)| !b.contains("KEY")));
        }
    }

    #[test]
    fn only_strict_clusters_carry_tls_and_proxyless_nodes_get_provider_form() {
        for (mode, tls) in [
            (MtlsMode::Strict, true),
            (MtlsMode::Permissive, false),
            (MtlsMode::Disabled, false),
        ] {
            let res = mesh_snapshot(mode);
            for proxyless in [false, true] {
                let mut s = SotwStream::new(boxed(MeridianNode {
                    proxyless,
                    ..Default::default()
                }));
                let out = s.handle(&req(CDS, &[], "", "", false), Some(&res), 0);
                let c = xds_api::pb::envoy::config::cluster::v3::Cluster::decode(
                    out[0].resources[0].value.as_slice(),
                )
                .unwrap();
                assert_eq!(c.transport_socket.is_some(), tls, "{mode:?}");
                if let Some(ts) = c.transport_socket {
                    let Some(xds_api::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) = ts.config_type else {
                        panic!("typed config");
                    };
                    let ctx = crate::tls::UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
                    let common = ctx.common_tls_context.unwrap();
                    assert_eq!(
                        common.tls_certificate_provider_instance.is_some(),
                        proxyless
                    );
                    assert_eq!(
                        common.tls_certificate_sds_secret_configs.is_empty(),
                        proxyless
                    );
                    assert_eq!(ctx.sni, "a.example.com");
                }
            }
        }
    }

    #[test]
    fn a_sidecar_with_inbound_metadata_gets_its_inbound_listener_and_workload_cluster() {
        use xds_api::pb::envoy::config::listener::v3::Listener;
        let inbound = Inbound {
            policy: "a".into(),
            listen: ("127.0.0.9".into(), 9443),
            workload: ("127.0.0.1".into(), 8081),
        };
        for (mode, chains, inspector) in [
            (MtlsMode::Strict, vec![true], false),
            (MtlsMode::Permissive, vec![true, false], true),
            (MtlsMode::Disabled, vec![false], false),
        ] {
            let res = mesh_snapshot(mode);
            let mut s = SotwStream::new(boxed(MeridianNode {
                inbound: Some(inbound.clone()),
                ..Default::default()
            }));
            let lds = s.handle(&req(LDS, &[], "", "", false), Some(&res), 0);
            let names = names_of(&lds[0]);
            assert!(names.contains(&"inbound_a".to_owned()), "{names:?}");
            let l = lds[0]
                .resources
                .iter()
                .map(|a| Listener::decode(a.value.as_slice()).unwrap())
                .find(|l| l.name == "inbound_a")
                .unwrap();
            let tls: Vec<bool> = l
                .filter_chains
                .iter()
                .map(|c| c.transport_socket.is_some())
                .collect();
            assert_eq!(tls, chains, "{mode:?}");
            assert_eq!(!l.listener_filters.is_empty(), inspector, "{mode:?}");
            let cds = s.handle(&req(CDS, &[], "", "", false), Some(&res), 0);
            assert!(names_of(&cds[0]).contains(&"inbound|a".to_owned()));
        }
        // Without the metadata, or for a policy that does not exist: nothing.
        let res = mesh_snapshot(MtlsMode::Strict);
        for view in [
            MeridianNode::default(),
            MeridianNode {
                inbound: Some(Inbound {
                    policy: "missing".into(),
                    ..inbound.clone()
                }),
                ..Default::default()
            },
        ] {
            let mut s = SotwStream::new(boxed(view));
            let lds = s.handle(&req(LDS, &[], "", "", false), Some(&res), 0);
            assert!(!names_of(&lds[0]).iter().any(|n| n.starts_with("inbound_")));
        }
    }

    #[test]
    fn a_proxyless_grpc_server_gets_its_listener_by_listening_address() {
        use xds_api::pb::envoy::config::listener::v3::Listener;
        let res = mesh_snapshot(MtlsMode::Strict);
        let name = "grpc/server?xds.resource.listening_address=10.0.0.1:80";
        let unknown = "grpc/server?xds.resource.listening_address=10.9.9.9:80";
        let mut s = SotwStream::new(boxed(MeridianNode {
            proxyless: true,
            ..Default::default()
        }));
        let out = s.handle(&req(LDS, &[name, unknown], "", "", false), Some(&res), 0);
        assert_eq!(names_of(&out[0]), [name]);
        let l = Listener::decode(out[0].resources[0].value.as_slice()).unwrap();
        assert!(l.filter_chains[0].transport_socket.is_some(), "strict: TLS");
        for mode in [MtlsMode::Permissive, MtlsMode::Disabled] {
            let res = mesh_snapshot(mode);
            let mut s = SotwStream::new(boxed(MeridianNode::default()));
            let out = s.handle(&req(LDS, &[name], "", "", false), Some(&res), 0);
            let l = Listener::decode(out[0].resources[0].value.as_slice()).unwrap();
            assert!(l.filter_chains[0].transport_socket.is_none(), "{mode:?}");
        }
    }
}

#[test]
fn a_node_naming_its_hosts_gets_only_theirs_and_other_changes_send_nothing() {
    use meridian_xds_engine::snapshot_channel;
    use xds_api::pb::google::protobuf::{Struct, Value};
    let meta = Node {
        metadata: Some(Struct {
            fields: HashMap::from([(
                crate::node::HOSTS_METADATA_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue("a.example.com, zzz.example.com".into())),
                },
            )]),
        }),
        ..Default::default()
    };
    let view = MeridianNode::from_node(Some(&meta));
    assert_eq!(
        view.hosts.iter().flatten().cloned().collect::<Vec<_>>(),
        ["a.example.com", "zzz.example.com"]
    );
    let (publisher, subscriber) = snapshot_channel();
    let world = |c_port: u32, a_weight: u32| {
        let mut a = policy("a", 8080, None, false);
        a.spec.zones[0].weight = a_weight;
        let mut c = policy("c", c_port, None, false);
        c.spec.zones[0].weight = c_port;
        vec![a, policy("b", 8080, None, false), c]
    };
    let mut t = crate::assemble::Translator::new(Default::default());
    t.rebuild(&world(9090, 70), &Weights::new());
    let (res, _) = t.output();
    publisher.publish(res);
    let res = subscriber.current().resources.clone();
    let mut s = SotwStream::new(Box::new(view));
    let cds = s.handle(&req(CDS, &[], "", "", false), Some(&res), 0);
    assert_eq!(names_of(&cds[0]), ["a"]);
    let lds = s.handle(&req(LDS, &[], "", "", false), Some(&res), 0);
    assert_eq!(names_of(&lds[0]), ["egress_8080"]);
    let rds = s.handle(&req(RDS, &["egress_8080"], "", "", false), Some(&res), 0);
    let route = xds_api::pb::envoy::config::route::v3::RouteConfiguration::decode(
        rds[0].resources[0].value.as_slice(),
    )
    .unwrap();
    let vhosts: Vec<String> = route.virtual_hosts.iter().map(|v| v.name.clone()).collect();
    assert_eq!(vhosts, ["a"], "only the named host's virtual host");
    let eds = s.handle(&req(EDS, &["a"], "", "", false), Some(&res), 0);
    assert_eq!(names_of(&eds[0]), ["a"]);
    for (ty, r) in [
        (CDS, &cds[0]),
        (LDS, &lds[0]),
        (RDS, &rds[0]),
        (EDS, &eds[0]),
    ] {
        let names = match ty {
            RDS => vec!["egress_8080"],
            EDS => vec!["a"],
            _ => vec![],
        };
        s.handle(
            &req(ty, &names, &r.version_info, &r.nonce, false),
            Some(&res),
            0,
        );
    }
    // A change to a policy the node does not call sends nothing.
    let by_name = |ps: Vec<Policy>| -> BTreeMap<String, Policy> {
        ps.into_iter()
            .map(|p| (p.metadata.name.clone(), p))
            .collect()
    };
    let next = by_name(world(9191, 70));
    t.update(["c"], |n| next.get(n), &Weights::new());
    publisher.publish(t.output().0);
    assert!(s
        .snapshot(&subscriber.current().resources.clone())
        .is_empty());
    // A change to the one it calls: its endpoints only.
    let next = by_name(world(9191, 40));
    t.update(["a"], |n| next.get(n), &Weights::new());
    publisher.publish(t.output().0);
    let out = s.snapshot(&subscriber.current().resources.clone());
    assert_eq!(types(&out), [EDS]);
    assert_eq!(names_of(&out[0]), ["a"]);
}

/// A node scoped to its hosts gets the clusters of a route under a rollout
/// (`<policy>~<route>`, `<policy>@<version>~<route>`) with its policy's,
/// and none of another policy's.
#[test]
fn a_scoped_node_gets_the_clusters_of_its_policys_rollout_routes() {
    use xds_api::pb::google::protobuf::{Struct, Value};
    let meta = Node {
        metadata: Some(Struct {
            fields: HashMap::from([(
                crate::node::HOSTS_METADATA_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue("a.example.com".into())),
                },
            )]),
        }),
        ..Default::default()
    };
    let rolling = |name: &str| {
        let mut p = policy(name, 8080, Some(("v2", 0)), false);
        p.spec.routes[0].canary.as_mut().unwrap().rollout = Some(Default::default());
        p
    };
    let mut t = crate::assemble::Translator::new(Default::default());
    t.rebuild(&[rolling("a"), rolling("b")], &Weights::new());
    let (res, _) = t.output();
    let mut s = SotwStream::new(Box::new(MeridianNode::from_node(Some(&meta))));
    let cds = s.handle(&req(CDS, &[], "", "", false), Some(&res), 0);
    assert_eq!(names_of(&cds[0]), ["a", "a@v2", "a@v2~api", "a~api"]);
}

//! The state machines against a fake view: resources are opaque bytes, a
//! "listener" names its routes, a "route" names its clusters.

use std::collections::HashMap;

use xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_api::pb::google::rpc::Status;

use super::*;
use crate::snapshot::snapshot_channel;
use crate::wire::{DeltaResponse, SotwRequest, SotwResponse};

const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::RouteConfiguration;
const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

/// A fake world: per cluster a weight; listener `l` -> route `r` -> clusters.
#[derive(Clone)]
struct World {
    clusters: Vec<(&'static str, u32)>,
    /// Clusters the route references (default: all).
    routed: Option<Vec<&'static str>>,
    /// A resource a wildcard does not get.
    hidden_listener: bool,
}

fn world(clusters: &[(&'static str, u32)]) -> World {
    World {
        clusters: clusters.to_vec(),
        routed: None,
        hidden_listener: false,
    }
}

fn entry(ty: ResourceType, name: &str, body: String, refs: &[&str]) -> Entry {
    let mut e = Entry::new(name, ty, body.into_bytes());
    let mut refs: Vec<Arc<str>> = refs.iter().map(|r| Arc::from(*r)).collect();
    refs.sort();
    e.refs = refs.into_boxed_slice();
    e
}

impl World {
    /// Sealed: ready to hand to a stream directly.
    fn resources(&self) -> Resources {
        let mut r = self.unsealed();
        r.seal();
        r
    }

    /// For the publisher, which seals against the previous snapshot.
    fn unsealed(&self) -> Resources {
        let mut r = Resources::new();
        let routed: Vec<&str> = self
            .routed
            .clone()
            .unwrap_or_else(|| self.clusters.iter().map(|(n, _)| *n).collect());
        for (n, w) in &self.clusters {
            r.insert(CDS, entry(CDS, n, format!("cluster {n}"), &[]));
            r.insert(EDS, entry(EDS, n, format!("cla {n} {w}"), &[]));
        }
        r.insert(RDS, entry(RDS, "r", format!("route {routed:?}"), &routed));
        r.insert(LDS, entry(LDS, "l", "listener r".into(), &["r"]));
        if self.hidden_listener {
            let mut e = entry(LDS, "api", "api listener".into(), &["r"]);
            e.wildcard = false;
            r.insert(LDS, e);
        }
        r
    }
}

/// A node with its own listener and an address that rewrites `l`.
#[derive(Debug, Default)]
struct FakeNode {
    own_listener: bool,
    rebind: Option<&'static str>,
    variant_calls: usize,
}

impl NodeView for FakeNode {
    fn has_variants(&self, ty: ResourceType) -> bool {
        ty == LDS && self.rebind.is_some()
    }
    fn variant(&mut self, _ty: ResourceType, e: &Arc<Entry>) -> Arc<Entry> {
        self.variant_calls += 1;
        let body = format!(
            "{} on {}",
            String::from_utf8_lossy(&e.bytes),
            self.rebind.unwrap_or("")
        );
        Arc::new(entry(LDS, &e.name, body, &["r"]))
    }
    fn variant_key(&self) -> u64 {
        self.rebind
            .map_or(0, |r| crate::resources::fnv64(r.as_bytes()))
    }
    fn extras(
        &mut self,
        ty: ResourceType,
        _res: &Resources,
        sub: &Subscription,
    ) -> Vec<Arc<Entry>> {
        if ty == LDS && self.own_listener && sub.covers_name("own") {
            vec![Arc::new(entry(LDS, "own", "own listener".into(), &[]))]
        } else {
            Vec::new()
        }
    }
}

fn sotw() -> SotwStream {
    SotwStream::new(Box::new(FakeNode::default()))
}

fn delta() -> DeltaStream {
    DeltaStream::new(Box::new(FakeNode::default()))
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

fn names(r: &SotwResponse) -> Vec<String> {
    r.resources.iter().map(|e| e.name.to_string()).collect()
}

fn types(out: &[SotwResponse]) -> Vec<ResourceType> {
    out.iter()
        .filter_map(|r| ResourceType::from_type_url(r.type_url))
        .collect()
}

/// ACKs every response, as Envoy does, answering what the ACK triggers too.
fn ack_all(s: &mut SotwStream, out: Vec<SotwResponse>, res: &Resources) {
    let mut queue = out;
    while let Some(r) = queue.pop() {
        let ty = ResourceType::from_type_url(r.type_url).expect("known");
        let names = current_names(s, ty);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let more = s.handle_request(
            &req(ty, &names, &r.version_info, &r.nonce, false),
            Some(res),
            0,
        );
        queue.extend(more);
    }
}

fn current_names(s: &SotwStream, ty: ResourceType) -> Vec<String> {
    let st = s.core.state(ty).expect("state");
    if st.sub.wildcard && st.sub.legacy {
        vec![]
    } else {
        st.sub.names.iter().map(|n| n.to_string()).collect()
    }
}

/// An Envoy-like SotW stream: wildcard CDS and LDS, then EDS and RDS for
/// everything received, everything ACKed.
fn envoy_like(res: &Resources) -> SotwStream {
    let mut s = sotw();
    for ty in [CDS, LDS] {
        let out = s.handle_request(&req(ty, &[], "", "", false), Some(res), 0);
        ack_all(&mut s, out, res);
    }
    let clusters: Vec<String> = res.iter(CDS).map(|e| e.name.to_string()).collect();
    let clusters: Vec<&str> = clusters.iter().map(String::as_str).collect();
    let out = s.handle_request(&req(EDS, &clusters, "", "", false), Some(res), 0);
    ack_all(&mut s, out, res);
    let out = s.handle_request(&req(RDS, &["r"], "", "", false), Some(res), 0);
    ack_all(&mut s, out, res);
    s
}

#[test]
fn sotw_eds_change_sends_only_the_changed_assignment_and_lds_cds_stay_full() {
    let (publisher, subscriber) = snapshot_channel();
    let w1 = world(&[("a", 50), ("b", 50), ("c", 50)]);
    publisher.publish(w1.unsealed());
    let r1 = subscriber.current().resources.clone();
    let mut s = envoy_like(&r1);

    // (what changes, expected responses: type -> names)
    let mut w = w1.clone();
    type Step<'a> = (Box<dyn Fn(&mut World)>, Vec<(ResourceType, Vec<&'a str>)>);
    let steps: Vec<Step<'_>> = vec![
        (Box::new(|w| w.clusters[1].1 = 70), vec![(EDS, vec!["b"])]),
        (
            Box::new(|w| {
                w.clusters[0].1 = 10;
                w.clusters[2].1 = 90;
            }),
            vec![(EDS, vec!["a", "c"])],
        ),
        // A new cluster: CDS is full state, EDS only the new one, the route changes.
        (
            Box::new(|w| w.clusters.push(("d", 5))),
            vec![(CDS, vec!["a", "b", "c", "d"]), (RDS, vec!["r"])],
        ),
    ];
    for (change, want) in steps {
        change(&mut w);
        publisher.publish(w.unsealed());
        let res = subscriber.current().resources.clone();
        let out = s.on_snapshot(&res);
        let got: Vec<(ResourceType, Vec<String>)> = out
            .iter()
            .map(|r| (ResourceType::from_type_url(r.type_url).unwrap(), names(r)))
            .collect();
        let want: Vec<(ResourceType, Vec<String>)> = want
            .into_iter()
            .map(|(t, n)| (t, n.into_iter().map(String::from).collect()))
            .collect();
        assert_eq!(got, want);
        ack_all(&mut s, out, &res);
        // Envoy asks for the new cluster's endpoints: only that one comes.
        let clusters: Vec<String> = res.iter(CDS).map(|e| e.name.to_string()).collect();
        let clusters: Vec<&str> = clusters.iter().map(String::as_str).collect();
        let eds = s.core.state(EDS).unwrap();
        let nonce = eds.nonce.to_string();
        let version = eds.sent_version.clone().unwrap_or_default();
        let out = s.handle_request(&req(EDS, &clusters, &version, &nonce, false), Some(&res), 0);
        if clusters.len() == 4 {
            assert_eq!(types(&out), [EDS]);
            assert_eq!(names(&out[0]), ["d"]);
            ack_all(&mut s, out, &res);
        } else {
            assert!(out.is_empty());
        }
    }
    // The stream holds the snapshot's sets, not copies.
    let res = subscriber.current().resources.clone();
    for ty in [LDS, RDS, CDS, EDS] {
        let sent = &s.core.state(ty).unwrap().sent.as_ref().unwrap().set;
        assert!(Arc::ptr_eq(sent, res.set(ty)), "{ty:?}");
    }
}

#[test]
fn a_stream_that_skipped_snapshots_gets_everything_that_changed_meanwhile() {
    let (publisher, subscriber) = snapshot_channel();
    let mut w = world(&[("a", 1), ("b", 1), ("c", 1)]);
    publisher.publish(w.unsealed());
    let mut s = envoy_like(&subscriber.current().resources.clone());
    // Three snapshots, the stream sees only the last (the watch coalesces);
    // then twenty, beyond the remembered history: a full comparison.
    for (rounds, want) in [(3, vec!["a", "b"]), (20, vec!["a", "b", "c"])] {
        for i in 0..rounds {
            let idx = if rounds == 3 { i % 2 } else { i % 3 };
            w.clusters[idx].1 += 1;
            publisher.publish(w.unsealed());
        }
        let res = subscriber.current().resources.clone();
        let out = s.on_snapshot(&res);
        assert_eq!(types(&out), [EDS]);
        assert_eq!(names(&out[0]), want);
        ack_all(&mut s, out, &res);
    }
}

#[test]
fn sotw_reconnect_with_known_versions_sends_nothing_new() {
    let res = world(&[("a", 1), ("b", 2)]).resources();
    let s = envoy_like(&res);
    let versions: HashMap<ResourceType, String> = [LDS, RDS, CDS, EDS]
        .into_iter()
        .map(|t| (t, s.core.state(t).unwrap().sent_version.clone().unwrap()))
        .collect();
    // Another replica, same content: nothing is sent for any type.
    let res2 = world(&[("a", 1), ("b", 2)]).resources();
    let mut again = sotw();
    for (ty, names) in [
        (CDS, vec![]),
        (LDS, vec![]),
        (EDS, vec!["a", "b"]),
        (RDS, vec!["r"]),
    ] {
        let out = again.handle_request(&req(ty, &names, &versions[&ty], "", false), Some(&res2), 0);
        assert!(out.is_empty(), "{ty:?}: {out:?}");
    }
    // A change afterwards is sent as usual, only what changed.
    let res3 = world(&[("a", 1), ("b", 3)]).resources();
    let out = again.on_snapshot(&res3);
    assert_eq!(types(&out), [EDS]);
    assert_eq!(names(&out[0]), ["b"]);
    // An old version is answered at once, in full.
    let mut old = sotw();
    let out = old.handle_request(&req(EDS, &["a", "b"], "0000", "", false), Some(&res), 0);
    assert_eq!(names(&out[0]), ["a", "b"]);
}

#[test]
fn nack_is_recorded_and_never_resent_and_a_later_version_goes_out() {
    let r1 = world(&[("a", 1)]).resources();
    let mut s = sotw();
    let out = s.handle_request(&req(CDS, &[], "", "", false), Some(&r1), 0);
    let v1 = out[0].version_info.clone();
    assert!(s
        .handle_request(&req(CDS, &[], &v1, &out[0].nonce, false), Some(&r1), 0)
        .is_empty());
    let r2 = world(&[("a", 1), ("b", 1)]).resources();
    let out2 = s.on_snapshot(&r2);
    assert_eq!(types(&out2), [CDS]);
    assert!(s
        .handle_request(&req(CDS, &[], &v1, &out2[0].nonce, true), Some(&r2), 7)
        .is_empty());
    assert_eq!(s.take_answer(), Some((CDS, Answer::Nack)));
    assert!(
        s.on_snapshot(&r2).is_empty(),
        "same snapshot: no resend loop"
    );
    let rep = s
        .reports()
        .into_iter()
        .find(|r| r.resource_type == CDS)
        .unwrap();
    assert_eq!(rep.status, ResourceStatus::Nacked);
    assert_eq!(
        rep.last_nack.map(|n| (n.version, n.at_ms)),
        Some((out2[0].version_info.clone(), 7))
    );
    assert_eq!(rep.last_acked_version, Some(v1));
    let r3 = world(&[("b", 1)]).resources();
    assert_eq!(types(&s.on_snapshot(&r3)), [CDS]);
    // A stale nonce is ignored, and is no answer.
    assert!(s
        .handle_request(&req(CDS, &[], "", "999", false), Some(&r3), 0)
        .is_empty());
    assert_eq!(s.take_answer(), None);
}

#[test]
fn wildcard_skips_hidden_resources_named_gets_exactly_what_exists() {
    let mut w = world(&[("a", 1)]);
    w.hidden_listener = true;
    let res = w.resources();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec!["l"]),
        (vec!["*"], vec!["l"]),
        (vec!["api"], vec!["api"]),
        (vec!["api", "missing"], vec!["api"]),
        (vec!["*", "api"], vec!["api", "l"]),
    ];
    for (asked, want) in cases {
        let mut s = sotw();
        let out = s.handle_request(&req(LDS, &asked, "", "", false), Some(&res), 0);
        assert_eq!(names(&out[0]), want, "{asked:?}");
    }
}

#[test]
fn removed_cluster_stays_until_the_routes_without_it_are_acked() {
    let w1 = world(&[("a", 1), ("b", 1)]);
    let r1 = w1.resources();
    let mut s = envoy_like(&r1);
    let r2 = world(&[("b", 1)]).resources();
    let out = s.on_snapshot(&r2);
    assert_eq!(types(&out), [RDS], "CDS keeps a: the ACKed route uses it");
    // ACK of the new route releases it.
    let rds = &out[0];
    let out = s.handle_request(
        &req(RDS, &["r"], &rds.version_info, &rds.nonce, false),
        Some(&r2),
        0,
    );
    assert_eq!(types(&out), [CDS]);
    assert_eq!(names(&out[0]), ["b"]);
    // Delta: listed as removed at the same point.
    let mut d = delta();
    for ty in [CDS, LDS] {
        let out = d.handle_request(&dreq(ty, &[], &[], "", false), Some(&r1), 0);
        d.handle_request(&dreq(ty, &[], &[], &out[0].nonce, false), Some(&r1), 0);
    }
    let out = d.handle_request(&dreq(RDS, &["r"], &[], "", false), Some(&r1), 0);
    d.handle_request(&dreq(RDS, &[], &[], &out[0].nonce, false), Some(&r1), 0);
    let out = d.on_snapshot(&r2);
    assert_eq!(out.len(), 1, "only the route: {out:?}");
    let out = d.handle_request(&dreq(RDS, &[], &[], &out[0].nonce, false), Some(&r2), 0);
    assert_eq!(out.len(), 1);
    assert_eq!(dnames(&out[0]), (vec![], vec!["a".to_owned()]));
}

#[test]
fn node_variants_and_extras_are_sent_and_compared_per_node() {
    let res = world(&[("a", 1)]).resources();
    let mut s = SotwStream::new(Box::new(FakeNode {
        own_listener: true,
        rebind: Some("10.0.0.1"),
        variant_calls: 0,
    }));
    let out = s.handle_request(&req(LDS, &["*", "own"], "", "", false), Some(&res), 0);
    assert_eq!(names(&out[0]), ["l", "own"]);
    let l = &out[0].resources[0];
    assert!(String::from_utf8_lossy(&l.bytes).ends_with("on 10.0.0.1"));
    assert_ne!(out[0].version_info, {
        let mut plain = sotw();
        plain.handle_request(&req(LDS, &["*", "own"], "", "", false), Some(&res), 0)[0]
            .version_info
            .clone()
    });
    // An EDS-only change does not touch the node's listeners.
    let res2 = world(&[("a", 2)]).resources();
    ack_all(&mut s, out, &res);
    assert!(
        s.on_snapshot(&res2).is_empty(),
        "no EDS subscription, no LDS change"
    );
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

fn dnames(r: &DeltaResponse) -> (Vec<String>, Vec<String>) {
    (
        r.resources.iter().map(|x| x.name.to_string()).collect(),
        r.removed_resources.iter().map(|x| x.to_string()).collect(),
    )
}

#[test]
fn delta_subscribe_unknown_unsubscribe_ack_nack() {
    let r1 = world(&[("a", 1)]).resources();
    let mut d = delta();
    let out = d.handle_request(&dreq(EDS, &["a", "zzz"], &[], "", false), Some(&r1), 0);
    assert_eq!(
        dnames(&out[0]),
        (vec!["a".into()], vec!["zzz".into()]),
        "unknown names are reported removed"
    );
    assert!(d
        .handle_request(&dreq(EDS, &[], &[], &out[0].nonce, false), Some(&r1), 0)
        .is_empty());
    // Unsubscribe: no response, and later changes to it are not sent.
    assert!(d
        .handle_request(&dreq(EDS, &[], &["a"], "", false), Some(&r1), 0)
        .is_empty());
    let r2 = world(&[("a", 2)]).resources();
    assert!(d.on_snapshot(&r2).is_empty());
    // Subscribing again sends it, though the stream had sent an older one.
    let out = d.handle_request(&dreq(EDS, &["a"], &[], "", false), Some(&r2), 0);
    assert_eq!(dnames(&out[0]).0, ["a"]);
    // NACK: not resent, a later version is.
    let r3 = world(&[("a", 3)]).resources();
    let out = d.on_snapshot(&r3);
    assert!(d
        .handle_request(&dreq(EDS, &[], &[], &out[0].nonce, true), Some(&r3), 0)
        .is_empty());
    assert!(d.on_snapshot(&world(&[("a", 3)]).resources()).is_empty());
    assert_eq!(dnames(&d.on_snapshot(&r1)[0]).0, ["a"]);
}

#[test]
fn delta_reconnect_with_initial_versions_sends_only_the_difference() {
    let r1 = world(&[("a", 1), ("b", 1)]).resources();
    let mut first = delta();
    let out = first.handle_request(&dreq(EDS, &["a", "b"], &[], "", false), Some(&r1), 0);
    let have: HashMap<String, String> = out[0]
        .resources
        .iter()
        .map(|r| (r.name.to_string(), r.version.to_string()))
        .collect();
    let r2 = world(&[("a", 1), ("b", 2)]).resources();
    let mut again = delta();
    let mut rq = dreq(EDS, &["a", "b", "gone"], &[], "", false);
    rq.initial_resource_versions = have;
    rq.initial_resource_versions
        .insert("gone".into(), "x".into());
    let out = again.handle_request(&rq, Some(&r2), 0);
    assert_eq!(dnames(&out[0]), (vec!["b".into()], vec!["gone".into()]));
}

#[test]
fn requests_before_the_first_snapshot_are_answered_on_it() {
    let mut s = sotw();
    assert!(s
        .handle_request(&req(LDS, &[], "", "", false), None, 0)
        .is_empty());
    assert!(s
        .handle_request(&req(CDS, &[], "", "", false), None, 0)
        .is_empty());
    let res = world(&[("a", 1)]).resources();
    assert_eq!(types(&s.on_snapshot(&res)), [CDS, LDS]);
}

/// Clusters `c0`..`c9`, weight 1: enough names to be shared (8 or more).
fn ten_clusters() -> Vec<(&'static str, u32)> {
    ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
        .iter()
        .map(|n| (*n, 1))
        .collect()
}

/// Streams naming the same resources hold one copy of the names: SotW and
/// delta alike, whatever order the names came in; a stream that names
/// something else gets its own, and the shared one is left as it was.
#[test]
fn streams_naming_the_same_resources_share_one_name_set() {
    let clusters = ten_clusters();
    let res = world(&clusters).resources();
    let a = envoy_like(&res);
    let b = envoy_like(&res);
    let eds = |s: &SotwStream| s.core.state(EDS).expect("EDS").sub.names.clone();
    assert_eq!(eds(&a).len(), 10);
    assert!(Arc::ptr_eq(&eds(&a), &eds(&b)));

    let mut reversed: Vec<&str> = clusters.iter().rev().map(|(n, _)| *n).collect();
    let mut d = delta();
    d.handle_request(&dreq(EDS, &reversed, &[], "", false), Some(&res), 0);
    let delta_names = d.core.state(EDS).expect("EDS").sub.names.clone();
    assert!(Arc::ptr_eq(&eds(&a), &delta_names));

    reversed.pop();
    let mut c = sotw();
    c.handle_request(&req(EDS, &reversed, "", "", false), Some(&res), 0);
    let fewer = c.core.state(EDS).expect("EDS").sub.names.clone();
    assert_eq!(fewer.len(), 9);
    assert!(!Arc::ptr_eq(&eds(&a), &fewer));
    assert_eq!(eds(&a).len(), 10);

    // A delta unsubscribe copies the set rather than editing the shared one.
    d.handle_request(&dreq(EDS, &[], &["c0"], "", false), Some(&res), 0);
    assert_eq!(d.core.state(EDS).expect("EDS").sub.names.len(), 9);
    assert_eq!(eds(&b).len(), 10);
}

/// A new delta stream that subscribes, in one request, to exactly the names
/// another stream holds takes that stream's set and still gets every
/// resource; unknown names among many are reported removed, in order.
#[test]
fn a_delta_stream_taking_a_shared_set_gets_everything_and_hears_of_the_unknown() {
    let clusters = ten_clusters();
    let res = world(&clusters).resources();
    let a = envoy_like(&res);
    let all: Vec<&str> = clusters.iter().map(|(n, _)| *n).collect();
    let mut d = delta();
    let out = d.handle_request(&dreq(EDS, &all, &[], "", false), Some(&res), 0);
    let shared = a.core.state(EDS).expect("EDS").sub.names.clone();
    assert!(Arc::ptr_eq(
        &shared,
        &d.core.state(EDS).expect("EDS").sub.names
    ));
    assert_eq!(
        dnames(&out[0]),
        (all.iter().map(|n| n.to_string()).collect(), vec![])
    );

    let mut many: Vec<&str> = vec!["c1", "c3", "nope0", "nope1", "c5", "zz"];
    many.extend(["x0", "x1", "x2", "x3", "x4", "x5"]);
    many.sort();
    let mut e = delta();
    let out = e.handle_request(&dreq(EDS, &many, &[], "", false), Some(&res), 0);
    let (sent, removed) = dnames(&out[0]);
    assert_eq!(sent, ["c1", "c3", "c5"]);
    assert_eq!(
        removed,
        ["nope0", "nope1", "x0", "x1", "x2", "x3", "x4", "x5", "zz"]
    );
}

/// Both ways of finding named entries (a lookup per name, a walk of the
/// two sorted sequences) find the same, interned names or not.
#[test]
fn lookup_sorted_finds_the_same_by_walk_and_by_lookup() {
    let names: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
    let mut r = Resources::new();
    for n in &names {
        r.insert(CDS, entry(CDS, n, format!("cluster {n}"), &[]));
    }
    r.seal();
    let set = r.set(CDS);
    let interned = |n: &str| intern(n, Some(set));
    let cases: Vec<(&str, Vec<Arc<str>>)> = vec![
        (
            "few, interned: lookups",
            vec![interned("n03"), interned("n31")],
        ),
        ("few, one unknown", vec![Arc::from("a"), interned("n10")]),
        (
            "many, interned: walk",
            names.iter().step_by(2).map(|n| interned(n)).collect(),
        ),
        (
            "many, not interned, unknown between and after",
            ["n00", "n05", "n055", "n10", "n20", "n39", "n4", "o"]
                .into_iter()
                .map(Arc::from)
                .collect(),
        ),
        ("none", vec![]),
    ];
    for (case, wanted) in cases {
        let mut got = Vec::new();
        lookup_sorted(set, &wanted, |n, e| {
            got.push((n.to_string(), e.map(|e| e.name.to_string())))
        });
        let expected: Vec<(String, Option<String>)> = wanted
            .iter()
            .map(|n| (n.to_string(), set.get(n).map(|e| e.name.to_string())))
            .collect();
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn by_name_last_wins_sorts_and_keeps_the_last_pushed() {
    let e = |name: &str, body: &str| Arc::new(entry(CDS, name, body.into(), &[]));
    let out = by_name_last_wins(vec![
        e("b", "b first"),
        e("a", "a"),
        e("c", "c"),
        e("b", "b last"),
    ]);
    let got: Vec<(String, Vec<u8>)> = out
        .iter()
        .map(|e| (e.name.to_string(), e.bytes.to_vec()))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), b"a".to_vec()),
            ("b".to_string(), b"b last".to_vec()),
            ("c".to_string(), b"c".to_vec()),
        ]
    );
}

use super::*;
use crate::assemble::{translate, translate_scoped};
use meridian_xds_engine::Resources;
use prost::Message;
use serde_json::json;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

pub(crate) fn policy(name: &str, port: u32, canary: Option<(&str, u32)>, grpc: bool) -> Policy {
    let routes = match canary {
        Some((v, w)) => json!([
            {"name": "api", "match": {"pathPrefix": "/api", "headers": [{"name": "x-t", "exact": "1"}]},
             "canary": {"version": v, "weight": w}},
            {"name": "plain", "match": {"pathPrefix": "/plain"}}
        ]),
        None => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "host": format!("{name}.example.com"),
            "port": port,
            "protocol": if grpc { "grpc" } else { "http" },
            "zones": [
                {"name": "z1", "region": "r1", "weight": 70, "endpoints": [
                    {"address": "10.0.0.1", "port": 80, "version": "v1"},
                    {"address": "10.0.0.2", "port": 80, "version": "v2"}]},
                {"name": "z2", "weight": 30, "endpoints": [
                    {"address": "svc.internal", "port": 81, "version": "v1"}]}
            ],
            "routes": routes
        }
    }))
    .expect("fixture policy")
}

fn decode<M: Message + Default>(r: &Resources, ty: ResourceType, name: &str) -> M {
    let e = r.get(ty, name).unwrap_or_else(|| panic!("{name} missing"));
    M::decode(e.bytes.as_ref()).expect("decodes")
}

fn names(r: &Resources, ty: ResourceType) -> Vec<String> {
    r.iter(ty).map(|e| e.name.to_string()).collect()
}

#[test]
fn names_per_type() {
    let r = translate(
        &[
            policy("a", 8080, Some(("v2", 10)), false),
            policy("b", 9090, None, false),
        ],
        &Weights::new(),
    );
    assert_eq!(names(&r, ResourceType::Cluster), ["a", "a@v2", "b"]);
    assert_eq!(
        names(&r, ResourceType::ClusterLoadAssignment),
        ["a", "a@v2", "b"]
    );
    assert_eq!(
        names(&r, ResourceType::Listener),
        [
            "a.example.com",
            "a.example.com:8080",
            "b.example.com",
            "b.example.com:9090",
            "egress_8080",
            "egress_9090"
        ]
    );
    assert_eq!(
        names(&r, ResourceType::RouteConfiguration),
        ["egress_8080", "egress_9090", "grpc_a", "grpc_b"]
    );
    let wildcard: Vec<_> = r
        .iter(ResourceType::Listener)
        .filter(|e| e.wildcard)
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(wildcard, ["egress_8080", "egress_9090"]);
    assert_eq!(
        r.get(ResourceType::RouteConfiguration, "egress_8080")
            .map(|e| e.refs.len()),
        Some(2)
    );
}

#[test]
fn load_assignments_split_versions_and_apply_weights() {
    let p = policy("a", 8080, Some(("v2", 10)), false);
    // (weights, cluster, expected [(zone, region, weight, endpoints)])
    let mut failover = Weights::new();
    failover.insert(
        "a".into(),
        BTreeMap::from([("z1".into(), 0), ("z2".into(), 100)]),
    );
    type Row<'a> = (&'a str, &'a str, u32, Vec<&'a str>);
    let cases: Vec<(Weights, &str, Vec<Row<'_>>)> = vec![
        (
            Weights::new(),
            "a",
            vec![
                ("z1", "r1", 70, vec!["10.0.0.1"]),
                ("z2", "", 30, vec!["svc.internal"]),
            ],
        ),
        (
            Weights::new(),
            "a@v2",
            vec![("z1", "r1", 70, vec!["10.0.0.2"])],
        ),
        (
            failover.clone(),
            "a",
            vec![("z2", "", 100, vec!["svc.internal"])],
        ),
        (failover, "a@v2", vec![]),
    ];
    for (w, cluster, want) in cases {
        let r = translate(std::slice::from_ref(&p), &w);
        let cla: ClusterLoadAssignment = decode(&r, ResourceType::ClusterLoadAssignment, cluster);
        let got: Vec<Row<'_>> = cla
            .endpoints
            .iter()
            .map(|l| {
                let loc = l.locality.clone().unwrap_or_default();
                let addrs = l
                    .lb_endpoints
                    .iter()
                    .map(|e| match &e.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                            match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                                Some(address::Address::SocketAddress(s)) => {
                                    if s.address == "10.0.0.1" {
                                        "10.0.0.1"
                                    } else if s.address == "10.0.0.2" {
                                        "10.0.0.2"
                                    } else {
                                        "svc.internal"
                                    }
                                }
                                _ => "?",
                            }
                        }
                        _ => "?",
                    })
                    .collect();
                (
                    if loc.zone == "z1" { "z1" } else { "z2" },
                    if loc.region == "r1" { "r1" } else { "" },
                    l.load_balancing_weight.map(|w| w.value).unwrap_or(0),
                    addrs,
                )
            })
            .collect();
        assert_eq!(got, want, "cluster {cluster}");
    }
}

#[test]
fn clusters_are_eds_over_ads_and_grpc_uses_http2() {
    for (grpc, h2) in [(false, false), (true, true)] {
        let r = translate(&[policy("a", 80, None, grpc)], &Weights::new());
        let c: Cluster = decode(&r, ResourceType::Cluster, "a");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        assert_eq!(c.eds_cluster_config.and_then(|e| e.eds_config), Some(ads()));
        assert!(matches!(
            c.common_lb_config.and_then(|l| l.locality_config_specifier),
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ));
        #[allow(deprecated)]
        let has_h2 = c.http2_protocol_options.is_some();
        assert_eq!(has_h2, h2);
    }
}

fn route_of(r: &Resources, name: &str) -> Vec<Route> {
    let rc: RouteConfiguration = decode(r, ResourceType::RouteConfiguration, name);
    rc.virtual_hosts[0].routes.clone()
}

#[test]
fn canary_routes_split_and_mark() {
    // (canary weight, expected weighted entries [(cluster, weight, adds header, removes)])
    type Split<'a> = (&'a str, u32, bool, Vec<&'a str>);
    let cases: Vec<(u32, Vec<Split<'_>>)> = vec![
        (
            10,
            vec![
                ("a@v2", 10, true, vec![]),
                ("a", 90, false, vec![DEFAULT_HEADER]),
            ],
        ),
        (100, vec![("a@v2", 100, true, vec![])]),
        (0, vec![("a", 100, false, vec![DEFAULT_HEADER])]),
    ];
    const DEFAULT_HEADER: &str = meridian_policy::DEFAULT_CANARY_HEADER;
    for (w, want) in cases {
        let r = translate(&[policy("a", 80, Some(("v2", w)), false)], &Weights::new());
        let routes = route_of(&r, "grpc_a");
        assert_eq!(routes.len(), 3, "two policy routes and the default");
        let Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(wc)),
            ..
        })) = &routes[0].action
        else {
            panic!("weighted clusters expected");
        };
        let got: Vec<Split<'_>> = wc
            .clusters
            .iter()
            .map(|c| {
                let add = c.request_headers_to_add.iter().any(|h| {
                    h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                        && h.header
                            .as_ref()
                            .is_some_and(|v| v.key == DEFAULT_HEADER && v.value == "true")
                });
                let name = if c.name == "a" { "a" } else { "a@v2" };
                (
                    name,
                    c.weight.map(|x| x.value).unwrap_or(0),
                    add,
                    c.request_headers_to_remove
                        .iter()
                        .map(|_| DEFAULT_HEADER)
                        .collect(),
                )
            })
            .collect();
        assert_eq!(got, want, "weight {w}");
        assert_eq!(routes[0].r#match.as_ref().map(|m| m.headers.len()), Some(1));
        // Non-canary routes strip the marker, even a spoofed one.
        for r in &routes[1..] {
            assert_eq!(r.request_headers_to_remove, vec![DEFAULT_HEADER.to_owned()]);
        }
        assert_eq!(
            routes[2]
                .r#match
                .as_ref()
                .and_then(|m| m.path_specifier.clone()),
            Some(PathSpecifier::Prefix("/".into()))
        );
    }
}

#[test]
fn listeners_point_at_their_routes() {
    let r = translate(&[policy("a", 8080, None, true)], &Weights::new());
    let l: Listener = decode(&r, ResourceType::Listener, "egress_8080");
    let Some(address::Address::SocketAddress(s)) = l.address.and_then(|a| a.address) else {
        panic!()
    };
    assert_eq!(
        (s.address.as_str(), s.port_specifier),
        (
            "127.0.0.1",
            Some(socket_address::PortSpecifier::PortValue(8080))
        )
    );
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let h = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    assert!(
        matches!(h.route_specifier, Some(RouteSpecifier::Rds(ref rds)) if rds.route_config_name == "egress_8080")
    );
    for name in ["a.example.com", "a.example.com:8080"] {
        let l: Listener = decode(&r, ResourceType::Listener, name);
        let any = l
            .api_listener
            .and_then(|a| a.api_listener)
            .expect("api listener");
        let h = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
        assert!(
            matches!(h.route_specifier, Some(RouteSpecifier::Rds(ref rds)) if rds.route_config_name == "grpc_a")
        );
        let Some(http_filter::ConfigType::TypedConfig(router)) = &h.http_filters[0].config_type
        else {
            panic!()
        };
        assert_eq!(
            router.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        );
    }
}

#[test]
fn output_is_deterministic_and_order_independent() {
    let a = policy("a", 80, Some(("v2", 5)), false);
    let b = policy("b", 80, None, false);
    let r1 = translate(&[a.clone(), b.clone()], &Weights::new());
    let r2 = translate(&[b, a], &Weights::new());
    assert_eq!(r1, r2);
}

#[test]
fn render_is_typed_json_and_filters() {
    let v = render(
        &[policy("a", 80, None, false), policy("b", 80, None, false)],
        &Weights::new(),
        &Rollouts::new(),
        Some("a"),
    );
    assert_eq!(v["clusters"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["clusters"][0]["name"], "a");
    assert!(v["listeners"].as_array().is_some_and(|l| l.len() == 3));
}

#[test]
fn namespace_label_scopes_a_policy_to_its_namespace_view() {
    let mut a = policy("a", 8080, None, false);
    a.metadata
        .labels
        .insert(NAMESPACE_LABEL.to_owned(), "shop".to_owned());
    let b = policy("b", 8081, None, false);
    let (unscoped, scoped) = translate_scoped(&[a, b], &Weights::new(), &Mesh::default());
    let clusters = |r: &Resources| -> Vec<String> {
        r.iter(ResourceType::Cluster)
            .map(|e| e.name.to_string())
            .collect()
    };
    assert_eq!(clusters(&unscoped), ["b"]);
    assert_eq!(scoped.keys().collect::<Vec<_>>(), ["shop"]);
    assert_eq!(clusters(&scoped["shop"]), ["a", "b"]);
    for (id, ns) in [
        ("spiffe://td/ns/shop/sa/web", Some("shop")),
        ("spiffe://td/ns//sa/web", None),
        ("spiffe://td/sa/web", None),
        ("shop", None),
    ] {
        assert_eq!(namespace_of(id).as_deref(), ns, "{id}");
    }
}

#[test]
fn a_decision_for_other_zones_is_ignored_and_spec_weights_apply() {
    // The fixture's zones are z1 (70) and z2 (30).
    let p = policy("a", 8080, None, false);
    let row = |pairs: &[(&str, u32)]| -> Weights {
        let w: BTreeMap<String, u32> = pairs.iter().map(|(z, v)| ((*z).to_owned(), *v)).collect();
        Weights::from([("a".to_owned(), w)])
    };
    // (stored decision, expected weights per zone in the assignment)
    let cases: Vec<(Weights, Vec<(&str, u32)>)> = vec![
        (Weights::new(), vec![("z1", 70), ("z2", 30)]),
        (row(&[("z1", 20), ("z2", 80)]), vec![("z1", 20), ("z2", 80)]),
        (row(&[("z1", 0), ("z2", 100)]), vec![("z2", 100)]),
        // z2 was renamed from "old": the row names a zone that is gone.
        (
            row(&[("z1", 50), ("old", 50)]),
            vec![("z1", 70), ("z2", 30)],
        ),
        // A zone was added since the decision.
        (row(&[("z1", 100)]), vec![("z1", 70), ("z2", 30)]),
        // A zone was removed since the decision.
        (
            row(&[("z1", 10), ("z2", 10), ("z3", 80)]),
            vec![("z1", 70), ("z2", 30)],
        ),
    ];
    for (w, want) in cases {
        let r = translate(std::slice::from_ref(&p), &w);
        let cla: ClusterLoadAssignment = decode(&r, ResourceType::ClusterLoadAssignment, "a");
        let got: Vec<(String, u32)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.clone().unwrap_or_default().zone,
                    l.load_balancing_weight.map_or(0, |w| w.value),
                )
            })
            .collect();
        let want: Vec<(String, u32)> = want.into_iter().map(|(z, v)| (z.to_owned(), v)).collect();
        assert_eq!(got, want, "{w:?}");
    }
}

/// (name, version) of every resource per type, and the extension version.
fn content(r: &Resources) -> Vec<(ResourceType, String, String)> {
    ResourceType::ALL
        .into_iter()
        .flat_map(|t| {
            r.iter(t)
                .map(move |e| (t, e.name.to_string(), e.version.to_string()))
        })
        .collect()
}

#[test]
fn incremental_updates_equal_a_full_translation() {
    let mut ns = policy("n", 8080, None, false);
    ns.metadata
        .labels
        .insert(NAMESPACE_LABEL.to_owned(), "shop".to_owned());
    let base = vec![
        policy("a", 8080, Some(("v2", 10)), false),
        policy("b", 8080, None, true),
        policy("c", 9090, None, false),
    ];
    let mut moved = policy("b", 7070, None, true);
    moved.spec.host = "b2.example.com".into();
    let mut weights = Weights::new();
    weights.insert(
        "a".into(),
        BTreeMap::from([("z1".into(), 10), ("z2".into(), 90)]),
    );
    // (policies after the change, weights after, names changed)
    let steps: Vec<(Vec<Policy>, Weights, Vec<&str>)> = vec![
        (base.clone(), weights.clone(), vec!["a"]),
        (
            vec![base[0].clone(), moved.clone(), base[2].clone()],
            weights.clone(),
            vec!["b"],
        ),
        (
            vec![base[0].clone(), moved.clone()],
            weights.clone(),
            vec!["c"],
        ),
        (
            vec![base[0].clone(), moved.clone(), ns.clone()],
            weights.clone(),
            vec!["n"],
        ),
        (
            vec![base[0].clone(), ns.clone()],
            Weights::new(),
            vec!["b", "a"],
        ),
        (vec![base[0].clone()], Weights::new(), vec!["n"]),
        (vec![], Weights::new(), vec!["a"]),
    ];
    let mut t = crate::Translator::new(Mesh::default());
    t.rebuild(&base, &Weights::new());
    t.output();
    for (policies, w, changed) in steps {
        let by_name: BTreeMap<String, Policy> = policies
            .iter()
            .map(|p| (p.metadata.name.clone(), p.clone()))
            .collect();
        t.update(changed.iter().copied(), |n| by_name.get(n), &w);
        let (inc, inc_scoped) = t.output();
        let (full, full_scoped) = translate_scoped(&policies, &w, &Mesh::default());
        assert_eq!(content(&inc), content(&full), "after {changed:?}");
        assert_eq!(
            inc_scoped.keys().collect::<Vec<_>>(),
            full_scoped.keys().collect::<Vec<_>>(),
            "after {changed:?}"
        );
        for (k, v) in &full_scoped {
            assert_eq!(content(&inc_scoped[k]), content(v), "{k} after {changed:?}");
        }
    }
}

#[test]
fn a_weight_change_touches_only_that_assignment() {
    let policies: Vec<Policy> = (0..20)
        .map(|i| policy(&format!("p{i:02}"), 8080 + (i % 3), None, false))
        .collect();
    let mut t = crate::Translator::new(Mesh::default());
    t.rebuild(&policies, &Weights::new());
    let (before, _) = t.output();
    let by_name: BTreeMap<String, Policy> = policies
        .iter()
        .map(|p| (p.metadata.name.clone(), p.clone()))
        .collect();
    let w = Weights::from([(
        "p07".to_owned(),
        BTreeMap::from([("z1".into(), 1), ("z2".into(), 99)]),
    )]);
    t.update(["p07"], |n| by_name.get(n), &w);
    let (after, _) = t.output();
    for ty in ResourceType::ALL {
        let same = std::sync::Arc::ptr_eq(before.set(ty), after.set(ty));
        assert_eq!(same, ty != ResourceType::ClusterLoadAssignment, "{ty:?}");
    }
    let changed: Vec<String> = content(&after)
        .into_iter()
        .filter(|c| !content(&before).contains(c))
        .map(|(_, n, _)| n)
        .collect();
    assert_eq!(changed, ["p07"]);
}

/// A policy with every resilience field set.
fn resilient(name: &str) -> Policy {
    let mut p = policy(name, 8080, Some(("v2", 10)), false);
    let v: serde_json::Value = json!({
        "outlierDetection": {"consecutive5xx": 3, "consecutiveGatewayErrors": 2, "intervalMs": 1500,
            "baseEjectionTimeMs": 2500, "maxEjectionPercent": 50,
            "successRate": {"minimumHosts": 2, "requestVolume": 20, "stdevFactor": 1.25}},
        "circuitBreakers": {"maxConnections": 7, "maxPendingRequests": 8, "maxRequests": 9,
            "retryBudget": {"budgetPercent": 30, "minRetryConcurrency": 4}},
    });
    p.spec.outlier_detection = serde_json::from_value(v["outlierDetection"].clone()).unwrap();
    p.spec.circuit_breakers = serde_json::from_value(v["circuitBreakers"].clone()).unwrap();
    p.spec.routes[0].timeout_ms = Some(1500);
    p.spec.routes[0].retries = serde_json::from_value(json!({"attempts": 3, "perTryTimeoutMs": 400,
        "retryOn": ["5xx", "unavailable", "retriable-status-codes"], "retriableStatusCodes": [409, 503]}))
    .unwrap();
    p.spec.routes[1].timeout_ms = Some(0);
    p
}

fn action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

#[test]
fn without_resilience_fields_nothing_changes() {
    let r = translate(&[policy("a", 80, Some(("v2", 10)), false)], &Weights::new());
    for cluster in ["a", "a@v2"] {
        let c: Cluster = decode(&r, ResourceType::Cluster, cluster);
        assert_eq!(c.outlier_detection, None);
        assert_eq!(c.circuit_breakers, None);
    }
    for rc in ["egress_80", "grpc_a"] {
        for route in route_of(&r, rc) {
            let a = action(&route);
            assert_eq!(a.timeout, None, "{rc}");
            assert_eq!(a.max_stream_duration, None, "{rc}");
            assert_eq!(a.retry_policy, None, "{rc}");
        }
    }
}

#[test]
fn resilience_fields_reach_every_cluster_and_route() {
    let r = translate(&[resilient("a")], &Weights::new());
    let d = |s: i64, ms: i32| {
        Some(Duration {
            seconds: s,
            nanos: ms * 1_000_000,
        })
    };
    for cluster in ["a", "a@v2"] {
        let c: Cluster = decode(&r, ResourceType::Cluster, cluster);
        let od = c.outlier_detection.expect("outlier detection");
        let v = |x: Option<UInt32Value>| x.map(|x| x.value);
        assert_eq!(v(od.consecutive_5xx), Some(3));
        assert_eq!(v(od.enforcing_consecutive_5xx), Some(100));
        assert_eq!(v(od.consecutive_gateway_failure), Some(2));
        assert_eq!(v(od.enforcing_consecutive_gateway_failure), Some(100));
        assert_eq!(od.interval, d(1, 500));
        assert_eq!(od.base_ejection_time, d(2, 500));
        assert_eq!(v(od.max_ejection_percent), Some(50));
        assert_eq!(v(od.enforcing_success_rate), Some(100));
        assert_eq!(v(od.success_rate_minimum_hosts), Some(2));
        assert_eq!(v(od.success_rate_request_volume), Some(20));
        assert_eq!(v(od.success_rate_stdev_factor), Some(1250));
        let t = &c.circuit_breakers.expect("circuit breakers").thresholds[0];
        assert_eq!(t.priority, 0, "DEFAULT priority");
        assert_eq!(v(t.max_connections), Some(7));
        assert_eq!(v(t.max_pending_requests), Some(8));
        assert_eq!(v(t.max_requests), Some(9));
        assert_eq!(v(t.max_retries), None);
        let b = t.retry_budget.as_ref().unwrap();
        assert_eq!(b.budget_percent.as_ref().map(|p| p.value), Some(30.0));
        assert_eq!(v(b.min_retry_concurrency), Some(4));
    }
    // (route config, route index, timeout, max stream duration)
    type Case = (&'static str, usize, Option<Duration>, Option<Duration>);
    let cases: [Case; 6] = [
        ("egress_8080", 0, d(1, 500), None),
        ("egress_8080", 1, d(0, 0), None),
        ("egress_8080", 2, None, None),
        // Proxyless gRPC: the deadline as max stream duration; 0 is no limit.
        ("grpc_a", 0, None, d(1, 500)),
        ("grpc_a", 1, None, None),
        ("grpc_a", 2, None, None),
    ];
    for (rc, i, timeout, msd) in cases {
        let routes = route_of(&r, rc);
        let a = action(&routes[i]);
        assert_eq!(a.timeout, timeout, "{rc}[{i}]");
        assert_eq!(
            a.max_stream_duration
                .as_ref()
                .and_then(|m| m.max_stream_duration),
            msd,
            "{rc}[{i}]"
        );
        let retry = a.retry_policy.as_ref();
        if i == 0 {
            let retry = retry.expect("retry policy");
            assert_eq!(retry.retry_on, "5xx,unavailable,retriable-status-codes");
            assert_eq!(retry.num_retries.map(|n| n.value), Some(3));
            assert_eq!(retry.per_try_timeout, d(0, 400));
            assert_eq!(retry.retriable_status_codes, [409, 503]);
        } else {
            assert_eq!(retry, None, "{rc}[{i}]");
        }
    }
}

#[test]
fn outlier_detection_turns_off_what_is_not_asked_for() {
    let od = meridian_policy::OutlierDetection {
        consecutive_5xx: 0,
        consecutive_gateway_errors: 4,
        ..Default::default()
    };
    let got = outlier_detection(&od);
    assert_eq!(got.consecutive_5xx, None);
    assert_eq!(got.enforcing_consecutive_5xx.map(|x| x.value), Some(0));
    assert_eq!(
        got.enforcing_consecutive_gateway_failure.map(|x| x.value),
        Some(100)
    );
    // Envoy enforces success-rate ejection by default: off unless asked for.
    assert_eq!(got.enforcing_success_rate.map(|x| x.value), Some(0));
    assert_eq!(got.success_rate_stdev_factor, None);
}

#[test]
fn endpoints_the_leader_marked_are_served_unhealthy() {
    use xds_api::pb::envoy::config::core::v3::HealthStatus;
    use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let p = policy("a", 80, None, false);
    let mut t = crate::Translator::new(Mesh::default());
    let marked: EndpointHealth = [(
        "a".to_owned(),
        [("z1".to_owned(), ["10.0.0.2:80".to_owned()].into())].into(),
    )]
    .into();
    t.set_endpoint_health(marked);
    t.rebuild([&p], &Weights::new());
    let r = t.output().0;
    let cla: ClusterLoadAssignment = decode(&r, ResourceType::ClusterLoadAssignment, "a");
    let health: Vec<(String, i32)> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!()
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.clone())
            else {
                panic!()
            };
            (sa.address, e.health_status)
        })
        .collect();
    assert_eq!(
        health,
        [
            ("10.0.0.1".to_owned(), HealthStatus::Unknown as i32),
            ("10.0.0.2".to_owned(), HealthStatus::Unhealthy as i32),
            ("svc.internal".to_owned(), HealthStatus::Unknown as i32),
        ]
    );
    // The mark goes once the leader lifts it and the policy is updated.
    t.set_endpoint_health(EndpointHealth::new());
    t.update(["a"], |_| Some(&p), &Weights::new());
    let r = t.output().0;
    let cla: ClusterLoadAssignment = decode(&r, ResourceType::ClusterLoadAssignment, "a");
    assert!(cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .all(|e| e.health_status == HealthStatus::Unknown as i32));
}

#[test]
fn an_excluded_policy_leaves_its_egress_route_and_nothing_else() {
    let (a, b) = (policy("a", 80, None, false), policy("b", 80, None, false));
    let mut t = crate::Translator::new(Mesh::default());
    t.rebuild([&a, &b], &Weights::new());
    let before = t.output().0;
    t.set_excluded(["b".to_owned()].into());
    t.update(
        ["b"],
        |n| [&a, &b].into_iter().find(|p| p.metadata.name == n),
        &Weights::new(),
    );
    let after = t.output().0;
    let rc: RouteConfiguration = decode(&after, ResourceType::RouteConfiguration, "egress_80");
    let names: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    // Its clusters, endpoints and proxyless route stay.
    for ty in [ResourceType::Cluster, ResourceType::ClusterLoadAssignment] {
        assert_eq!(names_of(&before, ty), names_of(&after, ty));
    }
    assert!(after
        .get(ResourceType::RouteConfiguration, "grpc_b")
        .is_some());
    // Back in once no longer excluded.
    t.set_excluded(Default::default());
    t.update(
        ["b"],
        |n| [&a, &b].into_iter().find(|p| p.metadata.name == n),
        &Weights::new(),
    );
    let again = t.output().0;
    assert_eq!(
        again
            .get(ResourceType::RouteConfiguration, "egress_80")
            .map(|e| e.version.clone()),
        before
            .get(ResourceType::RouteConfiguration, "egress_80")
            .map(|e| e.version.clone())
    );
}

fn names_of(r: &Resources, ty: ResourceType) -> Vec<String> {
    names(r, ty)
}

/// Translates with rollouts, as the snapshot writer does.
fn translate_rolling(policies: &[Policy], rollouts: Rollouts) -> Resources {
    let mut t = crate::Translator::new(Mesh::default());
    t.set_rollouts(rollouts);
    t.rebuild(policies, &Weights::new());
    t.output().0
}

fn served(route: &str, version: &str, zones: &[(&str, u32)]) -> Rollouts {
    let weights = zones.iter().map(|(z, c)| (z.to_string(), *c)).collect();
    let r = ServedRollout {
        version: version.to_owned(),
        weights,
    };
    Rollouts::from([(
        "a".to_owned(),
        RolloutWeights::from([(route.to_owned(), r)]),
    )])
}

fn with_rollout(version: &str) -> Policy {
    let mut p = policy("a", 80, Some((version, 0)), false);
    p.spec.routes[0].canary.as_mut().unwrap().rollout = Some(Default::default());
    p
}

/// (cluster, weight) of the first route's weighted clusters.
fn split_of(r: &Resources, route_config: &str) -> Vec<(String, u32)> {
    let routes = route_of(r, route_config);
    let Some(route::Action::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(wc)),
        ..
    })) = &routes[0].action
    else {
        panic!("weighted clusters expected");
    };
    wc.clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
        .collect()
}

/// (zone, locality weight) of an assignment.
fn localities(r: &Resources, cluster: &str) -> Vec<(String, u32)> {
    let cla: ClusterLoadAssignment = decode(r, ResourceType::ClusterLoadAssignment, cluster);
    cla.endpoints
        .iter()
        .map(|l| {
            (
                l.locality.as_ref().unwrap().zone.clone(),
                l.load_balancing_weight.as_ref().unwrap().value,
            )
        })
        .collect()
}

#[test]
fn zone_split_and_route_split_table() {
    // (s_z, c_z) -> (canary, stable) locality weights.
    let zones: &[(u32, u32, (u32, u32))] = &[
        (70, 0, (0, 7000)),
        (70, 5, (350, 6650)),
        (30, 100, (3000, 0)),
        (0, 50, (0, 0)),
        (100, 100, (10_000, 0)),
        // A percent over 100 (never stored) is 100, not an underflow.
        (10, 150, (1000, 0)),
    ];
    for &(s, c, want) in zones {
        assert_eq!(zone_split(s, c), want, "s={s} c={c}");
    }
    // (Σ canary, Σ stable) -> the route's weighted clusters.
    type Split = &'static [(Side, u32)];
    let routes: &[(u32, u32, Split)] = &[
        (350, 9650, &[(Side::Canary, 350), (Side::Stable, 9650)]),
        (0, 10_000, &[(Side::Stable, 10_000)]),
        (10_000, 0, &[(Side::Canary, 10_000)]),
        // Never a split summing to 0.
        (0, 0, &[(Side::Stable, 1)]),
    ];
    for &(c, s, want) in routes {
        assert_eq!(route_split(c, s), want, "{c} vs {s}");
    }
}

/// The translation of a route under a rollout, zone by zone: z1 (weight 70)
/// has v1 and v2, z2 (weight 30) v1 only. Per case: the status's canary
/// percent per zone, the effective weights, and the expected canary and
/// stable localities and route split.
#[test]
fn a_rollout_serves_per_zone_weights_through_its_own_clusters() {
    type Localities = &'static [(&'static str, u32)];
    struct Case {
        what: &'static str,
        canary: &'static [(&'static str, u32)],
        effective: Option<[u32; 2]>,
        canary_localities: Localities,
        stable_localities: Localities,
        split: &'static [(&'static str, u32)],
    }
    let cases = [
        Case {
            what: "z1 at 5 %, z2 at 0",
            canary: &[("z1", 5), ("z2", 0)],
            effective: None,
            canary_localities: &[("z1", 350)],
            stable_localities: &[("z1", 6650), ("z2", 3000)],
            split: &[("a@v2~api", 350), ("a~api", 9650)],
        },
        Case {
            what: "z1 at 100 %: its stable locality is left out",
            canary: &[("z1", 100), ("z2", 0)],
            effective: None,
            canary_localities: &[("z1", 7000)],
            stable_localities: &[("z2", 3000)],
            split: &[("a@v2~api", 7000), ("a~api", 3000)],
        },
        Case {
            what: "z2 has no v2: its canary percent serves nothing, its share stays stable",
            canary: &[("z1", 100), ("z2", 100)],
            effective: None,
            canary_localities: &[("z1", 7000)],
            stable_localities: &[("z2", 3000)],
            split: &[("a@v2~api", 7000), ("a~api", 3000)],
        },
        Case {
            what: "no canary anywhere: the route leaves the canary out, whose cluster keeps its \
                   endpoints at the plain weights (EDS may reach Envoy before the route)",
            canary: &[("z1", 0), ("z2", 0)],
            effective: None,
            canary_localities: &[("z1", 70)],
            stable_localities: &[("z1", 7000), ("z2", 3000)],
            split: &[("a~api", 10_000)],
        },
        Case {
            what: "z1 failed over (s=0): nothing of either side there",
            canary: &[("z1", 0), ("z2", 0)],
            effective: Some([0, 100]),
            canary_localities: &[],
            stable_localities: &[("z2", 10_000)],
            split: &[("a~api", 10_000)],
        },
        Case {
            what: "every zone at 0: never a split summing to 0",
            canary: &[("z1", 50)],
            effective: Some([0, 0]),
            canary_localities: &[],
            stable_localities: &[],
            split: &[("a~api", 1)],
        },
    ];
    for c in cases {
        let p = with_rollout("v2");
        let mut t = crate::Translator::new(Mesh::default());
        t.set_rollouts(served("api", "v2", c.canary));
        let weights: Weights = c
            .effective
            .map(|[a, b]| {
                let w = BTreeMap::from([("z1".to_owned(), a), ("z2".to_owned(), b)]);
                Weights::from([("a".to_owned(), w)])
            })
            .unwrap_or_default();
        t.rebuild([&p], &weights);
        let r = t.output().0;
        let want = |l: Localities| -> Vec<(String, u32)> {
            l.iter().map(|(z, w)| (z.to_string(), *w)).collect()
        };
        assert_eq!(
            localities(&r, "a@v2~api"),
            want(c.canary_localities),
            "{}",
            c.what
        );
        assert_eq!(
            localities(&r, "a~api"),
            want(c.stable_localities),
            "{}",
            c.what
        );
        let split: Vec<(String, u32)> = c.split.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        // Envoy and proxyless gRPC split alike.
        assert_eq!(split_of(&r, "grpc_a"), split, "{}", c.what);
        let egress: RouteConfiguration = decode(&r, ResourceType::RouteConfiguration, "egress_80");
        let Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(wc)),
            ..
        })) = &egress.virtual_hosts[0].routes[0].action
        else {
            panic!("weighted clusters expected");
        };
        let names: Vec<&str> = wc.clusters.iter().map(|c| c.name.as_str()).collect();
        let want_names: Vec<&str> = c.split.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, want_names, "{}", c.what);
        // The shared clusters keep the zones' plain weights, for the
        // routes without a rollout.
        if c.effective.is_none() {
            assert_eq!(
                localities(&r, "a"),
                want(&[("z1", 70), ("z2", 30)]),
                "{}",
                c.what
            );
        }
    }
}

#[test]
fn a_route_under_a_rollout_gets_its_own_clusters_and_marks_its_canary() {
    let p = with_rollout("v2");
    let r = translate_rolling(std::slice::from_ref(&p), served("api", "v2", &[("z1", 25)]));
    assert_eq!(
        names(&r, ResourceType::Cluster),
        ["a", "a@v2", "a@v2~api", "a~api"]
    );
    assert_eq!(
        names(&r, ResourceType::ClusterLoadAssignment),
        ["a", "a@v2", "a@v2~api", "a~api"]
    );
    // The other route and the default route keep the shared stable cluster.
    let routes = route_of(&r, "grpc_a");
    for route in &routes[1..] {
        assert_eq!(
            action(route).cluster_specifier,
            Some(ClusterSpecifier::Cluster("a".into()))
        );
    }
    // The canary side carries the canary header, the stable side drops it.
    let Some(route::Action::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(wc)),
        ..
    })) = &routes[0].action
    else {
        panic!("weighted clusters expected");
    };
    let header = &p.spec.routes[0].canary.as_ref().unwrap().header;
    assert_eq!(
        wc.clusters[0].request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        *header
    );
    assert_eq!(
        wc.clusters[1].request_headers_to_remove,
        std::slice::from_ref(header)
    );
    // The egress route references the route's clusters (make-before-break).
    let egress = r
        .get(ResourceType::RouteConfiguration, "egress_80")
        .unwrap();
    assert!(
        egress.refs.iter().any(|c| &**c == "a@v2~api"),
        "{:?}",
        egress.refs
    );
    assert!(
        egress.refs.iter().any(|c| &**c == "a~api"),
        "{:?}",
        egress.refs
    );
    // Names parse back to their policy (node scoping).
    for n in ["a", "a@v2", "a@v2~api", "a~api"] {
        assert_eq!(policy_of_cluster_name(n), "a", "{n}");
    }
}

#[test]
fn without_a_matching_status_a_rollout_serves_no_canary() {
    // (spec has rollout, spec version, status) -> served split
    type Case = (
        bool,
        &'static str,
        Option<Rollouts>,
        &'static [(&'static str, u32)],
    );
    let cases: &[Case] = &[
        // The route's own clusters exist before the first step (no cluster
        // to warm when it comes), all stable.
        (true, "v2", None, &[("a~api", 10_000)]),
        // A status of another version: the new rollout has not started yet.
        (
            true,
            "v2",
            Some(served("api", "v1", &[("z1", 25)])),
            &[("a~api", 10_000)],
        ),
        (
            true,
            "v2",
            Some(served("other", "v2", &[("z1", 25)])),
            &[("a~api", 10_000)],
        ),
        (
            true,
            "v2",
            Some(served("api", "v2", &[("z1", 25)])),
            &[("a@v2~api", 1750), ("a~api", 8250)],
        ),
        // Without `rollout` in the spec the status no longer counts: the
        // spec's weight (10 here) is served (removing it hands the weight back).
        (
            false,
            "v2",
            Some(served("api", "v2", &[("z1", 50)])),
            &[("a@v2", 10), ("a", 90)],
        ),
    ];
    for (rolling, version, status, want) in cases {
        let p = if *rolling {
            with_rollout(version)
        } else {
            policy("a", 80, Some((version, 10)), false)
        };
        let r = translate_rolling(&[p], status.clone().unwrap_or_default());
        let want: Vec<(String, u32)> = want.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        assert_eq!(split_of(&r, "grpc_a"), want, "{status:?}");
        let per_route = names(&r, ResourceType::Cluster)
            .iter()
            .any(|n| n.contains('~'));
        assert_eq!(per_route, want[0].0.contains('~'), "{status:?}");
    }
}

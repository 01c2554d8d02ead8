//! A policy Meridian accepts is a policy Envoy accepts: thousands of
//! generated policies that pass `meridian_policy::validate`, with every
//! field and option, are rendered by the real translation and checked by
//! the real `envoy --mode validate`, many policies per Envoy run (one
//! bootstrap with their listeners, routes and clusters as static
//! resources). A refused batch is split until the one policy Envoy refuses
//! is found and printed.
//!
//! `PROPERTY_POLICIES` (default 3000) and `PROPERTY_SEED` change the run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use meridian_policy::{validate, Policy, RetryOn};
use meridian_test_support::envoy::envoy_binary;
use meridian_test_support::repo_root;
use meridian_xds::{Rollouts, ServedRollout, Weights};
use serde_json::{json, Value};

/// SplitMix64: small, deterministic, good enough to pick options.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
    /// A value from a list of edges, or anything in `lo..=hi`.
    fn num(&mut self, lo: u64, hi: u64, edges: &[u64]) -> u64 {
        if self.chance(40) {
            *self.pick(edges)
        } else {
            self.range(lo, hi)
        }
    }
}

/// Header names a route may match on or mark with: plain ones and the
/// ones Envoy treats specially.
const HEADERS: &[&str] = &[
    "x-canary",
    "x-envoy-upstream-canary",
    "x-user",
    "x_under.dot",
    "a",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "x-envoy-original-path",
    "x-envoy-retry-on",
    "x-envoy-upstream-rq-timeout-ms",
    "proxy-connection",
    "authorization",
    "cookie",
    "grpc-timeout",
];

const VERSIONS: &[&str] = &["v1", "v2", "v3", "canary-1"];

fn endpoint_address(rng: &mut Rng, zone: usize, j: usize) -> String {
    match rng.range(0, 4) {
        0 => format!("::ffff:10.{zone}.0.{j}"),
        1 => format!("fd00::{zone}:{j}"),
        2 => format!("192.0.2.{}", zone * 10 + j),
        _ => format!("10.{}.{zone}.{}", rng.range(0, 255), j + 1),
    }
}

fn percent_split(rng: &mut Rng, n: usize) -> Vec<u64> {
    let mut left = 100;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let w = if i + 1 == n { left } else { rng.range(0, left) };
        out.push(w);
        left -= w;
    }
    out
}

/// One policy's JSON: every field, each option now and then.
fn generate(rng: &mut Rng, i: usize) -> Value {
    let zones_n = rng.range(1, 4) as usize;
    let weights = percent_split(rng, zones_n);
    let mut versions = BTreeSet::new();
    let zones: Vec<Value> = (0..zones_n)
        .map(|z| {
            let n = rng.range(1, 4) as usize;
            let endpoints: Vec<Value> = (0..n)
                .map(|j| {
                    let v = *rng.pick(VERSIONS);
                    versions.insert(v);
                    json!({"address": endpoint_address(rng, z, j), "port": rng.num(1, 65535, &[1, 80, 65535]), "version": v})
                })
                .collect();
            let mut zone = json!({"name": format!("zone-{z}"), "weight": weights[z], "endpoints": endpoints,
                                  "priority": rng.range(0, 3)});
            if rng.chance(50) {
                zone["region"] = json!(format!("region-{}", rng.range(0, 2)));
            }
            if rng.chance(30) {
                zone["capacityPercent"] = json!(100);
            }
            zone
        })
        .collect();
    let versions: Vec<&str> = versions.into_iter().collect();
    let routes: Vec<Value> = (0..rng.range(0, 3))
        .map(|r| {
            let mut route = json!({"name": format!("r{r}")});
            if rng.chance(80) {
                let mut m = json!({"pathPrefix": *rng.pick(&["/", "/api", "/a/b/", "/x-y_z.~"])});
                if rng.chance(50) {
                    m["headers"] = json!([{"name": *rng.pick(HEADERS), "exact": *rng.pick(&["", "1", "beta", "a b"])}]);
                }
                route["match"] = m;
            }
            if rng.chance(50) {
                let version = *rng.pick(&versions);
                let weight = if versions.len() > 1 { rng.num(0, 100, &[0, 1, 99, 100]) } else { 100 };
                let mut canary = json!({"version": version, "weight": weight});
                // A rollout (weight 0 under it): its status, made up below,
                // gives the route its own clusters.
                if versions.len() > 1 && rng.chance(40) {
                    canary["weight"] = json!(0);
                    canary["rollout"] = json!({"steps": [5, 25, 50, 100]});
                }
                if rng.chance(60) {
                    canary["header"] = json!(*rng.pick(HEADERS));
                }
                route["canary"] = canary;
            }
            let timeout = rng.chance(60).then(|| rng.num(0, 86_400_000, &[0, 1, 999, 1000, 1001, 86_400_000]));
            if let Some(t) = timeout {
                route["timeoutMs"] = json!(t);
            }
            if rng.chance(60) {
                let mut retries = json!({});
                if rng.chance(70) {
                    retries["attempts"] = json!(rng.num(1, 10, &[1, 10]));
                }
                if rng.chance(50) {
                    let limit = timeout.filter(|&t| t > 0).unwrap_or(86_400_000);
                    retries["perTryTimeoutMs"] = json!(rng.num(1, limit, &[1, limit]));
                }
                if rng.chance(80) {
                    let mut on: Vec<RetryOn> = RetryOn::ALL
                        .into_iter()
                        .filter(|_| rng.chance(30))
                        .collect();
                    if on.is_empty() {
                        on.push(*rng.pick(&RetryOn::ALL));
                    }
                    if on.contains(&RetryOn::RetriableStatusCodes) {
                        let codes: BTreeSet<u64> =
                            (0..rng.range(1, 4)).map(|_| rng.num(100, 599, &[100, 409, 503, 599])).collect();
                        retries["retriableStatusCodes"] = json!(codes);
                    }
                    retries["retryOn"] = json!(on.iter().map(|c| c.as_str()).collect::<Vec<_>>());
                }
                route["retries"] = retries;
            }
            route
        })
        .collect();
    let mut spec = json!({
        "host": format!("p{i}.example.com"),
        "port": 8000 + rng.range(0, 40),
        "protocol": *rng.pick(&["http", "grpc"]),
        "zones": zones,
        "routes": routes,
        "healthCheck": {"protocol": *rng.pick(&["http", "tcp", "grpc"]), "intervalMs": 1000, "timeoutMs": 500},
        "failover": {"mode": *rng.pick(&["weighted", "priority", "manual"]),
                     "minHealthyZones": rng.range(0, zones_n as u64),
                     "failback": {"stepPercent": rng.range(1, 100), "stepSeconds": rng.range(0, 3600)}},
        "dns": {"ttl": rng.num(1, 86_400, &[1, 86_400])},
    });
    let mode = *rng.pick(&["disabled", "permissive", "strict"]);
    spec["mtls"] = json!({"mode": mode});
    if rng.chance(50) {
        spec["mtls"]["allowedSans"] =
            json!(["spiffe://meridian.local/ns/a/sa/b", "spiffe://other.org/x"]);
    }
    if rng.chance(60) {
        let mut od = json!({});
        for (field, lo, hi, edges) in [
            ("consecutive5xx", 0, 1000, &[1_u64, 1000][..]),
            ("consecutiveGatewayErrors", 0, 1000, &[0, 1, 1000][..]),
            ("intervalMs", 100, 86_400_000, &[100, 86_400_000][..]),
            ("baseEjectionTimeMs", 1, 86_400_000, &[1, 86_400_000][..]),
            ("maxEjectionPercent", 0, 100, &[0, 100][..]),
        ] {
            if rng.chance(60) {
                od[field] = json!(rng.num(lo, hi, edges));
            }
        }
        if rng.chance(50) {
            let mut sr = json!({});
            if rng.chance(60) {
                sr["minimumHosts"] = json!(rng.num(1, 1_000_000_000, &[1, 1_000_000_000]));
            }
            if rng.chance(60) {
                sr["requestVolume"] = json!(rng.num(1, 1_000_000_000, &[1, 1_000_000_000]));
            }
            if rng.chance(60) {
                sr["stdevFactor"] = json!(*rng.pick(&[0.001, 1.0, 1.9, 2.5, 100.0]));
            }
            od["successRate"] = sr;
        }
        spec["outlierDetection"] = od;
    }
    if rng.chance(60) {
        let mut cb = json!({});
        for field in ["maxConnections", "maxPendingRequests", "maxRequests"] {
            if rng.chance(50) {
                cb[field] = json!(rng.num(1, 1_000_000_000, &[1, 10, 1_000_000_000]));
            }
        }
        if rng.chance(50) {
            let mut b = json!({});
            if rng.chance(60) {
                b["budgetPercent"] = json!(rng.num(1, 100, &[1, 100]));
            }
            if rng.chance(60) {
                b["minRetryConcurrency"] = json!(rng.num(0, 1_000_000_000, &[0, 1_000_000_000]));
            }
            cb["retryBudget"] = b;
        } else if rng.chance(50) {
            cb["maxRetries"] = json!(rng.num(0, 1_000_000_000, &[0, 1_000_000_000]));
        }
        spec["circuitBreakers"] = cb;
    }
    json!({"metadata": {"name": format!("p{i}"), "labels": {"team": "t"}}, "spec": spec})
}

/// Effective weights as the leader may store them: some zones at 0.
fn weights(rng: &mut Rng, policies: &[Policy]) -> Weights {
    let mut out = Weights::new();
    for p in policies {
        if rng.chance(30) {
            let split = percent_split(rng, p.spec.zones.len());
            let w = p
                .spec
                .zones
                .iter()
                .zip(split)
                .map(|(z, w)| (z.name.clone(), w as u32))
                .collect();
            out.insert(p.metadata.name.clone(), w);
        }
    }
    out
}

/// Rollout statuses as the leader may store them, for some routes with a
/// rollout: any canary percent per zone, a zone left out now and then.
fn rollouts(rng: &mut Rng, policies: &[Policy]) -> Rollouts {
    let mut out = Rollouts::new();
    for p in policies {
        for r in &p.spec.routes {
            let Some(c) = r.canary.as_ref().filter(|c| c.rollout.is_some()) else {
                continue;
            };
            if rng.chance(20) {
                continue;
            }
            let mut weights = BTreeMap::new();
            for z in &p.spec.zones {
                if rng.chance(90) {
                    weights.insert(z.name.clone(), rng.num(0, 100, &[0, 5, 100]) as u32);
                }
            }
            let served = ServedRollout {
                version: c.version.clone(),
                weights,
            };
            out.entry(p.metadata.name.clone())
                .or_default()
                .insert(r.name.clone(), served);
        }
    }
    out
}

fn strip_sds_config(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("sds_config");
            m.values_mut().for_each(strip_sds_config);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_sds_config),
        _ => {}
    }
}

fn router() -> Value {
    json!([{"name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}])
}

/// One bootstrap with every resource the translation rendered, made static:
/// EDS clusters carry their load assignment, RDS is inlined, each
/// proxyless route (`grpc_<policy>`) gets a listener of its own, and SDS
/// secrets are static ones of a real CA.
fn bootstrap(render: &Value, certs: &Value) -> Value {
    let routes: BTreeMap<&str, &Value> = render["routeConfigurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rc| (rc["name"].as_str().unwrap(), rc))
        .collect();
    let assignments: BTreeMap<&str, &Value> = render["clusterLoadAssignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["cluster_name"].as_str().unwrap(), a))
        .collect();
    let mut listeners = Vec::new();
    for l in render["listeners"].as_array().unwrap() {
        if l.get("address").is_none() {
            continue; // proxyless api_listeners: their routes are checked below
        }
        let mut l = l.clone();
        for chain in l["filter_chains"].as_array_mut().unwrap() {
            for filter in chain["filters"].as_array_mut().unwrap() {
                let hcm = &mut filter["typed_config"];
                let name = hcm["rds"]["route_config_name"].as_str().unwrap().to_owned();
                hcm.as_object_mut().unwrap().remove("rds");
                hcm["route_config"] = (*routes[name.as_str()]).clone();
            }
        }
        listeners.push(l);
    }
    for (i, (name, rc)) in routes
        .iter()
        .filter(|(n, _)| n.starts_with("grpc_"))
        .enumerate()
    {
        listeners.push(json!({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 30000 + i}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name, "route_config": rc, "http_filters": router()}}]}]
        }));
    }
    let clusters: Vec<Value> = render["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let name = c["name"].as_str().unwrap().to_owned();
            let obj = c.as_object_mut().unwrap();
            obj.remove("eds_cluster_config");
            obj.insert("type".into(), json!("STATIC"));
            obj.insert(
                "load_assignment".into(),
                (*assignments[name.as_str()]).clone(),
            );
            c
        })
        .collect();
    let mut listeners = Value::Array(listeners);
    let mut clusters = Value::Array(clusters);
    strip_sds_config(&mut listeners);
    strip_sds_config(&mut clusters);
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": certs}
    })
}

/// Envoy's verdict on a bootstrap: `Err` with its complaint.
fn envoy_validates(dir: &Path, tag: &str, bootstrap: &Value) -> Result<(), String> {
    let file = dir.join(format!("{tag}.json"));
    std::fs::write(&file, serde_json::to_vec(bootstrap).unwrap()).unwrap();
    let out = std::process::Command::new(envoy_binary())
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&file)
        .output()
        .expect("run envoy --mode validate");
    std::fs::remove_file(&file).ok();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Splits a refused batch until one refused policy is left.
fn smallest_refused(
    dir: &Path,
    policies: &[Policy],
    weights: &Weights,
    rollouts: &Rollouts,
    certs: &Value,
) -> (Policy, String) {
    let mut batch = policies.to_vec();
    let mut why = String::new();
    while batch.len() > 1 {
        let half = batch.split_off(batch.len() / 2);
        let first = meridian_xds::render(&batch, weights, rollouts, None);
        match envoy_validates(dir, "bisect", &bootstrap(&first, certs)) {
            Err(e) => why = e,
            Ok(()) => batch = half,
        }
    }
    let render = meridian_xds::render(&batch, weights, rollouts, None);
    if let Err(e) = envoy_validates(dir, "bisect", &bootstrap(&render, certs)) {
        why = e;
    }
    (batch.remove(0), why)
}

#[test]
fn every_policy_meridian_accepts_envoy_accepts() {
    let total: usize = std::env::var("PROPERTY_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("PROPERTY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17);
    const BATCH: usize = 500;
    let mut rng = Rng(seed);
    let ca = meridian_ca::Authority::generate("meridian.local", chrono::Utc::now()).unwrap();
    let id = meridian_ca::SpiffeId::parse("spiffe://meridian.local/ns/v/sa/validator").unwrap();
    let cert = ca
        .issue(&id, &[], chrono::Utc::now(), chrono::Duration::hours(1))
        .unwrap();
    let certs = json!([
        {"name": "meridian/workload", "tls_certificate": {
            "certificate_chain": {"inline_string": cert.cert_chain_pem},
            "private_key": {"inline_string": cert.key_pem}}},
        {"name": "meridian/trust-bundle", "validation_context": {
            "trusted_ca": {"inline_string": ca.trust_bundle_pem()}}}
    ]);
    let dir = repo_root().join(format!(".meridian/property-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let (mut accepted, mut refused_by_meridian) = (Vec::new(), 0);
    let mut i = 0;
    while accepted.len() < total {
        let value = generate(&mut rng, i);
        i += 1;
        let p: Policy = match serde_json::from_value(value) {
            Ok(p) => p,
            Err(e) => panic!("the generator made an undecodable policy: {e}"),
        };
        match validate(&p) {
            Ok(()) => accepted.push(p),
            Err(_) => refused_by_meridian += 1,
        }
    }
    // Every option is exercised (else the generator has gone blind).
    let json = serde_json::to_string(&accepted).unwrap();
    for needle in RetryOn::ALL
        .iter()
        .map(|c| format!("\"{}\"", c.as_str()))
        .chain(
            [
                "\"strict\"",
                "\"permissive\"",
                "\"grpc\"",
                "successRate",
                "retryBudget",
                "maxRetries",
                "maxConnections",
                "perTryTimeoutMs",
                "retriableStatusCodes",
                "consecutiveGatewayErrors",
                "\"timeoutMs\":0",
                "canary",
                "rollout",
                "headers",
                "region",
            ]
            .map(String::from),
        )
    {
        assert!(json.contains(&needle), "no accepted policy has {needle}");
    }

    // The harness can fail: a policy validation refuses because Envoy
    // does (a route that sets `host`) is refused by Envoy here too, and
    // found among the others.
    let mut bad = accepted[..BATCH.min(accepted.len())].to_vec();
    bad[7].spec.routes = vec![serde_json::from_value(json!(
        {"name": "bad", "canary": {"version": "v1", "weight": 100, "header": "host"}}))
    .unwrap()];
    for z in &mut bad[7].spec.zones {
        for e in &mut z.endpoints {
            e.version = "v1".into();
        }
    }
    assert!(validate(&bad[7]).is_err());
    let (found, why) = smallest_refused(&dir, &bad, &Weights::new(), &Rollouts::new(), &certs);
    assert_eq!(found.metadata.name, bad[7].metadata.name, "{why}");
    assert!(!why.is_empty());

    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for (b, batch) in accepted.chunks(BATCH).enumerate() {
        let weights = weights(&mut rng, batch);
        let rollouts = rollouts(&mut rng, batch);
        let render = meridian_xds::render(batch, &weights, &rollouts, None);
        // Routes under a rollout get their own clusters in every batch.
        let per_route = render["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.contains('~')))
            .count();
        assert!(per_route > 0, "batch {b}: no route's own clusters rendered");
        if let Err(e) = envoy_validates(&dir, &format!("batch-{b}"), &bootstrap(&render, &certs)) {
            let (p, why) = smallest_refused(&dir, batch, &weights, &rollouts, &certs);
            failures.push(format!(
                "Envoy refused policy {}:\n{}\nwhy: {}\n(batch error: {})",
                p.metadata.name,
                serde_json::to_string_pretty(&p).unwrap(),
                why.lines().take(5).collect::<Vec<_>>().join("\n"),
                e.lines().next().unwrap_or_default()
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    eprintln!(
        "{} accepted policies ({} generated ones refused by validation) checked by envoy --mode validate in {} runs, {:?}",
        accepted.len(),
        refused_by_meridian,
        accepted.len().div_ceil(BATCH),
        started.elapsed()
    );
    assert!(
        refused_by_meridian < accepted.len(),
        "the generator makes mostly invalid policies ({refused_by_meridian} refused)"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

//! The translation's cost at scale, without a database or a network: the
//! start-up build of N policies (two zones each, on 50 ports, as
//! scripts/bench-xds seeds them), then ten weight changes of one policy,
//! each timed through translation, view output and publish. scripts/bench-xds
//! measures the same in the running server, store reads included.
//!
//!   CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo run -p meridian-xds --example change_cost -- 15000

use std::collections::BTreeMap;
use std::time::Instant;

use meridian_policy::Policy;
use meridian_xds::translate::Weights;
use meridian_xds::Translator;
use serde_json::json;

fn policy(i: usize) -> Policy {
    let name = format!("bench-{i:05}");
    let zone = |zone: &str, address: &str| {
        json!({"name": zone, "weight": 50,
               "endpoints": [{"address": address, "port": 9000 + i % 1000}]})
    };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"host": format!("{name}.example.com"), "port": 8000 + (i % 50),
                 "zones": [zone("us-west-2a", "127.0.0.1"), zone("us-west-2b", "127.0.0.2")]}
    }))
    .expect("a valid policy")
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15_000);
    let policies: BTreeMap<String, Policy> = (0..n)
        .map(|i| {
            let p = policy(i);
            (p.metadata.name.clone(), p)
        })
        .collect();
    let (publisher, _subscriber) = meridian_xds_engine::snapshot_channel();
    let mut weights = Weights::new();
    let mut translator = Translator::default();
    let started = Instant::now();
    translator.rebuild(policies.values(), &weights);
    let (unscoped, scoped) = translator.output();
    publisher.publish_views(unscoped, scoped, None);
    println!(
        "{n} policies: start-up build and publish {:?}",
        started.elapsed()
    );
    let name = "bench-00000";
    for round in 0..10 {
        let split = [("us-west-2a", 10 + round), ("us-west-2b", 90 - round)];
        weights.insert(
            name.to_owned(),
            split.iter().map(|(z, w)| ((*z).to_owned(), *w)).collect(),
        );
        let t0 = Instant::now();
        translator.update([name], |n| policies.get(n), &weights);
        let translated = t0.elapsed();
        let (unscoped, scoped) = translator.output();
        let generation = publisher.publish_views(unscoped, scoped, None);
        println!(
            "change {round}: translate {translated:?}, translate and publish {:?} (generation {generation})",
            t0.elapsed()
        );
    }
}

//! The leader's DNS reconciler against real peers on loopback: PostgreSQL
//! (the lease, the policies, what was published), PowerDNS and moto's
//! Route 53. Fencing: a submit delayed past the lease never lands once
//! another leader took over. Ownership: deleting a policy, or moving a zone
//! to another provider, removes Meridian's records and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use meridian_dns::{Owner, Provider, Route53Provider};
use meridian_failover_loop::dns::Reconciler;
use meridian_failover_loop::LEASE;
use meridian_policy::Policy;
use meridian_store::failover::WeightDecision;
use meridian_store::{Precondition, Store, Write};
use meridian_test_support::delay::DelayProxy;
use meridian_test_support::moto::Moto;
use meridian_test_support::pdns::{query_a, Pdns, A, B, HOST};
use serde_json::{json, Value};

const WRITE: Write<'static> = Write {
    actor: "test",
    source: "api",
    dry_run: false,
    force: false,
};
const TTL: Duration = Duration::from_secs(5);

/// A process-unique environment variable holding `value`, for a
/// credential reference (tests of one binary share the environment).
fn secret_env(value: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "MERIDIAN_SECRET_TEST_DNS_{}",
        N.fetch_add(1, Ordering::SeqCst)
    );
    std::env::set_var(&name, value);
    name
}

fn policy(zones: Value) -> Policy {
    serde_json::from_value(json!({
        "metadata": {"name": "track-api"},
        "spec": {"host": "track.example.com", "port": 8080, "dns": {"ttl": 30}, "zones": zones},
    }))
    .unwrap()
}

fn zone(name: &str, target: &str, provider: &str) -> Value {
    json!({"name": name, "weight": 50, "endpoints": [{"address": "10.0.0.1", "port": 8080}],
           "dns": {"target": target, "provider": provider}})
}

async fn decide(store: &Store, token: i64, weights: &[(&str, u32)]) {
    let weights: BTreeMap<String, u32> = weights.iter().map(|(z, w)| ((*z).into(), *w)).collect();
    let reasons = BTreeMap::new();
    // A decision is for one version of the policy (a write in between wins).
    let version = store
        .get("track-api")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let no_rails = json!([]);
    assert!(store
        .decide(
            LEASE,
            token,
            "track-api",
            &version,
            Some(WeightDecision {
                weights: &weights,
                cause: "test",
                reasons: &reasons,
                guard_rails: &no_rails,
            }),
            &BTreeMap::new(),
            &[],
        )
        .await
        .unwrap());
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn a_submit_delayed_past_the_lease_never_lands_after_a_new_leader() {
    let db = meridian_test_support::database().await;
    let store = db.store.clone();
    let pdns = Pdns::start().await;
    let proxy = DelayProxy::start(pdns.api_url.trim_start_matches("http://")).await;
    let key = secret_env(&pdns.api_key);
    store
        .put_provider(
            "pdns-test",
            "pdns",
            &json!({"apiUrl": proxy.url(), "zone": "example.com.", "apiKey": {"env": key}}),
            true,
            "test",
        )
        .await
        .unwrap();
    store
        .create(
            &policy(json!([
                zone("zone-a", A, "pdns-test"),
                zone("zone-b", B, "pdns-test")
            ])),
            &WRITE,
        )
        .await
        .unwrap();

    // Replica A leads and publishes both zones.
    let token_a = store.acquire_lease(LEASE, "a", TTL).await.unwrap().unwrap();
    let mut a = Reconciler::new(store.clone(), Duration::from_secs(1));
    a.step(token_a).await.unwrap();
    assert_eq!(pdns.query_a().await, set(&[A, B]));

    // A decides zone-a failed; its submit is held by the network.
    decide(&store, token_a, &[("zone-a", 0), ("zone-b", 100)]).await;
    proxy.delay("PATCH", Duration::from_secs(8));
    store.acquire_lease(LEASE, "a", TTL).await.unwrap().unwrap();
    let held_from = Instant::now();
    let a_task = tokio::spawn(async move {
        a.step(token_a).await.unwrap();
    });
    while proxy.held() == 0 {
        assert!(
            held_from.elapsed() < Duration::from_secs(3),
            "A never submitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A stops renewing (a pause, a partition); B takes over once the lease
    // expires, and decides the opposite.
    let token_b = loop {
        if let Some(t) = store.acquire_lease(LEASE, "b", TTL).await.unwrap() {
            break t;
        }
        assert!(held_from.elapsed() < Duration::from_secs(7), "B never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(token_b > token_a);
    proxy.no_delay();
    decide(&store, token_b, &[("zone-a", 100), ("zone-b", 0)]).await;
    let mut b = Reconciler::new(store.clone(), Duration::from_secs(1));
    b.step(token_b).await.unwrap();
    assert_eq!(pdns.query_a().await, set(&[A]));

    // Past the moment A's held submit would have reached PowerDNS.
    a_task.await.unwrap();
    tokio::time::sleep(Duration::from_secs(9).saturating_sub(held_from.elapsed())).await;
    assert!(proxy.held() >= 1);
    assert_eq!(
        proxy.forwarded_late(),
        0,
        "A's stale submit reached PowerDNS after B took over"
    );
    assert_eq!(proxy.dropped(), proxy.held(), "A gave up every held submit");
    assert_eq!(
        pdns.query_a().await,
        set(&[A]),
        "B's decision must stand: {}",
        pdns.log()
    );
}

#[tokio::test]
async fn deleting_a_policy_removes_its_records_and_nothing_else() {
    let db = meridian_test_support::database().await;
    let store = db.store.clone();
    let pdns = Pdns::start().await;
    let moto = Moto::start().await;
    let zone_id = moto.create_zone().await;
    let pdns_key = secret_env(&pdns.api_key);
    let aws_id = secret_env("AKIAIOSFODNN7EXAMPLE");
    let aws_secret = secret_env("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    store
        .put_provider(
            "pdns-test",
            "pdns",
            &json!({"apiUrl": pdns.api_url, "zone": "example.com.", "apiKey": {"env": pdns_key}}),
            true,
            "test",
        )
        .await
        .unwrap();
    store
        .put_provider(
            "aws-test",
            "route53",
            &json!({"hostedZoneId": zone_id, "endpointUrl": moto.url,
                    "accessKeyId": {"env": aws_id}, "secretAccessKey": {"env": aws_secret}}),
            true,
            "test",
        )
        .await
        .unwrap();
    let route53 = Route53Provider::new(moto.config(&zone_id)).unwrap();
    let owner_id = store.dns_owner_id().await.unwrap();
    let owner = Owner::new(owner_id, "track-api");
    let aws_sets = || async {
        let held = route53.read(HOST, &owner).await.unwrap();
        let ids =
            |r: &[meridian_dns::Record]| r.iter().map(|r| r.set_id.clone()).collect::<Vec<_>>();
        (ids(&held.owned), ids(&held.foreign))
    };

    // Made by hand beside what Meridian will publish.
    let www = "www.example.com.";
    pdns.edit_by_hand(www, "A", &["198.51.100.9"]).await;
    pdns.edit_by_hand(HOST, "TXT", &["\"made by hand\""]).await;
    let by_hand = meridian_dns::Record {
        name: HOST.to_owned(),
        kind: meridian_dns::RecordKind::A,
        set_id: "by-hand".to_owned(),
        weight: 10,
        target: "198.51.100.7".to_owned(),
        ttl: 300,
    };
    // Another installation's record, written with its own marks.
    meridian_dns::reconcile_fenced(
        &route53,
        HOST,
        std::slice::from_ref(&by_hand),
        &Owner::new("meridian-elsewhere", "theirs"),
        &meridian_dns::Unfenced,
        meridian_dns::Backoff::default(),
    )
    .await
    .unwrap();

    store
        .create(
            &policy(json!([
                zone("zone-a", A, "pdns-test"),
                zone("zone-b", B, "aws-test")
            ])),
            &WRITE,
        )
        .await
        .unwrap();
    let token = store.acquire_lease(LEASE, "a", TTL).await.unwrap().unwrap();
    let mut leader = Reconciler::new(store.clone(), Duration::from_secs(1));
    leader.step(token).await.unwrap();
    assert_eq!(pdns.query_a().await, set(&[A]));
    assert_eq!(
        aws_sets().await,
        (vec!["zone-b".into()], vec!["by-hand".into()])
    );
    assert_eq!(store.dns_published().await.unwrap().len(), 2);

    // zone-a moves to Route 53: PowerDNS loses Meridian's records of the
    // host, and only those.
    store
        .replace(
            &policy(json!([
                zone("zone-a", A, "aws-test"),
                zone("zone-b", B, "aws-test")
            ])),
            &Precondition::None,
            &WRITE,
        )
        .await
        .unwrap();
    store.acquire_lease(LEASE, "a", TTL).await.unwrap().unwrap();
    leader.step(token).await.unwrap();
    assert_eq!(pdns.query_a().await, set(&[]));
    assert_eq!(pdns.rrsets(HOST).await, ["TXT"], "the hand-made TXT stays");
    assert_eq!(
        aws_sets().await,
        (
            vec!["zone-a".into(), "zone-b".into()],
            vec!["by-hand".into()]
        )
    );

    // The policy is deleted: its records go, everything else stays.
    store
        .delete("track-api", &Precondition::None, &WRITE)
        .await
        .unwrap();
    assert_eq!(
        store.policies_using_provider("aws-test").await.unwrap(),
        ["track-api"],
        "the provider is needed until the records are gone"
    );
    store.acquire_lease(LEASE, "a", TTL).await.unwrap().unwrap();
    leader.step(token).await.unwrap();
    assert_eq!(aws_sets().await, (vec![], vec!["by-hand".into()]));
    let theirs = route53
        .read(HOST, &Owner::new("meridian-elsewhere", "theirs"))
        .await
        .unwrap();
    assert_eq!(
        theirs.owned,
        vec![by_hand],
        "the other installation's record is intact"
    );
    assert_eq!(
        query_a(pdns.dns_port, www).await.unwrap(),
        set(&["198.51.100.9"])
    );
    assert_eq!(pdns.rrsets(HOST).await, ["TXT"]);
    assert!(store.dns_published().await.unwrap().is_empty());
    assert!(store
        .policies_using_provider("aws-test")
        .await
        .unwrap()
        .is_empty());
    let events = store.events(None, None, 100).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "dns-records-removed"),
        "{events:?}"
    );
}

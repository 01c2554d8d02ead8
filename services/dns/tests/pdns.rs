//! The PowerDNS provider against a real `pdns_server` (gsqlite3 backend) on
//! 127.0.0.1, answering real DNS queries (harness in meridian-test-support).

use std::collections::{BTreeMap, BTreeSet};

use meridian_dns::{
    desired_records, reconcile, ApiKey, Error, Owner, PdnsConfig, PdnsProvider, Provider, Record,
};
use meridian_policy::Policy;
use meridian_test_support::pdns::{free_tcp_port, Pdns, A, B, HOST, ZONE};
use serde_json::json;

fn policy(weights: [u32; 2]) -> Policy {
    serde_json::from_value(json!({
        "metadata": {"name": "track-api"},
        "spec": {
            "host": "track.example.com",
            "port": 8080,
            "dns": {"ttl": 30},
            "zones": [
                {"name": "zone-a", "weight": weights[0], "endpoints": [{"address": "10.0.1.5", "port": 8080}],
                 "dns": {"target": A, "provider": "pdns"}},
                {"name": "zone-b", "weight": weights[1], "endpoints": [{"address": "10.0.2.5", "port": 8080}],
                 "dns": {"target": B, "provider": "pdns"}},
            ],
        },
    }))
    .unwrap()
}

fn desired(effective: &[(&str, u32)]) -> Vec<Record> {
    let effective: BTreeMap<String, u32> = effective
        .iter()
        .map(|(z, w)| ((*z).to_owned(), *w))
        .collect();
    desired_records(&policy([70, 30]), &effective)
        .unwrap()
        .remove("pdns")
        .unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn plain_mode_serves_healthy_zones_and_restores_drift() {
    let pdns = Pdns::start().await;
    let provider = pdns.provider(false);

    let want = desired(&[]);
    let first = reconcile(&provider, HOST, &want).await.unwrap();
    assert_eq!(first.changes, 2);
    assert_eq!(pdns.query_a().await, set(&[A, B]));
    assert_eq!(
        provider.read(HOST, &Owner::default()).await.unwrap().owned,
        want,
        "read maps back to per-zone records"
    );
    let again = reconcile(&provider, HOST, &want).await.unwrap();
    assert_eq!(again.changes, 0, "a converged name must not be written");

    let failed_over = desired(&[("zone-a", 0), ("zone-b", 100)]);
    let out = reconcile(&provider, HOST, &failed_over).await.unwrap();
    assert_eq!(out.changes, 2, "both zones changed weight");
    assert_eq!(
        pdns.query_a().await,
        set(&[B]),
        "a failed zone must not be answered"
    );
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        0
    );

    pdns.edit_by_hand(HOST, "A", &["198.51.100.1"]).await;
    assert_eq!(
        pdns.query_a().await,
        set(&["198.51.100.1"]),
        "the hand edit is live"
    );
    let restored = reconcile(&provider, HOST, &failed_over).await.unwrap();
    assert!(restored.changes > 0, "drift must be reported: {restored:?}");
    assert_eq!(pdns.query_a().await, set(&[B]));
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        0
    );

    // Back to both zones; then an empty desired state removes the records.
    assert!(reconcile(&provider, HOST, &want).await.unwrap().changes > 0);
    assert_eq!(pdns.query_a().await, set(&[A, B]));
    assert_eq!(reconcile(&provider, HOST, &[]).await.unwrap().changes, 2);
    assert_eq!(
        provider.read(HOST, &Owner::default()).await.unwrap().owned,
        vec![]
    );
}

#[tokio::test]
async fn lua_mode_answers_by_weight_and_restores_drift() {
    let pdns = Pdns::start().await;

    // Switching from plain to LUA replaces the plain RRset.
    let want = desired(&[]);
    reconcile(&pdns.provider(false), HOST, &want).await.unwrap();
    let provider = pdns.provider(true);
    let switched = reconcile(&provider, HOST, &want).await.unwrap();
    assert!(switched.changes > 0, "plain data must not satisfy LUA mode");
    assert_eq!(
        provider.read(HOST, &Owner::default()).await.unwrap().owned,
        want,
        "read maps back to per-zone records"
    );
    assert_eq!(reconcile(&provider, HOST, &want).await.unwrap().changes, 0);

    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..50 {
        let answer = pdns.query_a().await;
        assert_eq!(
            answer.len(),
            1,
            "pickwrandom answers one address: {answer:?}"
        );
        *seen.entry(answer.into_iter().next().unwrap()).or_default() += 1;
    }
    assert!(
        seen.keys().all(|ip| ip == A || ip == B),
        "answers outside the zones' targets: {seen:?}"
    );
    // At 70/30 the chance that 50 answers miss a zone is below 1e-7.
    assert_eq!(
        seen.len(),
        2,
        "both weighted targets must be answered: {seen:?}"
    );

    let failed_over = desired(&[("zone-a", 0), ("zone-b", 100)]);
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        2
    );
    for _ in 0..50 {
        assert_eq!(
            pdns.query_a().await,
            set(&[B]),
            "a failed zone must not be answered"
        );
    }
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        0
    );

    pdns.edit_by_hand(
        HOST,
        "LUA",
        &[&format!(
            "A \"pickwrandom({{{{50, '{A}'}}, {{50, '{B}'}}}})\""
        )],
    )
    .await;
    let restored = reconcile(&provider, HOST, &failed_over).await.unwrap();
    assert!(restored.changes > 0, "drift must be reported: {restored:?}");
    for _ in 0..20 {
        assert_eq!(pdns.query_a().await, set(&[B]));
    }
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        0
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let pdns = Pdns::start().await;
    let want = desired(&[]);

    let mut config = PdnsConfig {
        api_url: pdns.api_url.clone(),
        api_key: ApiKey::new("wrong"),
        zone: ZONE.to_owned(),
        use_lua: false,
    };
    let err = reconcile(&PdnsProvider::new(config.clone()).unwrap(), HOST, &want)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 401, .. }), "{err}");

    config.api_key = ApiKey::new(pdns.api_key.clone());
    config.zone = "missing.example.".to_owned();
    let err = reconcile(
        &PdnsProvider::new(config.clone()).unwrap(),
        "track.missing.example.",
        &[],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");

    config.api_url = format!("http://127.0.0.1:{}", free_tcp_port());
    config.zone = ZONE.to_owned();
    let err = reconcile(&PdnsProvider::new(config).unwrap(), HOST, &want)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");

    // Two live CNAMEs cannot be one PowerDNS RRset: refused before any call.
    let cnames: Vec<Record> = ["lb-a.example.net.", "lb-b.example.net."]
        .iter()
        .enumerate()
        .map(|(i, t)| Record {
            name: HOST.to_owned(),
            kind: meridian_dns::RecordKind::CNAME,
            set_id: format!("zone-{i}"),
            weight: 50,
            target: (*t).to_owned(),
            ttl: 30,
        })
        .collect();
    let err = reconcile(&pdns.provider(false), HOST, &cnames)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    // One live CNAME is fine in plain mode.
    let one = &cnames[..1];
    assert_eq!(
        reconcile(&pdns.provider(false), HOST, one)
            .await
            .unwrap()
            .changes,
        1
    );
    assert_eq!(
        reconcile(&pdns.provider(false), HOST, one)
            .await
            .unwrap()
            .changes,
        0
    );
}

#[tokio::test]
async fn records_made_by_hand_are_never_touched() {
    let pdns = Pdns::start().await;
    let provider = pdns.provider(false);
    let want = desired(&[]);
    let hand = "198.51.100.1";

    // A name whose A RRset someone else made: Meridian refuses to publish
    // over it, and removing Meridian's records leaves it alone.
    pdns.edit_by_hand(HOST, "A", &[hand]).await;
    let err = reconcile(&provider, HOST, &want).await.unwrap_err();
    assert!(matches!(err, Error::NotOwned(_)), "{err}");
    assert_eq!(reconcile(&provider, HOST, &[]).await.unwrap().changes, 0);
    assert_eq!(pdns.query_a().await, set(&[hand]));
    pdns.delete_by_hand(HOST, "A").await;

    // Meridian's records, with records made by hand next to them: another
    // name in the zone, and a TXT record at the same name.
    let www = "www.example.com.";
    pdns.edit_by_hand(www, "A", &["198.51.100.9"]).await;
    pdns.edit_by_hand(HOST, "TXT", &["\"made by hand\""]).await;
    reconcile(&provider, HOST, &want).await.unwrap();
    assert_eq!(pdns.query_a().await, set(&[A, B]));
    // Marked as this installation's: another one owns nothing here.
    let other = provider
        .read(HOST, &Owner::new("meridian-other", "x"))
        .await
        .unwrap();
    assert_eq!((other.owned.len(), other.foreign.len()), (0, 2));

    // Removing them removes Meridian's records and marks, nothing else.
    assert_eq!(reconcile(&provider, HOST, &[]).await.unwrap().changes, 2);
    assert_eq!(pdns.query_a().await, set(&[]));
    assert_eq!(pdns.rrsets(HOST).await, vec!["TXT".to_owned()]);
    assert_eq!(
        pdns.rrsets("_meridian.track.example.com.").await,
        Vec::<String>::new()
    );
    assert_eq!(
        meridian_test_support::pdns::query_a(pdns.dns_port, www)
            .await
            .unwrap(),
        set(&["198.51.100.9"])
    );
}

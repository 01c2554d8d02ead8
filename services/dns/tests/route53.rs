//! The Route 53 provider against a real Route 53 API: `moto_server` (pinned
//! in tests/interop/requirements.txt, installed into `<repo>/.venv` by
//! `scripts/install-deps --test`) on 127.0.0.1. Never skipped: a missing
//! moto fails the test with the install hint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_route53::types::{
    Change as AwsChange, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use meridian_dns::{
    desired_records, reconcile, reconcile_with, AwsSecret, Backoff, Change, Error, Owner, Provider,
    Record, Route53Provider,
};
use meridian_policy::Policy;
use meridian_test_support::moto::Moto;
use meridian_test_support::pdns::free_tcp_port;
use serde_json::json;

const HOST: &str = "track.example.com.";
const A: &str = "192.0.2.10";
const B: &str = "192.0.2.11";
/// A weighted set as listed: (set id, type, weight, ttl, values).
type Listed = (String, String, i64, i64, Vec<String>);

/// The weighted sets of HOST, as Route 53 lists them.
async fn list(sdk: &aws_sdk_route53::Client, zone_id: &str) -> Vec<Listed> {
    let out = sdk
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .expect("ListResourceRecordSets");
    let mut sets: Vec<Listed> = out
        .resource_record_sets()
        .iter()
        .filter(|s| s.name() == HOST && s.set_identifier().is_some())
        .map(|s| {
            (
                s.set_identifier().unwrap().to_owned(),
                s.r#type().as_str().to_owned(),
                s.weight().expect("weighted"),
                s.ttl().expect("ttl"),
                s.resource_records()
                    .iter()
                    .map(|r| r.value().to_owned())
                    .collect(),
            )
        })
        .collect();
    sets.sort();
    sets
}

fn listed(set_id: &str, weight: i64, target: &str) -> Listed {
    (
        set_id.to_owned(),
        "A".to_owned(),
        weight,
        30,
        vec![target.to_owned()],
    )
}

fn policy(weights: [u32; 2]) -> Policy {
    serde_json::from_value(json!({
        "metadata": {"name": "track-api"},
        "spec": {
            "host": "track.example.com",
            "port": 8080,
            "dns": {"ttl": 30},
            "zones": [
                {"name": "zone-a", "weight": weights[0], "endpoints": [{"address": "10.0.1.5", "port": 8080}],
                 "dns": {"target": A, "provider": "route53"}},
                {"name": "zone-b", "weight": weights[1], "endpoints": [{"address": "10.0.2.5", "port": 8080}],
                 "dns": {"target": B, "provider": "route53"}},
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
        .remove("route53")
        .unwrap()
}

/// Writes a weighted A set at HOST as a person would, behind Meridian's back.
async fn upsert_by_hand(
    sdk: &aws_sdk_route53::Client,
    zone_id: &str,
    set_id: &str,
    weight: i64,
    value: &str,
) {
    let set = ResourceRecordSet::builder()
        .name(HOST)
        .r#type(RrType::A)
        .set_identifier(set_id)
        .weight(weight)
        .ttl(300)
        .resource_records(ResourceRecord::builder().value(value).build().unwrap())
        .build()
        .unwrap();
    sdk.change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    AwsChange::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("hand edit");
}

/// The set ids of the ownership marks beside HOST.
async fn marks(sdk: &aws_sdk_route53::Client, zone_id: &str) -> Vec<String> {
    let out = sdk
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .expect("ListResourceRecordSets");
    let mut ids: Vec<String> = out
        .resource_record_sets()
        .iter()
        .filter(|s| s.name() == "_meridian.track.example.com." && s.r#type() == &RrType::Txt)
        .filter_map(|s| s.set_identifier().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

const FAST: Backoff = Backoff {
    attempts: 3,
    initial: Duration::from_millis(20),
};

#[tokio::test]
async fn weighted_sets_follow_the_policy_and_drift_is_restored() {
    let moto = Moto::start().await;
    let zone_id = moto.create_zone().await;
    let provider = Route53Provider::new(moto.config(&zone_id)).unwrap();
    // Raw SDK calls, with the provider's credentials and endpoint.
    let sdk = provider.client().clone();

    // 70/30: one weighted set per zone.
    let want = desired(&[]);
    let first = reconcile(&provider, HOST, &want).await.unwrap();
    assert_eq!(first.changes, 2);
    assert_eq!(
        list(&sdk, &zone_id).await,
        vec![listed("zone-a", 70, A), listed("zone-b", 30, B)]
    );
    assert_eq!(
        provider.read(HOST, &Owner::default()).await.unwrap().owned,
        want,
        "read maps back to per-zone records"
    );
    let again = reconcile(&provider, HOST, &want).await.unwrap();
    assert_eq!(again.changes, 0, "a converged name must not be written");

    // Fail over to 0/100.
    let failed_over = desired(&[("zone-a", 0), ("zone-b", 100)]);
    let out = reconcile(&provider, HOST, &failed_over).await.unwrap();
    assert_eq!(out.changes, 2, "both zones changed weight");
    assert_eq!(
        list(&sdk, &zone_id).await,
        vec![listed("zone-a", 0, A), listed("zone-b", 100, B)]
    );
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        0
    );

    // Drift: zone-a put back to weight 50 with another target, by hand.
    upsert_by_hand(&sdk, &zone_id, "zone-a", 50, "198.51.100.1").await;
    assert_eq!(
        list(&sdk, &zone_id).await[0],
        (
            "zone-a".to_owned(),
            "A".to_owned(),
            50,
            300,
            vec!["198.51.100.1".to_owned()]
        ),
        "the hand edit is live"
    );
    let restored = reconcile(&provider, HOST, &failed_over).await.unwrap();
    assert!(restored.changes > 0, "drift must be restored: {restored:?}");
    assert_eq!(
        list(&sdk, &zone_id).await,
        vec![listed("zone-a", 0, A), listed("zone-b", 100, B)]
    );
    assert_eq!(
        reconcile(&provider, HOST, &failed_over)
            .await
            .unwrap()
            .changes,
        0
    );

    // A zone dropped from the desired state loses its record.
    let only_b: Vec<Record> = failed_over
        .iter()
        .filter(|r| r.set_id == "zone-b")
        .cloned()
        .collect();
    let out = reconcile(&provider, HOST, &only_b).await.unwrap();
    assert_eq!(out.changes, 1);
    assert_eq!(list(&sdk, &zone_id).await, vec![listed("zone-b", 100, B)]);
    assert_eq!(
        provider.read(HOST, &Owner::default()).await.unwrap().owned,
        only_b
    );
    assert_eq!(
        marks(&sdk, &zone_id).await,
        ["zone-b"],
        "a deleted set's mark goes with it"
    );

    // A weighted set made by hand beside Meridian's is never touched, nor
    // written over, and survives Meridian removing all of its own.
    upsert_by_hand(&sdk, &zone_id, "by-hand", 10, "198.51.100.7").await;
    assert_eq!(
        reconcile(&provider, HOST, &only_b).await.unwrap().changes,
        0
    );
    let mut over = only_b.clone();
    over[0].set_id = "by-hand".to_owned();
    let err = reconcile(&provider, HOST, &over).await.unwrap_err();
    assert!(matches!(err, Error::NotOwned(_)), "{err}");
    assert_eq!(reconcile(&provider, HOST, &[]).await.unwrap().changes, 1);
    let by_hand = (
        "by-hand".to_owned(),
        "A".to_owned(),
        10,
        300,
        vec!["198.51.100.7".to_owned()],
    );
    assert_eq!(list(&sdk, &zone_id).await, vec![by_hand]);
    assert!(
        marks(&sdk, &zone_id).await.is_empty(),
        "no mark left behind"
    );
    // Another installation does not own Meridian's sets either.
    reconcile(&provider, HOST, &only_b).await.unwrap();
    let other = meridian_dns::reconcile_fenced(
        &provider,
        HOST,
        &[],
        &Owner::new("meridian-other", "x"),
        &meridian_dns::Unfenced,
        FAST,
    )
    .await
    .unwrap();
    assert_eq!(other.changes, 0);
    assert_eq!(list(&sdk, &zone_id).await.len(), 2);

    // Moto gone: connection errors are Unavailable, after the retries.
    drop(moto);
    let started = Instant::now();
    let err = reconcile_with(&provider, HOST, &want, FAST)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                provider: "route53",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() >= FAST.initial * 3,
        "reconcile must have waited through its backoff: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn errors_are_classified() {
    let moto = Moto::start().await;
    let zone_id = moto.create_zone().await;
    let want = desired(&[]);

    // Unknown hosted zone: a 4xx with the service's message, not retried.
    let missing = Route53Provider::new(moto.config("Z0000000000MISSING")).unwrap();
    let err = reconcile_with(&missing, HOST, &want, FAST)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { status: 404, message, .. } if message.contains("NoSuchHostedZone")),
        "{err}"
    );

    // Deleting a set that does not exist: Route 53 refuses the batch.
    let provider = Route53Provider::new(moto.config(&zone_id)).unwrap();
    let ghost = want[0].clone();
    let err = provider
        .apply(
            HOST,
            &[Change::Delete(ghost)],
            &[],
            &Owner::default(),
            &meridian_dns::Unfenced,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 400, .. }), "{err}");

    // Weights above 255 never reach Route 53.
    let mut heavy = want.clone();
    heavy[0].weight = 256;
    let err = reconcile(&provider, HOST, &heavy).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        provider.read(HOST, &Owner::default()).await.unwrap().owned,
        vec![]
    );

    // Missing credentials are a configuration error, not a lookup elsewhere.
    let mut config = moto.config(&zone_id);
    config.secret_access_key = AwsSecret::new("");
    let err = Route53Provider::new(config).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");

    // Nothing listens: Unavailable.
    let mut config = moto.config(&zone_id);
    config.endpoint_url = Some(format!("http://127.0.0.1:{}", free_tcp_port()));
    let err = reconcile_with(&Route53Provider::new(config).unwrap(), HOST, &want, FAST)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

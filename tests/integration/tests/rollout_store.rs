//! The rollout store (issue 18): the leader's save is fenced by the lease
//! token and the policy's version, consumes the queued action, and on
//! completion writes the `source = rollout` revision in the same
//! transaction.

use std::time::Duration;

use meridian_policy::Policy;
use meridian_rollout::{Action, Input, Phase};
use meridian_store::rollouts::RolloutSave;
use meridian_store::{Error, Write};
use serde_json::json;

fn policy() -> Policy {
    meridian_policy::decode::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"host": "web.example.com", "port": 8080, "zones": [
            {"name": "a", "weight": 100, "endpoints": [
                {"address": "127.0.9.1", "port": 8080},
                {"address": "127.0.9.2", "port": 8080, "version": "v2"}]}],
          "routes": [{"name": "all", "canary": {"version": "v2", "weight": 0,
              "rollout": {"steps": [10, 100], "stepIntervalMs": 1000}}}]}
    }))
    .expect("valid policy")
}

#[tokio::test]
async fn saves_are_fenced_consume_actions_and_completion_writes_a_revision() {
    let db = meridian_test_support::database().await;
    let store = &db.store;
    let w = Write {
        actor: "test",
        source: "api",
        dry_run: false,
        force: false,
    };
    let p = store.create(&policy(), &w).await.unwrap();
    let rv = p.metadata.resource_version.clone().unwrap();
    let token = store
        .acquire_lease("failover", "leader-1", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("lease");
    let target = meridian_rollout::targets(&p).remove(0);
    let started = meridian_rollout::step(&Input {
        target: target.clone(),
        status: None,
        traffic: Default::default(),
        prometheus: None,
        unavailable: Default::default(),
        now_ms: 1_000,
        command: None,
    });
    let save = RolloutSave {
        status: &started.status,
        events: &[],
        consumed: None,
        complete: false,
    };
    // Another leader's token writes nothing.
    let lost = store
        .save_rollout("failover", token + 1, "web", &rv, &save)
        .await;
    assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
    // A step made for another version of the policy writes nothing.
    assert!(!store
        .save_rollout("failover", token, "web", "999999", &save)
        .await
        .unwrap());
    assert!(store.rollout_statuses("web").await.unwrap().is_empty());
    assert!(store
        .save_rollout("failover", token, "web", &rv, &save)
        .await
        .unwrap());
    assert_eq!(
        store.rollout_statuses("web").await.unwrap()["all"],
        started.status
    );

    // An operator's promote, queued then consumed by the step that completes.
    let id = store
        .request_rollout_action("web", "all", Action::Promote, "alice")
        .await
        .unwrap()
        .expect("queued");
    let queued = store.rollout_commands("web").await.unwrap();
    assert_eq!(
        (queued["all"].id, queued["all"].action),
        (id, Action::Promote)
    );
    let done = meridian_rollout::step(&Input {
        target,
        status: Some(started.status.clone()),
        traffic: Default::default(),
        prometheus: None,
        unavailable: Default::default(),
        now_ms: 2_000,
        command: Some(meridian_rollout::Command {
            action: Action::Promote,
            by: "alice".into(),
        }),
    });
    assert!(done.complete && done.status.phase == Phase::Completed);
    let save = RolloutSave {
        status: &done.status,
        events: &[],
        consumed: Some(id),
        complete: true,
    };
    assert!(store
        .save_rollout("failover", token, "web", &rv, &save)
        .await
        .unwrap());
    assert!(store.rollout_commands("web").await.unwrap().is_empty());
    let revisions = store.revisions("web").await.unwrap();
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0].source, "rollout");
    let canary = revisions[0].spec.routes[0].canary.as_ref().unwrap();
    assert_eq!((canary.weight, canary.rollout.is_none()), (100, true));
    // The action is audited.
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM audit_log WHERE policy_name = 'web' ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(
        audit.contains(&("alice".to_owned(), "rollout-promote".to_owned())),
        "{audit:?}"
    );

    // Actions on the completed rollout: promoting again is already done
    // (nothing queued), resuming is refused, an unknown route has none;
    // none of them queues or audits anything.
    assert_eq!(
        store
            .request_rollout_action("web", "all", Action::Promote, "bob")
            .await
            .unwrap(),
        None
    );
    let refused = store
        .request_rollout_action("web", "all", Action::Resume, "bob")
        .await;
    assert!(
        matches!(&refused, Err(Error::RolloutRefused { message }) if message.contains("completed")),
        "{refused:?}"
    );
    let missing = store
        .request_rollout_action("web", "nope", Action::Pause, "bob")
        .await;
    assert!(
        matches!(missing, Err(Error::NoRollout { .. })),
        "{missing:?}"
    );
    let gone = store
        .request_rollout_action("nope", "all", Action::Pause, "bob")
        .await;
    assert!(matches!(gone, Err(Error::NotFound { .. })), "{gone:?}");
    assert!(store.rollout_commands("web").await.unwrap().is_empty());
    let bob: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE actor = 'bob'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(bob, 0);
}

/// The dashboard's chart of a rollout: load reports added through the
/// store, read back per time bucket as the canary's version against every
/// other version, by the store and over REST.
#[tokio::test]
async fn traffic_series_splits_the_canary_from_every_other_version() {
    use meridian_store::LoadRow;

    let db = meridian_test_support::database().await;
    let store = &db.store;
    let w = Write {
        actor: "test",
        source: "api",
        dry_run: false,
        force: false,
    };
    let p = store.create(&policy(), &w).await.unwrap();
    let mut other = policy();
    other.metadata.name = "other".into();
    other.spec.host = "other.example.com".into();
    store.create(&other, &w).await.unwrap();

    let row = |policy: &str, zone: &str, version: &str, requests: u64, failures: u64| LoadRow {
        policy: policy.into(),
        zone: zone.into(),
        version: version.into(),
        route: String::new(),
        requests,
        failures,
    };
    store
        .add_load_reports(
            "xds-1",
            &[
                row("web", "a", "", 100, 1),
                row("web", "a", "v2", 50, 5),
                // Another canary's version is not this rollout's canary.
                row("web", "b", "v3", 20, 2),
                // Another policy's traffic is not this one's.
                row("other", "a", "v2", 1000, 1000),
            ],
        )
        .await
        .unwrap();
    store
        .add_load_reports("xds-2", &[row("web", "b", "v2", 10, 0)])
        .await
        .unwrap();

    let before_ms = chrono::Utc::now().timestamp_millis();
    let series = store
        .version_series(
            "web",
            "all",
            "v2",
            Duration::from_secs(300),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // Written within milliseconds: one bucket, or two if a 10 s boundary
    // fell between the writes.
    assert!(
        (1..=2).contains(&series.len()),
        "{} buckets: {series:?}",
        series.len()
    );
    assert!(series
        .windows(2)
        .all(|b| b[0].start_ms + 10_000 <= b[1].start_ms));
    for b in &series {
        assert!(
            b.start_ms <= before_ms + 1000 && b.start_ms > before_ms - 20_000,
            "{b:?} vs now {before_ms}"
        );
    }
    let sum = |f: fn(&meridian_store::VersionBucket) -> (u64, u64)| {
        series
            .iter()
            .map(f)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    assert_eq!(sum(|b| (b.canary.requests, b.canary.failures)), (60, 5));
    assert_eq!(sum(|b| (b.stable.requests, b.stable.failures)), (120, 3));
    if series.len() == 1 {
        assert_eq!(series[0].canary.reporters, 2);
    }
    // A version that took no traffic: everything is the other side.
    let none = store
        .version_series(
            "web",
            "all",
            "v9",
            Duration::from_secs(60),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        none.iter().map(|b| b.canary.requests).sum::<u64>(),
        0,
        "{none:?}"
    );
    assert_eq!(none.iter().map(|b| b.stable.requests).sum::<u64>(), 180);

    // Over REST: only with a rollout on the route.
    let server = meridian_test_support::Server::start(store.clone()).await;
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let (client, url) = (client.clone(), server.url(path));
        async move {
            let r = client.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = get("/api/v1/policies/web/rollouts/all/traffic").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no rollout"),
        "{body}"
    );

    let token = store
        .acquire_lease("failover", "leader-1", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("lease");
    let started = meridian_rollout::step(&Input {
        target: meridian_rollout::targets(&p).remove(0),
        status: None,
        traffic: Default::default(),
        prometheus: None,
        unavailable: Default::default(),
        now_ms: chrono::Utc::now().timestamp_millis(),
        command: None,
    });
    let rv = p.metadata.resource_version.clone().unwrap();
    let save = RolloutSave {
        status: &started.status,
        events: &[],
        consumed: None,
        complete: false,
    };
    assert!(store
        .save_rollout("failover", token, "web", &rv, &save)
        .await
        .unwrap());

    let (status, body) = get("/api/v1/policies/web/rollouts/all/traffic?minutes=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["version"], &body["bucketSeconds"]),
        (&json!("v2"), &json!(10))
    );
    let (from, to) = (
        body["fromMs"].as_i64().unwrap(),
        body["toMs"].as_i64().unwrap(),
    );
    assert_eq!(to - from, 120_000);
    let buckets = body["buckets"].as_array().unwrap();
    let total = |side: &str, field: &str| {
        buckets
            .iter()
            .map(|b| b[side][field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (total("canary", "requests"), total("canary", "failures")),
        (60, 5),
        "{body}"
    );
    assert_eq!(
        (total("stable", "requests"), total("stable", "failures")),
        (120, 3),
        "{body}"
    );
    for b in buckets {
        let at = b["startMs"].as_i64().unwrap();
        assert!(at >= from - 10_000 && at <= to, "{b} outside {from}..{to}");
    }

    for bad in ["0", "16", "-1", "2.5", "x"] {
        let (status, body) = get(&format!(
            "/api/v1/policies/web/rollouts/all/traffic?minutes={bad}"
        ))
        .await;
        assert_eq!(status, 422, "minutes={bad}: {body}");
        assert_eq!(body["details"][0]["field"], "minutes", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("1 to 15"),
            "{body}"
        );
    }
    let (status, _) = get("/api/v1/policies/web/rollouts/nope/traffic").await;
    assert_eq!(status, 404);
    let (status, _) = get("/api/v1/policies/nope/rollouts/all/traffic").await;
    assert_eq!(status, 404);
    // The actions' route is still there beside it.
    let paused = client
        .post(server.url("/api/v1/policies/web/rollouts/all/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status().as_u16(), 202);
    server.stop().await;
}

/// Load reports keep the route whose own clusters carried them (a route
/// under a rollout): a rollout's analysis reads them apart, while
/// failover still sums every row of a zone.
#[tokio::test]
async fn load_reports_keep_the_route_and_failover_still_sums_the_zone() {
    use meridian_store::{LoadRow, TrafficKey};
    use std::collections::BTreeMap;

    let db = meridian_test_support::database().await;
    let store = &db.store;
    let w = Write {
        actor: "test",
        source: "api",
        dry_run: false,
        force: false,
    };
    store.create(&policy(), &w).await.unwrap();
    let since = chrono::Utc::now().timestamp_millis() - 1000;
    let row = |version: &str, route: &str, requests: u64, failures: u64| LoadRow {
        policy: "web".into(),
        zone: "a".into(),
        version: version.into(),
        route: route.into(),
        requests,
        failures,
    };
    let rows = [
        row("", "", 100, 1),
        row("", "all", 40, 0),
        row("v2", "all", 4, 1),
    ];
    store.add_load_reports("xds-1", &rows).await.unwrap();
    // The same (version, route) again adds up; another route is apart.
    store
        .add_load_reports("xds-1", &[row("v2", "all", 6, 0)])
        .await
        .unwrap();
    let got = store.version_traffic("web", since).await.unwrap();
    let counts: BTreeMap<(String, String), (u64, u64)> = got
        .iter()
        .map(|(k, t): (&TrafficKey, _)| {
            (
                (k.version.clone(), k.route.clone()),
                (t.requests, t.failures),
            )
        })
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ((String::new(), String::new()), (100, 1)),
            ((String::new(), "all".to_owned()), (40, 0)),
            (("v2".to_owned(), "all".to_owned()), (10, 1)),
        ])
    );
    let windows = BTreeMap::from([("web".to_owned(), Duration::from_secs(30))]);
    let totals = store.load_totals(&windows).await.unwrap();
    let zone = totals[&("web".to_owned(), "a".to_owned())];
    assert_eq!((zone.requests, zone.failures), (150, 2));
    // The dashboard's chart of route `all` counts its own clusters where
    // they reported (these seconds), like the analysis.
    let series = store
        .version_series(
            "web",
            "all",
            "v2",
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let sum = |f: fn(&meridian_store::VersionBucket) -> (u64, u64)| {
        series
            .iter()
            .map(f)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    assert_eq!(sum(|b| (b.canary.requests, b.canary.failures)), (10, 1));
    assert_eq!(sum(|b| (b.stable.requests, b.stable.failures)), (40, 0));
    // Another route has no clusters of its own: the shared ones count.
    let other = store
        .version_series(
            "web",
            "other",
            "v2",
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let stable: u64 = other.iter().map(|b| b.stable.requests).sum();
    assert_eq!(stable, 100, "{other:?}");
}

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

//! The gRPC automation API against a real PostgreSQL, through a real tonic
//! client on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::failover_service_client::FailoverServiceClient;
use meridian_proto::v1::policy_service_client::PolicyServiceClient;
use meridian_test_support::database;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

struct Api {
    channel: Channel,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Api {
    async fn start() -> Api {
        Self::start_with(|_| meridian_auth::Authenticator::off())
            .await
            .0
    }

    /// With the authenticator `auth` builds from the test's store.
    async fn start_with(
        auth: impl FnOnce(&meridian_store::Store) -> meridian_auth::Authenticator,
    ) -> (Api, meridian_store::Store) {
        let db = database().await;
        let auth = std::sync::Arc::new(auth(&db.store));
        let store = db.store.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                meridian_grpc::serve(listener, db.store, auth, stop)
                    .await
                    .unwrap()
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (
            Api {
                channel,
                stop,
                task,
            },
            store,
        )
    }

    fn policies(&self) -> PolicyServiceClient<Channel> {
        PolicyServiceClient::new(self.channel.clone())
    }

    fn failover(&self) -> FailoverServiceClient<Channel> {
        FailoverServiceClient::new(self.channel.clone())
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }
}

fn policy(name: &str, weights: (u32, u32)) -> pb::GlobalTrafficPolicy {
    let zone = |zone: &str, weight, last: u8| pb::Zone {
        name: zone.into(),
        weight,
        endpoints: vec![pb::Endpoint {
            address: format!("127.0.3.{last}"),
            port: 9,
            version: None,
        }],
        ..Default::default()
    };
    pb::GlobalTrafficPolicy {
        metadata: Some(pb::Metadata {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(pb::Spec {
            host: format!("{name}.example.com"),
            port: 8080,
            zones: vec![zone("a", weights.0, 1), zone("b", weights.1, 2)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn apply(p: pb::GlobalTrafficPolicy, expected: Option<&str>) -> pb::ApplyPolicyRequest {
    pb::ApplyPolicyRequest {
        policy: Some(p),
        expected_resource_version: expected.map(str::to_owned),
        dry_run: false,
    }
}

fn version(p: &Option<pb::GlobalTrafficPolicy>) -> String {
    p.as_ref()
        .and_then(|p| p.metadata.as_ref())
        .and_then(|m| m.resource_version.clone())
        .unwrap()
}

#[tokio::test]
async fn status_codes_mean_what_they_say() {
    let api = Api::start().await;
    let mut c = api.policies();

    let missing = c
        .get_policy(pb::GetPolicyRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let created = c
        .apply_policy(apply(policy("shop", (70, 30)), None))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let v1 = version(&created.policy);
    let updated = c
        .apply_policy(apply(policy("shop", (60, 40)), Some(&v1)))
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.created);
    let v2 = version(&updated.policy);
    assert_ne!(v1, v2);

    let stale = c
        .apply_policy(apply(policy("shop", (50, 50)), Some(&v1)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    let stored = c
        .get_policy(pb::GetPolicyRequest {
            name: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        version(&stored.policy),
        v2,
        "a refused write changes nothing"
    );

    let mut clash = policy("shop-copy", (50, 50));
    clash.spec.as_mut().unwrap().host = "shop.example.com".into();
    let clash = c.apply_policy(apply(clash, None)).await.unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");

    // Two problems at once, each a field violation with the REST API's path.
    let mut bad = policy("bad", (70, 20));
    bad.spec.as_mut().unwrap().port = 0;
    let bad = c.apply_policy(apply(bad, None)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let violations = bad
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations;
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert!(fields.contains(&"spec.port"), "{fields:?}");
    assert!(
        fields.iter().any(|f| f.starts_with("spec.zones")),
        "{fields:?}"
    );

    let gone = c
        .delete_policy(pb::DeletePolicyRequest {
            name: "shop".into(),
            expected_resource_version: Some(v1),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition);
    c.delete_policy(pb::DeletePolicyRequest {
        name: "shop".into(),
        expected_resource_version: Some(v2),
    })
    .await
    .unwrap();
    let listed = c
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.policies.is_empty());

    // Health reports each service as serving.
    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "meridian.v1.PolicyService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    api.stop().await;
}

/// Reads `n` changes from a watch, failing on anything unexpected.
async fn collect(
    mut stream: tonic::Streaming<pb::WatchPoliciesResponse>,
    n: usize,
) -> Vec<pb::WatchPoliciesResponse> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match stream.message().await {
            Ok(Some(m)) => got.push(m),
            other => panic!("watch ended after {} of {n} changes: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn a_hundred_watchers_get_every_one_of_two_hundred_concurrent_writes_in_order() {
    let api = Api::start().await;
    // Watch from the beginning of the (empty) log; most streams open while
    // the writes run, so both the catch-up and the live feed are exercised.
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let mut c = api.policies();
        watchers.push(tokio::spawn(async move {
            let stream = c
                .watch_policies(pb::WatchPoliciesRequest {
                    resource_version: "0".into(),
                    name: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            collect(stream, 200).await
        }));
    }
    // 8 concurrent writers, 25 writes each over 10 policies: commits land
    // out of version order, which is what the watch must not be fooled by.
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let mut c = api.policies();
        writers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for i in 0..25u32 {
                let name = format!("p{}", (w * 25 + i) % 10);
                let a = 10 + (w + i) % 80;
                let r = c
                    .apply_policy(apply(policy(&name, (a, 100 - a)), None))
                    .await
                    .unwrap();
                versions.push(version(&r.into_inner().policy).parse::<i64>().unwrap());
            }
            versions
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort_unstable();
    assert_eq!(written.len(), 200);
    for (i, w) in watchers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .unwrap_or_else(|_| panic!("watcher {i} did not get 200 changes within 60 s"))
            .unwrap();
        let versions: Vec<i64> = got
            .iter()
            .map(|m| m.resource_version.parse().unwrap())
            .collect();
        assert_eq!(
            versions, written,
            "watcher {i}: every change, once, in order"
        );
        let kinds: Vec<i32> = got.iter().map(|m| m.r#type).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == pb::ChangeType::Created as i32)
                .count(),
            10
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn a_watch_from_nothing_lists_then_follows_and_resumes_from_any_version() {
    let api = Api::start().await;
    let mut c = api.policies();
    let first = c
        .apply_policy(apply(policy("one", (70, 30)), None))
        .await
        .unwrap()
        .into_inner();
    c.apply_policy(apply(policy("two", (70, 30)), None))
        .await
        .unwrap();

    let stream = c
        .watch_policies(pb::WatchPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut changes = stream;
    let listed = collect_n(&mut changes, 3).await;
    let kinds: Vec<i32> = listed.iter().map(|m| m.r#type).collect();
    use pb::ChangeType as T;
    assert_eq!(
        kinds,
        [T::Existing as i32, T::Existing as i32, T::Synced as i32]
    );
    let synced_at = listed[2].resource_version.clone();

    let updated = c
        .apply_policy(apply(policy("one", (50, 50)), None))
        .await
        .unwrap()
        .into_inner();
    c.delete_policy(pb::DeletePolicyRequest {
        name: "two".into(),
        expected_resource_version: None,
    })
    .await
    .unwrap();
    let live = collect_n(&mut changes, 2).await;
    assert_eq!(live[0].r#type, T::Updated as i32);
    assert_eq!(live[0].resource_version, version(&updated.policy));
    assert_eq!(live[1].r#type, T::Deleted as i32);
    assert_eq!(live[1].actor, "anonymous");

    // Resuming from the first write replays exactly what came after it.
    let resumed = c
        .watch_policies(pb::WatchPoliciesRequest {
            resource_version: version(&first.policy),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let replay = collect(resumed, 3).await;
    let kinds: Vec<i32> = replay.iter().map(|m| m.r#type).collect();
    assert_eq!(
        kinds,
        [T::Created as i32, T::Updated as i32, T::Deleted as i32]
    );
    assert!(replay[0].resource_version.parse::<i64>().unwrap() <= synced_at.parse().unwrap());

    // A name filter sees only that policy.
    let only_one = c
        .watch_policies(pb::WatchPoliciesRequest {
            resource_version: "0".into(),
            name: "one".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mine = collect(only_one, 2).await;
    assert!(mine
        .iter()
        .all(|m| m.policy.as_ref().unwrap().metadata.as_ref().unwrap().name == "one"));

    let bad = c
        .watch_policies(pb::WatchPoliciesRequest {
            resource_version: "yesterday".into(),
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    api.stop().await;
}

async fn collect_n(
    stream: &mut tonic::Streaming<pb::WatchPoliciesResponse>,
    n: usize,
) -> Vec<pb::WatchPoliciesResponse> {
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a change within 30 s");
        got.push(next.unwrap().expect("the watch goes on"));
    }
    got
}

#[tokio::test]
async fn overrides_and_drains_are_audited_events_that_a_resumed_event_watch_sees() {
    let api = Api::start().await;
    let mut c = api.policies();
    c.apply_policy(apply(policy("pay", (70, 30)), None))
        .await
        .unwrap();
    let mut f = api.failover();
    let mut events = f
        .watch_events(pb::WatchEventsRequest {
            after_id: None,
            policy: "pay".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let refused = f
        .set_override(pb::SetOverrideRequest {
            policy: "pay".into(),
            weights: BTreeMap::from([("a".to_owned(), 90), ("b".to_owned(), 20)])
                .into_iter()
                .collect(),
            reason: String::new(),
            expires_at: None,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["weights", "reason"]);

    f.set_override(pb::SetOverrideRequest {
        policy: "pay".into(),
        weights: [("a".to_owned(), 100), ("b".to_owned(), 0)]
            .into_iter()
            .collect(),
        reason: "region a incident drill".into(),
        expires_at: None,
        force: false,
    })
    .await
    .unwrap();
    let status = f
        .get_status(pb::GetStatusRequest {
            policy: "pay".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ov = status.r#override.expect("override in status");
    assert_eq!(ov.weights.get("a"), Some(&100));
    assert_eq!(ov.actor, "anonymous");
    assert_eq!(status.zones.len(), 2);

    let drained = f
        .drain(pb::DrainRequest {
            policy: "pay".into(),
            zone: "b".into(),
            force_reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.changed);
    let no_zone = f
        .drain(pb::DrainRequest {
            policy: "pay".into(),
            zone: "z".into(),
            force_reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_zone.code(), Code::NotFound);
    f.clear_override(pb::ClearOverrideRequest {
        policy: "pay".into(),
    })
    .await
    .unwrap();
    let again = f
        .clear_override(pb::ClearOverrideRequest {
            policy: "pay".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    let mut kinds = Vec::new();
    let mut first_id = 0;
    while kinds.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("the stream goes on");
        if kinds.is_empty() {
            first_id = e.id;
        }
        // Each of these writes re-derives the weights, with its own event.
        if e.kind != "weights-changed" {
            kinds.push(e.kind);
        }
    }
    assert_eq!(kinds, ["override-set", "zone-drained", "override-cleared"]);

    // Resuming after the first event gives the other two again, in order.
    let mut resumed = f
        .watch_events(pb::WatchEventsRequest {
            after_id: Some(first_id),
            policy: "pay".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut again = Vec::new();
    while again.len() < 2 {
        let kind = resumed.message().await.unwrap().unwrap().kind;
        if kind != "weights-changed" {
            again.push(kind);
        }
    }
    assert_eq!(again, ["zone-drained", "override-cleared"]);
    api.stop().await;
}

fn with<T>(secret: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(s) = secret {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {s}").parse().unwrap());
    }
    r
}

#[tokio::test]
async fn the_same_tokens_and_roles_as_rest() {
    use meridian_auth::{token, Authenticator, Config, Role};
    let (api, store) = Api::start_with(|s| Authenticator::new(s.clone(), Config::default())).await;
    let mut secrets = Vec::new();
    for role in Role::ALL {
        let secret = token::generate();
        store
            .create_token(role.as_str(), role.as_str(), &token::hash(&secret), "test")
            .await
            .unwrap();
        secrets.push(secret);
    }
    let mut c = api.policies();
    let none = c
        .apply_policy(with(None, apply(policy("g", (50, 50)), None)))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let viewer = c
        .apply_policy(with(Some(&secrets[0]), apply(policy("g", (50, 50)), None)))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");
    let written = c
        .apply_policy(with(Some(&secrets[2]), apply(policy("g", (50, 50)), None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        written.policy.unwrap().metadata.unwrap().source.as_deref(),
        Some("grpc")
    );
    let mut f = api.failover();
    let drain = |s: &str| {
        with(
            Some(s),
            pb::DrainRequest {
                policy: "g".into(),
                zone: "a".into(),
                force_reason: String::new(),
            },
        )
    };
    assert_eq!(
        f.drain(drain(&secrets[0])).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(
        f.drain(drain(&secrets[1]))
            .await
            .unwrap()
            .into_inner()
            .changed
    );
    let audit = store
        .audit(&meridian_store::tokens::AuditQuery {
            policy: Some("g".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let actors: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        actors,
        [
            ("zone-drained", "token:operator"),
            ("create", "token:admin")
        ]
    );
    api.stop().await;
}

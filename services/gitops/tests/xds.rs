//! What xDS clients see while a big commit is applied: the snapshot writer
//! of a replica, following the store, must publish the old commit or the
//! new one, never a mix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_gitops::sync::{Config, Outcome, Syncer};
use meridian_store::gitops::Source;
use meridian_test_support::database;
use meridian_test_support::git::{policy_yaml, Repo, TempDir};
use meridian_xds::{ResourceType, Resources};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Endpoint assignments by cluster name, as content versions.
fn assignments(r: &Resources) -> BTreeMap<String, String> {
    r.iter(ResourceType::ClusterLoadAssignment)
        .map(|e| (e.name.to_string(), e.version.to_string()))
        .collect()
}

#[tokio::test]
async fn xds_snapshots_show_one_commit_or_the_other() {
    const N: usize = 300;
    let db = database().await;
    let cache = TempDir::new("cache");
    let repo = Repo::new();
    let write_all = |endpoint_port: u16| {
        for i in 0..N {
            let name = format!("p{i:03}");
            repo.write(
                &format!("policies/{name}.yaml"),
                &policy_yaml(&name, &format!("{name}.example.com"), 8080)
                    .replace("port: 9}", &format!("port: {endpoint_port}}}")),
            );
        }
    };
    write_all(9);
    repo.commit("endpoints on port 9");
    let source: Source =
        serde_json::from_value(json!({"name": "bulk", "url": repo.file_url(), "path": "policies"}))
            .unwrap();
    let source = db.store.create_source(&source, "test").await.unwrap();
    let syncer = Syncer::new(
        db.store.clone(),
        Config {
            cache_dir: cache.0.clone(),
            poll: Duration::from_millis(50),
        },
    );
    assert_eq!(
        syncer.sync(&source, "test").await.unwrap().outcome,
        Outcome::Applied
    );
    let old = assignments(&meridian_xds::translate(
        &db.store.all().await.unwrap(),
        &Default::default(),
    ));

    // A replica's snapshot writer, with the default debounce.
    let (publisher, subscriber) = meridian_xds::snapshot_channel();
    let writer = meridian_xds_sync::Writer::new(
        db.store.clone(),
        publisher,
        meridian_xds_sync::Config::default(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    while subscriber.current().generation == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(assignments(&subscriber.current().resources), old);

    // Watch every snapshot published while the next commit is applied.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watching = CancellationToken::new();
    let watcher = {
        let (seen, watching, subscriber) = (seen.clone(), watching.clone(), subscriber.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while !watching.is_cancelled() {
                let snap = subscriber.current();
                if snap.generation != last {
                    last = snap.generation;
                    seen.lock().unwrap().push(snap);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    write_all(10);
    repo.commit("endpoints on port 10");
    assert_eq!(
        syncer.sync(&source, "test").await.unwrap().outcome,
        Outcome::Applied
    );
    let new = assignments(&meridian_xds::translate(
        &db.store.all().await.unwrap(),
        &Default::default(),
    ));
    assert_ne!(old, new);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while assignments(&subscriber.current().resources) != new {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new commit never reached xDS"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watching.cancel();
    watcher.await.unwrap();
    stop.cancel();
    task.await.unwrap();

    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for snap in seen.iter() {
        let got = assignments(&snap.resources);
        assert!(
            got == old || got == new,
            "snapshot {} mixes commits: {} of {N} assignments new",
            snap.generation,
            got.iter().filter(|(k, v)| new.get(*k) == Some(*v)).count()
        );
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|s| {
            if assignments(&s.resources) == old {
                "old"
            } else {
                "new"
            }
        })
        .collect();
    eprintln!("snapshots published during the sync: {kinds:?}; none mixed");
}

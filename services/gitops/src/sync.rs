//! A source's sync (fetch, read, validate, plan, apply, record) and the
//! loop of the gitops role that runs syncs as sources fall due.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use meridian_store::gitops::{NewSync, Source};
use meridian_store::{Store, Write};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Applied};
use crate::files;
use crate::plan::Planner;

/// How a sync ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The plan was applied in one transaction.
    Applied,
    /// The commit's policies are already the live state.
    Unchanged,
    /// Some file is invalid: nothing applied, every error listed.
    Invalid,
    /// The commit names policies another source or the API owns.
    Conflict,
    /// Fetching or writing failed; nothing applied.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
            Outcome::Conflict => "conflict",
            Outcome::Failed => "failed",
        }
    }
}

/// What one sync did, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub id: i64,
    pub outcome: Outcome,
    pub commit: Option<String>,
    pub plan: Value,
    pub errors: Vec<Value>,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Bare cache repositories, one per source.
    pub cache_dir: PathBuf,
    /// How often the loop looks for due sources (manual syncs and webhooks
    /// wait at most this long).
    pub poll: Duration,
}

/// Runs syncs. Cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    store: Store,
    config: Config,
    /// Set at shutdown so a fetch in progress is abandoned, not waited for.
    interrupt: Arc<AtomicBool>,
}

impl Syncer {
    pub fn new(store: Store, config: Config) -> Syncer {
        Syncer {
            store,
            config,
            interrupt: Arc::new(AtomicBool::new(false)),
        }
    }

    /// One sync of one source, recorded in `gitops_syncs`. Errors are only
    /// those of recording it; everything else is the report's outcome.
    #[tracing::instrument(name = "gitops.sync", skip_all, fields(source = %source.name, trigger))]
    pub async fn sync(
        &self,
        source: &Source,
        trigger: &str,
    ) -> Result<Report, meridian_store::Error> {
        let started = std::time::Instant::now();
        let result = self.sync_unmeasured(source, trigger).await;
        let outcome = match &result {
            Ok(report) => report.outcome.as_str(),
            // The database did not answer; nothing was recorded.
            Err(_) => "unrecorded",
        };
        metrics::SYNCS
            .get_or_create(&[
                ("source", source.name.clone()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        metrics::DURATION
            .get_or_create(&[("source", source.name.clone())])
            .observe(started.elapsed().as_secs_f64());
        if matches!(outcome, "applied" | "unchanged") {
            metrics::LAST_SUCCESS
                .get_or_create(&[("source", source.name.clone())])
                .set(Utc::now().timestamp());
        }
        result
    }

    async fn sync_unmeasured(
        &self,
        source: &Source,
        trigger: &str,
    ) -> Result<Report, meridian_store::Error> {
        let started_at = Utc::now();
        let record =
            |outcome: Outcome, commit: Option<String>, plan: Value, errors: Vec<Value>| NewSync {
                trigger: trigger.to_owned(),
                started_at,
                commit,
                outcome: outcome.as_str().to_owned(),
                plan,
                errors: Value::from(errors),
            };
        let cache = self.config.cache_dir.clone();
        let src = source.clone();
        let interrupt = self.interrupt.clone();
        let fetched =
            tokio::task::spawn_blocking(move || crate::git::fetch(&cache, &src, &interrupt)).await;
        let fetched = match fetched {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                let errors = vec![json!({"message": e.to_string()})];
                let sync = record(Outcome::Failed, None, json!({}), errors.clone());
                let id = self.store.record_sync(&source.name, &sync).await?;
                tracing::warn!(source = %source.name, error = %e, "gitops fetch failed");
                return Ok(report(id, &sync, errors));
            }
            Err(join) => {
                let errors = vec![json!({"message": format!("fetch task failed: {join}")})];
                let sync = record(Outcome::Failed, None, json!({}), errors.clone());
                let id = self.store.record_sync(&source.name, &sync).await?;
                return Ok(report(id, &sync, errors));
            }
        };
        let commit = Some(fetched.commit.clone());
        let loaded = match files::parse(&fetched.files) {
            Ok(l) => l,
            Err(errs) => {
                let errors: Vec<Value> = errs
                    .iter()
                    .map(|e| serde_json::to_value(e).unwrap_or_default())
                    .collect();
                let sync = record(Outcome::Invalid, commit, json!({}), errors.clone());
                let id = self.store.record_sync(&source.name, &sync).await?;
                tracing::warn!(source = %source.name, commit = %fetched.commit, errors = errs.len(), "gitops commit invalid; nothing applied");
                return Ok(report(id, &sync, errors));
            }
        };
        let desired: Vec<_> = loaded.into_iter().map(|l| l.policy).collect();
        let actor = format!("gitops:{}", source.name);
        let origin = format!(
            "{}{}",
            meridian_store::gitops_origin(&source.name),
            fetched.commit
        );
        let w = Write {
            actor: &actor,
            source: &origin,
            dry_run: false,
            force: false,
        };
        let planner = Planner::Source {
            name: &source.name,
            adopt: source.adopt,
        };
        match apply::apply(&self.store, planner, &desired, source.prune, &w).await {
            Ok(Applied { mut tx, plan }) => {
                let outcome = if plan.is_empty() {
                    Outcome::Unchanged
                } else {
                    Outcome::Applied
                };
                let sync = record(outcome, commit, plan.summary(), Vec::new());
                // Recorded in the apply's transaction: "applied" in the
                // history exactly when the policies changed.
                let id = tx.record_sync(&source.name, &sync).await?;
                tx.commit().await?;
                if outcome == Outcome::Applied {
                    tracing::info!(source = %source.name, commit = %fetched.commit,
                        create = plan.create.len(), update = plan.update.len(),
                        delete = plan.delete.len(), "gitops sync applied");
                }
                Ok(report(id, &sync, Vec::new()))
            }
            Err(apply::Error::Conflicts(conflicts)) => {
                let errors: Vec<Value> = conflicts
                    .iter()
                    .map(|c| json!({"policy": c.name, "message": c.message}))
                    .collect();
                let sync = record(Outcome::Conflict, commit, json!({}), errors.clone());
                let id = self.store.record_sync(&source.name, &sync).await?;
                Ok(report(id, &sync, errors))
            }
            Err(apply::Error::Store(e)) if e.is_unavailable() => Err(e),
            Err(apply::Error::Store(e)) => {
                let errors = vec![json!({"message": e.to_string()})];
                let sync = record(Outcome::Failed, commit, json!({}), errors.clone());
                let id = self.store.record_sync(&source.name, &sync).await?;
                Ok(report(id, &sync, errors))
            }
        }
    }

    /// The loop's bounded step: claims the most overdue source, if any,
    /// and syncs it. Returns whether there was one.
    pub async fn step(&self) -> Result<bool, meridian_store::Error> {
        let Some(source) = self.store.claim_due_source().await? else {
            return Ok(false);
        };
        self.sync(&source, "schedule").await?;
        Ok(true)
    }

    /// Runs steps until `stop`; a database outage is logged and retried.
    pub async fn run(self, stop: CancellationToken) {
        let interrupt = self.interrupt.clone();
        let watch = stop.clone();
        tokio::spawn(async move {
            watch.cancelled().await;
            interrupt.store(true, Ordering::Relaxed);
        });
        loop {
            let did = match self.step().await {
                Ok(did) => did,
                Err(e) => {
                    tracing::warn!(error = %e, "gitops step failed; retrying");
                    false
                }
            };
            if did {
                // More may be due: look again at once, unless stopping.
                if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }
}

mod metrics {
    use std::sync::LazyLock;

    use meridian_telemetry::{
        counter, gauge, histogram, Counter, Family, Gauge, HistogramFamily, Labels,
    };

    pub static SYNCS: LazyLock<Family<Labels<2>, Counter>> = LazyLock::new(|| {
        counter(
            "meridian_gitops_syncs",
            "GitOps syncs by source and outcome (applied, unchanged, invalid, conflict, failed, unrecorded).",
        )
    });
    pub static DURATION: LazyLock<HistogramFamily<1>> = LazyLock::new(|| {
        histogram(
            "meridian_gitops_sync_duration_seconds",
            "Time of one sync (fetch, validate, plan, apply) by source.",
            meridian_telemetry::LATENCY_SECONDS,
        )
    });
    /// For alerts on a source that stopped syncing: `time() - this`.
    pub static LAST_SUCCESS: LazyLock<Family<Labels<1>, Gauge>> = LazyLock::new(|| {
        gauge(
            "meridian_gitops_last_success_timestamp_seconds",
            "Unix time of the source's last sync that ended applied or unchanged.",
        )
    });
}

fn report(id: i64, sync: &NewSync, errors: Vec<Value>) -> Report {
    let outcome = match sync.outcome.as_str() {
        "applied" => Outcome::Applied,
        "unchanged" => Outcome::Unchanged,
        "invalid" => Outcome::Invalid,
        "conflict" => Outcome::Conflict,
        _ => Outcome::Failed,
    };
    Report {
        id,
        outcome,
        commit: sync.commit.clone(),
        plan: sync.plan.clone(),
        errors,
    }
}

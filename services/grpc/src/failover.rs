//! `meridian.v1.FailoverService`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use meridian_policy::FieldError;
use meridian_proto::v1 as pb;
use meridian_proto::v1::failover_service_server::FailoverService;
use meridian_proto::{from_timestamp, to_struct, to_timestamp};
use meridian_store::failover::{Event, Override};
use meridian_store::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::authorize;
use crate::error::{from_store, invalid};
use meridian_auth::{Authenticator, Identity, Role};
use std::sync::Arc;

/// Events are rows any replica writes; polling them by id is ordered and
/// resumable, and a quarter second is well inside what automation needs.
const EVENT_POLL: Duration = Duration::from_millis(250);

pub struct Failover {
    store: Store,
    auth: Arc<Authenticator>,
    shutdown: CancellationToken,
}

impl Failover {
    pub fn new(store: Store, auth: Arc<Authenticator>, shutdown: CancellationToken) -> Failover {
        Failover {
            store,
            auth,
            shutdown,
        }
    }

    async fn set_drain(
        &self,
        who: &Identity,
        policy: &str,
        zone: &str,
        drained: bool,
        force: Option<&str>,
    ) -> Result<bool, Status> {
        let p = self.store.get(policy).await.map_err(from_store)?;
        if !p.spec.zones.iter().any(|z| z.name == zone) {
            return Err(Status::not_found(format!(
                "policy {policy:?} has no zone {zone:?}"
            )));
        }
        self.store
            .set_drain_forced(policy, zone, drained, &who.actor, force)
            .await
            .map_err(from_store)
    }
}

fn override_to_pb(o: &Override) -> pb::Override {
    pb::Override {
        weights: o.weights.clone().into_iter().collect(),
        reason: o.reason.clone(),
        expires_at: o.expires_at.map(to_timestamp),
        actor: o.actor.clone(),
        created_at: Some(to_timestamp(o.created_at)),
    }
}

fn event_to_pb(e: Event) -> pb::WatchEventsResponse {
    pb::WatchEventsResponse {
        id: e.id,
        at: Some(to_timestamp(e.at)),
        policy: e.policy_name.unwrap_or_default(),
        kind: e.kind,
        severity: e.severity,
        message: e.message,
        details: to_struct(e.details.0),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FailoverService for Failover {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        authorize(&self.auth, &request, Role::Viewer).await?;
        let s = self
            .store
            .policy_status(&request.into_inner().policy)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::GetStatusResponse {
            policy: s.policy,
            cause: s.cause,
            decided_at: s.decided_at.map(to_timestamp),
            zones: s
                .zones
                .into_iter()
                .map(|z| pb::ZoneStatus {
                    name: z.name,
                    health: z.health,
                    failure_rate_percent: z.failure_rate_percent,
                    samples: z.samples,
                    spec_weight: z.spec_weight,
                    effective_weight: z.effective_weight,
                    drained: z.drained,
                    reason: z.reason,
                    last_report_at: z.last_report_at.map(to_timestamp),
                    decided_by: match z.decided_by {
                        meridian_failover::Source::Probes => "probes",
                        meridian_failover::Source::Traffic => "traffic",
                    }
                    .to_owned(),
                    traffic_failure_rate_percent: z.traffic.rate_percent(),
                    traffic_requests: i64::try_from(z.traffic.requests).unwrap_or(i64::MAX),
                    capacity_percent: z.capacity_percent,
                })
                .collect(),
            r#override: s.override_.as_ref().map(override_to_pb),
            dns_providers: s
                .dns
                .providers
                .into_iter()
                .map(|d| pb::DnsProviderStatus {
                    provider: d.provider,
                    state: d.state,
                    last_change_at: d.last_change_at.map(to_timestamp),
                    last_error: d.last_error,
                    updated_at: Some(to_timestamp(d.updated_at)),
                })
                .collect(),
            guard_rails: s
                .guard_rails
                .iter()
                .filter_map(|r| r.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let who = authorize(&self.auth, &request, Role::Viewer).await?;
        let permit = crate::open_stream(&self.auth, &who)?;
        let r = request.into_inner();
        let policy = (!r.policy.is_empty()).then_some(r.policy);
        let mut cursor = match r.after_id {
            Some(id) => id,
            None => self.store.last_event_id().await.map_err(from_store)?,
        };
        let (tx, rx) = mpsc::channel(256);
        let (store, stop) = (self.store.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            // Held until the stream ends (the client goes, or shutdown).
            let _permit = permit;
            loop {
                match store.events_after(cursor, policy.as_deref(), 500).await {
                    Ok(batch) => {
                        for e in batch {
                            cursor = e.id;
                            if tx.send(Ok(event_to_pb(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(from_store(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(EVENT_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_override(
        &self,
        request: Request<pb::SetOverrideRequest>,
    ) -> Result<Response<pb::SetOverrideResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Operator).await?;
        let r = request.into_inner();
        let policy = self.store.get(&r.policy).await.map_err(from_store)?;
        let weights: BTreeMap<String, u32> = r.weights.into_iter().collect();
        let expires_at = match &r.expires_at {
            None => None,
            Some(t) => Some(from_timestamp(t).ok_or_else(|| {
                invalid(vec![FieldError::new("expires_at", "not a valid timestamp")])
            })?),
        };
        let ov = meridian_failover::decide::Override {
            weights: weights.clone(),
            reason: r.reason.clone(),
            expires_at_ms: expires_at.map(|t| t.timestamp_millis()),
        };
        let problems = meridian_failover::decide::override_request_problems(
            &policy.spec,
            &ov,
            Utc::now().timestamp_millis(),
        );
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let stored = self
            .store
            .set_override_forced(
                &r.policy,
                &weights,
                &r.reason,
                expires_at,
                &who.actor,
                r.force.then_some(r.reason.as_str()),
            )
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::SetOverrideResponse {
            r#override: Some(override_to_pb(&stored)),
        }))
    }

    async fn clear_override(
        &self,
        request: Request<pb::ClearOverrideRequest>,
    ) -> Result<Response<pb::ClearOverrideResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Operator).await?;
        let policy = request.into_inner().policy;
        self.store.get(&policy).await.map_err(from_store)?;
        if self
            .store
            .clear_override(&policy, &who.actor)
            .await
            .map_err(from_store)?
        {
            Ok(Response::new(pb::ClearOverrideResponse {}))
        } else {
            Err(Status::not_found(format!(
                "policy {policy:?} has no override"
            )))
        }
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Operator).await?;
        let r = request.into_inner();
        let force = Some(r.force_reason.as_str()).filter(|r| !r.trim().is_empty());
        let changed = self
            .set_drain(&who, &r.policy, &r.zone, true, force)
            .await?;
        Ok(Response::new(pb::DrainResponse { changed }))
    }

    async fn undrain(
        &self,
        request: Request<pb::UndrainRequest>,
    ) -> Result<Response<pb::UndrainResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Operator).await?;
        let r = request.into_inner();
        let changed = self
            .set_drain(&who, &r.policy, &r.zone, false, None)
            .await?;
        Ok(Response::new(pb::UndrainResponse { changed }))
    }
}

//! `meridian.v1.RolloutService`: the same rollout status and actions as
//! the REST API (`services/api/src/rollouts.rs`), one store call each.

use std::sync::Arc;

use meridian_auth::{Authenticator, Role};
use meridian_policy::FieldError;
use meridian_proto::v1 as pb;
use meridian_proto::v1::rollout_service_server::RolloutService;
use meridian_rollout::{Action, Phase};
use meridian_store::rollouts::Status as RolloutStatus;
use meridian_store::Store;
use tonic::{Request, Response, Status};

use crate::authorize;
use crate::error::{from_store, invalid};

pub struct Rollouts {
    store: Store,
    auth: Arc<Authenticator>,
}

impl Rollouts {
    pub fn new(store: Store, auth: Arc<Authenticator>) -> Rollouts {
        Rollouts { store, auth }
    }
}

fn phase_to_pb(p: Phase) -> pb::RolloutPhase {
    match p {
        Phase::Progressing => pb::RolloutPhase::Progressing,
        Phase::Paused => pb::RolloutPhase::Paused,
        Phase::Failed => pb::RolloutPhase::Failed,
        Phase::Completed => pb::RolloutPhase::Completed,
        Phase::Aborted => pb::RolloutPhase::Aborted,
    }
}

/// The action asked for; `UNSPECIFIED` and unknown numbers are the
/// caller's mistake, named as a field violation.
fn action_from_pb(n: i32) -> Result<Action, Status> {
    match pb::RolloutAction::try_from(n) {
        Ok(pb::RolloutAction::Pause) => Ok(Action::Pause),
        Ok(pb::RolloutAction::Resume) => Ok(Action::Resume),
        Ok(pb::RolloutAction::Promote) => Ok(Action::Promote),
        Ok(pb::RolloutAction::Abort) => Ok(Action::Abort),
        Ok(pb::RolloutAction::Unspecified) | Err(_) => Err(invalid(vec![FieldError::new(
            "action",
            format!("{n} is not an action: use PAUSE, RESUME, PROMOTE or ABORT"),
        )])),
    }
}

fn status_to_pb(s: RolloutStatus) -> pb::RolloutStatus {
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    pb::RolloutStatus {
        phase: phase_to_pb(s.phase).into(),
        zone_index: index(s.zone_index),
        step_index: index(s.step_index),
        steps: s.steps,
        zone_order: s.zone_order.unwrap_or_default(),
        weights: s.weights.into_iter().collect(),
        inconclusive: s.inconclusive,
        unavailable_zones: s.unavailable_zones.into_iter().collect(),
        reason: s.reason,
        last_analysis: s
            .last_analysis
            .and_then(|a| serde_json::to_value(a).ok())
            .and_then(meridian_proto::to_struct),
        started_ms: s.started_ms,
        step_started_ms: s.step_started_ms,
        route: s.route,
        version: s.version,
    }
}

#[tonic::async_trait]
impl RolloutService for Rollouts {
    async fn get_rollouts(
        &self,
        request: Request<pb::GetRolloutsRequest>,
    ) -> Result<Response<pb::GetRolloutsResponse>, Status> {
        authorize(&self.auth, &request, Role::Viewer).await?;
        let policy = request.into_inner().policy;
        // A policy that does not exist is NOT_FOUND, not an empty list.
        self.store.get(&policy).await.map_err(from_store)?;
        let statuses = self
            .store
            .rollout_statuses(&policy)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::GetRolloutsResponse {
            rollouts: statuses.into_values().map(status_to_pb).collect(),
        }))
    }

    async fn act_on_rollout(
        &self,
        request: Request<pb::ActOnRolloutRequest>,
    ) -> Result<Response<pb::ActOnRolloutResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Operator).await?;
        let r = request.into_inner();
        let action = action_from_pb(r.action)?;
        let queued = self
            .store
            .request_rollout_action(&r.policy, &r.route, action, &who.actor)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::ActOnRolloutResponse {
            changes: queued.is_some(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_from_the_wire() {
        let cases = [
            (pb::RolloutAction::Pause as i32, Some(Action::Pause)),
            (pb::RolloutAction::Resume as i32, Some(Action::Resume)),
            (pb::RolloutAction::Promote as i32, Some(Action::Promote)),
            (pb::RolloutAction::Abort as i32, Some(Action::Abort)),
            (pb::RolloutAction::Unspecified as i32, None),
            (99, None),
        ];
        for (n, want) in cases {
            let got = action_from_pb(n);
            match want {
                Some(a) => assert_eq!(got.unwrap(), a, "{n}"),
                None => assert_eq!(got.unwrap_err().code(), tonic::Code::InvalidArgument, "{n}"),
            }
        }
    }
}

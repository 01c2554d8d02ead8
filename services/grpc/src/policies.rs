//! `meridian.v1.PolicyService`.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use meridian_policy::{validate, Policy};
use meridian_proto::v1 as pb;
use meridian_proto::v1::policy_service_server::PolicyService;
use meridian_store::watch::ChangeKind;
use meridian_store::{ListQuery, Precondition, Write};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::authorize;
use crate::error::{from_store, invalid};
use crate::watch::{self, Feed, Item, Start};
use meridian_auth::{Authenticator, Role};
use std::sync::Arc;

const SOURCE: &str = "grpc";
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub struct Policies {
    feed: Feed,
    auth: Arc<Authenticator>,
    shutdown: CancellationToken,
}

impl Policies {
    pub fn new(feed: Feed, auth: Arc<Authenticator>, shutdown: CancellationToken) -> Policies {
        Policies {
            feed,
            auth,
            shutdown,
        }
    }
}

fn precondition(expected: Option<String>) -> Precondition {
    match expected {
        Some(v) if !v.is_empty() => Precondition::Version(v),
        _ => Precondition::None,
    }
}

fn parse_version(field: &str, v: &str) -> Result<i64, Status> {
    v.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
        invalid(vec![meridian_policy::FieldError::new(
            field,
            format!("{v:?} is not a resource version"),
        )])
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPoliciesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for Policies {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        authorize(&self.auth, &request, Role::Viewer).await?;
        let policy = self
            .feed
            .store()
            .get(&request.into_inner().name)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some((&policy).into()),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        authorize(&self.auth, &request, Role::Viewer).await?;
        let r = request.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => {
                return Err(invalid(vec![meridian_policy::FieldError::new(
                    "page_size",
                    format!("must be at most {MAX_PAGE}, not {n}"),
                )]))
            }
        };
        let query = ListQuery {
            labels: r.labels.into_iter().collect::<BTreeMap<_, _>>(),
            after: (!r.page_token.is_empty()).then_some(r.page_token),
            limit,
        };
        let (items, next) = self.feed.store().list(&query).await.map_err(from_store)?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: items.iter().map(Into::into).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Admin).await?;
        let r = request.into_inner();
        let message = r
            .policy
            .ok_or_else(|| invalid(vec![meridian_policy::FieldError::new("policy", "required")]))?;
        let mut policy = Policy::try_from(message).map_err(|e| invalid(e.0))?;
        policy.metadata.clear_server_fields();
        validate(&policy).map_err(invalid)?;
        let write = Write {
            actor: &who.actor,
            source: SOURCE,
            dry_run: r.dry_run,
            // A GitOps-owned policy is changed in its repository; the
            // refusal names the source.
            force: false,
        };
        let (stored, created) = self
            .feed
            .store()
            .replace(&policy, &precondition(r.expected_resource_version), &write)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::ApplyPolicyResponse {
            policy: Some((&stored).into()),
            created,
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let who = authorize(&self.auth, &request, Role::Admin).await?;
        let r = request.into_inner();
        let write = Write {
            actor: &who.actor,
            source: SOURCE,
            dry_run: false,
            force: false,
        };
        let gone = self
            .feed
            .store()
            .delete(&r.name, &precondition(r.expected_resource_version), &write)
            .await
            .map_err(from_store)?;
        Ok(Response::new(pb::DeletePolicyResponse {
            policy: Some((&gone).into()),
        }))
    }

    type WatchPoliciesStream = WatchStream;

    async fn watch_policies(
        &self,
        request: Request<pb::WatchPoliciesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let who = authorize(&self.auth, &request, Role::Viewer).await?;
        let permit = crate::open_stream(&self.auth, &who)?;
        let r = request.into_inner();
        let start = match r.resource_version.as_str() {
            "" => Start::Snapshot,
            v => Start::After(parse_version("resource_version", v)?),
        };
        let name = (!r.name.is_empty()).then_some(r.name);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(watch::watch(
            self.feed.clone(),
            start,
            name,
            tx,
            self.shutdown.clone(),
        ));
        // The permit lives as long as the response stream.
        let stream = ReceiverStream::new(rx).map(move |item| {
            let _ = &permit;
            match item {
                Ok(item) => Ok(response(item)),
                Err(e) => Err(from_store(e)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn response(item: Item) -> pb::WatchPoliciesResponse {
    use pb::ChangeType as T;
    match item {
        Item::Existing(p) => pb::WatchPoliciesResponse {
            r#type: T::Existing as i32,
            resource_version: p.metadata.resource_version.clone().unwrap_or_default(),
            policy: Some(p.as_ref().into()),
            actor: String::new(),
        },
        Item::Synced(at) => pb::WatchPoliciesResponse {
            r#type: T::Synced as i32,
            resource_version: at.to_string(),
            policy: None,
            actor: String::new(),
        },
        Item::Change(c) => pb::WatchPoliciesResponse {
            r#type: match c.kind {
                ChangeKind::Created => T::Created,
                ChangeKind::Updated => T::Updated,
                ChangeKind::Deleted => T::Deleted,
            } as i32,
            resource_version: c.resource_version.to_string(),
            policy: Some((&c.policy).into()),
            actor: c.actor.clone(),
        },
    }
}

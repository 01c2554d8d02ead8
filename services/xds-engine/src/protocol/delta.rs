//! Incremental ADS (`DeltaAggregatedResources`).

use std::sync::Arc;

use xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::{
    intern, AckOutcome, Core, Force, KnownResource, NodeView, StreamState, TypeReport, TypeState,
};
use crate::resources::{ResourceType, Resources};
use crate::wire::DeltaResponse;

/// Protocol state of one delta stream.
#[derive(Debug)]
pub struct DeltaStream {
    pub(super) core: Core,
}

impl DeltaStream {
    /// The ACK or NACK carried by the last handled request, once.
    pub fn take_answer(&mut self) -> Option<(ResourceType, super::Answer)> {
        self.core.take_answer()
    }

    /// A new stream for a node.
    pub fn new(node: Box<dyn NodeView>) -> Self {
        DeltaStream {
            core: Core::new(node),
        }
    }

    /// Handles one request. `res` is `None` until the first snapshot is
    /// published: the request is recorded and answered by [`Self::on_snapshot`].
    pub fn handle_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        res: Option<&Resources>,
        now_ms: u64,
    ) -> Vec<DeltaResponse> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(type_url = %req.type_url, "ignoring request for an unserved type");
            return Vec::new();
        };
        let exists = self.core.state(ty).is_some();
        let error = req.error_detail.as_ref().map(|s| s.message.as_str());
        // Unlike SotW, a request with a stale nonce is not dropped: its
        // subscribe/unsubscribe lists are deltas that would otherwise be lost.
        // Only its ACK/NACK meaning is ignored.
        let outcome = self
            .core
            .ack_or_nack(ty, &req.response_nonce, error, now_ms);
        if let AckOutcome::Nack = outcome {
            tracing::warn!(
                type_url = %req.type_url,
                error = error.unwrap_or_default(),
                "client rejected configuration"
            );
        }
        let rds_acked =
            ty == ResourceType::RouteConfiguration && matches!(outcome, AckOutcome::Ack);
        // A listener removal the client accepted may release its routes' clusters.
        let lds_acked = ty == ResourceType::Listener && matches!(outcome, AckOutcome::Ack);

        let set = res.map(|r| &**r.set(ty));
        let st = self.core.types[ty.index()].get_or_insert_with(TypeState::default);
        // An ACK or NACK names nothing: the subscription stands, and is
        // neither copied nor compared (thousands of streams ACK each push).
        let touches = !exists
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty();
        let mut newly: Vec<Arc<str>> = Vec::new();
        let mut first_wildcard = false;
        let sub_changed = touches && {
            let mut sub = st.sub.clone();
            if !exists {
                // Legacy wildcard: a first request that subscribes to nothing
                // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return).
                sub.wildcard = req.resource_names_subscribe.is_empty();
                // Reconnect: what the client already has is not resent
                // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#xds-protocol-delta-reconnect).
                if !req.initial_resource_versions.is_empty() {
                    st.initial = Some(
                        req.initial_resource_versions
                            .iter()
                            .map(|(n, v)| (n.clone(), v.clone()))
                            .collect(),
                    );
                }
            }
            let was_wildcard = exists && st.sub.wildcard;
            // What thousands of Envoys send at start-up: one request
            // subscribing to the names another stream holds. It takes that
            // stream's set, without building, interning and comparing one.
            let shared = (sub.names.is_empty() && req.resource_names_unsubscribe.is_empty())
                .then(|| shared_subscription(&req.resource_names_subscribe))
                .flatten();
            let listed = if let Some(shared) = shared {
                newly.extend(shared.iter().cloned());
                sub.names = shared;
                &[][..]
            } else {
                &req.resource_names_subscribe[..]
            };
            for n in listed {
                if n == "*" {
                    sub.wildcard = true;
                } else if !sub.names.contains(n.as_str()) {
                    let k = intern(n, set);
                    Arc::make_mut(&mut sub.names).insert(k.clone());
                    newly.push(k);
                }
            }
            for n in &req.resource_names_unsubscribe {
                if n == "*" {
                    sub.wildcard = false;
                } else if sub.names.contains(n.as_str()) {
                    Arc::make_mut(&mut sub.names).remove(n.as_str());
                }
            }
            if !exists && sub.wildcard && req.initial_resource_versions.is_empty() {
                first_wildcard = true;
            }
            let sub_changed = sub != st.sub;
            if sub_changed {
                st.force = if exists && sub.wildcard && !was_wildcard {
                    Force::All
                } else {
                    match std::mem::take(&mut st.force) {
                        Force::All => Force::All,
                        Force::Names(mut old) => {
                            old.extend(newly.iter().cloned());
                            Force::Names(old)
                        }
                        Force::Nothing => Force::Names(newly.clone()),
                    }
                };
                st.set_sub(sub);
            }
            sub_changed
        };
        let rds_sub_changed = ty == ResourceType::RouteConfiguration && sub_changed;

        let Some(res) = res else {
            return Vec::new();
        };
        self.core.refresh(res);
        let mut out = Vec::new();
        for t in ResourceType::PUSH_ORDER {
            let resp = if t == ty {
                self.build(t, res, &newly, first_wildcard)
            } else if (rds_acked || lds_acked || rds_sub_changed)
                && matches!(
                    t,
                    ResourceType::Cluster | ResourceType::ClusterLoadAssignment
                )
            {
                self.build(t, res, &[], false)
            } else {
                None
            };
            out.extend(resp);
        }
        out
    }

    /// Responses for a new snapshot, in make-before-break order.
    pub fn on_snapshot(&mut self, res: &Resources) -> Vec<DeltaResponse> {
        self.core.refresh(res);
        ResourceType::PUSH_ORDER
            .into_iter()
            .filter_map(|t| self.build(t, res, &[], false))
            .collect()
    }

    fn build(
        &mut self,
        ty: ResourceType,
        res: &Resources,
        newly: &[Arc<str>],
        always: bool,
    ) -> Option<DeltaResponse> {
        let ch = self.core.changes(ty, res)?;
        let mut removed = ch.removed.clone();
        // A subscribed name that does not exist is reported in
        // removed_resources, so the client need not wait for a timeout
        // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#knowing-when-a-requested-resource-does-not-exist).
        let mut missing = |n: &Arc<str>, e: Option<&Arc<crate::resources::Entry>>| {
            let exists = e.is_some() || ch.extras.iter().chain(&ch.kept).any(|e| e.name == *n);
            if !exists && !removed.contains(n) {
                removed.push(n.clone());
            }
        };
        if newly.is_sorted() {
            super::lookup_sorted(&ch.set, newly, &mut missing);
        } else {
            newly.iter().for_each(|n| missing(n, ch.set.get(n)));
        }
        self.core.commit(ty, &ch);
        if ch.updated.is_empty() && removed.is_empty() && !always {
            return None;
        }
        let version = self.core.sotw_version(ty, &ch);
        let nonce = self.core.next_nonce();
        let st = self.core.state_mut(ty)?;
        st.nonce = nonce;
        st.sent_version = Some(version.clone());
        st.pending = true;
        Some(DeltaResponse {
            system_version_info: version,
            type_url: ty.type_url(),
            nonce: nonce.to_string(),
            resources: ch.updated,
            removed_resources: removed,
        })
    }
}

/// The shared name set that is exactly `names` (see
/// [`super::shared_names_for`]).
fn shared_subscription(names: &[String]) -> Option<Arc<std::collections::BTreeSet<Arc<str>>>> {
    if names.len() < 8 {
        return None;
    }
    let mut hash = crate::wire::NamesHash::default();
    for n in names {
        hash.name(n.as_bytes());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    super::shared_names_for(hash.0, &names)
}

impl StreamState for DeltaStream {
    fn reports(&self) -> Vec<TypeReport> {
        self.core.reports()
    }
    fn known_resources(&mut self) -> Vec<KnownResource> {
        self.core.known_resources()
    }
    fn rejected_routes(&self) -> Vec<super::RejectedRoute> {
        self.core.rejected_routes()
    }
}

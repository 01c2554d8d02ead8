//! Incremental ADS (`DeltaAggregatedResources`).

use std::sync::Arc;

use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::{AckOutcome, Core, Known, KnownResource, NodeView, StreamState, TypeReport, TypeState};
use crate::resources::{set_version, ResourceType, Resources};

/// Protocol state of one delta stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    core: Core,
}

impl DeltaStream {
    /// The ACK or NACK carried by the last handled request, once.
    pub fn take_answer(&mut self) -> Option<(ResourceType, super::Answer)> {
        self.core.take_answer()
    }

    /// A new stream for a node.
    pub fn new(node: NodeView) -> Self {
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
    ) -> Vec<DeltaDiscoveryResponse> {
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

        let st = self.core.types[ty.index()].get_or_insert_with(TypeState::default);
        let before = st.sub.clone();
        let mut first_wildcard = false;
        if !exists {
            // Legacy wildcard: a first request that subscribes to nothing
            // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return).
            st.sub.wildcard = req.resource_names_subscribe.is_empty();
            // Reconnect: what the client already has is not resent
            // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#xds-protocol-delta-reconnect).
            for (n, v) in &req.initial_resource_versions {
                st.known.insert(
                    Arc::from(n.as_str()),
                    Known {
                        version: Arc::from(v.as_str()),
                        entry: None,
                    },
                );
            }
        }
        let mut newly = Vec::new();
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.sub.wildcard = true;
            } else if st.sub.names.insert(n.clone()) {
                newly.push(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.sub.wildcard = false;
            } else {
                st.sub.names.remove(n);
            }
        }
        if !exists && st.sub.wildcard && req.initial_resource_versions.is_empty() {
            first_wildcard = true;
        }
        // The client dropped what it unsubscribed from: forget it, so that
        // neither removal nor make-before-break is applied to it.
        let sub = st.sub.clone();
        st.known.retain(|n, _| sub.covers(n));
        let rds_sub_changed = ty == ResourceType::RouteConfiguration && before != sub;
        if rds_sub_changed {
            self.core.drop_unsubscribed_routes();
        }

        let Some(res) = res else {
            return Vec::new();
        };
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
    pub fn on_snapshot(&mut self, res: &Resources) -> Vec<DeltaDiscoveryResponse> {
        ResourceType::PUSH_ORDER
            .into_iter()
            .filter_map(|t| self.build(t, res, &[], false))
            .collect()
    }

    fn build(
        &mut self,
        ty: ResourceType,
        res: &Resources,
        newly: &[String],
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        self.core.state(ty)?;
        let sel = self.core.select(ty, res);
        let nonce_seq = self.core.nonce_seq;
        let st = self.core.state_mut(ty)?;

        let resources: Vec<Resource> = sel
            .iter()
            .filter(|(n, e)| st.known.get(*n).is_none_or(|k| k.version != e.version))
            .map(|(n, e)| Resource {
                name: n.to_string(),
                version: e.version.to_string(),
                resource: Some(e.any.clone()),
                ..Default::default()
            })
            .collect();
        let mut removed: Vec<String> = st
            .known
            .keys()
            .filter(|n| !sel.contains_key(*n))
            .map(|n| n.to_string())
            .collect();
        // A subscribed name that does not exist is reported in
        // removed_resources, so the client need not wait for a timeout
        // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#knowing-when-a-requested-resource-does-not-exist).
        for n in newly {
            if !sel.contains_key(n.as_str()) && !removed.contains(n) {
                removed.push(n.clone());
            }
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for r in &resources {
            if let Some(e) = sel.get(r.name.as_str()) {
                st.known.insert(
                    e.name.clone(),
                    Known {
                        version: e.version.clone(),
                        entry: Some(e.clone()),
                    },
                );
            }
        }
        for n in &removed {
            st.known.remove(n.as_str());
        }
        let version = set_version(sel.values());
        let nonce = (nonce_seq + 1).to_string();
        self.core.nonce_seq = nonce_seq + 1;
        let st = self.core.state_mut(ty)?;
        st.nonce = Some(nonce.clone());
        st.sent_version = Some(version.clone());
        st.pending = true;
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: ty.type_url().to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

impl StreamState for DeltaStream {
    fn reports(&self) -> Vec<TypeReport> {
        self.core.reports()
    }
    fn known_resources(&self) -> Vec<KnownResource> {
        self.core.known_resources()
    }
}

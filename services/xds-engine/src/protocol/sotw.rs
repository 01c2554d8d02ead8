//! State-of-the-world ADS (`StreamAggregatedResources`).

use std::sync::Arc;

use super::{
    intern, AckOutcome, Core, Force, KnownResource, NodeView, StreamState, Subscription,
    TypeReport, TypeState,
};
use crate::resources::{Entry, ResourceType, Resources};
use crate::wire::{SotwRequest, SotwResponse};

/// Protocol state of one SotW stream.
#[derive(Debug)]
pub struct SotwStream {
    pub(super) core: Core,
}

impl SotwStream {
    /// The ACK or NACK carried by the last handled request, once.
    pub fn take_answer(&mut self) -> Option<(ResourceType, super::Answer)> {
        self.core.take_answer()
    }

    /// A new stream for a node.
    pub fn new(node: Box<dyn NodeView>) -> Self {
        SotwStream {
            core: Core::new(node),
        }
    }

    /// Handles one request. `res` is `None` until the first snapshot is
    /// published: the request is recorded and answered by [`Self::on_snapshot`].
    pub fn handle_request(
        &mut self,
        req: &SotwRequest,
        res: Option<&Resources>,
        now_ms: u64,
    ) -> Vec<SotwResponse> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(type_url = %req.type_url, "ignoring request for an unserved type");
            return Vec::new();
        };
        let exists = self.core.state(ty).is_some();
        let error = req.error_detail.as_ref().map(|s| s.message.as_str());
        let outcome = self
            .core
            .ack_or_nack(ty, &req.response_nonce, error, now_ms);
        // A stale nonce means a newer response is in flight; the client will
        // answer it with its current names, so this request is ignored
        // (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-updates).
        if matches!(outcome, AckOutcome::Stale) {
            return Vec::new();
        }
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
        // The next subscription depends only on the previous one and the
        // names, and applying the same names twice changes nothing: the
        // same list as last time is the same subscription.
        let same_names = exists && st.last_names == Some(req.names_hash());
        st.last_names = Some(req.names_hash());
        let new_sub = if same_names {
            None
        } else {
            let names: Vec<&str> = req.resource_names().collect();
            match super::shared_names_for(req.names_hash(), &names) {
                // What thousands of Envoys ask for at start-up: the list
                // another stream holds.
                Some(shared) => Some(Subscription {
                    wildcard: false,
                    legacy: false,
                    names: shared,
                }),
                None => next_subscription(exists.then_some(&st.sub), &names, set),
            }
            .filter(|n| !exists || st.sub != *n)
        };
        let sub_changed = new_sub.is_some();
        if let Some(new_sub) = new_sub {
            // The client holds nothing of what it did not ask for before.
            st.force = if new_sub.wildcard && !st.sub.wildcard {
                Force::All
            } else {
                let newly: Vec<Arc<str>> =
                    new_sub.names.difference(&st.sub.names).cloned().collect();
                match std::mem::take(&mut st.force) {
                    Force::All => Force::All,
                    Force::Names(mut old) => {
                        old.extend(newly);
                        Force::Names(old)
                    }
                    Force::Nothing => Force::Names(newly),
                }
            };
            st.set_sub(new_sub);
        }
        if !exists && !req.version_info.is_empty() {
            st.client_version = Some(req.version_info.clone());
        }
        let rds_sub_changed = ty == ResourceType::RouteConfiguration && sub_changed;

        let Some(res) = res else {
            return Vec::new();
        };
        self.core.refresh(res);
        let mut out = Vec::new();
        for t in ResourceType::PUSH_ORDER {
            let resp = if t == ty {
                self.build(t, res, sub_changed && t.is_full_state())
            } else if (rds_acked || lds_acked || rds_sub_changed)
                && matches!(
                    t,
                    ResourceType::Cluster | ResourceType::ClusterLoadAssignment
                )
            {
                // Routes the client uses changed: clusters kept for them may go.
                self.build(t, res, false)
            } else {
                None
            };
            out.extend(resp);
        }
        out
    }

    /// Responses for a new snapshot, in make-before-break order.
    pub fn on_snapshot(&mut self, res: &Resources) -> Vec<SotwResponse> {
        self.core.refresh(res);
        ResourceType::PUSH_ORDER
            .into_iter()
            .filter_map(|t| self.build(t, res, false))
            .collect()
    }

    fn build(&mut self, ty: ResourceType, res: &Resources, force: bool) -> Option<SotwResponse> {
        let mut ch = self.core.changes(ty, res)?;
        let version = self.core.sotw_version(ty, &ch);
        let st = self.core.state_mut(ty)?;
        if ch.first && st.client_version.take().as_deref() == Some(version.as_str()) {
            // Reconnect (maybe to another replica) with what we would send
            // now: the client is up to date, send nothing.
            st.sent_version = Some(version.clone());
            st.acked_version = Some(version);
            self.core.commit(ty, &ch);
            if ty == ResourceType::RouteConfiguration {
                self.core.acked_routes = Some(ch.set.clone());
            }
            return None;
        }
        let resources: Vec<Arc<Entry>> = if ty.is_full_state() {
            if !(force || ch.first || !ch.is_empty()) {
                self.core.commit(ty, &ch);
                return None;
            }
            if ch.first {
                // Nothing was sent: everything selected changed, so the
                // full state is what `changes` found (a new stream's CDS
                // and LDS, 10,000 times at start-up).
                std::mem::take(&mut ch.updated)
            } else {
                self.core.full_state(ty, &ch)
            }
        } else {
            // RDS/EDS: only what changed. Nothing to send is no response
            // (SotW cannot say "absent" for these; the client times out).
            std::mem::take(&mut ch.updated)
        };
        self.core.commit(ty, &ch);
        if !ty.is_full_state() && resources.is_empty() {
            return None;
        }
        let nonce = self.core.next_nonce();
        let st = self.core.state_mut(ty)?;
        st.nonce = nonce;
        st.sent_version = Some(version.clone());
        st.pending = true;
        Some(SotwResponse {
            version_info: version,
            type_url: ty.type_url(),
            nonce: nonce.to_string(),
            resources,
        })
    }
}

/// Subscription after a request
/// (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return>):
/// the first request naming nothing is a (legacy) wildcard that later empty
/// requests keep; `*` is an explicit wildcard; otherwise the names replace
/// the previous set. `None`: the same subscription as before.
fn next_subscription(
    prev: Option<&Subscription>,
    names: &[&str],
    set: Option<&crate::resources::TypeSet>,
) -> Option<Subscription> {
    let legacy_kept = match prev {
        None => names.is_empty(),
        Some(p) => p.legacy && names.is_empty(),
    };
    // The common case: an ACK naming the same subscription again (Envoy's
    // EDS names every cluster in each request). Compare without building.
    if let Some(p) = prev {
        let same = !p.legacy
            && p.wildcard == names.contains(&"*")
            && p.names.len() == names.iter().filter(|n| **n != "*").count()
            && names.iter().all(|n| *n == "*" || p.names.contains(*n));
        if same {
            return None;
        }
    }
    if legacy_kept {
        return Some(Subscription {
            wildcard: true,
            legacy: true,
            names: Arc::default(),
        });
    }
    Some(Subscription {
        wildcard: names.contains(&"*"),
        legacy: false,
        names: Arc::new(
            names
                .iter()
                .filter(|n| **n != "*")
                .map(|n| match prev.and_then(|p| p.names.get(*n)) {
                    Some(k) => k.clone(),
                    None => intern(n, set),
                })
                .collect(),
        ),
    })
}

impl StreamState for SotwStream {
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

//! Which policy a rejected route configuration is to blame on.
//!
//! The egress route configuration of a port (`egress_<port>`) holds one
//! virtual host per policy on that port, named after the policy. When a
//! client refuses it (NACK), the policies whose virtual host differs from
//! the form of the route the client last accepted are the suspects: the
//! client took everything else before. A route it never accepted makes every
//! policy on it a suspect, which names nobody unless there is one.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

use crate::translate::egress_port;
use meridian_xds_engine::RejectedRoute;

/// The policies (virtual host names) of a rejected egress route that
/// differ from, or are missing in, the accepted form. Empty for a route
/// that is not an egress route or does not decode.
pub fn suspects(route: &RejectedRoute) -> BTreeSet<String> {
    if egress_port(&route.rejected.name).is_none() {
        return BTreeSet::new();
    }
    let vhosts = |bytes: &[u8]| -> Option<BTreeMap<String, Vec<u8>>> {
        let rc = RouteConfiguration::decode(bytes).ok()?;
        Some(
            rc.virtual_hosts
                .into_iter()
                .map(|v| (v.name.clone(), v.encode_to_vec()))
                .collect(),
        )
    };
    let Some(rejected) = vhosts(&route.rejected.bytes) else {
        return BTreeSet::new();
    };
    let accepted = route
        .accepted
        .as_ref()
        .and_then(|a| vhosts(&a.bytes))
        .unwrap_or_default();
    rejected
        .into_iter()
        .filter(|(name, bytes)| accepted.get(name) != Some(bytes))
        .map(|(name, _)| name)
        .collect()
}

/// The one policy to leave out of the route: of the suspects, the one
/// written last (`written`: policy → when it was last written). With no
/// accepted form to compare with, only a lone suspect is named: leaving
/// out a guess would take a healthy policy away from every client.
pub fn culprit(
    route: &RejectedRoute,
    written: impl Fn(&str) -> Option<i64>,
    already_out: impl Fn(&str) -> bool,
) -> Option<String> {
    let suspects: Vec<String> = suspects(route)
        .into_iter()
        .filter(|s| !already_out(s))
        .collect();
    if route.accepted.is_none() && suspects.len() != 1 {
        return None;
    }
    suspects
        .into_iter()
        .max_by_key(|s| (written(s).unwrap_or(i64::MIN), std::cmp::Reverse(s.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::Translator;
    use crate::translate::tests::policy;
    use crate::{Mesh, Weights};
    use meridian_xds_engine::ResourceType;
    use std::sync::Arc;

    fn egress(policies: &[&meridian_policy::Policy]) -> Arc<meridian_xds_engine::Entry> {
        let mut t = Translator::new(Mesh::default());
        t.rebuild(policies.iter().copied(), &Weights::new());
        let r = t.output().0;
        r.get(ResourceType::RouteConfiguration, "egress_80")
            .unwrap()
            .clone()
    }

    #[test]
    fn the_changed_virtual_host_is_to_blame() {
        let (a, b, c) = (
            policy("a", 80, None, false),
            policy("b", 80, None, false),
            policy("c", 80, None, false),
        );
        let mut b2 = b.clone();
        b2.spec.routes = policy("b", 80, Some(("v2", 10)), false).spec.routes;
        let before = egress(&[&a, &b]);
        let written = |n: &str| Some(i64::from(n.as_bytes()[0]));
        let none = |_: &str| false;
        // (case, rejected, accepted, suspects, culprit)
        type Case = (
            &'static str,
            Arc<meridian_xds_engine::Entry>,
            Option<Arc<meridian_xds_engine::Entry>>,
            Vec<&'static str>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "a policy added",
                egress(&[&a, &b, &c]),
                Some(before.clone()),
                vec!["c"],
                Some("c"),
            ),
            (
                "a policy changed",
                egress(&[&a, &b2]),
                Some(before.clone()),
                vec!["b"],
                Some("b"),
            ),
            (
                "two changed: the last written",
                egress(&[&a, &b2, &c]),
                Some(before.clone()),
                vec!["b", "c"],
                Some("c"),
            ),
            (
                "never accepted, several: nobody",
                egress(&[&a, &b]),
                None,
                vec!["a", "b"],
                None,
            ),
            (
                "never accepted, one: that one",
                egress(&[&a]),
                None,
                vec!["a"],
                Some("a"),
            ),
        ];
        for (what, rejected, accepted, want, want_culprit) in cases {
            let r = RejectedRoute { rejected, accepted };
            let got: Vec<String> = suspects(&r).into_iter().collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(
                culprit(&r, written, none).as_deref(),
                want_culprit,
                "{what}"
            );
        }
        // One already left out is not blamed again.
        let r = RejectedRoute {
            rejected: egress(&[&a, &b2, &c]),
            accepted: Some(before),
        };
        assert_eq!(culprit(&r, written, |n| n == "c").as_deref(), Some("b"));
    }
}

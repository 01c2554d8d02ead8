//! Roles, and which requests need which.

use std::fmt;
use std::str::FromStr;

/// What a caller may do; each role may do everything the one before may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything but secrets (tokens, the audit log).
    Viewer,
    /// Also drains and restores zones, sets and clears overrides, and
    /// changes canary weights.
    Operator,
    /// Also writes policies, DNS providers, GitOps sources and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: use viewer, operator or admin"
            )),
        }
    }
}

/// Who may make a REST request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed: probes, metrics, the API document, the
    /// dashboard's static files, and webhooks (which carry a signature).
    Open,
    /// At least this role.
    Role(Role),
}

/// The access rule for a REST request, from its method and matched route
/// (axum's `/api/v1/policies/:name` form). Reads need a viewer and writes an
/// admin, except the operator actions and the admin-only reads listed here;
/// a route added later gets the safe default without an entry.
pub fn rest_access(method: &str, route: &str) -> Access {
    const OPEN: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];
    if OPEN.contains(&route) || !route.starts_with("/api/") {
        return Access::Open;
    }
    if method == "POST" && route == "/api/v1/gitops/webhook/:name" {
        return Access::Open;
    }
    // A simulation is a POST (it takes a body) that changes nothing.
    let read = matches!(method, "GET" | "HEAD" | "OPTIONS")
        || (method == "POST" && route == "/api/v1/policies/:name/simulate");
    let admin_read = route.starts_with("/api/v1/audit") || route.starts_with("/api/v1/tokens");
    let operator_write = matches!(
        (method, route),
        ("POST", "/api/v1/policies/:name/zones/:zone/drain")
            | ("POST", "/api/v1/policies/:name/zones/:zone/undrain")
            | ("PUT", "/api/v1/policies/:name/override")
            | ("DELETE", "/api/v1/policies/:name/override")
            | ("POST", "/api/v1/policies/:name/rollouts/:route/:action")
            // Operators may patch only canary weights; the handler checks
            // what the patch changes (see `operator_may_change`).
            | ("PATCH", "/api/v1/policies/:name")
    );
    Access::Role(match (read, admin_read, operator_write) {
        (true, true, _) => Role::Admin,
        (true, false, _) => Role::Viewer,
        (false, _, true) => Role::Operator,
        (false, _, false) => Role::Admin,
    })
}

/// Whether an operator may turn `before` into `after`: only canary weights
/// of existing routes may differ.
pub fn operator_may_change(
    before: &meridian_policy::Policy,
    after: &meridian_policy::Policy,
) -> bool {
    let mut normalized = after.clone();
    if normalized.spec.routes.len() != before.spec.routes.len()
        || normalized.metadata.labels != before.metadata.labels
    {
        return false;
    }
    for (new, old) in normalized.spec.routes.iter_mut().zip(&before.spec.routes) {
        match (&mut new.canary, &old.canary) {
            (Some(n), Some(o)) => n.weight = o.weight,
            (None, None) => {}
            _ => return false,
        }
    }
    normalized.spec == before.spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_a_viewer_writes_an_admin_with_the_operator_actions_between() {
        use Access::{Open, Role as R};
        use Role::*;
        let cases = [
            ("GET", "/healthz", Open),
            ("GET", "/metrics", Open),
            ("GET", "/", Open),
            ("GET", "/assets/app.js", Open),
            ("POST", "/api/v1/gitops/webhook/:name", Open),
            ("GET", "/api/v1/policies", R(Viewer)),
            ("GET", "/api/v1/policies/:name/status", R(Viewer)),
            ("POST", "/api/v1/policies/:name/simulate", R(Viewer)),
            ("GET", "/api/v1/events/stream", R(Viewer)),
            ("POST", "/api/v1/policies", R(Admin)),
            ("PUT", "/api/v1/policies/:name", R(Admin)),
            ("DELETE", "/api/v1/policies/:name", R(Admin)),
            ("POST", "/api/v1/policies/:name/rollback", R(Admin)),
            ("PATCH", "/api/v1/policies/:name", R(Operator)),
            ("PUT", "/api/v1/policies/:name/override", R(Operator)),
            ("DELETE", "/api/v1/policies/:name/override", R(Operator)),
            (
                "POST",
                "/api/v1/policies/:name/zones/:zone/drain",
                R(Operator),
            ),
            (
                "POST",
                "/api/v1/policies/:name/rollouts/:route/:action",
                R(Operator),
            ),
            ("GET", "/api/v1/policies/:name/rollouts", R(Viewer)),
            (
                "GET",
                "/api/v1/policies/:name/rollouts/:route/traffic",
                R(Viewer),
            ),
            ("POST", "/api/v1/providers", R(Admin)),
            ("GET", "/api/v1/audit", R(Admin)),
            ("GET", "/api/v1/tokens", R(Admin)),
            ("POST", "/api/v1/gitops/sources", R(Admin)),
            ("POST", "/api/v1/some/future/write", R(Admin)),
        ];
        for (method, route, want) in cases {
            assert_eq!(rest_access(method, route), want, "{method} {route}");
        }
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    fn policy() -> meridian_policy::Policy {
        meridian_policy::decode::from_bytes(
            br#"{"metadata": {"name": "p"}, "spec": {"host": "p.example.com", "port": 80,
                "zones": [{"name": "a", "weight": 100, "endpoints": [{"address": "127.0.0.1", "port": 80}]}],
                "routes": [{"name": "r", "canary": {"version": "v2", "weight": 10}}]}}"#,
            meridian_policy::Format::Json,
        )
        .unwrap()
    }

    #[test]
    fn operators_may_change_canary_weights_and_nothing_else() {
        let before = policy();
        let mut canary = before.clone();
        canary.spec.routes[0].canary.as_mut().unwrap().weight = 50;
        assert!(operator_may_change(&before, &canary));
        let mut zones = before.clone();
        zones.spec.zones[0].endpoints[0].port = 81;
        assert!(!operator_may_change(&before, &zones));
        let mut version = before.clone();
        version.spec.routes[0].canary.as_mut().unwrap().version = "v3".into();
        assert!(!operator_may_change(&before, &version));
        let mut labels = before.clone();
        labels.metadata.labels.insert("x".into(), "y".into());
        assert!(!operator_may_change(&before, &labels));
        let mut dropped = before.clone();
        dropped.spec.routes[0].canary = None;
        assert!(!operator_may_change(&before, &dropped));
    }
}

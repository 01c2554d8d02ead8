//! Who may read client status (CSDS) on the xDS port: an admin of the APIs
//! sees every node; a workload (its verified certificate, or its trusted
//! claim) sees the nodes of its own namespace; anyone else is refused.

use std::sync::Arc;

use meridian_auth::{AuthError, Authenticator, Role};
use meridian_xds::csds::{Caller, Scope, StatusAccess};
use meridian_xds::translate::namespace_of;
use tonic::Status;

const NEEDS_CALLER: &str = "client status needs a caller: an admin token or OIDC JWT in the \
                            `authorization` metadata, or a workload client certificate (which \
                            sees the nodes of its namespace)";

/// Meridian's CSDS access rule.
pub struct Access {
    /// Checks API credentials; `None` where none can be trusted (with
    /// `--no-auth` every caller would be an anonymous admin, which is
    /// allowed on loopback only).
    auth: Option<Arc<Authenticator>>,
}

impl Access {
    pub fn new(auth: Option<Arc<Authenticator>>) -> Access {
        Access { auth }
    }
}

#[tonic::async_trait]
impl StatusAccess for Access {
    async fn scope(&self, caller: Caller<'_>) -> Result<Scope, Status> {
        let header = caller
            .metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        // A credential, or nothing else to go on: it must be an admin's.
        let Some(identity) = caller.identity.filter(|_| header.is_none()) else {
            let Some(auth) = &self.auth else {
                return Err(Status::unauthenticated(NEEDS_CALLER));
            };
            let peer = caller.remote.map(|a| a.ip());
            return match auth.authorize_from(header, Role::Admin, peer).await {
                Ok(_) => Ok(Scope::All),
                Err(AuthError::Missing) => Err(Status::unauthenticated(NEEDS_CALLER)),
                Err(e) => Err(meridian_grpc::auth_status(e)),
            };
        };
        workload_scope(&identity)
    }
}

/// A workload sees the nodes whose identity is in its namespace.
#[allow(clippy::result_large_err)] // the `Status` goes to tonic as is
fn workload_scope(identity: &str) -> Result<Scope, Status> {
    let Some(ns) = namespace_of(identity) else {
        return Err(Status::permission_denied(format!(
            "identity {identity:?} names no namespace (spiffe://<domain>/ns/<ns>/sa/<sa>)"
        )));
    };
    Ok(Scope::Nodes(Arc::new(move |node| {
        node.and_then(namespace_of).as_deref() == Some(ns.as_str())
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_sees_its_namespace_only() {
        let scope = workload_scope("spiffe://td/ns/shop/sa/web").unwrap();
        let Scope::Nodes(test) = scope else {
            panic!("not scoped")
        };
        for (node, want) in [
            (Some("spiffe://td/ns/shop/sa/web"), true),
            (Some("spiffe://td/ns/shop/sa/other"), true),
            (Some("spiffe://td/ns/bank/sa/teller"), false),
            (Some("spiffe://td/ns/shopping/sa/x"), false),
            (None, false),
        ] {
            assert_eq!(test(node), want, "{node:?}");
        }
        assert_eq!(
            workload_scope("spiffe://td/sa/x").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}

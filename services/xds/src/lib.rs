//! Meridian's xDS translation: policies to Envoy resources, and what each
//! node gets. The protocol, snapshot and server are the generic
//! [`meridian_xds_engine`], re-exported here for the wiring.
//!
//! * [`translate`]: pure translation of one policy into typed resources.
//! * [`assemble`]: the incremental [`Translator`]: per-policy encodings
//!   assembled into the snapshot's views.
//! * [`node`]: [`MeridianSelector`], the engine's hook choosing what a node
//!   gets (namespace view, egress address, inbound side, proxyless forms,
//!   its own certificate).
//! * [`tls`]: transport sockets and SDS secrets.
//!
//! Wiring:
//!
//! ```ignore
//! let (publisher, subscriber) = meridian_xds::snapshot_channel();
//! publisher.publish(meridian_xds::translate(&policies, &weights));
//! let xds = meridian_xds::server(subscriber, registry.clone(), shutdown.clone());
//! meridian_xds::serve(listener, xds, shutdown).await?;
//! ```

pub mod assemble;
mod envoy;
pub mod nack;
pub mod node;
pub mod tls;
pub mod translate;

use std::sync::Arc;

pub use assemble::{translate, translate_mesh, translate_scoped, Translator};
pub use meridian_xds_engine::{
    csds, metrics, protocol, registry, resources, snapshot, snapshot_channel, tls_server, Claims,
    ClientAuth, ClientStatus, Entry, NackStatus, PeerIdentity, Publisher, Registry, RejectedRoute,
    ResourceType, Resources, RouteNack, Snapshot, Subscriber, TypeStatus,
};
pub use meridian_xds_engine::{decide_identity, serve, serve_with, Server};
pub use node::{MeridianNode, MeridianSelector};
pub use translate::{
    render, EndpointHealth, Mesh, RolloutWeights, Rollouts, ServedRollout, Weights,
};

/// The xDS server with Meridian's node selection.
pub fn server(
    subscriber: Subscriber,
    registry: Registry,
    shutdown: tokio_util::sync::CancellationToken,
) -> Server {
    Server::new(subscriber, registry, shutdown, Arc::new(MeridianSelector))
}

#[cfg(test)]
mod stream_tests;

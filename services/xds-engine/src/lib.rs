//! A generic xDS engine.
//!
//! * [`cow_map`]: the sorted map snapshots share, copied chunk by chunk.
//! * [`snapshot`]: the published, content-versioned resource set and its
//!   single writer; unchanged types are shared between snapshots and
//!   changed ones record what changed.
//! * [`protocol`]: per-stream SotW and delta state machines, without I/O.
//! * [`wire`]: responses assembled from resources encoded once.
//! * [`server`]: the tonic ADS and CSDS services; [`registry`]: connected
//!   streams; [`tls_server`]: TLS with SPIFFE client identities; [`csds`]:
//!   who may read client status, and node matchers.
//!
//! The engine knows nothing of what the resources mean. What a node gets
//! is decided by a [`Selector`] (which view of the snapshot, its own form
//! of shared resources, resources that are its alone), which a translator
//! implements.
//!
//! ```ignore
//! let (publisher, subscriber) = meridian_xds_engine::snapshot_channel();
//! publisher.publish(resources);
//! let xds = meridian_xds_engine::Server::new(subscriber, registry, shutdown, selector);
//! meridian_xds_engine::serve(listener, xds, shutdown).await?;
//! ```

pub mod cow_map;
pub mod csds;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod tls_server;
pub mod wire;

pub use cow_map::CowMap;
pub use protocol::{DefaultView, NodeView, RejectedRoute, Selector, Subscription};
pub use registry::{ClientStatus, NackStatus, Registry, TypeStatus};
pub use resources::{Entry, ResourceType, Resources, TypeSet};
pub use server::{
    decide_identity, serve, serve_with, Claims, ClientAuth, PeerIdentity, RouteNack, Server,
};
pub use snapshot::{snapshot_channel, Publisher, Snapshot, Subscriber};
pub use wire::{DeltaResponse, SotwRequest, SotwResponse};

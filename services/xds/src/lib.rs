//! Meridian's xDS core.
//!
//! * [`translate`]: pure translation of policies into Envoy resources.
//! * [`snapshot`]: the published resource set and its single writer.
//! * [`protocol`]: per-stream SotW and delta state machines, without I/O.
//! * [`server`]: the tonic ADS and CSDS services; [`registry`]: connected streams.
//!
//! Wiring:
//!
//! ```ignore
//! let (publisher, subscriber) = meridian_xds::snapshot_channel();
//! publisher.publish(meridian_xds::translate(&policies, &weights));
//! let xds = meridian_xds::Server::new(subscriber, registry.clone(), shutdown.clone());
//! tonic::transport::Server::builder()
//!     .add_service(xds.ads_service())
//!     .add_service(xds.csds_service())
//!     .serve(addr)
//!     .await?;
//! ```

pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod tls_server;
pub mod translate;

pub use registry::{ClientStatus, NackStatus, Registry, TypeStatus};
pub use resources::{Entry, ResourceType, Resources};
pub use server::{decide_identity, serve, ClientAuth, PeerIdentity, Server};
pub use snapshot::{snapshot_channel, Publisher, Snapshot, Subscriber};
pub use translate::{render, translate, translate_mesh, Mesh, Weights};

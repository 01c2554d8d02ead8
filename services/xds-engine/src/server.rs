//! The tonic services: ADS (SotW and delta) and CSDS.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::wire::Requests;
// GenericXdsConfig.client_status is the admin ClientResourceStatus, not the
// per-client ClientConfigStatus: their numbers differ (NACKED is 4 vs 3).
use xds_api::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use xds_api::pb::envoy::service::status::v3::{
    client_config::GenericXdsConfig,
    client_status_discovery_service_server::{
        ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
    },
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};

use tracing::Instrument;

use crate::csds::{self, Caller, Scope, StatusAccess};
use crate::metrics;
use crate::protocol::{Answer, DeltaStream, NodeView, ResourceStatus, Selector, SotwStream};
use crate::registry::{now_ms, Machine, Registry};
use crate::resources::{ResourceType, Resources};
use crate::snapshot::Subscriber;
use crate::wire::{Ads, AdsService, DeltaResponse, SotwRequest, SotwResponse};

/// Responses buffered per stream. Small on purpose: an idle stream costs
/// little, and a slow client applies backpressure to its own task only.
const STREAM_BUFFER: usize = 2;

/// What a stream's task hands to its response body. Boxed because tokio's
/// channel allocates its slots 32 at a time whatever its bound: a `Status`
/// is ~180 bytes, so unboxed that was ~6 KiB for each idle stream.
type Outbound<Resp> = Result<Box<Resp>, Box<Status>>;

/// The ADS and CSDS server.
#[derive(Clone)]
pub struct Server {
    subscriber: Subscriber,
    registry: Registry,
    shutdown: CancellationToken,
    auth: ClientAuth,
    claims: Claims,
    selector: Arc<dyn Selector>,
    status_access: Arc<dyn StatusAccess>,
    /// Where rejected route configurations are reported, if anywhere.
    route_nacks: Option<mpsc::UnboundedSender<RouteNack>>,
}

/// A client refused route configurations (a NACK of RDS): who, why, and
/// what it refused against what it had accepted.
#[derive(Clone, Debug)]
pub struct RouteNack {
    pub node_id: String,
    pub message: String,
    pub routes: Vec<crate::protocol::RejectedRoute>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// How the xDS port treats client certificates (`--xds-client-auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates: a node has no identity, unless the server
    /// trusts claimed identities ([`Claims::Trusted`]).
    #[default]
    None,
    /// A certificate is checked when sent; a node without one has no identity.
    Optional,
    /// A client without a valid certificate is refused at the handshake.
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!(
                "invalid client auth {other:?}: use required, optional or none"
            )),
        }
    }
}

/// Whether an identity a node merely claims (in its metadata, or as a
/// SPIFFE-shaped node id) counts when it has no client certificate.
///
/// An identity picks the node's namespace view and the workload key it
/// gets over SDS, so believing a claim hands both to whoever can reach the
/// port. The default ignores claims; trusting them is for loopback and
/// tests only (`--xds-trust-claimed-identities`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Claims {
    /// A node without a verified certificate has no identity.
    #[default]
    Ignored,
    /// A node without a certificate is who it says it is (only under
    /// [`ClientAuth::None`]; a certificate always wins).
    Trusted,
}

/// The verified SPIFFE ID of a TLS peer, attached to every request of its
/// connection by [`crate::tls_server`]. Absent on plaintext connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<String>);

/// Settles a stream's identity. A certificate's URI SAN is the identity,
/// and the node may not claim another one, neither in metadata nor as a
/// SPIFFE-shaped node id. Without a certificate, the claim counts only
/// when clients are not authenticated at all *and* claims are trusted.
pub fn decide_identity(
    auth: ClientAuth,
    claims: Claims,
    cert: Option<&str>,
    node_id: &str,
    claimed: Option<&str>,
) -> Result<Option<String>, String> {
    let id_claim = node_id.starts_with("spiffe://").then_some(node_id);
    match cert {
        Some(cert) => {
            for c in [claimed, id_claim].into_iter().flatten() {
                if c != cert {
                    return Err(format!(
                        "node {node_id:?} claims identity {c:?}, but its certificate is {cert:?}"
                    ));
                }
            }
            Ok(Some(cert.to_owned()))
        }
        None => match (auth, claims) {
            (ClientAuth::None, Claims::Trusted) => Ok(claimed.or(id_claim).map(str::to_owned)),
            _ => Ok(None),
        },
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Server {
    /// A server reading snapshots from `subscriber`, recording streams in
    /// `registry`, and ending every stream when `shutdown` is cancelled.
    /// `selector` decides what each node gets.
    pub fn new(
        subscriber: Subscriber,
        registry: Registry,
        shutdown: CancellationToken,
        selector: Arc<dyn Selector>,
    ) -> Self {
        Server {
            subscriber,
            registry,
            shutdown,
            auth: ClientAuth::None,
            claims: Claims::Ignored,
            selector,
            status_access: Arc::new(csds::Closed),
            route_nacks: None,
        }
    }

    /// Who may read client status, and which nodes (default: nobody).
    pub fn with_status_access(mut self, access: Arc<dyn StatusAccess>) -> Self {
        self.status_access = access;
        self
    }

    /// Reports every NACK of route configurations to `to`, with what was
    /// refused, so that the refused share can be left out (see
    /// [`RouteNack`]).
    pub fn with_route_nacks(mut self, to: mpsc::UnboundedSender<RouteNack>) -> Self {
        self.route_nacks = Some(to);
        self
    }

    /// Sets how client identities are established (default: `None`).
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Whether claimed identities count (default: [`Claims::Ignored`]).
    pub fn with_claims(mut self, claims: Claims) -> Self {
        self.claims = claims;
        self
    }

    /// The ADS gRPC service, to add to a `tonic::transport::Server`.
    pub fn ads_service(&self) -> AdsService<Server> {
        AdsService::new(self.clone())
    }

    /// The CSDS gRPC service, to add to a `tonic::transport::Server`.
    pub fn csds_service(&self) -> ClientStatusDiscoveryServiceServer<Server> {
        ClientStatusDiscoveryServiceServer::new(self.clone())
    }

    /// The registry of connected streams.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What a CSDS caller may see: its identity is settled as a node's
    /// would be (a certificate, or a trusted claim of the request's node),
    /// then the [`StatusAccess`] decides.
    async fn status_scope(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        remote: Option<std::net::SocketAddr>,
        peer: Option<&str>,
        node: Option<&Node>,
    ) -> Result<Scope, Status> {
        let (id, claimed) = match node {
            Some(n) => (n.id.as_str(), self.selector.claimed_identity(n)),
            None => ("", None),
        };
        let identity = decide_identity(self.auth, self.claims, peer, id, claimed.as_deref())
            .map_err(Status::permission_denied)?;
        self.status_access
            .scope(Caller {
                metadata,
                remote,
                identity,
            })
            .await
    }

    // tonic's handlers return `Status` as is; boxing it here would only
    // move the allocation.
    #[allow(clippy::result_large_err)]
    fn client_status(
        &self,
        req: &ClientStatusRequest,
        scope: &Scope,
    ) -> Result<ClientStatusResponse, Status> {
        csds::check_matchers(&req.node_matchers).map_err(Status::invalid_argument)?;
        let config = self
            .registry
            .slots()
            .iter()
            .filter(|slot| {
                scope.allows(slot.identity.as_deref())
                    && csds::node_matches(&req.node_matchers, &slot.node)
            })
            .map(|slot| ClientConfig {
                node: Some(slot.node.clone()),
                generic_xds_configs: Registry::known_resources(slot)
                    .into_iter()
                    .map(|k| {
                        let (config_status, client_status) = match k.status {
                            ResourceStatus::NotSent => {
                                (ConfigStatus::NotSent, ClientResourceStatus::Unknown)
                            }
                            ResourceStatus::Sent => {
                                (ConfigStatus::Stale, ClientResourceStatus::Requested)
                            }
                            ResourceStatus::Acked => {
                                (ConfigStatus::Synced, ClientResourceStatus::Acked)
                            }
                            ResourceStatus::Nacked => {
                                (ConfigStatus::Error, ClientResourceStatus::Nacked)
                            }
                        };
                        let error_state = (k.status == ResourceStatus::Nacked).then(|| {
                            let reports = slot.machine().reports();
                            let nack = reports
                                .into_iter()
                                .find(|r| r.resource_type == k.resource_type)
                                .and_then(|r| r.last_nack);
                            UpdateFailureState {
                                details: nack
                                    .as_ref()
                                    .map(|n| n.message.clone())
                                    .unwrap_or_default(),
                                version_info: nack.map(|n| n.version).unwrap_or_default(),
                                ..Default::default()
                            }
                        });
                        GenericXdsConfig {
                            type_url: k.resource_type.type_url().to_owned(),
                            name: k.name,
                            version_info: k.version,
                            // Secrets hold private keys: CSDS names them, never shows them.
                            xds_config: if req.exclude_resource_contents
                                || k.resource_type == ResourceType::Secret
                            {
                                None
                            } else {
                                k.entry.map(|e| e.any())
                            },
                            config_status: config_status as i32,
                            client_status: client_status as i32,
                            error_state,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        Ok(ClientStatusResponse { config })
    }
}

/// How one ADS variant plugs into the shared stream loop.
struct Variant<Req, Resp> {
    name: &'static str,
    node: fn(&Req) -> Option<&Node>,
    make: fn(Box<dyn NodeView>) -> Machine,
    handle: fn(&mut Machine, &Req, Option<&Resources>, u64) -> Vec<Resp>,
    snapshot: fn(&mut Machine, &Resources) -> Vec<Resp>,
    type_url: fn(&Resp) -> &'static str,
    /// The error message a request carries (a NACK's).
    error: fn(&Req) -> Option<String>,
}

const SOTW: Variant<SotwRequest, SotwResponse> = Variant {
    name: "sotw",
    node: |r| r.node.as_ref(),
    make: |n| Machine::Sotw(SotwStream::new(n)),
    handle: |m, r, res, now| match m {
        Machine::Sotw(s) => s.handle_request(r, res, now),
        Machine::Delta(_) => Vec::new(),
    },
    snapshot: |m, res| match m {
        Machine::Sotw(s) => s.on_snapshot(res),
        Machine::Delta(_) => Vec::new(),
    },
    type_url: |r| r.type_url,
    error: |r| r.error_detail.as_ref().map(|e| e.message.clone()),
};

const DELTA: Variant<DeltaDiscoveryRequest, DeltaResponse> = Variant {
    name: "delta",
    node: |r| r.node.as_ref(),
    make: |n| Machine::Delta(DeltaStream::new(n)),
    handle: |m, r, res, now| match m {
        Machine::Delta(d) => d.handle_request(r, res, now),
        Machine::Sotw(_) => Vec::new(),
    },
    snapshot: |m, res| match m {
        Machine::Delta(d) => d.on_snapshot(res),
        Machine::Sotw(_) => Vec::new(),
    },
    type_url: |r| r.type_url,
    error: |r| r.error_detail.as_ref().map(|e| e.message.clone()),
};

impl Server {
    fn spawn_stream<Req, Resp>(
        &self,
        request: Request<Requests<Req>>,
        variant: Variant<Req, Resp>,
    ) -> BoxStream<Resp>
    where
        Req: crate::wire::DecodeRequest + Send + 'static,
        Resp: Send + 'static,
    {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let server = self.clone();
        let inbound = request.into_inner();
        // The node id is recorded once the first request names it, so every
        // log line of the stream carries it.
        let span = tracing::info_span!(
            "xds_stream",
            variant = variant.name,
            node = tracing::field::Empty
        );
        tokio::spawn(
            async move { server.run_stream(inbound, peer, tx, variant).await }.instrument(span),
        );
        #[allow(clippy::result_large_err)] // the `Status` goes to tonic as is
        let unbox = |r: Outbound<Resp>| r.map(|b| *b).map_err(|b| *b);
        Box::pin(ReceiverStream::new(rx).map(unbox))
    }

    /// One stream's loop. Generic over the inbound stream (tonic's
    /// [`Requests`] in service) so that a test can order a request and a
    /// snapshot by hand.
    async fn run_stream<Req, Resp>(
        self,
        mut inbound: impl Stream<Item = Result<Req, Status>> + Unpin,
        peer: Option<String>,
        tx: mpsc::Sender<Outbound<Resp>>,
        variant: Variant<Req, Resp>,
    ) where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let mut snapshots = self.subscriber.receiver();
        let mut registration = None;
        // The node's view key picks its view of the snapshot.
        let mut view_key: Option<String> = None;
        loop {
            let out = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => {
                        if registration.is_none() {
                            let node = (variant.node)(&req).cloned().unwrap_or_default();
                            tracing::Span::current().record("node", node.id.as_str());
                            let claimed = self.selector.claimed_identity(&node);
                            let identity = match decide_identity(self.auth, self.claims, peer.as_deref(), &node.id, claimed.as_deref()) {
                                Ok(None) if claimed.is_some() || node.id.starts_with("spiffe://") => {
                                    // Said once per stream: the node expects a namespace
                                    // view and a workload key, and gets neither.
                                    tracing::warn!(
                                        node = %node.id,
                                        claimed = claimed.as_deref().unwrap_or(&node.id),
                                        "xds node claims an identity without a client certificate; \
                                         the claim is ignored (no workload key, unscoped policies only): \
                                         give it a client certificate (--xds-client-auth required), or on \
                                         loopback start Meridian with --xds-trust-claimed-identities"
                                    );
                                    None
                                }
                                Ok(identity) => identity,
                                Err(why) => {
                                    tracing::warn!(node = %node.id, %why, "xds stream refused");
                                    let _ = tx.send(Err(Box::new(Status::permission_denied(why)))).await;
                                    break;
                                }
                            };
                            let view = self.selector.node_view(&node, identity.as_deref());
                            tracing::debug!(node = %node.id, identity = ?identity, variant = variant.name, "xds stream opened");
                            view_key = view.view().map(str::to_owned);
                            registration = Some(self.registry.register(node, variant.name, identity, (variant.make)(view)));
                        }
                        let Some(reg) = registration.as_ref() else { break };
                        // Answer against the newest snapshot, but leave it
                        // unseen: a request answers only its own type (and
                        // at most CDS and EDS after it), so if this snapshot
                        // is new, the snapshot arm below must still run for
                        // it and send every other type's changes. Marking it
                        // seen here left, say, an EDS change behind a CDS
                        // ACK until the next snapshot, however long that took.
                        let snap = snapshots.borrow().clone();
                        let res = (snap.generation > 0).then(|| &**snap.view(view_key.as_deref()));
                        let mut machine = reg.slot.machine();
                        let out = (variant.handle)(&mut machine, &req, res, now_ms());
                        if let Some((ty, answer)) = machine.take_answer() {
                            let labels = [("variant", variant.name.into()), ("type", ty.short_name().into())];
                            match answer {
                                Answer::Ack => metrics::ACKS.get_or_create(&labels).inc(),
                                Answer::Nack => metrics::NACKS.get_or_create(&labels).inc(),
                            };
                            if let (Answer::Nack, ResourceType::RouteConfiguration, Some(to)) = (answer, ty, &self.route_nacks) {
                                let message = (variant.error)(&req).unwrap_or_default();
                                let _ = to.send(RouteNack {
                                    node_id: reg.slot.node.id.clone(),
                                    message,
                                    routes: machine.rejected_routes(),
                                });
                            }
                        }
                        drop(machine);
                        (out, None)
                    }
                    None => {
                        tracing::debug!(variant = variant.name, "xds client closed its stream");
                        break;
                    }
                    Some(Err(status)) => {
                        // Hang-ups surface as errors from the transport; they are routine.
                        tracing::debug!(variant = variant.name, %status, "xds stream ended");
                        break;
                    }
                },
                changed = snapshots.changed(), if registration.is_some() => {
                    if changed.is_err() {
                        tracing::debug!("snapshot publisher gone; closing xds stream");
                        break;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    let out = match (&registration, snap.generation) {
                        (Some(reg), g) if g > 0 => (variant.snapshot)(&mut reg.slot.machine(), snap.view(view_key.as_deref())),
                        _ => Vec::new(),
                    };
                    (out, snap.changed_at)
                }
            };
            let (out, changed_at) = out;
            let pushed = !out.is_empty();
            if !self.send_all(&tx, out, &variant).await {
                break;
            }
            if let (true, Some(at)) = (pushed, changed_at) {
                metrics::PUSH_LATENCY
                    .get_or_create(&[("variant", variant.name.into())])
                    .observe(at.elapsed().as_secs_f64());
            }
        }
        drop(registration);
    }

    async fn send_all<Req, Resp>(
        &self,
        tx: &mpsc::Sender<Outbound<Resp>>,
        out: Vec<Resp>,
        variant: &Variant<Req, Resp>,
    ) -> bool {
        for r in out {
            let labels = [
                ("variant", variant.name.into()),
                ("type", metrics::type_label((variant.type_url)(&r))),
            ];
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                sent = tx.send(Ok(Box::new(r))) => if sent.is_err() {
                    tracing::debug!("xds client went away");
                    return false;
                } else {
                    metrics::PUSHES.get_or_create(&labels).inc();
                },
            }
        }
        true
    }
}

#[tonic::async_trait]
impl Ads for Server {
    type SotwStream = BoxStream<SotwResponse>;
    type DeltaStream = BoxStream<DeltaResponse>;

    async fn sotw(
        &self,
        request: Request<Requests<SotwRequest>>,
    ) -> Result<Response<Self::SotwStream>, Status> {
        Ok(Response::new(self.spawn_stream(request, SOTW)))
    }

    async fn delta(
        &self,
        request: Request<Requests<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        Ok(Response::new(self.spawn_stream(request, DELTA)))
    }
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Server {
    type StreamClientStatusStream = BoxStream<ClientStatusResponse>;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let metadata = request.metadata().clone();
        let remote = request.remote_addr();
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let server = self.clone();
        tokio::spawn(async move {
            // Settled on the first request, which names the caller's node.
            let mut scope = None;
            loop {
                let req = tokio::select! {
                    _ = server.shutdown.cancelled() => break,
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => req,
                        Ok(None) | Err(_) => break,
                    },
                };
                if scope.is_none() {
                    match server
                        .status_scope(&metadata, remote, peer.as_deref(), req.node.as_ref())
                        .await
                    {
                        Ok(s) => scope = Some(s),
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                }
                let Some(scope) = &scope else { break };
                let answer = server.client_status(&req, scope);
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        let peer = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone());
        let scope = self
            .status_scope(
                request.metadata(),
                request.remote_addr(),
                peer.as_deref(),
                request.get_ref().node.as_ref(),
            )
            .await?;
        Ok(Response::new(
            self.client_status(request.get_ref(), &scope)?,
        ))
    }
}

/// Serves ADS and CSDS on `listener` until `shutdown` is cancelled.
///
/// The incoming stream sets `TCP_NODELAY`: tonic only does that on sockets
/// it binds itself, and without it small xDS responses wait ~40 ms for Nagle.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_with(
        listener,
        server,
        tonic::service::Routes::default(),
        shutdown,
    )
    .await
}

/// [`serve`], with `extra` gRPC services on the same port (the Load
/// Reporting Service, which clients reach through their xDS cluster).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    server: Server,
    extra: tonic::service::Routes,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .expect("a bound listener converts to an incoming stream");
    tonic::transport::Server::builder()
        .add_routes(extra)
        .add_service(server.ads_service())
        .add_service(server.csds_service())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DefaultView;
    use crate::resources::Entry;
    use crate::snapshot::snapshot_channel;
    use std::time::Duration;
    use tokio_stream::wrappers::UnboundedReceiverStream;
    use xds_api::pb::envoy::service::discovery::v3::DiscoveryRequest;

    const LDS: ResourceType = ResourceType::Listener;
    const RDS: ResourceType = ResourceType::RouteConfiguration;

    fn sotw_request(
        ty: ResourceType,
        names: &[&str],
        acked: Option<&SotwResponse>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: acked.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: acked.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// A listener and its route; the route's body says `round`.
    fn world(round: u32) -> Resources {
        let mut r = Resources::new();
        let mut l = Entry::new("l", LDS, b"listener l".to_vec());
        l.refs = vec![Arc::from("r")].into_boxed_slice();
        r.insert(LDS, l);
        r.insert(
            RDS,
            Entry::new("r", RDS, format!("route {round}").into_bytes()),
        );
        r
    }

    async fn next_of(
        rx: &mut mpsc::Receiver<Outbound<SotwResponse>>,
        ty: ResourceType,
        round: u32,
    ) -> SotwResponse {
        let wait = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let r = rx.recv().await.expect("stream open").expect("no error");
                if r.type_url == ty.type_url() {
                    return *r;
                }
            }
        });
        wait.await
            .unwrap_or_else(|_| panic!("round {round}: no {} response in 2 s", ty.short_name()))
    }

    /// A request handled beside a new snapshot (both ready when the
    /// stream's loop wakes, in either order) must not mark the snapshot
    /// seen: the request answers only its own type, so the snapshot's
    /// other changes would wait for the next snapshot. Regression test for
    /// the request arm using `borrow_and_update`; the loop picks between
    /// ready arms at random, so twenty rounds miss that bug with
    /// probability 2^-20.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_beside_a_new_snapshot_leaves_the_snapshot_to_be_sent() {
        let (publisher, subscriber) = snapshot_channel();
        publisher.publish(world(0));
        let server = Server::new(
            subscriber,
            Registry::new(),
            CancellationToken::new(),
            Arc::new(DefaultView),
        );
        let (requests, inbound) = mpsc::unbounded_channel();
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(server.run_stream(UnboundedReceiverStream::new(inbound), None, tx, SOTW));
        let send = |r: DiscoveryRequest| requests.send(Ok(SotwRequest::from(r))).unwrap();
        // Envoy-like: wildcard LDS, then the route it names, all ACKed.
        send(sotw_request(LDS, &[], None));
        let lds = next_of(&mut rx, LDS, 0).await;
        send(sotw_request(LDS, &[], Some(&lds)));
        send(sotw_request(RDS, &["r"], None));
        let rds = next_of(&mut rx, RDS, 0).await;
        send(sotw_request(RDS, &["r"], Some(&rds)));
        // Lets the stream's task take each ACK before the next round: an
        // RDS request beside the new snapshot would answer the route change
        // itself and hide what this test looks for.
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        settle().await;
        for round in 1..=20 {
            // Without yielding in between: both arms are ready when the
            // stream's task runs next. The LDS request (a repeated ACK)
            // answers LDS only; the route change must still come.
            publisher.publish(world(round));
            send(sotw_request(LDS, &[], Some(&lds)));
            let rds = next_of(&mut rx, RDS, round).await;
            assert_eq!(
                String::from_utf8_lossy(&rds.resources[0].bytes),
                format!("route {round}")
            );
            send(sotw_request(RDS, &["r"], Some(&rds)));
            settle().await;
        }
    }

    /// (auth, claims, cert, node id, claimed metadata, expected identity or refusal)
    type Case = (
        ClientAuth,
        Claims,
        Option<&'static str>,
        &'static str,
        Option<&'static str>,
        Result<Option<&'static str>, ()>,
    );

    #[test]
    fn identity_comes_from_the_certificate_and_cannot_be_claimed_otherwise() {
        const A: &str = "spiffe://td/ns/a/sa/x";
        const B: &str = "spiffe://td/ns/b/sa/y";
        use Claims::{Ignored, Trusted};
        use ClientAuth::{None as Plain, Optional, Required};
        let cases: &[Case] = &[
            (Required, Ignored, Some(A), "sidecar-1", None, Ok(Some(A))),
            (
                Required,
                Ignored,
                Some(A),
                "sidecar-1",
                Some(A),
                Ok(Some(A)),
            ),
            (Required, Ignored, Some(A), "sidecar-1", Some(B), Err(())),
            (Required, Ignored, Some(A), B, None, Err(())),
            (Required, Ignored, Some(A), A, None, Ok(Some(A))),
            (Optional, Ignored, Some(A), "n", Some(B), Err(())),
            (Optional, Ignored, None, "n", Some(B), Ok(None)),
            (Optional, Ignored, None, B, None, Ok(None)),
            (Required, Ignored, None, "n", Some(B), Ok(None)),
            // Claims are believed only when trusted, and only without
            // client authentication.
            (Plain, Trusted, None, "n", Some(B), Ok(Some(B))),
            (Plain, Trusted, None, B, None, Ok(Some(B))),
            (Plain, Trusted, None, "n", None, Ok(None)),
            (Plain, Ignored, None, "n", Some(B), Ok(None)),
            (Plain, Ignored, None, B, None, Ok(None)),
            (Optional, Trusted, None, "n", Some(B), Ok(None)),
            (Required, Trusted, None, B, None, Ok(None)),
            (Optional, Trusted, Some(A), "n", Some(B), Err(())),
        ];
        for (auth, claims, cert, id, claimed, want) in cases {
            let got = decide_identity(*auth, *claims, *cert, id, *claimed);
            let case = format!("{auth:?} {claims:?} {cert:?} {id} {claimed:?}");
            match want {
                Ok(w) => assert_eq!(got.clone().ok().flatten().as_deref(), *w, "{case}"),
                Err(()) => assert!(got.is_err(), "{case}"),
            }
        }
    }
}

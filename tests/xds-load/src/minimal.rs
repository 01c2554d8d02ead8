//! `xds-minimal`: the floor the xDS benchmark compares Meridian with. A
//! plain tonic ADS server (SotW and delta) serving a tiny fixed config: one
//! listener, one route configuration, one cluster and its load assignment.
//! A line `change` on the control port changes the assignment's weight and
//! pushes it to every stream; it answers `ok` once every stream has been
//! handed the push.
//!
//! It keeps per stream only what it must (the nonce of nothing, the types
//! asked for), and encodes each response per stream: deliberately simple.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use clap::Parser;
use futures::Stream;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::config::cluster::v3::{cluster, Cluster};
use xds_api::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ConfigSource,
    SocketAddress,
};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_api::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager, Rds,
};
use xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_api::pb::google::protobuf::{Any, UInt32Value};

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Parser)]
struct Args {
    /// ADS address.
    #[arg(long, default_value = "127.0.0.1:18591")]
    addr: std::net::SocketAddr,
    /// Control address: a line `change` changes the config.
    #[arg(long, default_value = "127.0.0.1:18592")]
    control: std::net::SocketAddr,
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: 2,
        ..Default::default()
    }
}

fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The one resource of a type, at weight `w`.
fn resource(type_url: &str, w: u32) -> (String, Any) {
    match type_url {
        LDS => {
            let hcm = HttpConnectionManager {
                stat_prefix: "l".into(),
                route_specifier: Some(RouteSpecifier::Rds(Rds {
                    config_source: Some(ads()),
                    route_config_name: "r".into(),
                })),
                ..Default::default()
            };
            let l = Listener {
                name: "l".into(),
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(10000)),
                        ..Default::default()
                    })),
                }),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            ("l".into(), any(&l))
        }
        RDS => {
            let r = RouteConfiguration {
                name: "r".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "v".into(),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                "c".into(),
                            )),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            ("r".into(), any(&r))
        }
        CDS => {
            let c = Cluster {
                name: "c".into(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Eds as i32,
                )),
                eds_cluster_config: Some(cluster::EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: String::new(),
                }),
                ..Default::default()
            };
            ("c".into(), any(&c))
        }
        _ => {
            let ep = |ip: &str| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip.into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let cla = ClusterLoadAssignment {
                cluster_name: "c".into(),
                endpoints: vec![
                    LocalityLbEndpoints {
                        lb_endpoints: vec![ep("127.0.9.1")],
                        load_balancing_weight: Some(UInt32Value { value: w }),
                        ..Default::default()
                    },
                    LocalityLbEndpoints {
                        lb_endpoints: vec![ep("127.0.9.2")],
                        load_balancing_weight: Some(UInt32Value { value: 100 - w }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            };
            ("c".into(), any(&cla))
        }
    }
}

#[derive(Clone)]
struct Minimal {
    weight: watch::Receiver<u32>,
    nonce: Arc<AtomicU32>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Minimal {
    fn nonce(&self) -> String {
        self.nonce.fetch_add(1, Ordering::Relaxed).to_string()
    }

    fn sotw(&self, type_url: &str, w: u32) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: w.to_string(),
            resources: vec![resource(type_url, w).1],
            type_url: type_url.into(),
            nonce: self.nonce(),
            ..Default::default()
        }
    }

    fn delta(&self, type_url: &str, w: u32) -> DeltaDiscoveryResponse {
        let (name, res) = resource(type_url, w);
        DeltaDiscoveryResponse {
            system_version_info: w.to_string(),
            resources: vec![Resource {
                name,
                version: w.to_string(),
                resource: Some(res),
                ..Default::default()
            }],
            type_url: type_url.into(),
            nonce: self.nonce(),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Minimal {
    type StreamAggregatedResourcesStream = Boxed<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Boxed<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            let mut weight = me.weight.clone();
            let mut eds = false;
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { break };
                        // A first request of a type (no nonce) is answered; ACKs are not.
                        if req.response_nonce.is_empty() {
                            eds |= req.type_url == EDS;
                            let w = *weight.borrow();
                            if tx.send(Ok(me.sotw(&req.type_url, w))).await.is_err() { break }
                        }
                    }
                    changed = weight.changed() => {
                        if changed.is_err() { break }
                        let w = *weight.borrow_and_update();
                        if eds && tx.send(Ok(me.sotw(EDS, w))).await.is_err() { break }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            let mut weight = me.weight.clone();
            let mut eds = false;
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { break };
                        if req.response_nonce.is_empty() {
                            eds |= req.type_url == EDS;
                            let w = *weight.borrow();
                            if tx.send(Ok(me.delta(&req.type_url, w))).await.is_err() { break }
                        }
                    }
                    changed = weight.changed() => {
                        if changed.is_err() { break }
                        let w = *weight.borrow_and_update();
                        if eds && tx.send(Ok(me.delta(EDS, w))).await.is_err() { break }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, rx) = watch::channel(50u32);
    let control = tokio::net::TcpListener::bind(args.control).await?;
    tokio::spawn(async move {
        while let Ok((sock, _)) = control.accept().await {
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "change" {
                    tx.send_modify(|v| *v = if *v >= 90 { 10 } else { *v + 1 });
                    let _ = w.write_all(b"ok\n").await;
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("xds-minimal listening on {}", args.addr);
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Minimal {
            weight: rx,
            nonce: Arc::new(AtomicU32::new(1)),
        }))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

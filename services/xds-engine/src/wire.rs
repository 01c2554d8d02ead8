//! Responses assembled from shared encodings.
//!
//! A resource is encoded once per version into [`Entry::bytes`]; a response
//! holds `Arc`s to the entries and is written to the wire by framing those
//! bytes (a few tag and length bytes around each), never by encoding a
//! resource again or copying it into a per-stream protobuf message first.
//! [`SotwResponse`] and [`DeltaResponse`] implement [`prost::Message`] for
//! encoding with the field numbers of `DiscoveryResponse` and
//! `DeltaDiscoveryResponse`, so tonic's prost codec writes them as those
//! messages; [`AdsService`] serves the ADS methods with them.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, DecodeContext, WireType};
use prost::DecodeError;
use tonic::codegen::{empty_body, http, Body, BoxFuture, Context, Poll, Service, StdError};
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};

use crate::resources::Entry;

/// A SotW `DiscoveryResponse` over shared entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwResponse {
    pub version_info: String,
    pub type_url: &'static str,
    pub nonce: String,
    pub resources: Vec<Arc<Entry>>,
}

/// A `DeltaDiscoveryResponse` over shared entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub type_url: &'static str,
    pub nonce: String,
    pub resources: Vec<Arc<Entry>>,
    pub removed_resources: Vec<Arc<str>>,
}

impl SotwResponse {
    /// The same response as the generated message (copies the bytes).
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|e| e.any()).collect(),
            type_url: self.type_url.to_owned(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl DeltaResponse {
    /// The same response as the generated message (copies the bytes).
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|e| Resource {
                    name: e.name.to_string(),
                    version: e.version.to_string(),
                    resource: Some(e.any()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.to_owned(),
            removed_resources: self
                .removed_resources
                .iter()
                .map(|n| n.to_string())
                .collect(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

fn str_len(tag: u32, s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &[u8], buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s);
    }
}

/// Length of an `Any { type_url, value }` body.
fn any_len(e: &Entry) -> usize {
    str_len(1, e.type_url.as_bytes()) + str_len(2, &e.bytes)
}

fn put_message(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_any(e: &Entry, buf: &mut impl BufMut) {
    put_str(1, e.type_url.as_bytes(), buf);
    put_str(2, &e.bytes, buf);
}

fn message_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// `envoy.service.discovery.v3.Resource { version = 1, resource = 2, name = 3 }`.
fn resource_len(e: &Entry) -> usize {
    str_len(1, e.version.as_bytes()) + message_len(2, any_len(e)) + str_len(3, e.name.as_bytes())
}

impl prost::Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, self.version_info.as_bytes(), buf);
        for e in &self.resources {
            put_message(2, any_len(e), buf);
            put_any(e, buf);
        }
        put_str(4, self.type_url.as_bytes(), buf);
        put_str(5, self.nonce.as_bytes(), buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Only ever encoded by the server.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(1, self.version_info.as_bytes())
            + self
                .resources
                .iter()
                .map(|e| message_len(2, any_len(e)))
                .sum::<usize>()
            + str_len(4, self.type_url.as_bytes())
            + str_len(5, self.nonce.as_bytes())
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl prost::Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, self.system_version_info.as_bytes(), buf);
        for e in &self.resources {
            // Fields in tag order, as prost writes the generated message.
            put_message(2, resource_len(e), buf);
            put_str(1, e.version.as_bytes(), buf);
            put_message(2, any_len(e), buf);
            put_any(e, buf);
            put_str(3, e.name.as_bytes(), buf);
        }
        put_str(4, self.type_url.as_bytes(), buf);
        put_str(5, self.nonce.as_bytes(), buf);
        for n in &self.removed_resources {
            // A repeated string is written even when empty.
            encode_key(6, WireType::LengthDelimited, buf);
            encode_varint(n.len() as u64, buf);
            buf.put_slice(n.as_bytes());
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(1, self.system_version_info.as_bytes())
            + self
                .resources
                .iter()
                .map(|e| message_len(2, resource_len(e)))
                .sum::<usize>()
            + str_len(4, self.type_url.as_bytes())
            + str_len(5, self.nonce.as_bytes())
            + self
                .removed_resources
                .iter()
                .map(|n| message_len(6, n.len()))
                .sum::<usize>()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The two ADS methods, answering with [`SotwResponse`] and [`DeltaResponse`].
#[tonic::async_trait]
pub trait Ads: Send + Sync + 'static {
    type SotwStream: futures::Stream<Item = Result<SotwResponse, tonic::Status>> + Send + 'static;
    type DeltaStream: futures::Stream<Item = Result<DeltaResponse, tonic::Status>> + Send + 'static;
    async fn sotw(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::SotwStream>, tonic::Status>;
    async fn delta(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaStream>, tonic::Status>;
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`, serving
/// responses from shared encodings (what the generated server would do,
/// with the response types swapped).
#[derive(Debug)]
pub struct AdsService<T> {
    inner: Arc<T>,
}

impl<T> Clone for AdsService<T> {
    fn clone(&self) -> Self {
        AdsService {
            inner: self.inner.clone(),
        }
    }
}

impl<T> AdsService<T> {
    pub fn new(inner: T) -> Self {
        AdsService {
            inner: Arc::new(inner),
        }
    }
}

impl<T> tonic::server::NamedService for AdsService<T> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

struct SotwMethod<T>(Arc<T>);
struct DeltaMethod<T>(Arc<T>);

impl<T: Ads> tonic::server::StreamingService<DiscoveryRequest> for SotwMethod<T> {
    type Response = SotwResponse;
    type ResponseStream = T::SotwStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;
    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.sotw(request).await })
    }
}

impl<T: Ads> tonic::server::StreamingService<DeltaDiscoveryRequest> for DeltaMethod<T> {
    type Response = DeltaResponse;
    type ResponseStream = T::DeltaStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;
    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.delta(request).await })
    }
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

impl<T, B> Service<http::Request<B>> for AdsService<T>
where
    T: Ads,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let codec = tonic::codec::ProstCodec::<SotwResponse, DiscoveryRequest>::default();
                Ok(tonic::server::Grpc::new(codec)
                    .streaming(SotwMethod(inner), req)
                    .await)
            }),
            DELTA_PATH => Box::pin(async move {
                let codec =
                    tonic::codec::ProstCodec::<DeltaResponse, DeltaDiscoveryRequest>::default();
                Ok(tonic::server::Grpc::new(codec)
                    .streaming(DeltaMethod(inner), req)
                    .await)
            }),
            _ => Box::pin(async move {
                let mut response = http::Response::new(empty_body());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceType;
    use prost::Message;

    fn entry(name: &str, body: &[u8]) -> Arc<Entry> {
        Arc::new(Entry::new(name, ResourceType::Cluster, body.to_vec()))
    }

    #[test]
    fn shared_encodings_frame_exactly_as_the_generated_messages() {
        let cases = [
            vec![],
            vec![entry("a", b"\x0a\x01a")],
            vec![entry("a", b"x"), entry("b", &[7u8; 300]), entry("c", b"")],
        ];
        for resources in cases {
            let s = SotwResponse {
                version_info: "v1".into(),
                type_url: ResourceType::Cluster.type_url(),
                nonce: "3".into(),
                resources: resources.clone(),
            };
            assert_eq!(s.encode_to_vec(), s.to_proto().encode_to_vec());
            assert_eq!(s.encoded_len(), s.to_proto().encoded_len());
            let d = DeltaResponse {
                system_version_info: "v2".into(),
                type_url: ResourceType::Cluster.type_url(),
                nonce: "4".into(),
                resources,
                removed_resources: vec![Arc::from("gone"), Arc::from("")],
            };
            assert_eq!(d.encode_to_vec(), d.to_proto().encode_to_vec());
            assert_eq!(d.encoded_len(), d.to_proto().encoded_len());
            // And the bytes decode as the generated message.
            let back = DeltaDiscoveryResponse::decode(d.encode_to_vec().as_slice()).unwrap();
            assert_eq!(back, d.to_proto());
        }
    }
}

//! Responses assembled from shared encodings.
//!
//! A resource is encoded once per version into [`Entry::bytes`]; a response
//! holds `Arc`s to the entries and is written to the wire by framing those
//! bytes (a few tag and length bytes around each), never by encoding a
//! resource again or copying it into a per-stream protobuf message first.
//! [`SotwResponse`] and [`DeltaResponse`] implement [`prost::Message`] for
//! encoding with the field numbers of `DiscoveryResponse` and
//! `DeltaDiscoveryResponse`; [`AdsService`] serves the ADS methods with
//! them, framing each response into buffers of its own (a large response
//! around one encoding of its resources, shared by every stream sent the
//! same entries), and reads the requests with [`Requests`], which keeps no
//! buffer between them.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, DecodeContext, WireType};
use prost::DecodeError;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use xds_api::pb::envoy::config::core::v3::Node;
use xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_api::pb::google::rpc::Status as RpcStatus;

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

/// One `DeltaDiscoveryResponse.resources` entry (field 2).
fn put_resource(e: &Entry, buf: &mut impl BufMut) {
    // Fields in tag order, as prost writes the generated message.
    put_message(2, resource_len(e), buf);
    put_str(1, e.version.as_bytes(), buf);
    put_message(2, any_len(e), buf);
    put_any(e, buf);
    put_str(3, e.name.as_bytes(), buf);
}

fn removed_len(names: &[Arc<str>]) -> usize {
    names.iter().map(|n| message_len(6, n.len())).sum()
}

/// `DeltaDiscoveryResponse.removed_resources` (field 6).
fn put_removed(names: &[Arc<str>], buf: &mut impl BufMut) {
    for n in names {
        // A repeated string is written even when empty.
        encode_key(6, WireType::LengthDelimited, buf);
        encode_varint(n.len() as u64, buf);
        buf.put_slice(n.as_bytes());
    }
}

impl prost::Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, self.system_version_info.as_bytes(), buf);
        for e in &self.resources {
            put_resource(e, buf);
        }
        put_str(4, self.type_url.as_bytes(), buf);
        put_str(5, self.nonce.as_bytes(), buf);
        put_removed(&self.removed_resources, buf);
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
            + removed_len(&self.removed_resources)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A SotW `DiscoveryRequest` as the engine reads it: the same fields, but
/// the resource names stay in the request's own bytes, with their count
/// and a hash.
///
/// Why: Envoy's EDS ACKs name every cluster, so at 500 policies each ACK
/// carries 500 names, and after each push thousands of streams ACK. Decoded
/// by prost that was 500 `String`s per ACK, made, hashed and freed; most of
/// the server's CPU per change. The names are only read when the hash says
/// the list differs from the last request's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    pub version_info: String,
    pub node: Option<Node>,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<RpcStatus>,
    /// The encoded request; its field-3 entries are the resource names.
    encoded: bytes::Bytes,
    names_len: usize,
    names_hash: u64,
}

/// `DiscoveryRequest.resource_names`.
const RESOURCE_NAMES: u64 = 3;

impl SotwRequest {
    /// The resource names, in request order.
    pub fn resource_names(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        Fields(&self.encoded).filter_map(|(field, value)| match (field, value) {
            // Checked as UTF-8 when decoded.
            (RESOURCE_NAMES, Some(v)) => std::str::from_utf8(v).ok(),
            _ => None,
        })
    }

    /// How many names the request gives.
    pub fn names_len(&self) -> usize {
        self.names_len
    }

    /// A hash of the names in order: equal lists give equal hashes.
    pub fn names_hash(&self) -> u64 {
        self.names_hash
    }
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(r: DiscoveryRequest) -> Self {
        let bytes = prost::Message::encode_to_vec(&r);
        SotwRequest::decode_request(bytes.into()).expect("a request prost encoded decodes")
    }
}

impl DecodeRequest for SotwRequest {
    fn decode_request(bytes: bytes::Bytes) -> Result<Self, DecodeError> {
        let mut r = SotwRequest::default();
        let mut hash = NamesHash::default();
        let string = |v: &[u8]| {
            String::from_utf8(v.to_vec()).map_err(|_| DecodeError::new("invalid string value"))
        };
        // Names are checked one by one only if the request is not all
        // ASCII (it is, for every xDS client we know): one pass, not 500.
        let ascii = bytes.is_ascii();
        let mut fields = Fields(&bytes);
        for (field, value) in fields.by_ref() {
            // Fields this engine does not read (resource locators, ...)
            // and non-length-delimited ones are skipped, as prost would.
            let Some(v) = value else { continue };
            match field {
                1 => r.version_info = string(v)?,
                2 => prost::Message::merge(r.node.get_or_insert_with(Node::default), v)?,
                RESOURCE_NAMES => {
                    if !ascii {
                        std::str::from_utf8(v)
                            .map_err(|_| DecodeError::new("invalid string value"))?;
                    }
                    hash.name(v);
                    r.names_len += 1;
                }
                4 => r.type_url = string(v)?,
                5 => r.response_nonce = string(v)?,
                6 => {
                    prost::Message::merge(r.error_detail.get_or_insert_with(RpcStatus::default), v)?
                }
                _ => {}
            }
        }
        if !fields.0.is_empty() {
            return Err(DecodeError::new("truncated or malformed request"));
        }
        r.names_hash = hash.0;
        r.encoded = bytes;
        Ok(r)
    }
}

/// The top-level fields of an encoded message: (field number, value of a
/// length-delimited field). Stops at the first malformed field, leaving
/// the rest in `.0` (empty when all was read).
#[derive(Clone)]
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut b = self.0;
        if b.is_empty() {
            return None;
        }
        let key = prost::encoding::decode_varint(&mut b).ok()?;
        let value = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut b).ok()?;
                None
            }
            1 => {
                b = b.get(8..)?;
                None
            }
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut b).ok()?).ok()?;
                let v = b.get(..len)?;
                b = &b[len..];
                Some(v)
            }
            5 => {
                b = b.get(4..)?;
                None
            }
            _ => return None,
        };
        self.0 = b;
        Some((key >> 3, value))
    }
}

/// A fast hash of a list of names, eight bytes at a time (FNV, a byte at
/// a time, cost more than the rest of an ACK). Not for untrusted
/// collisions: a client that forges one only keeps its own old list.
pub(crate) struct NamesHash(pub(crate) u64);

impl Default for NamesHash {
    /// Not zero: a name of zero bytes must change the hash.
    fn default() -> Self {
        NamesHash(0xcbf2_9ce4_8422_2325)
    }
}

impl NamesHash {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    pub(crate) fn name(&mut self, name: &[u8]) {
        self.word(name.len() as u64);
        let mut chunks = name.chunks_exact(8);
        for c in chunks.by_ref() {
            self.word(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }
}

/// The two ADS methods, answering with [`SotwResponse`] and [`DeltaResponse`].
#[tonic::async_trait]
pub trait Ads: Send + Sync + 'static {
    type SotwStream: futures::Stream<Item = Result<SotwResponse, tonic::Status>> + Send + 'static;
    type DeltaStream: futures::Stream<Item = Result<DeltaResponse, tonic::Status>> + Send + 'static;
    async fn sotw(
        &self,
        request: tonic::Request<Requests<SotwRequest>>,
    ) -> Result<tonic::Response<Self::SotwStream>, tonic::Status>;
    async fn delta(
        &self,
        request: tonic::Request<Requests<DeltaDiscoveryRequest>>,
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

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request a client may send (tonic's default).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

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
                let Some(req) = requests::<SotwRequest, B>(req) else {
                    return Ok(unsupported_encoding());
                };
                Ok(match inner.sotw(req).await {
                    Ok(response) => framed(response.into_inner()),
                    Err(status) => status.into_http(),
                })
            }),
            DELTA_PATH => Box::pin(async move {
                let Some(req) = requests::<DeltaDiscoveryRequest, B>(req) else {
                    return Ok(unsupported_encoding());
                };
                Ok(match inner.delta(req).await {
                    Ok(response) => framed(response.into_inner()),
                    Err(status) => status.into_http(),
                })
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
            ),
        }
    }
}

/// The request stream; `None` if the client compresses its requests (no
/// xDS client does, and we offer no codec).
fn requests<M, B>(req: http::Request<B>) -> Option<tonic::Request<Requests<M>>>
where
    M: DecodeRequest + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let compressed = req
        .headers()
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes() != b"identity");
    if compressed {
        return None;
    }
    Some(tonic::Request::from_http(req.map(Requests::new)))
}

type RequestBody = std::pin::Pin<Box<dyn Body<Data = bytes::Bytes, Error = tonic::Status> + Send>>;

/// A stream's requests, decoded from the gRPC body.
///
/// Why not tonic's `Streaming`: it reads into one buffer per stream that
/// keeps the capacity of the largest request ever received (at least
/// 8 KiB; a state-of-the-world EDS ACK names every cluster) for the life
/// of the stream. An idle sidecar sends nothing for hours, so here the
/// buffer is released as soon as it holds no partial message.
pub struct Requests<M> {
    body: RequestBody,
    /// The rest of the last chunk received: whole messages in it are
    /// decoded in place, without a copy.
    chunk: bytes::Bytes,
    /// A message that spans chunks, gathered here until it is whole.
    partial: bytes::BytesMut,
    done: bool,
    _message: std::marker::PhantomData<fn() -> M>,
}

/// The length of the message a buffer starts with, once its 5-byte gRPC
/// prefix is there.
#[allow(clippy::result_large_err)] // the `Status` goes to tonic as is
fn framed_len(buf: &[u8]) -> Result<Option<usize>, tonic::Status> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    if header[0] != 0 {
        return Err(tonic::Status::unimplemented(
            "compressed requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_REQUEST {
        return Err(tonic::Status::out_of_range(format!(
            "request of {len} bytes is over the limit of {MAX_REQUEST}"
        )));
    }
    Ok(Some(len))
}

impl<M> Requests<M> {
    pub fn new<B>(body: B) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        Requests {
            body: Box::pin(AnyBody(Box::pin(body))),
            chunk: bytes::Bytes::new(),
            partial: bytes::BytesMut::new(),
            done: false,
            _message: std::marker::PhantomData,
        }
    }

    /// The next whole message, if there is one.
    #[allow(clippy::result_large_err)] // the `Status` goes to tonic as is
    fn take_message(&mut self) -> Result<Option<bytes::Bytes>, tonic::Status> {
        if self.partial.is_empty() {
            if let Some(len) = framed_len(&self.chunk)? {
                if self.chunk.len() >= 5 + len {
                    self.chunk.advance(5);
                    let message = self.chunk.split_to(len);
                    if self.chunk.is_empty() {
                        self.chunk = bytes::Bytes::new();
                    }
                    return Ok(Some(message));
                }
            }
        }
        // A message that ends in a later chunk: gather it.
        if !self.chunk.is_empty() {
            self.partial.extend_from_slice(&self.chunk);
            self.chunk = bytes::Bytes::new();
        }
        match framed_len(&self.partial)? {
            Some(len) if self.partial.len() >= 5 + len => {
                self.partial.advance(5);
                let message = self.partial.split_to(len).freeze();
                if self.partial.is_empty() {
                    // Let the allocation go with the message once it is decoded.
                    self.partial = bytes::BytesMut::new();
                }
                Ok(Some(message))
            }
            _ => Ok(None),
        }
    }
}

/// A request body with its data as `Bytes` and its errors as `Status`.
struct AnyBody<B>(std::pin::Pin<Box<B>>);

impl<B> Body for AnyBody<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    #[allow(clippy::result_large_err)] // the `Status` goes to tonic as is
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        self.0.as_mut().poll_frame(cx).map(|frame| {
            frame.map(|r| {
                r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                    .map_err(|e| tonic::Status::from_error(e.into()))
            })
        })
    }
}

/// A request type [`Requests`] can decode from a message's bytes.
pub trait DecodeRequest: Sized {
    fn decode_request(bytes: bytes::Bytes) -> Result<Self, DecodeError>;
}

impl DecodeRequest for DeltaDiscoveryRequest {
    fn decode_request(bytes: bytes::Bytes) -> Result<Self, DecodeError> {
        <Self as prost::Message>::decode(bytes)
    }
}

impl<M: DecodeRequest> futures::Stream for Requests<M> {
    type Item = Result<M, tonic::Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        loop {
            match self.take_message() {
                Ok(Some(bytes)) => {
                    return Poll::Ready(Some(M::decode_request(bytes).map_err(|e| {
                        tonic::Status::internal(format!("request does not decode: {e}"))
                    })));
                }
                Ok(None) => {}
                Err(status) => {
                    self.done = true;
                    self.chunk = bytes::Bytes::new();
                    self.partial = bytes::BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if self.done {
                return Poll::Ready(None);
            }
            match futures::ready!(self.body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // take_message moved any rest of the last chunk
                        // into `partial` before asking for more.
                        self.chunk = data;
                    }
                }
                Some(Err(status)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    self.done = true;
                    if !self.partial.is_empty() {
                        return Poll::Ready(Some(Err(tonic::Status::internal(
                            "the request stream ended inside a message",
                        ))));
                    }
                }
            }
        }
    }
}

fn unsupported_encoding() -> http::Response<tonic::body::BoxBody> {
    tonic::Status::unimplemented("compressed requests are not supported").into_http()
}

/// A gRPC response body that writes each message into buffers of its own,
/// sized exactly, and hands them to HTTP/2: a small message in one, a large
/// one around the shared encoding of its resources (see [`Framed`]).
///
/// Why not tonic's encoder: it encodes into one growing buffer per stream
/// and splits each message off it, so the stream keeps an allocation as
/// large as the largest message it ever sent (a full CDS response is
/// hundreds of KiB at hundreds of policies) for as long as it lives. At
/// 10,000 idle sidecars that was most of the server's memory. Here the
/// buffer is freed once HTTP/2 has written it.
fn framed<S, M>(messages: S) -> http::Response<tonic::body::BoxBody>
where
    S: futures::Stream<Item = Result<M, tonic::Status>> + Send + 'static,
    M: Framed + 'static,
{
    let body = FramedBody {
        messages: Box::pin(messages),
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    let mut response = http::Response::new(tonic::body::boxed(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

struct FramedBody<M> {
    messages: std::pin::Pin<Box<dyn futures::Stream<Item = Result<M, tonic::Status>> + Send>>,
    /// The rest of the message being written.
    pending: std::collections::VecDeque<bytes::Bytes>,
    done: bool,
}

/// A response written as one gRPC message: the 5-byte prefix and the
/// message, in one or more chunks (HTTP/2 DATA frames) that together are
/// the message's encoding.
pub(crate) trait Framed: Send {
    /// The chunks, in order. Fails only for a message over gRPC's 4 GiB
    /// length prefix.
    fn frame(&self) -> Result<Vec<bytes::Bytes>, String>;
}

/// The 5-byte gRPC message prefix and the message, in one buffer.
fn frame_whole<M: prost::Message>(message: &M) -> Result<bytes::Bytes, String> {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    put_prefix(len, &mut buf)?;
    message.encode(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf.into())
}

fn put_prefix(len: usize, buf: &mut Vec<u8>) -> Result<(), String> {
    let Ok(prefix) = u32::try_from(len) else {
        return Err(format!("response of {len} bytes is over gRPC's limit"));
    };
    buf.push(0); // not compressed
    buf.extend_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// Responses whose resources encode to fewer bytes are written whole: a
/// copy is cheaper than a lookup and two more DATA frames.
const SHARE_FROM: usize = 4096;

/// `head`, the shared encoding of the resources field, `tail`: one gRPC
/// message in three chunks, the middle one the same `Bytes` for every
/// stream that is sent the same entries.
fn frame_around(
    kind: Encoding,
    resources: &[Arc<Entry>],
    resources_len: usize,
    head: impl FnOnce(&mut Vec<u8>),
    head_len: usize,
    tail: impl FnOnce(&mut Vec<u8>),
    tail_len: usize,
) -> Result<Vec<bytes::Bytes>, String> {
    let shared = shared_encoding(kind, resources, resources_len);
    let mut first = Vec::with_capacity(5 + head_len);
    put_prefix(head_len + resources_len + tail_len, &mut first)?;
    head(&mut first);
    let mut last = Vec::with_capacity(tail_len);
    tail(&mut last);
    Ok(vec![first.into(), shared, last.into()])
}

impl Framed for SotwResponse {
    fn frame(&self) -> Result<Vec<bytes::Bytes>, String> {
        let resources_len = self
            .resources
            .iter()
            .map(|e| message_len(2, any_len(e)))
            .sum::<usize>();
        if resources_len < SHARE_FROM {
            return frame_whole(self).map(|b| vec![b]);
        }
        frame_around(
            Encoding::Any,
            &self.resources,
            resources_len,
            |buf| put_str(1, self.version_info.as_bytes(), buf),
            str_len(1, self.version_info.as_bytes()),
            |buf| {
                put_str(4, self.type_url.as_bytes(), buf);
                put_str(5, self.nonce.as_bytes(), buf);
            },
            str_len(4, self.type_url.as_bytes()) + str_len(5, self.nonce.as_bytes()),
        )
    }
}

impl Framed for DeltaResponse {
    fn frame(&self) -> Result<Vec<bytes::Bytes>, String> {
        let resources_len = self
            .resources
            .iter()
            .map(|e| message_len(2, resource_len(e)))
            .sum::<usize>();
        if resources_len < SHARE_FROM {
            return frame_whole(self).map(|b| vec![b]);
        }
        frame_around(
            Encoding::Resource,
            &self.resources,
            resources_len,
            |buf| put_str(1, self.system_version_info.as_bytes(), buf),
            str_len(1, self.system_version_info.as_bytes()),
            |buf| {
                put_str(4, self.type_url.as_bytes(), buf);
                put_str(5, self.nonce.as_bytes(), buf);
                put_removed(&self.removed_resources, buf);
            },
            str_len(4, self.type_url.as_bytes())
                + str_len(5, self.nonce.as_bytes())
                + removed_len(&self.removed_resources),
        )
    }
}

/// How a response's `resources` field holds an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// `DiscoveryResponse.resources`: `Any`s.
    Any,
    /// `DeltaDiscoveryResponse.resources`: `Resource { version, Any, name }`s.
    Resource,
}

fn put_resources(kind: Encoding, resources: &[Arc<Entry>], buf: &mut Vec<u8>) {
    for e in resources {
        match kind {
            Encoding::Any => {
                put_message(2, any_len(e), buf);
                put_any(e, buf);
            }
            Encoding::Resource => put_resource(e, buf),
        }
    }
}

/// Encoded `resources` fields of recent large responses, by the entries
/// they hold. At start-up every Envoy of a mesh is sent the same full
/// state (all clusters, all endpoints): 10,000 streams then share one
/// encoding instead of each copying ~100 KB into a buffer of its own,
/// which was a quarter of the server's CPU during the initial sync.
static SHARED_ENCODINGS: std::sync::Mutex<SharedEncodings> =
    std::sync::Mutex::new(SharedEncodings {
        slots: Vec::new(),
        next: 0,
    });

/// At most this many encodings are kept (oldest replaced first), and none
/// larger than [`SHARED_MAX_BYTES`]: 64 MiB at the very most, in practice
/// the full states of the current snapshot (about 2 MiB each at 15,000
/// policies). A larger list is encoded per stream, as any was before.
const SHARED_SLOTS: usize = 16;
const SHARED_MAX_BYTES: usize = 4 << 20;

struct SharedEncodings {
    slots: Vec<SharedEncoding>,
    next: usize,
}

struct SharedEncoding {
    kind: Encoding,
    key: u64,
    /// Held, so that their addresses identify them while the slot lives.
    entries: Vec<Arc<Entry>>,
    bytes: bytes::Bytes,
}

/// The encoding of `resources` as a response's resources field, shared with
/// the last response that held exactly these entries (the same `Arc`s: an
/// entry is immutable, so the same address is the same bytes).
fn shared_encoding(kind: Encoding, resources: &[Arc<Entry>], len: usize) -> bytes::Bytes {
    let key = resources.iter().fold(resources.len() as u64, |h, e| {
        (h.rotate_left(5) ^ Arc::as_ptr(e) as u64).wrapping_mul(0x517c_c1b7_2722_0a95)
    });
    let same = |s: &SharedEncoding| {
        s.kind == kind
            && s.key == key
            && s.entries.len() == resources.len()
            && s.entries
                .iter()
                .zip(resources)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    };
    let encode = || {
        let mut buf = Vec::with_capacity(len);
        put_resources(kind, resources, &mut buf);
        bytes::Bytes::from(buf)
    };
    if len > SHARED_MAX_BYTES {
        return encode();
    }
    // Encoded under the lock: the other streams sent the same wait for this
    // encoding instead of each making one.
    let mut shared = SHARED_ENCODINGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = shared.slots.iter().find(|s| same(s)) {
        return s.bytes.clone();
    }
    let slot = SharedEncoding {
        kind,
        key,
        entries: resources.to_vec(),
        bytes: encode(),
    };
    let bytes = slot.bytes.clone();
    if shared.slots.len() < SHARED_SLOTS {
        shared.slots.push(slot);
    } else {
        let i = shared.next % SHARED_SLOTS;
        shared.slots[i] = slot;
        shared.next = i + 1;
    }
    bytes
}

fn trailers(status: &tonic::Status) -> http_body::Frame<bytes::Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert(
            tonic::Status::GRPC_STATUS,
            (tonic::Code::Internal as i32).into(),
        );
    }
    http_body::Frame::trailers(map)
}

impl<M: Framed> Body for FramedBody<M> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        if let Some(chunk) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let next = futures::ready!(futures::Stream::poll_next(self.messages.as_mut(), cx));
        Poll::Ready(Some(Ok(match next {
            Some(Ok(message)) => match message.frame() {
                Ok(chunks) => {
                    let mut chunks = std::collections::VecDeque::from(chunks);
                    let first = chunks.pop_front().unwrap_or_default();
                    self.pending = chunks;
                    http_body::Frame::data(first)
                }
                Err(why) => {
                    self.done = true;
                    trailers(&tonic::Status::resource_exhausted(why))
                }
            },
            Some(Err(status)) => {
                self.done = true;
                trailers(&status)
            }
            None => {
                self.done = true;
                trailers(&tonic::Status::ok(""))
            }
        })))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
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

    /// A request body delivered in the given chunks.
    struct Chunks(std::collections::VecDeque<bytes::Bytes>);

    impl Body for Chunks {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
        }
    }

    fn grpc_frame(m: &DiscoveryRequest) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn request(nonce: &str, names: usize) -> DiscoveryRequest {
        DiscoveryRequest {
            response_nonce: nonce.to_owned(),
            resource_names: (0..names).map(|i| format!("cluster-{i}")).collect(),
            ..Default::default()
        }
    }

    /// Requests come out whole however the body is cut, and no buffer is
    /// held once no partial message is left.
    #[tokio::test]
    async fn requests_decode_across_any_chunking_and_keep_no_buffer() {
        use futures::StreamExt;
        let sent = [request("1", 500), request("2", 0), request("3", 3)];
        let wire: Vec<u8> = sent.iter().flat_map(grpc_frame).collect();
        for cut in [1, 2, 5, 7, 100, 4096, wire.len()] {
            let chunks = wire
                .chunks(cut)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let mut requests = Requests::<SotwRequest>::new(Chunks(chunks));
            for want in &sent {
                let got = requests.next().await.expect("a request").expect("decodes");
                assert_eq!(got.response_nonce, want.response_nonce, "cut {cut}");
                assert!(got
                    .resource_names()
                    .eq(want.resource_names.iter().map(String::as_str)));
            }
            assert_eq!(requests.partial.capacity(), 0, "cut {cut}");
            assert!(requests.chunk.is_empty(), "cut {cut}");
            assert!(requests.next().await.is_none(), "cut {cut}");
        }
    }

    /// The engine's SotW request reads what prost reads, keeps the names in
    /// order, and hashes equal lists equally and different ones not.
    #[test]
    fn sotw_requests_decode_as_prost_decodes_them() {
        let full = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar~10.0.0.1".into(),
                cluster: "web".into(),
                ..Default::default()
            }),
            resource_names: vec!["b".into(), "a".into(), "*".into(), "ünïcode".into()],
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            response_nonce: "7".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [full.clone(), DiscoveryRequest::default()];
        for want in cases {
            let got = SotwRequest::from(want.clone());
            assert_eq!(got.version_info, want.version_info);
            assert_eq!(got.node, want.node);
            assert_eq!(got.type_url, want.type_url);
            assert_eq!(got.response_nonce, want.response_nonce);
            assert_eq!(got.error_detail, want.error_detail);
            assert_eq!(got.names_len(), want.resource_names.len());
            assert!(got
                .resource_names()
                .eq(want.resource_names.iter().map(String::as_str)));
        }
        // A field this engine does not read (resource_locators = 7) is skipped.
        let mut with_unknown = full.encode_to_vec();
        with_unknown.extend_from_slice(&[7 << 3 | 2, 1, b'x', 9 << 3, 1]);
        let got = SotwRequest::decode_request(with_unknown.into()).expect("decodes");
        assert_eq!(got.names_len(), 4);

        let hash = |names: &[&str]| {
            SotwRequest::from(DiscoveryRequest {
                resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
                ..Default::default()
            })
            .names_hash()
        };
        assert_eq!(hash(&["a", "b"]), hash(&["a", "b"]));
        for (x, y) in [
            (&["a", "b"][..], &["b", "a"][..]),
            (&["ab"], &["a", "b"]),
            (&["a"], &["a", ""]),
            (&["cluster-00000001"], &["cluster-00000002"]),
            (&[], &[""]),
        ] {
            assert_ne!(hash(x), hash(y), "{x:?} {y:?}");
        }

        // Malformed: a name that is not UTF-8, a truncated field.
        let mut bad_utf8 = Vec::new();
        prost::encoding::bytes::encode(3, &vec![0xff_u8, 0xfe], &mut bad_utf8);
        let mut truncated = full.encode_to_vec();
        truncated.pop();
        for bad in [bad_utf8, truncated] {
            assert!(SotwRequest::decode_request(bad.into()).is_err());
        }
    }

    /// (what the body holds, the error's code)
    #[tokio::test]
    async fn bad_request_bodies_end_the_stream_with_an_error() {
        use futures::StreamExt;
        let whole = grpc_frame(&request("1", 2));
        let mut compressed = whole.clone();
        compressed[0] = 1;
        let mut huge = vec![0];
        huge.extend_from_slice(&(MAX_REQUEST as u32 + 1).to_be_bytes());
        let cases: Vec<(Vec<u8>, tonic::Code)> = vec![
            (whole[..whole.len() - 1].to_vec(), tonic::Code::Internal),
            (compressed, tonic::Code::Unimplemented),
            (huge, tonic::Code::OutOfRange),
            (vec![0, 0, 0, 0, 2, 0xff, 0xff], tonic::Code::Internal),
        ];
        for (body, code) in cases {
            let chunks = [bytes::Bytes::from(body)].into();
            let mut requests = Requests::<SotwRequest>::new(Chunks(chunks));
            let err = requests
                .next()
                .await
                .expect("an item")
                .expect_err("an error");
            assert_eq!(err.code(), code, "{err:?}");
            assert!(requests.next().await.is_none());
        }
    }

    /// Each message in a buffer of its own with the gRPC prefix, then the
    /// stream's status as trailers, and nothing after.
    #[tokio::test]
    async fn the_body_frames_each_message_then_the_status() {
        let first = SotwResponse {
            version_info: "v1".into(),
            type_url: ResourceType::Cluster.type_url(),
            nonce: "1".into(),
            resources: vec![entry("a", &[7u8; 300])],
        };
        let second = SotwResponse {
            nonce: "2".into(),
            ..first.clone()
        };
        for (end, code) in [
            (None, tonic::Code::Ok),
            (
                Some(tonic::Status::permission_denied("no")),
                tonic::Code::PermissionDenied,
            ),
        ] {
            let mut items = vec![Ok(first.clone()), Ok(second.clone())];
            items.extend(end.map(Err));
            let response = framed(futures::stream::iter(items));
            assert_eq!(
                response.headers()[http::header::CONTENT_TYPE],
                "application/grpc"
            );
            let mut body = response.into_body();
            let mut frames = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
            {
                frames.push(frame.unwrap());
            }
            assert_eq!(frames.len(), 3);
            for (frame, message) in frames.iter().zip([&first, &second]) {
                let data = frame.data_ref().unwrap();
                let bytes = message.encode_to_vec();
                assert_eq!(data[0], 0);
                assert_eq!(&data[1..5], &(bytes.len() as u32).to_be_bytes());
                assert_eq!(&data[5..], &bytes[..]);
            }
            let trailers = frames[2].trailers_ref().unwrap();
            assert_eq!(trailers["grpc-status"], (code as i32).to_string().as_str());
        }
    }

    /// The chunks of a framed message, joined.
    fn joined<M: Framed>(m: &M) -> (Vec<bytes::Bytes>, Vec<u8>) {
        let chunks = m.frame().unwrap();
        let all = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        (chunks, all)
    }

    fn grpc(bytes: Vec<u8>) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend(bytes);
        out
    }

    /// A large response is written in three chunks around one shared
    /// encoding of its resources, byte for byte the generated message; a
    /// response with the same entries shares it, one with other entries or
    /// of the other kind does not; a small response is one chunk.
    #[test]
    fn large_responses_share_the_encoding_of_their_resources() {
        let entries: Vec<Arc<Entry>> = (0..64)
            .map(|i| entry(&format!("c{i:02}"), &[i as u8; 100]))
            .collect();
        let sotw = |nonce: &str, resources: &[Arc<Entry>]| SotwResponse {
            version_info: "v1".into(),
            type_url: ResourceType::Cluster.type_url(),
            nonce: nonce.into(),
            resources: resources.to_vec(),
        };
        let delta = |nonce: &str, resources: &[Arc<Entry>]| DeltaResponse {
            system_version_info: "v2".into(),
            type_url: ResourceType::Cluster.type_url(),
            nonce: nonce.into(),
            resources: resources.to_vec(),
            removed_resources: vec![Arc::from("gone")],
        };
        let (a, a_all) = joined(&sotw("1", &entries));
        let (b, b_all) = joined(&sotw("22", &entries));
        assert_eq!(a.len(), 3);
        assert_eq!(a_all, grpc(sotw("1", &entries).encode_to_vec()));
        assert_eq!(b_all, grpc(sotw("22", &entries).encode_to_vec()));
        assert_eq!(a[1].as_ptr(), b[1].as_ptr(), "the same entries share");

        let (d, d_all) = joined(&delta("3", &entries));
        assert_eq!(d_all, grpc(delta("3", &entries).encode_to_vec()));
        let back = DeltaDiscoveryResponse::decode(&d_all[5..]).unwrap();
        assert_eq!(back, delta("3", &entries).to_proto());
        assert_ne!(a[1].as_ptr(), d[1].as_ptr(), "SotW and delta differ");

        let mut other = entries.clone();
        other[10] = entry("c10", &[99; 100]);
        let (o, o_all) = joined(&sotw("1", &other));
        assert_eq!(o_all, grpc(sotw("1", &other).encode_to_vec()));
        assert_ne!(a[1].as_ptr(), o[1].as_ptr(), "other entries, other bytes");

        let (small, small_all) = joined(&sotw("1", &entries[..2]));
        assert_eq!(small.len(), 1);
        assert_eq!(small_all, grpc(sotw("1", &entries[..2]).encode_to_vec()));
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

//! The automation API's wire types, generated from `proto/meridian/v1`, and
//! their conversion to and from the one policy model in `meridian-policy`.
//!
//! The REST API's JSON and these messages are two encodings of the same
//! model: fields that JSON may omit (and the server then defaults) are
//! `optional` in the protos, so "absent" means the same in both.

mod convert;

pub use convert::{from_timestamp, to_struct, to_timestamp, ConvertError};

/// Generated messages, clients and servers of package `meridian.v1`.
#[allow(clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

/// The encoded `FileDescriptorSet` of the protos, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));

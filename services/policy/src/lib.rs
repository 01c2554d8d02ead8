//! The GlobalTrafficPolicy: Meridian's one resource.
//!
//! This crate is pure: types with their defaults ([`model`]), decoding from
//! JSON and YAML with field paths in errors ([`decode`]), the server's rules
//! ([`validate`]) and JSON merge patch ([`merge_patch`]). Every other crate
//! builds on it; none of it touches a socket, a file or a database.

pub mod decode;
pub mod merge_patch;
pub mod model;
pub mod provider;
pub mod validate;

pub use decode::{DecodeError, Format};
pub use model::*;
pub use validate::{validate, FieldError};

//! GitOps: policy repositories become the live state, one commit at a time.
//!
//! - [`files`]: which files count, and parsing them with every error at once (pure).
//! - [`plan`]: what to create, update and delete against the owned policies (pure).
//! - [`source`]: rules of a source, named credentials, webhook signatures.
//! - [`apply`]: the plan's writes in one store transaction.
//! - `git` and `sync` (feature `git`): fetching with gix, and the sync loop.
//!
//! The API uses this crate without the `git` feature, so it does not link gix.

pub mod apply;
pub mod files;
#[cfg(feature = "git")]
pub mod git;
pub mod plan;
pub mod source;
#[cfg(feature = "git")]
pub mod sync;

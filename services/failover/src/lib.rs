//! Health checking and failover decisions for Meridian, as pure functions.
//!
//! The control loop around this crate (probing, storing tallies, the leader
//! lease, pushing weights to xDS and DNS) lives elsewhere; everything here
//! takes its inputs as values and the current time as a number, so every rule
//! is tested with tables instead of clocks and sockets.
//!
//! - [`health`]: probe tallies and traffic tallies → zone health, with
//!   confidence bounds, the majority vote across checkers and the recovery
//!   hysteresis.
//! - [`decide`](mod@decide): spec + zone health + override + drains → effective weights.
//! - [`step`]: one leader pass over one policy: inputs in, zone states,
//!   weights and events out.
//! - [`endpoints`]: which endpoints of a healthy zone the checkers see
//!   failing, for EDS to mark unhealthy.
//! - [`simulate`]: the same pass on made-up silence, for what-if questions.
//! - [`timeline`]: how long a zone outage takes to reach clients.

pub mod decide;
pub mod endpoints;
pub mod health;
pub mod simulate;
pub mod step;
pub mod timeline;

pub use decide::{
    check_min_healthy, decide, decide_with, validate_override, Cause, Current, Decision, GuardRail,
    Override,
};
pub use health::{
    evaluate, tally, wilson, Evidence, Health, Sample, Source, TrafficTally, Verdict, Window,
    ZoneState, ZoneTally,
};
pub use timeline::{predicted_failover_ms, PredictedFailover};

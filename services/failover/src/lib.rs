//! Health checking and failover decisions for Meridian, as pure functions.
//!
//! The control loop around this crate (probing, storing tallies, the leader
//! lease, pushing weights to xDS and DNS) lives elsewhere; everything here
//! takes its inputs as values and the current time as a number, so every rule
//! is tested with tables instead of clocks and sockets.
//!
//! - [`health`]: probe samples → per-checker tallies → zone health, with the
//!   majority vote across checkers and the recovery hysteresis.
//! - [`decide`](mod@decide): spec + zone health + override + drains → effective weights.
//! - [`timeline`]: how long a zone outage takes to reach clients.

pub mod decide;
pub mod health;
pub mod timeline;

pub use decide::{decide, validate_override, Cause, Decision, Override};
pub use health::{evaluate, tally, Health, Sample, Verdict, Window, ZoneState, ZoneTally};
pub use timeline::{predicted_failover_ms, PredictedFailover};

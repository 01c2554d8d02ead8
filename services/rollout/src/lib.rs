//! Progressive delivery of a canary across zones and clouds (issue 18), as
//! pure functions; docs/rollouts.md has the design.
//!
//! The failover leader runs one [`step()`] per route with a rollout at each
//! tick, under its lease: it reads the stored [`Status`], the load reports
//! of the status's [`Status::window`] (canary and stable, per zone), the
//! Prometheus answers, the zones failed over or drained and a queued
//! operator [`Command`], and stores the output's status, weights and
//! events. Nothing here touches a socket, a clock or a database.
//!
//! - [`plan`]: the declared rollouts of a policy ([`targets`]), and the
//!   canary's weight per zone at each position of one.
//! - [`analysis`]: traffic and Prometheus answers → pass, fail or
//!   inconclusive, with the numbers.
//! - [`status`]: where a rollout is.
//! - [`step`](mod@step): one move, and which operator actions apply.
//!
//! Its events are the failover leader's [`Event`]s (re-exported here), so
//! the leader stores both kinds alike; its confidence bounds are failover's
//! [`wilson`](meridian_failover::wilson).

pub mod analysis;
pub mod plan;
pub mod status;
pub mod step;

pub use analysis::{analyse, Analysis, Counts, PrometheusResults, Traffic, Verdict};
pub use meridian_failover::step::{Event, Severity};
pub use plan::{targets, Plan, Position, Target};
pub use status::{Phase, Status};
pub use step::{check, step, Action, Command, Effect, Input, Output};

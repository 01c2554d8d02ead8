//! Health from real traffic: Envoy's Load Reporting Service (LRS,
//! `envoy.service.load_stats.v3.LoadReportingService`), served on the xDS
//! port.
//!
//! Envoys (bootstrap `cluster_manager.load_stats_config`) and proxyless
//! gRPC clients (every cluster Meridian serves names it as `lrs_server`) open
//! one stream, get told to report every cluster every
//! [`tally::REPORT_INTERVAL`], and then send, per cluster and locality, the
//! requests that succeeded and those that failed since their last report.
//!
//! * [`tally`] (pure): the protocol's answers, and a report folded into
//!   counts per (policy, zone), by the translation's naming (cluster =
//!   policy, or `policy@version` for a canary; locality zone = zone name).
//! * [`Service`]: the tonic service. Streams add their counts to this
//!   replica's pending tallies; a flusher writes them to PostgreSQL once
//!   per [`FLUSH_EVERY`] (one transaction for the whole replica, however
//!   many streams), into time buckets per reporting replica, and prunes
//!   buckets older than the store's retention.
//!
//! The failover leader pools every replica's buckets over a policy's
//! window with `Store::traffic_tallies`.

pub mod tally;

mod server;

pub use server::{Service, FLUSH_EVERY};

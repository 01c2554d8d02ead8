//! Events of a rollout, for the policy's timeline.
//!
//! The same shape as the failover leader's events (`meridian_failover::step`),
//! so the leader stores both in `events` the same way. Kept apart rather
//! than imported: this crate depends on the policy model only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How much an event matters, as stored in `events.severity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An event for the policy's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `rollout-started`, `rollout-step`, `rollout-inconclusive`,
    /// `rollout-paused`, `rollout-resumed`, `rollout-failed`,
    /// `rollout-completed`, `rollout-promoted`, `rollout-aborted`,
    /// `rollout-replanned`, `rollout-weights` or `rollout-action-refused`.
    pub kind: String,
    pub severity: Severity,
    pub message: String,
    pub details: Value,
}

pub(crate) fn event(kind: &str, severity: Severity, message: String, details: Value) -> Event {
    Event {
        kind: kind.to_owned(),
        severity,
        message,
        details,
    }
}

/// Formats weights as `a=50,b=0` for messages.
pub fn fmt_weights(w: &BTreeMap<String, u32>) -> String {
    w.iter()
        .map(|(z, n)| format!("{z}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

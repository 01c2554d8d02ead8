//! Where a rollout is, as the leader stores it (JSON) after each step.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::plan::Position;

/// The state of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Stepping forward as analyses pass.
    Progressing,
    /// Holding its weights until resumed (by an operator, after too little
    /// traffic, or after a failover). A failing analysis still rolls it back.
    Paused,
    /// Rolled back by a failing analysis: canary weight 0 everywhere.
    Failed,
    /// Every step passed (or promoted): the canary's version is ready to
    /// become the route's stable version.
    Completed,
    /// Rolled back by an operator: canary weight 0 everywhere.
    Aborted,
}

impl Phase {
    /// Failed, completed and aborted rollouts never move again; only a new
    /// version in the spec starts another.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Failed | Phase::Completed | Phase::Aborted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Failed => "failed",
            Phase::Completed => "completed",
            Phase::Aborted => "aborted",
        }
    }
}

/// Where one route's rollout is. Not `deny_unknown_fields`: during an
/// upgrade an older leader must still read what a newer one stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub route: String,
    /// The version being delivered; a spec naming another starts over.
    pub version: String,
    pub phase: Phase,
    /// Index of the current zone (with a zone order) or 0 (every zone
    /// together), and of the current step.
    pub zone_index: usize,
    pub step_index: usize,
    /// The steps and zone order the position refers to, so that a spec
    /// that changes them mid-way is noticed (see `rollout-replanned`).
    pub steps: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_order: Option<Vec<String>>,
    /// The canary's weight in percent in every zone of the policy, as
    /// served: zones failed over or drained are at 0.
    pub weights: BTreeMap<String, u32>,
    pub started_ms: i64,
    /// When the current step (or its current interval) began.
    pub step_started_ms: i64,
    /// Intervals of the current step that ended without a verdict.
    pub inconclusive: u32,
    /// Zones failed over or drained at the last step.
    #[serde(default)]
    pub unavailable_zones: BTreeSet<String>,
    /// The last analysis acted on: at the end of an interval, or failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<Analysis>,
    /// Why it is paused, failed or aborted (or who promoted it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Status {
    pub fn position(&self) -> Position {
        Position {
            zone: self.zone_index,
            step: self.step_index,
        }
    }

    pub(crate) fn set_position(&mut self, at: Position) {
        self.zone_index = at.zone;
        self.step_index = at.step;
    }

    /// Whether the current interval is over: the analysis is acted on
    /// (the leader queries Prometheus only then).
    pub fn interval_over(&self, step_interval_ms: u32, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.step_started_ms) >= i64::from(step_interval_ms)
    }

    /// The window whose traffic the next step needs, `(from_ms, to_ms)`:
    /// since the current step (or interval) began, at most one interval
    /// back (a paused rollout keeps judging the last interval). The leader
    /// reads the load reports of this window for the canary and stable
    /// clusters of the route.
    pub fn window(&self, step_interval_ms: u32, now_ms: i64) -> (i64, i64) {
        let from = self
            .step_started_ms
            .max(now_ms.saturating_sub(i64::from(step_interval_ms)));
        (from.min(now_ms), now_ms)
    }
}

//! `[workflows]`: where definitions live and how node jobs are queued.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::queue::QueueName;
use crate::setting::{self, InvalidSetting};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSettings {
    /// Where workflow definitions live; synced at start of `up`, `api` and `worker` if it exists.
    pub dir: PathBuf,
    /// The queue that carries node jobs.
    pub queue: QueueName,
    /// Attempts per node job before the node fails.
    pub node_max_attempts: i32,
    /// Events received this long before a run started still count for its wait-for-events nodes.
    #[serde(rename = "event_lookback_secs", deserialize_with = "setting::secs")]
    pub event_lookback: Duration,
    /// How many ranges ("lanes") a large topic's fan-out is cut into, each written by its own chain of fan-out
    /// jobs, in parallel across the worker processes that serve the queue (see `fanout.rs`).
    pub fanout_lanes: u32,
}

impl WorkflowSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.node_max_attempts < 1 {
            return Err(InvalidSetting::new(
                "workflows.node_max_attempts",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_FANOUT_LANES).contains(&self.fanout_lanes) {
            return Err(InvalidSetting::new(
                "workflows.fanout_lanes",
                format!("must be from 1 to {MAX_FANOUT_LANES}"),
            ));
        }
        Ok(())
    }
}

/// The most lanes a fan-out may have: each is a job chain and a row lock, and more than the fleet has cores to
/// write with buys nothing.
pub const MAX_FANOUT_LANES: u32 = 64;

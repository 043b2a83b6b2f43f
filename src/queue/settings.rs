//! The queue's settings: `[worker]` (how a worker process claims and runs jobs) and `[jobs]` (what a job gets
//! when its enqueuer does not say).

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::types::{JobDefaults, QueueName, QueueSpec};
use crate::setting::{self, InvalidSetting};

/// `[worker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// `name` or `name:concurrency` entries (as in `--queues emails:8,default`).
    pub queues: Vec<String>,
    /// Handlers running at once per queue, where an entry does not say.
    pub concurrency: NonZeroUsize,
    /// Most jobs one claim takes.
    pub batch_size: NonZeroUsize,
    #[serde(rename = "lease_secs", deserialize_with = "setting::secs")]
    pub lease: Duration,
    #[serde(rename = "poll_interval_ms", deserialize_with = "setting::millis")]
    pub poll_interval: Duration,
    #[serde(rename = "heartbeat_secs", deserialize_with = "setting::secs")]
    pub heartbeat: Duration,
    #[serde(rename = "rescue_interval_secs", deserialize_with = "setting::secs")]
    pub rescue_interval: Duration,
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "setting::secs")]
    pub shutdown_grace: Duration,
    #[serde(rename = "ack_flush_ms", deserialize_with = "setting::millis")]
    pub ack_flush: Duration,
    pub ack_batch: NonZeroUsize,
    /// Registers the fault-drill kinds `herald.spin` and `herald.block` (handlers that never yield).
    pub drills: bool,
}

/// `[jobs]`: the defaults of a job whose enqueuer does not set them, and the retry backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    pub max_attempts: i32,
    #[serde(rename = "timeout_secs", deserialize_with = "setting::secs")]
    pub timeout: Duration,
    /// How much waiting time one priority level is worth (fractions of a second allowed).
    #[serde(rename = "priority_aging_secs", deserialize_with = "setting::secs")]
    pub priority_aging: Duration,
    #[serde(rename = "retry_base_ms", deserialize_with = "setting::millis")]
    pub retry_base: Duration,
    #[serde(rename = "retry_max_secs", deserialize_with = "setting::secs")]
    pub retry_max: Duration,
    /// Let the API and the bridge enqueue the test kinds (`herald.noop`, `herald.sleep`, `herald.log`); off in
    /// production (see `queue::producers`).
    #[serde(default)]
    pub allow_test_kinds: bool,
}

impl WorkerSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        setting::positive("worker.lease_secs", self.lease)?;
        setting::positive("worker.poll_interval_ms", self.poll_interval)?;
        setting::positive("worker.heartbeat_secs", self.heartbeat)?;
        if self.heartbeat >= self.lease {
            return Err(InvalidSetting::new(
                "worker.heartbeat_secs",
                "must be shorter than worker.lease_secs, or leases expire between heartbeats",
            ));
        }
        self.queue_specs()?;
        Ok(())
    }

    /// The queues this process serves, with each one's concurrency.
    pub fn queue_specs(&self) -> Result<Vec<QueueSpec>, InvalidSetting> {
        parse_queue_specs(&self.queues, self.concurrency)
    }
}

impl JobSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        setting::positive("jobs.timeout_secs", self.timeout)?;
        if self.max_attempts < 1 {
            return Err(InvalidSetting::new(
                "jobs.max_attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn defaults(&self) -> JobDefaults {
        JobDefaults {
            max_attempts: self.max_attempts,
            timeout: self.timeout,
            priority_aging: self.priority_aging,
        }
    }
}

/// Parses `name` or `name:concurrency` entries (as in `--queues emails:8,default`).
pub fn parse_queue_specs(
    entries: &[String],
    default_concurrency: NonZeroUsize,
) -> Result<Vec<QueueSpec>, InvalidSetting> {
    let invalid = |reason: String| InvalidSetting::new("worker.queues", reason);
    if entries.is_empty() {
        return Err(invalid("name at least one queue".into()));
    }
    entries
        .iter()
        .map(|entry| {
            let (name, concurrency) = match entry.split_once(':') {
                Some((name, n)) => {
                    let n: usize = n
                        .parse()
                        .map_err(|_| invalid(format!("`{entry}`: concurrency must be a number")))?;
                    (name, n)
                }
                None => (entry.as_str(), default_concurrency.get()),
            };
            if concurrency == 0 {
                return Err(invalid(format!(
                    "`{entry}`: concurrency must be greater than zero"
                )));
            }
            let name = QueueName::parse(name).map_err(|e| invalid(e.to_string()))?;
            Ok(QueueSpec { name, concurrency })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs_parse_names_and_concurrency() {
        let four = NonZeroUsize::new(4).unwrap();
        let specs = parse_queue_specs(&["emails:8".into(), "default".into()], four).unwrap();
        assert_eq!(specs[0].name.as_str(), "emails");
        assert_eq!(specs[0].concurrency, 8);
        assert_eq!(specs[1].concurrency, 4);
        assert!(parse_queue_specs(&["emails:x".into()], four).is_err());
        assert!(parse_queue_specs(&["bad name".into()], four).is_err());
        assert!(parse_queue_specs(&[], four).is_err());
    }
}

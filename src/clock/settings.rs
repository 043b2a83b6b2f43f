//! `[clock]`: the clock's queue, how often it looks at the time, and its schedules.

use std::time::Duration;

use serde::Deserialize;

use super::retention::RetentionSettings;
use super::rollups::RollupSettings;
use super::schedules::ScheduleSettings;
use crate::queue::QueueName;
use crate::setting::{self, InvalidSetting};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSettings {
    /// The queue that carries the maintenance jobs (retention, rollups), served by a worker inside every clock.
    pub queue: QueueName,
    /// The longest a clock sleeps between two looks at its schedules (it wakes sooner for a due tick). A pause
    /// or a new schedule takes effect within this.
    #[serde(rename = "poll_secs", deserialize_with = "setting::secs")]
    pub poll: Duration,
    /// A tick more than this late (every clock was down at its time) is "missed": the schedule's `missed` policy
    /// decides whether it still runs.
    #[serde(rename = "missed_after_secs", deserialize_with = "setting::secs")]
    pub missed_after: Duration,
    /// How often the clock looks for churned tables to vacuum (`housekeeping`); 0 turns it off.
    #[serde(rename = "vacuum_check_secs", deserialize_with = "setting::secs")]
    pub vacuum_check: Duration,
    /// Dead rows a table needs (and a fifth of its live rows) before the clock vacuums it.
    pub vacuum_min_dead: i64,
    /// `[[clock.schedules]]`: users' schedules (the built-in maintenance schedules are added by the clock).
    #[serde(default)]
    pub schedules: Vec<ScheduleSettings>,
    #[serde(default)]
    pub retention: RetentionSettings,
    #[serde(default)]
    pub rollups: RollupSettings,
    #[serde(default)]
    pub partitions: PartitionSettings,
}

/// `[clock.partitions]`: the partitioned tables' partitions (the job history's), which every clock keeps ready
/// ahead of the present (looking every `poll_secs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionSettings {
    /// How much time one partition covers: a day by default (retention then drops a day at once). It must
    /// divide a day, so that partitions start at UTC midnight and a day's archive covers whole partitions.
    #[serde(rename = "width_secs", deserialize_with = "setting::secs")]
    pub width: Duration,
    /// Partitions kept ready after the present one: as long as a clock runs within this many widths, no row
    /// lands in the default partition.
    pub ahead: u32,
}

impl Default for PartitionSettings {
    fn default() -> Self {
        Self {
            width: Duration::from_secs(86_400),
            ahead: 4,
        }
    }
}

impl PartitionSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let secs = self.width.as_secs();
        if self.width.subsec_nanos() != 0 || secs < 60 || 86_400 % secs != 0 {
            return Err(InvalidSetting::new(
                "clock.partitions.width_secs",
                "must be whole seconds, at least 60, dividing a day (86400)",
            ));
        }
        if !(1..=1000).contains(&self.ahead) {
            return Err(InvalidSetting::new(
                "clock.partitions.ahead",
                "must be 1-1000",
            ));
        }
        Ok(())
    }
}

impl ClockSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        setting::positive("clock.poll_secs", self.poll)?;
        setting::positive("clock.missed_after_secs", self.missed_after)?;
        if self.vacuum_min_dead < 1 {
            return Err(InvalidSetting::new(
                "clock.vacuum_min_dead",
                "must be at least 1",
            ));
        }
        super::schedules::validate(&self.schedules)?;
        self.retention.validate()?;
        self.rollups.validate()?;
        self.partitions.validate()?;
        // The built-in schedules' cron expressions and time zones come from the sections above.
        super::all_schedules(self).map_err(|e| InvalidSetting::new("clock", e.to_string()))?;
        Ok(())
    }
}

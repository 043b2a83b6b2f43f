//! Daily rollups. (Being built: issue 14.)

use serde::Deserialize;

/// `[clock.rollups]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSettings {
    /// When the built-in `herald.rollup` schedule runs, in `timezone`.
    #[serde(default = "default_cron")]
    pub cron: String,
    /// The time zone whose midnight separates days (IANA name).
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_cron() -> String {
    "15 0 * * *".to_string()
}

fn default_timezone() -> String {
    "UTC".to_string()
}

impl Default for RollupSettings {
    fn default() -> Self {
        Self {
            cron: default_cron(),
            timezone: default_timezone(),
        }
    }
}

impl RollupSettings {
    pub fn validate(&self) -> Result<(), crate::setting::InvalidSetting> {
        Ok(())
    }
}

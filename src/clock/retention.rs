//! Retention: each data set's old rows archived, verified, then removed. (Being built: issue 14.)

use serde::Deserialize;

/// `[clock.retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// When the built-in `herald.retention` schedule runs (UTC).
    #[serde(default = "default_cron")]
    pub cron: String,
}

fn default_cron() -> String {
    "0 3 * * *".to_string()
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            cron: default_cron(),
        }
    }
}

impl RetentionSettings {
    pub fn validate(&self) -> Result<(), crate::setting::InvalidSetting> {
        Ok(())
    }
}

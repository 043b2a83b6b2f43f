//! `[clock.retention]`: when retention runs, how old each data set's rows may grow, where archives go, and the
//! sizes that bound every statement and object.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::setting::{self, InvalidSetting};

const DAY: Duration = Duration::from_secs(86_400);

/// `[clock.retention]`. Every key has a default (config/default.toml lists them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// When the built-in `herald.retention` schedule runs (UTC).
    pub cron: String,
    /// Maximum age per data set (`*_days`: a number of days, or a humantime string such as `"12h"`); `0` keeps
    /// the data set forever.
    #[serde(rename = "job_history_days", deserialize_with = "setting::days")]
    pub job_history: Duration,
    /// Archive the job history before removing it (default). `false` drops old history partitions without an
    /// archive: at billions of finished jobs a day the archive is most of retention's cost (see
    /// docs/operations.md), and many installations keep only the rollups of it.
    pub job_history_archive: bool,
    #[serde(rename = "dead_letters_days", deserialize_with = "setting::days")]
    pub dead_letters: Duration,
    #[serde(rename = "runs_days", deserialize_with = "setting::days")]
    pub runs: Duration,
    #[serde(rename = "events_days", deserialize_with = "setting::days")]
    pub events: Duration,
    #[serde(rename = "callback_events_days", deserialize_with = "setting::days")]
    pub callback_events: Duration,
    /// In-app feed items, by creation (archived, then removed).
    #[serde(rename = "feed_items_days", deserialize_with = "setting::days")]
    pub feed_items: Duration,
    #[serde(
        rename = "bridge_dead_letters_days",
        deserialize_with = "setting::days"
    )]
    pub bridge_dead_letters: Duration,
    /// How long an idempotency key deduplicates enqueues; older keys are deleted (not archived).
    #[serde(rename = "idempotency_keys_days", deserialize_with = "setting::days")]
    pub idempotency_keys: Duration,
    /// Circuit states not updated for this long are deleted (the fleet view shows only the last day's).
    #[serde(rename = "provider_circuits_days", deserialize_with = "setting::days")]
    pub provider_circuits: Duration,
    /// Rows per read or delete statement (about: a slice of time holding at most this many).
    pub batch_size: usize,
    /// Rows per archive object; a day with more is archived in several parts.
    pub rows_per_object: u64,
    /// The most days of one data set one pass works through (oldest first).
    pub days_per_run: usize,
    /// The share of the time a pass works (0.01-1): after each slice it rests for the rest, so archiving and
    /// removing leave the database and the CPU to the queue.
    pub duty_cycle: f64,
    /// A pass starts no new part after this long; the job then comes back for the rest (snoozed, not retried),
    /// so it stays well within the job timeout (`jobs.timeout_secs`).
    #[serde(rename = "max_run_secs", deserialize_with = "setting::secs")]
    pub max_run: Duration,
    pub archive: ArchiveSettings,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let months = DAY * 180;
        Self {
            cron: "0 3 * * *".to_string(),
            job_history: months,
            job_history_archive: true,
            dead_letters: months,
            runs: months,
            events: months,
            callback_events: months,
            feed_items: months,
            bridge_dead_letters: months,
            idempotency_keys: DAY * 7,
            provider_circuits: DAY * 7,
            batch_size: 5_000,
            rows_per_object: 1_000_000,
            days_per_run: 31,
            duty_cycle: 0.5,
            max_run: Duration::from_secs(240),
            archive: ArchiveSettings::default(),
        }
    }
}

impl RetentionSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let ages = [
            ("clock.retention.job_history_days", self.job_history),
            ("clock.retention.dead_letters_days", self.dead_letters),
            ("clock.retention.runs_days", self.runs),
            ("clock.retention.events_days", self.events),
            ("clock.retention.callback_events_days", self.callback_events),
            ("clock.retention.feed_items_days", self.feed_items),
            (
                "clock.retention.bridge_dead_letters_days",
                self.bridge_dead_letters,
            ),
            (
                "clock.retention.idempotency_keys_days",
                self.idempotency_keys,
            ),
            (
                "clock.retention.provider_circuits_days",
                self.provider_circuits,
            ),
        ];
        for (key, age) in ages {
            // A row is archived once older than its age; a transaction open longer than that could still
            // commit rows into a range already archived. A minute leaves room for any sane transaction.
            if !age.is_zero() && age < Duration::from_secs(60) {
                return Err(InvalidSetting::new(
                    key,
                    "must be 0 (keep forever) or at least a minute",
                ));
            }
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(InvalidSetting::new(
                "clock.retention.batch_size",
                "must be 1-100000",
            ));
        }
        if !(1..=100_000_000).contains(&self.rows_per_object) {
            return Err(InvalidSetting::new(
                "clock.retention.rows_per_object",
                "must be 1-100000000",
            ));
        }
        if !(1..=3_660).contains(&self.days_per_run) {
            return Err(InvalidSetting::new(
                "clock.retention.days_per_run",
                "must be 1-3660",
            ));
        }
        if !(0.01..=1.0).contains(&self.duty_cycle) {
            return Err(InvalidSetting::new(
                "clock.retention.duty_cycle",
                "must be 0.01-1",
            ));
        }
        setting::positive("clock.retention.max_run_secs", self.max_run)?;
        self.archive.validate()
    }

    /// The maximum age of the data set `name` (`None`: kept forever, or not a data set).
    /// Whether the data set named `name` is archived before it is removed (when its owner archives it at all).
    pub fn archived(&self, name: &str) -> bool {
        name != "job_history" || self.job_history_archive
    }

    pub fn max_age(&self, name: &str) -> Option<Duration> {
        let age = match name {
            "job_history" => self.job_history,
            "dead_letters" => self.dead_letters,
            "runs" => self.runs,
            "events" => self.events,
            "callback_events" => self.callback_events,
            "feed_items" => self.feed_items,
            "bridge_dead_letters" => self.bridge_dead_letters,
            "idempotency_keys" => self.idempotency_keys,
            "provider_circuits" => self.provider_circuits,
            _ => return None,
        };
        (!age.is_zero()).then_some(age)
    }
}

/// `[clock.retention.archive]`: a directory (default), or S3-compatible object storage when `s3` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// Relative paths are from the process's working directory (`herald up` runs in the project's).
    pub dir: PathBuf,
    pub s3: Option<S3Settings>,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(".herald/archive"),
            s3: None,
        }
    }
}

impl ArchiveSettings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        match &self.s3 {
            Some(s3) if s3.bucket.trim().is_empty() => Err(InvalidSetting::new(
                "clock.retention.archive.s3.bucket",
                "must not be empty",
            )),
            Some(_) => Ok(()),
            None if self.dir.as_os_str().is_empty() => Err(InvalidSetting::new(
                "clock.retention.archive.dir",
                "must not be empty",
            )),
            None => Ok(()),
        }
    }
}

/// `[clock.retention.archive.s3]`. Credentials left out come from the environment (`AWS_ACCESS_KEY_ID`, …).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    /// Prepended to every object name (`herald/job_history/2026/01/31/0000.jsonl.gz`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// For S3-compatible services (MinIO, Ceph, …): their URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow an `http://` endpoint (a local test server).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_prefix() -> String {
    "herald".to_string()
}

/// Never prints the secret key.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_six_months_and_a_week_and_valid() {
        let settings = RetentionSettings::default();
        settings.validate().unwrap();
        assert_eq!(settings.max_age("job_history"), Some(DAY * 180));
        assert_eq!(settings.max_age("idempotency_keys"), Some(DAY * 7));
        assert_eq!(settings.max_age("nothing"), None);
    }

    #[test]
    fn ages_read_as_days_zero_keeps_forever_and_seconds_are_refused() {
        let settings: RetentionSettings = serde_json::from_str(
            r#"{"job_history_days": 30, "events_days": "10m", "runs_days": 0}"#,
        )
        .unwrap();
        assert_eq!(settings.job_history, DAY * 30);
        assert_eq!(settings.events, Duration::from_secs(600));
        assert_eq!(settings.max_age("runs"), None);
        settings.validate().unwrap();
        let too_short: RetentionSettings =
            serde_json::from_str(r#"{"events_days": "5s"}"#).unwrap();
        assert!(too_short.validate().is_err());
    }

    #[test]
    fn the_secret_key_does_not_leak_through_debug() {
        let s3: S3Settings = serde_json::from_str(
            r#"{"bucket": "b", "access_key_id": "AKIA", "secret_access_key": "very-secret"}"#,
        )
        .unwrap();
        let shown = format!("{s3:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(s3.prefix, "herald");
    }
}

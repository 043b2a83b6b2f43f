//! `[bridge]`: the Kafka bridge (see `docs/bridge.md`).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::routes::{RouteSettings, Router};
use crate::setting::{self, InvalidSetting};

/// Where a partition with no offset stored in Postgres starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    /// Bootstrap servers, comma-separated. Empty: no bridge (`herald up` skips it, `herald bridge` refuses).
    pub brokers: String,
    pub group_id: String,
    /// Most messages per Postgres transaction, and how long a partial batch may wait for more.
    pub batch_size: NonZeroUsize,
    #[serde(rename = "linger_ms", deserialize_with = "setting::millis")]
    pub linger: Duration,
    pub start_from: StartFrom,
    /// Also commit offsets to the broker after each Postgres commit (for lag tooling; Postgres stays the truth).
    pub commit_to_broker: bool,
    /// Pause the partitions feeding a queue once it holds this many jobs; resume below `resume_depth`. 0: never.
    pub max_queue_depth: i64,
    pub resume_depth: i64,
    /// How often queue depths and lag are checked.
    #[serde(rename = "check_interval_ms", deserialize_with = "setting::millis")]
    pub check_interval: Duration,
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, session.timeout.ms, ...). From the
    /// environment, `_` in a key stands for `.`: HERALD_BRIDGE__LIBRDKAFKA__SASL_PASSWORD.
    #[serde(default)]
    pub librdkafka: LibrdkafkaSettings,
}

impl BridgeSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Err(error) = Router::new(&self.routes) {
            return Err(InvalidSetting::new("bridge.routes", error.to_string()));
        }
        setting::positive("bridge.check_interval_ms", self.check_interval)?;
        if self.max_queue_depth > 0 && self.resume_depth >= self.max_queue_depth {
            return Err(InvalidSetting::new(
                "bridge.resume_depth",
                "must be below bridge.max_queue_depth",
            ));
        }
        Ok(())
    }

    /// Whether brokers are configured (`herald up` runs the bridge only then).
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }
}

/// librdkafka properties; their values may be passwords, so `Debug` shows only the keys. Numbers and booleans
/// are accepted as written (the environment's `3000` arrives as a number) and passed on as text.
#[derive(Clone, Default, Deserialize)]
#[serde(from = "BTreeMap<String, ScalarText>")]
pub struct LibrdkafkaSettings(pub BTreeMap<String, String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ScalarText {
    Text(String),
    Integer(i64),
    Float(f64),
    Flag(bool),
}

impl From<BTreeMap<String, ScalarText>> for LibrdkafkaSettings {
    fn from(values: BTreeMap<String, ScalarText>) -> Self {
        let text = |value: ScalarText| match value {
            ScalarText::Text(text) => text,
            ScalarText::Integer(number) => number.to_string(),
            ScalarText::Float(number) => number.to_string(),
            ScalarText::Flag(flag) => flag.to_string(),
        };
        Self(values.into_iter().map(|(k, v)| (k, text(v))).collect())
    }
}

impl std::fmt::Debug for LibrdkafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

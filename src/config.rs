//! Typed, layered settings.
//!
//! Layers, later ones winning: the built-in `config/default.toml` (compiled in, so the binary runs anywhere),
//! `config/default.toml` and `config/<HERALD_ENV>.toml` from the working directory if present, then `HERALD_*`
//! environment variables with `__` between nested keys (`HERALD_WORKER__CONCURRENCY=32`).
//! `DATABASE_URL` is read on its own, as every Postgres tool does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::queue::{QueueName, QueueSpec};

const BUILT_IN_DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment's message names the offending key and the layer it came from.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: {key}: {reason}")]
    Value { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
    pub jobs: JobSettings,
    pub embedded_postgres: EmbeddedPostgresSettings,
    pub api: ApiSettings,
    pub workflows: WorkflowSettings,
    pub channels: ChannelSettings,
    pub bridge: BridgeSettings,
    /// `[providers.<name>]`: one table per configured provider (credentials, base URL, rates), read by that
    /// provider's adapter. A provider without a table is not configured.
    #[serde(default)]
    pub providers: SecretTables,
    /// `[callbacks]`: the keys that authenticate delivery callbacks (see `channels::callbacks`).
    #[serde(default)]
    pub callbacks: SecretTables,
}

/// Settings tables that hold credentials. Their `Debug` shows only the table names, so printing the settings
/// never prints a secret.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct SecretTables(pub std::collections::BTreeMap<String, serde_json::Value>);

impl std::fmt::Debug for SecretTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// `[bridge]`: the Kafka bridge (see `docs/bridge.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    /// Bootstrap servers, comma-separated. Empty: no bridge (`herald up` skips it, `herald bridge` refuses).
    pub brokers: String,
    pub group_id: String,
    /// Most messages per Postgres transaction, and how long a partial batch may wait for more.
    pub batch_size: usize,
    pub linger_ms: u64,
    /// Where a partition with no offset stored in Postgres starts: `earliest` or `latest`.
    pub start_from: String,
    /// Also commit offsets to the broker after each Postgres commit (for lag tooling; Postgres stays the truth).
    pub commit_to_broker: bool,
    /// Pause the partitions feeding a queue once it holds this many jobs; resume below `resume_depth`. 0: never.
    pub max_queue_depth: i64,
    pub resume_depth: i64,
    /// How often queue depths and lag are checked.
    pub check_interval_ms: u64,
    /// Serve `/metrics` here (`herald bridge` only; empty: not served).
    pub metrics_listen: String,
    #[serde(default)]
    pub routes: Vec<crate::bridge::RouteSettings>,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, session.timeout.ms, ...). From the
    /// environment, `_` in a key stands for `.`: HERALD_BRIDGE__LIBRDKAFKA__SASL_PASSWORD.
    #[serde(default)]
    pub librdkafka: LibrdkafkaSettings,
}

/// librdkafka properties; their values may be passwords, so `Debug` shows only the keys. Numbers and booleans
/// are accepted as written (the environment's `3000` arrives as a number) and passed on as text.
#[derive(Clone, Default, Deserialize)]
#[serde(from = "std::collections::BTreeMap<String, ScalarText>")]
pub struct LibrdkafkaSettings(pub std::collections::BTreeMap<String, String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ScalarText {
    Text(String),
    Integer(i64),
    Float(f64),
    Flag(bool),
}

impl From<std::collections::BTreeMap<String, ScalarText>> for LibrdkafkaSettings {
    fn from(values: std::collections::BTreeMap<String, ScalarText>) -> Self {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub request_timeout_secs: u64,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub key_cache_secs: u64,
    pub shutdown_grace_secs: u64,
}

impl ApiSettings {
    /// The address to bind: `PORT` (set by Procfile platforms) wins over `api.listen`.
    pub fn listen_address(&self) -> String {
        match std::env::var("PORT") {
            Ok(port) if !port.trim().is_empty() => format!("0.0.0.0:{}", port.trim()),
            _ => self.listen.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub batch_size: usize,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    pub heartbeat_secs: u64,
    pub rescue_interval_secs: u64,
    pub shutdown_grace_secs: u64,
    pub ack_flush_ms: u64,
    pub ack_batch: usize,
    /// Registers the fault-drill kinds `herald.spin` and `herald.block` (handlers that never yield).
    pub drills: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    pub max_attempts: i32,
    pub timeout_secs: u64,
    pub priority_aging_secs: f64,
    pub retry_base_ms: u64,
    pub retry_max_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSettings {
    /// Where workflow definitions live; synced at start of `up`, `api` and `worker` if it exists.
    pub dir: PathBuf,
    /// The queue that carries node jobs.
    pub queue: String,
    /// Attempts per node job before the node fails.
    pub node_max_attempts: i32,
    /// Events received this long before a run started still count for its wait-for-events nodes.
    pub event_lookback_secs: u64,
}

impl WorkflowSettings {
    pub fn event_lookback(&self) -> Duration {
        Duration::from_secs(self.event_lookback_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// `providers` (send through the provider chains), `log` (log each message) or `file` (append each message
    /// as a JSON line to `outbox_file`).
    pub sink: String,
    pub outbox_file: PathBuf,
    /// Each channel's providers in fallback order.
    pub chains: ChainSettings,
    /// On a provider's 429, try the next provider instead of re-scheduling the send for its retry-after.
    pub fallback_on_rate_limit: bool,
    /// Calls to one provider within one send while it answers transient errors, before falling back.
    pub attempts_per_provider: u32,
    /// Pause before the second call to the same provider (doubled for each further call).
    pub retry_pause_ms: u64,
    /// Longest a send waits in-process (for a rate permit or a short retry-after); beyond it the node job is
    /// re-scheduled instead, so no claimed job waits long.
    pub max_wait_ms: u64,
    /// Consecutive transient failures that open a provider's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe is let through.
    pub breaker_cooldown_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    pub email: Vec<String>,
    pub sms: Vec<String>,
    pub push: Vec<String>,
    pub chat: Vec<String>,
}

impl ChainSettings {
    pub fn get(&self, kind: crate::channels::ChannelKind) -> &[String] {
        use crate::channels::ChannelKind;
        match kind {
            ChannelKind::Email => &self.email,
            ChannelKind::Sms => &self.sms,
            ChannelKind::Push => &self.push,
            ChannelKind::Chat => &self.chat,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedPostgresSettings {
    pub dir: PathBuf,
}

impl Settings {
    /// Loads the layers described in the module docs, using `config/` under the working directory.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(
            Path::new("config"),
            std::env::var("HERALD_ENV").ok().as_deref(),
        )
    }

    pub fn load_from(dir: &Path, environment: Option<&str>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new()
            .merge(Toml::string(BUILT_IN_DEFAULTS))
            .merge(Toml::file(dir.join("default.toml")));
        if let Some(env) = environment {
            figment = figment.merge(Toml::file(dir.join(format!("{env}.toml"))));
        }
        let figment = figment.merge(Env::prefixed("HERALD_").ignore(&["ENV"]).split("__"));
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.channels.sink.as_str(), "log" | "file" | "providers") {
            return Err(ConfigError::Value {
                key: "channels.sink",
                reason: format!(
                    "`{}` is not a sink (providers, log, file)",
                    self.channels.sink
                ),
            });
        }
        self.validate_chains()?;
        self.validate_bridge()?;
        let callbacks = serde_json::Value::Object(self.callbacks.0.clone().into_iter().collect());
        if let Err(error) =
            serde_json::from_value::<crate::channels::callbacks::CallbackSettings>(callbacks)
        {
            return Err(ConfigError::Value {
                key: "callbacks",
                reason: error.to_string(),
            });
        }
        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Value {
                    key,
                    reason: "must be greater than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("worker.concurrency", self.worker.concurrency as u64)?;
        positive("worker.batch_size", self.worker.batch_size as u64)?;
        positive("worker.lease_secs", self.worker.lease_secs)?;
        positive("worker.poll_interval_ms", self.worker.poll_interval_ms)?;
        positive("worker.heartbeat_secs", self.worker.heartbeat_secs)?;
        positive("worker.ack_batch", self.worker.ack_batch as u64)?;
        positive(
            "database.max_connections",
            u64::from(self.database.max_connections),
        )?;
        positive("jobs.timeout_secs", self.jobs.timeout_secs)?;
        positive("api.max_body_bytes", self.api.max_body_bytes as u64)?;
        positive("api.max_batch", self.api.max_batch as u64)?;
        positive("api.request_timeout_secs", self.api.request_timeout_secs)?;
        positive(
            "api.rate_limit_per_second",
            u64::from(self.api.rate_limit_per_second),
        )?;
        positive("api.rate_limit_burst", u64::from(self.api.rate_limit_burst))?;
        if self.worker.heartbeat_secs >= self.worker.lease_secs {
            return Err(ConfigError::Value {
                key: "worker.heartbeat_secs",
                reason:
                    "must be shorter than worker.lease_secs, or leases expire between heartbeats"
                        .into(),
            });
        }
        if self.jobs.max_attempts < 1 {
            return Err(ConfigError::Value {
                key: "jobs.max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        if !self.jobs.priority_aging_secs.is_finite() || self.jobs.priority_aging_secs < 0.0 {
            return Err(ConfigError::Value {
                key: "jobs.priority_aging_secs",
                reason: "must be a number, zero or more".into(),
            });
        }
        self.queue_specs()?;
        Ok(())
    }

    fn validate_bridge(&self) -> Result<(), ConfigError> {
        let bridge = &self.bridge;
        let invalid = |key: &'static str, reason: String| Err(ConfigError::Value { key, reason });
        if let Err(error) = crate::bridge::Router::new(&bridge.routes) {
            return invalid("bridge.routes", error.to_string());
        }
        if !matches!(bridge.start_from.as_str(), "earliest" | "latest") {
            return invalid("bridge.start_from", "must be `earliest` or `latest`".into());
        }
        if bridge.batch_size == 0 || bridge.check_interval_ms == 0 {
            return invalid(
                "bridge.batch_size",
                "batch_size and check_interval_ms must be greater than zero".into(),
            );
        }
        if bridge.max_queue_depth > 0 && bridge.resume_depth >= bridge.max_queue_depth {
            return invalid(
                "bridge.resume_depth",
                "must be below bridge.max_queue_depth".into(),
            );
        }
        Ok(())
    }

    /// The `[callbacks]` table, typed. (Checked when settings load, so this cannot fail afterwards.)
    pub fn callback_settings(&self) -> crate::channels::callbacks::CallbackSettings {
        let table = serde_json::Value::Object(self.callbacks.0.clone().into_iter().collect());
        serde_json::from_value(table).unwrap_or_default()
    }

    /// Every provider in a chain must exist, belong to that channel, and have a `[providers.<name>]` table.
    /// (Credentials are checked when the adapters are built, at the start of a worker.)
    fn validate_chains(&self) -> Result<(), ConfigError> {
        for kind in crate::channels::ChannelKind::ALL {
            for name in self.channels.chains.get(kind) {
                let reason = if !kind.providers().contains(&name.as_str()) {
                    format!(
                        "`{name}` is not a {} provider ({})",
                        kind.as_str(),
                        kind.providers().join(", ")
                    )
                } else if !self.providers.0.contains_key(name) {
                    format!("`{name}` has no [providers.{name}] settings")
                } else {
                    continue;
                };
                return Err(ConfigError::Value {
                    key: "channels.chains",
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The queues this process serves, with each one's concurrency.
    pub fn queue_specs(&self) -> Result<Vec<QueueSpec>, ConfigError> {
        parse_queue_specs(&self.worker.queues, self.worker.concurrency)
    }

    pub fn job_defaults(&self) -> crate::queue::JobDefaults {
        crate::queue::JobDefaults {
            max_attempts: self.jobs.max_attempts,
            timeout: Duration::from_secs(self.jobs.timeout_secs),
            priority_aging: Duration::from_secs_f64(self.jobs.priority_aging_secs),
        }
    }

    pub fn retry_policy(&self) -> crate::queue::RetryPolicy {
        crate::queue::RetryPolicy {
            base: Duration::from_millis(self.jobs.retry_base_ms),
            max: Duration::from_secs(self.jobs.retry_max_secs),
        }
    }
}

/// Parses `name` or `name:concurrency` entries (as in `--queues emails:8,default`).
pub fn parse_queue_specs(
    entries: &[String],
    default_concurrency: usize,
) -> Result<Vec<QueueSpec>, ConfigError> {
    let invalid = |reason: String| ConfigError::Value {
        key: "worker.queues",
        reason,
    };
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
                None => (entry.as_str(), default_concurrency),
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
    fn built_in_defaults_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::load_from(dir.path(), None).unwrap();
        assert_eq!(settings.worker.queues, ["default", "workflows"]);
    }

    #[test]
    fn environment_file_overrides_defaults_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("staging.toml"),
            "[worker]\nconcurrency = 3\n",
        )
        .unwrap();
        let settings = Settings::load_from(dir.path(), Some("staging")).unwrap();
        assert_eq!(settings.worker.concurrency, 3);

        std::fs::write(
            dir.path().join("bad.toml"),
            "[worker]\nconcurrency = \"many\"\n",
        )
        .unwrap();
        let err = Settings::load_from(dir.path(), Some("bad"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurrency"), "{err}");

        std::fs::write(dir.path().join("typo.toml"), "[worker]\nconcurency = 3\n").unwrap();
        let err = Settings::load_from(dir.path(), Some("typo"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn queue_specs_parse_names_and_concurrency() {
        let specs = parse_queue_specs(&["emails:8".into(), "default".into()], 4).unwrap();
        assert_eq!(specs[0].name.as_str(), "emails");
        assert_eq!(specs[0].concurrency, 8);
        assert_eq!(specs[1].concurrency, 4);
        assert!(parse_queue_specs(&["emails:x".into()], 4).is_err());
        assert!(parse_queue_specs(&["bad name".into()], 4).is_err());
        assert!(parse_queue_specs(&[], 4).is_err());
    }
}

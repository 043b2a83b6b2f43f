//! The settings of a herald process: each module's section, layered and checked.
//!
//! Each module owns its section and that section's `validate()` (`queue::WorkerSettings`, `api::ApiSettings`,
//! `channels::ChannelSettings`, …); this file only puts them together. Layers, later ones winning: the built-in
//! `config/default.toml` (compiled in, so the binary runs anywhere), `config/default.toml` and
//! `config/<HERALD_ENV>.toml` from the working directory if present, then `HERALD_*` environment variables with
//! `__` between nested keys (`HERALD_WORKER__CONCURRENCY=32`). `DATABASE_URL` and `PORT` are read here, once.
//!
//! Only `app` and `main` hold the whole [`Settings`]; every part is built from its own section.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::alerts::AlertSettings;
use crate::api::ApiSettings;
use crate::bridge::BridgeSettings;
use crate::channels::callbacks::CallbackSettings;
use crate::channels::{ChannelSettings, ProviderTables};
use crate::clock::ClockSettings;
use crate::db::DatabaseSettings;
use crate::embedded_postgres::EmbeddedPostgresSettings;
use crate::metrics::MetricsSettings;
use crate::queue::producers::ProducerRules;
use crate::queue::{JobSettings, WorkerSettings};
use crate::recipients::RecipientsSettings;
use crate::setting::InvalidSetting;
use crate::templates::TemplateSettings;
use crate::workflow::WorkflowSettings;

const BUILT_IN_DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment's message names the offending key and the layer it came from.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error(transparent)]
    Value(#[from] InvalidSetting),
}

/// Every section, as the TOML files lay them out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
    pub jobs: JobSettings,
    pub embedded_postgres: EmbeddedPostgresSettings,
    pub api: ApiSettings,
    pub workflows: WorkflowSettings,
    /// `[feed]`: recipient tokens, CORS and live streams of the in-app feed.
    #[serde(default)]
    pub feed: crate::feed::FeedSettings,
    /// `[templates]`: the template catalogue's folder.
    #[serde(default)]
    pub templates: TemplateSettings,
    /// `[recipients]`: unsubscribe links (see `recipients::unsubscribe`).
    #[serde(default)]
    pub recipients: RecipientsSettings,
    pub channels: ChannelSettings,
    pub bridge: BridgeSettings,
    pub clock: ClockSettings,
    pub metrics: MetricsSettings,
    pub alerts: AlertSettings,
    /// `[providers.<name>]`: one table per configured provider, read by that provider's adapter.
    #[serde(default)]
    pub providers: ProviderTables,
    /// `[callbacks]`: the keys that authenticate delivery callbacks (see `channels::callbacks`).
    #[serde(default)]
    pub callbacks: CallbackSettings,
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
        // HERALD_ENV picks the file above; HERALD_FAILPOINT is the crash drills' switch (clock::retention);
        // HERALD_LOG_FORMAT is read by `telemetry`, before any settings.
        let figment = figment.merge(
            Env::prefixed("HERALD_")
                .ignore(&["ENV", "FAILPOINT", "LOG_FORMAT"])
                .split("__"),
        );
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.database.url = non_blank(std::env::var("DATABASE_URL").ok());
        // Procfile platforms (Heroku, Dokku, Scalingo) give the API its port in `PORT`.
        if let Some(port) = non_blank(std::env::var("PORT").ok()) {
            settings.api.listen = format!("0.0.0.0:{port}");
            // And the other roles their probes' (each process gets a port of its own under Procfile runners).
            if settings.metrics.listen.trim().is_empty() {
                settings.metrics.listen = format!("0.0.0.0:{port}");
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Each section checks itself; the channel layer also checks its chains against `[providers]`.
    /// What the API and the bridge may enqueue: not into herald's own queues, no `herald.` kinds (test kinds
    /// only with `jobs.allow_test_kinds`).
    pub fn producer_rules(&self) -> ProducerRules {
        ProducerRules {
            reserved_queues: vec![
                self.workflows.queue.to_string(),
                self.clock.queue.to_string(),
            ],
            allow_test_kinds: self.jobs.allow_test_kinds,
        }
    }

    fn validate(&self) -> Result<(), InvalidSetting> {
        let rules = self.producer_rules();
        for route in self.bridge.routes.iter().filter(|r| r.target == "job") {
            if let Some(queue) = &route.queue {
                rules
                    .check_queue(queue)
                    .map_err(|reason| InvalidSetting::new("bridge.routes.queue", reason))?;
            }
            if let Some(kind) = &route.kind {
                rules
                    .check_kind(kind)
                    .map_err(|reason| InvalidSetting::new("bridge.routes.kind", reason))?;
            }
        }
        self.worker.validate()?;
        self.jobs.validate()?;
        self.alerts.validate()?;
        self.api.validate()?;
        self.workflows.validate()?;
        self.feed.validate()?;
        if self.feed.max_streams >= self.api.max_connections.get() {
            return Err(InvalidSetting::new(
                "feed.max_streams",
                "must be less than api.max_connections (streams must leave connections for other requests)",
            ));
        }
        self.recipients.validate()?;
        self.channels.validate(&self.providers)?;
        self.bridge.validate()?;
        self.clock.validate()?;
        Ok(())
    }
}

fn non_blank(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
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
        assert_eq!(settings.worker.concurrency.get(), 3);

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
    fn durations_take_the_old_numbers_or_humantime_and_zero_is_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.toml"),
            "[worker]\nlease_secs = \"2m\"\npoll_interval_ms = 250\n[bridge]\nstart_from = \"latest\"\n",
        )
        .unwrap();
        let settings = Settings::load_from(dir.path(), Some("t")).unwrap();
        assert_eq!(settings.worker.lease, std::time::Duration::from_secs(120));
        assert_eq!(
            settings.worker.poll_interval,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(settings.bridge.start_from, crate::bridge::StartFrom::Latest);

        for (file, key) in [
            ("[worker]\nconcurrency = 0\n", "concurrency"),
            ("[worker]\nheartbeat_secs = 0\n", "worker.heartbeat_secs"),
            ("[channels]\nsink = \"carrier-pigeon\"\n", "sink"),
            ("[bridge]\nstart_from = \"middle\"\n", "start_from"),
            ("[workflows]\nqueue = \"bad name\"\n", "queue"),
        ] {
            std::fs::write(dir.path().join("z.toml"), file).unwrap();
            let err = Settings::load_from(dir.path(), Some("z"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{file}: {err}");
        }
    }
}

//! The channel layer's settings: `[channels]` (where messages go and how chains behave), `[providers.<name>]`
//! (one table per configured provider, read by its adapter) and `[callbacks]` (see `callbacks`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ChannelKind;
use super::providers;
use crate::setting::{self, InvalidSetting};

/// Where actions' messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    /// Through each channel's provider chain.
    Providers,
    /// Logged at INFO, reported sent (development).
    Log,
    /// Appended as JSON lines to `outbox_file` (tests, demos).
    File,
}

/// `[channels]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    pub sink: Sink,
    pub outbox_file: PathBuf,
    /// Each channel's providers in fallback order.
    pub chains: ChainSettings,
    /// On a provider's 429, try the next provider instead of re-scheduling the send for its retry-after.
    pub fallback_on_rate_limit: bool,
    /// Calls to one provider within one send while it answers transient errors, before falling back (0 counts as 1).
    pub attempts_per_provider: u32,
    /// Pause before the second call to the same provider (doubled for each further call).
    #[serde(rename = "retry_pause_ms", deserialize_with = "setting::millis")]
    pub retry_pause: Duration,
    /// Longest a send waits in-process (for a rate permit or a short retry-after); beyond it the node job is
    /// re-scheduled instead, so no claimed job waits long.
    #[serde(rename = "max_wait_ms", deserialize_with = "setting::millis")]
    pub max_wait: Duration,
    /// Consecutive transient failures that open a provider's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe is let through.
    #[serde(rename = "breaker_cooldown_secs", deserialize_with = "setting::secs")]
    pub breaker_cooldown: Duration,
    /// The `log` sink logs recipients and message bodies whole (local development only); by default it masks
    /// the recipient and logs only the content's field names.
    #[serde(default)]
    pub log_personal_data: bool,
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
    pub fn get(&self, kind: ChannelKind) -> &[String] {
        match kind {
            ChannelKind::Email => &self.email,
            ChannelKind::Sms => &self.sms,
            ChannelKind::Push => &self.push,
            ChannelKind::Chat => &self.chat,
            // The feed has no providers.
            ChannelKind::InApp => &[],
        }
    }
}

/// `[providers.<name>]`: one table per configured provider (credentials, base URL, rates), read by that provider's
/// adapter. A provider without a table is not configured. `Debug` shows only the names, so printing the settings
/// never prints a secret.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ProviderTables(pub BTreeMap<String, serde_json::Value>);

impl std::fmt::Debug for ProviderTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl ChannelSettings {
    /// Every provider in a chain must exist, belong to that channel, and have a `[providers.<name>]` table.
    /// (Credentials are checked when the adapters are built, at the start of a worker.)
    pub fn validate(&self, tables: &ProviderTables) -> Result<(), InvalidSetting> {
        for kind in ChannelKind::ALL {
            for name in self.chains.get(kind) {
                let reason = if providers::channel_of(name) != Some(kind) {
                    format!(
                        "`{name}` is not a {} provider ({})",
                        kind.as_str(),
                        kind.provider_names().collect::<Vec<_>>().join(", ")
                    )
                } else if !tables.0.contains_key(name) {
                    format!("`{name}` has no [providers.{name}] settings")
                } else {
                    continue;
                };
                return Err(InvalidSetting::new("channels.chains", reason));
            }
        }
        Ok(())
    }
}

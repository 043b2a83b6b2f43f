//! Building the process's provider fleet from settings: every `[providers.<name>]` table becomes an adapter
//! (with its breaker and rate limits), so a missing credential stops the process at start.

use std::collections::HashMap;

use super::chain::{ChainPolicy, ProviderFleet};
use super::limits::{FleetLimits, ProviderRates};
use super::provider::{CommonSettings, ProviderConfigError, parse_settings};
use super::providers;
use super::settings::{ChannelSettings, ProviderTables};

pub fn build(
    channels: &ChannelSettings,
    tables: &ProviderTables,
) -> Result<ProviderFleet, ProviderConfigError> {
    let mut adapters = Vec::new();
    let mut rates = HashMap::new();
    for (name, table) in &tables.0 {
        let adapter = providers::build(name, table)?;
        let common: CommonSettings = parse_settings(name, table)?;
        rates.insert(
            adapter.name(),
            ProviderRates {
                per_sec: common.rate_per_sec,
                per_destination_per_sec: common.destination_rate_per_sec,
            },
        );
        adapters.push(adapter);
    }
    let policy = ChainPolicy {
        attempts_per_provider: channels.attempts_per_provider.max(1),
        retry_pause: channels.retry_pause,
        max_wait: channels.max_wait,
        fallback_on_rate_limit: channels.fallback_on_rate_limit,
    };
    Ok(ProviderFleet::new(
        adapters,
        FleetLimits::new(rates),
        policy,
        channels.breaker_failures,
        channels.breaker_cooldown,
    ))
}

/// Config names as the catalogue's `'static` names (unknown names were rejected when settings loaded).
pub fn static_names(names: &[String]) -> Vec<&'static str> {
    names
        .iter()
        .filter_map(|name| providers::find(name).map(|entry| entry.name))
        .collect()
}

//! Building the process's provider fleet from settings: every `[providers.<name>]` table becomes an adapter
//! (with its breaker and rate limits), so a missing credential stops the process at start.

use std::collections::HashMap;
use std::time::Duration;

use super::chain::{ChainPolicy, ProviderFleet};
use super::limits::{FleetLimits, ProviderRates};
use super::provider::{CommonSettings, ProviderConfigError, parse_settings};
use super::providers;

pub fn build(settings: &crate::config::Settings) -> Result<ProviderFleet, ProviderConfigError> {
    let mut adapters = Vec::new();
    let mut rates = HashMap::new();
    for (name, table) in &settings.providers.0 {
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
    let channels = &settings.channels;
    let policy = ChainPolicy {
        attempts_per_provider: channels.attempts_per_provider.max(1),
        retry_pause: Duration::from_millis(channels.retry_pause_ms),
        max_wait: Duration::from_millis(channels.max_wait_ms),
        fallback_on_rate_limit: channels.fallback_on_rate_limit,
    };
    Ok(ProviderFleet::new(
        adapters,
        FleetLimits::new(rates),
        policy,
        channels.breaker_failures,
        Duration::from_secs(channels.breaker_cooldown_secs),
    ))
}

/// Config names as the adapters' own `'static` names (unknown names were rejected when settings loaded).
pub fn static_names(names: &[String]) -> Vec<&'static str> {
    names
        .iter()
        .filter_map(|name| providers::NAMES.iter().find(|n| **n == name.as_str()))
        .copied()
        .collect()
}

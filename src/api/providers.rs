//! `/v1/providers`: the configured providers and their circuit breakers, as operators see them.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Authorized, ReadScope};
use super::error::ApiError;
use super::responses::ReadAuth;
use crate::channels::breaker::CircuitState;
use crate::channels::circuits::{self, CircuitRecord};
use crate::channels::provider::{CommonSettings, parse_settings};
use crate::channels::{ChainSettings, ProviderTables};

/// A configured provider, as settings describe it (every API process reads the same settings as the workers).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfiguredProvider {
    pub name: String,
    pub channel: String,
    /// Position in the channel's fallback chain (0 = tried first), if it is in the chain.
    pub chain_position: Option<usize>,
    /// The whole fleet's sends per second through this provider (absent: unlimited).
    pub rate_per_sec: Option<f64>,
    pub destination_rate_per_sec: Option<f64>,
}

/// The provider overview built once from settings.
pub fn configured_providers(
    chains: &ChainSettings,
    tables: &ProviderTables,
) -> Vec<ConfiguredProvider> {
    let mut providers = Vec::new();
    for (name, table) in &tables.0 {
        let Some(kind) = crate::channels::providers::channel_of(name) else {
            continue;
        };
        let common: CommonSettings = parse_settings(name, table).unwrap_or_default();
        providers.push(ConfiguredProvider {
            name: name.clone(),
            channel: kind.as_str().to_string(),
            chain_position: chains.get(kind).iter().position(|n| n == name),
            rate_per_sec: common.rate_per_sec,
            destination_rate_per_sec: common.destination_rate_per_sec,
        });
    }
    providers
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    #[serde(flatten)]
    pub provider: ConfiguredProvider,
    /// The fleet's view: `open` if any worker's circuit is open now, else `half_open` if any is probing, else
    /// `closed`.
    pub state: CircuitState,
    /// Each worker process's circuit, as it last recorded it.
    pub circuits: Vec<CircuitRecord>,
}

/// Configured providers with their circuit breaker states.
#[utoipa::path(
    get, path = "/v1/providers", tag = "channels",
    responses(
        (status = 200, description = "Providers", body = Vec<ProviderView>),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_providers(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let records = circuits::list(&state.pool).await?;
    let views = state
        .providers
        .iter()
        .map(|provider| {
            let circuits: Vec<CircuitRecord> = records
                .iter()
                .filter(|r| r.provider == provider.name)
                .cloned()
                .collect();
            ProviderView {
                state: fleet_state(&circuits),
                provider: provider.clone(),
                circuits,
            }
        })
        .collect();
    Ok(Json(views))
}

/// Sets `herald_provider_circuits_open` from the recorded circuits, for the scrape in progress.
pub async fn refresh_circuit_gauges(state: &ApiState) -> Result<(), ApiError> {
    let records = circuits::list(&state.pool).await?;
    let now = Utc::now();
    for provider in &state.providers {
        let open = records
            .iter()
            .filter(|c| c.provider == provider.name && c.is_open_at(now))
            .count();
        state
            .metrics
            .provider_circuits_open
            .with_label_values(&[provider.name.as_str()])
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }
    Ok(())
}

/// The fleet's view of one provider's circuits (see [`ProviderView::state`]).
fn fleet_state(circuits: &[CircuitRecord]) -> CircuitState {
    let now = Utc::now();
    if circuits.iter().any(|c| c.is_open_at(now)) {
        CircuitState::Open
    } else if circuits.iter().any(|c| c.state == CircuitState::HalfOpen) {
        CircuitState::HalfOpen
    } else {
        CircuitState::Closed
    }
}

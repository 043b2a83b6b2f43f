//! `/v1/providers`, `/v1/runs/{id}/deliveries`, `/v1/suppressions`: the channel layer as operators see it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath};
use super::keys::Scope;
use crate::channels::callbacks::{CallbackError, CallbackRequest};
use crate::channels::circuits::{self, CircuitRecord};
use crate::channels::deliveries::{self, Applied, CallbackUpdate, Delivery, Suppression};
use crate::channels::provider::{CommonSettings, parse_settings};
use crate::channels::{ChainSettings, ChannelKind, ProviderTables};

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
    pub state: String,
    /// Each worker process's circuit, as it last recorded it.
    pub circuits: Vec<CircuitRecord>,
}

/// Configured providers with their circuit breaker states.
#[utoipa::path(
    get, path = "/v1/providers", tag = "channels",
    responses(
        (status = 200, description = "Providers", body = Vec<ProviderView>),
        (status = 401, description = "Missing or unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_providers(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    caller.require(Scope::Read)?;
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
                state: fleet_state(&circuits).to_string(),
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
            .filter(|c| c.provider == provider.name && c.state == "open")
            .filter(|c| c.open_until.is_some_and(|until| until > now))
            .count();
        state
            .metrics
            .provider_circuits_open
            .with_label_values(&[provider.name.as_str()])
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }
    Ok(())
}

/// An open circuit whose cooldown has passed is about to half-open: it no longer counts as open.
fn fleet_state(circuits: &[CircuitRecord]) -> &'static str {
    let now = Utc::now();
    let open =
        |c: &&CircuitRecord| c.state == "open" && c.open_until.is_some_and(|until| until > now);
    if circuits.iter().any(|c| open(&c)) {
        "open"
    } else if circuits.iter().any(|c| c.state == "half_open") {
        "half_open"
    } else {
        "closed"
    }
}

/// A run's deliveries: one per action node and recipient, with every provider attempt and status change.
#[utoipa::path(
    get, path = "/v1/runs/{id}/deliveries", tag = "channels",
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 200, description = "Deliveries, oldest first", body = Vec<Delivery>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn run_deliveries(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(deliveries::for_run(&state.pool, id).await?))
}

/// The suppression list, newest first (at most 1,000).
#[utoipa::path(
    get, path = "/v1/suppressions", tag = "channels",
    responses(
        (status = 200, description = "Suppressed addresses", body = Vec<Suppression>),
        (status = 401, description = "Missing or unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the read scope", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn list_suppressions(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<Suppression>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(
        deliveries::list_suppressions(&state.pool, 1000).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSuppression {
    /// `email`, `sms`, `push` or `chat`.
    pub channel: String,
    /// The address exactly as actions render it (email address, phone number, device token).
    pub address: String,
    pub reason: Option<String>,
}

/// Add an address to the suppression list: actions skip it from now on.
#[utoipa::path(
    post, path = "/v1/suppressions", tag = "channels",
    request_body = NewSuppression,
    responses(
        (status = 204, description = "Suppressed (or already was)"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown channel or empty address", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn add_suppression(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewSuppression>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let channel = parse_channel(&body.channel)?;
    if body.address.trim().is_empty() {
        return Err(ApiError::field("address", "must not be empty"));
    }
    let reason = body.reason.as_deref().unwrap_or("added by an operator");
    deliveries::suppress(&state.pool, channel, &body.address, reason, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove an address from the suppression list.
#[utoipa::path(
    delete, path = "/v1/suppressions/{channel}/{address}", tag = "channels",
    params(("channel" = String, Path), ("address" = String, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not on the list", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown channel", body = Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = []))
)]
pub async fn remove_suppression(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((channel, address)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let channel = parse_channel(&channel)?;
    if deliveries::unsuppress(&state.pool, channel, &address).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("{address} is not suppressed")))
    }
}

fn parse_channel(value: &str) -> Result<ChannelKind, ApiError> {
    ChannelKind::parse(value)
        .ok_or_else(|| ApiError::field("channel", "must be one of email, sms, push, chat"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackReceipt {
    /// Events in the callback.
    pub events: usize,
    /// Events that changed a delivery's status.
    pub moved: usize,
    /// Events applied before (the provider called twice).
    pub duplicates: usize,
    /// An SNS subscription was confirmed.
    pub subscription_confirmed: bool,
}

/// A delivery callback from a provider (SendGrid, Mailgun, Twilio, SES through SNS). No API key: each provider's
/// own signature authenticates the request. Events are applied once each, and only move a delivery forward.
#[utoipa::path(
    post, path = "/v1/callbacks/{provider}", tag = "channels",
    params(("provider" = String, Path, description = "sendgrid, mailgun, twilio or ses")),
    request_body(content = String, description = "The provider's own callback body (JSON or form)"),
    responses(
        (status = 200, description = "Applied", body = CallbackReceipt),
        (status = 400, description = "Malformed callback", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Bad signature, or a timestamp outside the replay window", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No callbacks are configured for this provider", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The SNS signing certificate could not be fetched", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive_callback(
    State(state): State<ApiState>,
    ApiPath(provider): ApiPath<String>,
    headers: axum::http::HeaderMap,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
    body: axum::body::Bytes,
) -> Result<Json<CallbackReceipt>, ApiError> {
    let url = called_url(&state, &headers, &uri);
    let request = CallbackRequest {
        headers: &headers,
        body: &body,
        url: &url,
    };
    let outcome = state
        .callbacks
        .verify(&provider, &request)
        .await
        .map_err(callback_error)?;
    let subscription_confirmed = match &outcome.subscribe_url {
        Some(url) => {
            confirm_subscription(url).await?;
            true
        }
        None => false,
    };
    let mut receipt = CallbackReceipt {
        events: outcome.events.len(),
        moved: 0,
        duplicates: 0,
        subscription_confirmed,
    };
    for event in &outcome.events {
        let update = CallbackUpdate {
            provider: &provider,
            event_key: &event.event_key,
            provider_message_id: &event.provider_message_id,
            status: event.status,
            recipient: event.recipient.as_deref(),
            suppress: event.suppress,
            reason: event.reason.as_deref(),
        };
        match deliveries::apply_callback(&state.pool, &update).await? {
            Applied::Duplicate => receipt.duplicates += 1,
            Applied::Applied { moved: true } => receipt.moved += 1,
            Applied::Applied { moved: false } => {}
        }
    }
    Ok(Json(receipt))
}

/// The URL the provider called, as it saw it: `callbacks.public_url` (behind a proxy) or this request's Host.
fn called_url(state: &ApiState, headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match &state.callbacks.settings().public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

async fn confirm_subscription(url: &str) -> Result<(), ApiError> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(ApiError::unavailable(format!(
            "SNS answered {} to the subscription confirmation",
            response.status()
        ))),
        Err(error) => Err(ApiError::unavailable(format!(
            "cannot confirm the SNS subscription: {error}"
        ))),
    }
}

fn callback_error(error: CallbackError) -> ApiError {
    match error {
        CallbackError::BadSignature | CallbackError::Stale => {
            ApiError::unauthorized(error.to_string())
        }
        CallbackError::Malformed(_) => ApiError::bad_request(error.to_string()),
        CallbackError::NotConfigured(_) => ApiError::not_found(error.to_string()),
        CallbackError::Certificate(_) => ApiError::unavailable(error.to_string()),
    }
}

//! `/v1/suppressions`: the addresses actions skip (hard bounces, complaints, unsubscribes, operators' entries).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{AdminScope, Authorized, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath};
use super::responses::{AdminAuth, JsonBody, ReadAuth};
use crate::channels::ChannelKind;
use crate::channels::deliveries::{self, MAX_ADDRESS_CHARS, Suppression};

/// The suppression list, newest first (at most 1,000).
#[utoipa::path(
    get, path = "/v1/suppressions", tag = "channels",
    responses(
        (status = 200, description = "Suppressed addresses", body = Vec<Suppression>),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_suppressions(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<Vec<Suppression>>, ApiError> {
    Ok(Json(
        deliveries::list_suppressions(&state.pool, 1000).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSuppression {
    #[schema(value_type = ChannelKind)]
    pub channel: String,
    /// The address exactly as actions render it (email address, phone number, device token): 1-512 characters,
    /// no control characters, not only white space.
    #[schema(
        max_length = 512,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub address: String,
    /// Why (shown in the list); "added by an operator" if absent. No NUL characters.
    #[schema(pattern = "^[^\\x00]*$")]
    pub reason: Option<String>,
}

/// Add an address to the suppression list: actions skip it from now on.
#[utoipa::path(
    post, path = "/v1/suppressions", tag = "channels",
    request_body = NewSuppression,
    responses(
        (status = 204, description = "Suppressed (or already was)"),
        (status = 422, description = "Unknown channel, bad address or reason", body = Problem, content_type = "application/problem+json"),
        JsonBody, AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn add_suppression(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiJson(body): ApiJson<NewSuppression>,
) -> Result<StatusCode, ApiError> {
    let channel = parse_channel(&body.channel)?;
    if !deliveries::valid_address(&body.address) {
        return Err(ApiError::field(
            "address",
            format!(
                "must be 1-{MAX_ADDRESS_CHARS} characters, without control characters, not only white space"
            ),
        ));
    }
    if body.reason.as_deref().is_some_and(|r| r.contains('\0')) {
        return Err(ApiError::field("reason", "must not contain NUL characters"));
    }
    let reason = body.reason.as_deref().unwrap_or("added by an operator");
    deliveries::add_suppression(&state.pool, &admin.actor, channel, &body.address, reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove an address from the suppression list.
#[utoipa::path(
    delete, path = "/v1/suppressions/{channel}/{address}", tag = "channels",
    params(("channel" = ChannelKind, Path), ("address" = String, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not on the list", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown channel", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn remove_suppression(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath((channel, address)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let channel = parse_channel(&channel)?;
    // An address the list cannot hold (PostgreSQL's text has no NUL) is not on it.
    if !address.contains('\0')
        && deliveries::unsuppress(&state.pool, &admin.actor, channel, &address).await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("{address} is not suppressed")))
    }
}

fn parse_channel(value: &str) -> Result<ChannelKind, ApiError> {
    ChannelKind::parse(value)
        .ok_or_else(|| ApiError::field("channel", "must be one of email, sms, push, chat"))
}

//! `/v1/callbacks/{provider}`: delivery callbacks from providers, handed whole to `channels::callbacks`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::HeaderMap;

use super::ApiState;
use super::error::{ApiError, Problem};
use super::extract::ApiPath;
use crate::channels::callbacks::CallbackReceipt;

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
        (status = 503, description = "The SNS signing certificate could not be fetched, or the SNS subscription could not be confirmed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn receive_callback(
    State(state): State<ApiState>,
    ApiPath(provider): ApiPath<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    body: Bytes,
) -> Result<Json<CallbackReceipt>, ApiError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let receipt = state
        .callbacks
        .receive(&provider, &headers, path, &body)
        .await?;
    Ok(Json(receipt))
}

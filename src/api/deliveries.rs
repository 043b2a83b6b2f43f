//! `/v1/runs/{id}/deliveries`: what the channel layer did for a run's action nodes.

use axum::Json;
use axum::extract::State;

use super::ApiState;
use super::auth::{Authorized, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::ApiPath;
use super::responses::ReadAuth;
use crate::channels::deliveries::{self, Delivery};

/// A run's deliveries: one per action node and recipient, with every provider attempt and status change.
#[utoipa::path(
    get, path = "/v1/runs/{id}/deliveries", tag = "channels",
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 200, description = "Deliveries, oldest first", body = Vec<Delivery>),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn run_deliveries(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    Ok(Json(deliveries::for_run(&state.pool, id).await?))
}

//! `/v1/analytics/daily`: the clock's daily rollups (see `clock::rollups` and docs/operations.md).

use axum::Json;
use axum::extract::State;
use chrono::NaiveDate;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use super::auth::{Authorized, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::ApiQuery;
use super::responses::ReadAuth;
use crate::clock::rollups::{self, DailyRollups, MAX_DAYS, RollupFilter};

/// Which days and which slices of them.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DailyQuery {
    /// The first day (YYYY-MM-DD, a day in `clock.rollups.timezone`).
    // Optional to serde so that a missing one is answered in this module's words; required to clients.
    #[param(value_type = String, format = Date, required = true)]
    pub from: Option<String>,
    /// The last day, inclusive, not before `from`; at most 366 days from `from` included.
    #[param(value_type = String, format = Date, required = true)]
    pub to: Option<String>,
    /// Only this workflow (runs, steps, deliveries; jobs are left out). At most 200 characters, no NUL.
    #[param(max_length = 200, pattern = "^[^\\x00]*$")]
    pub workflow: Option<String>,
    /// Only this channel (deliveries; jobs, runs and steps are left out). At most 200 characters, no NUL.
    #[param(max_length = 200, pattern = "^[^\\x00]*$")]
    pub channel: Option<String>,
    /// Only this provider (deliveries; jobs, runs and steps are left out). At most 200 characters, no NUL.
    #[param(max_length = 200, pattern = "^[^\\x00]*$")]
    pub provider: Option<String>,
}

fn date(name: &str, value: Option<&str>) -> Result<NaiveDate, ApiError> {
    let value = value.ok_or_else(|| ApiError::bad_parameter(name, "is required (YYYY-MM-DD)"))?;
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| ApiError::bad_parameter(name, format!("{value:?} is not a date (YYYY-MM-DD)")))
}

/// Daily rollups of a range of days: jobs per queue and kind, runs per workflow, steps per workflow and node kind,
/// deliveries per workflow, channel and provider, with counts and latency percentiles. Days are computed nightly
/// (and by `herald rollup`); `days` lists those of the range that are.
#[utoipa::path(
    get, path = "/v1/analytics/daily", tag = "analytics",
    params(DailyQuery),
    responses(
        (status = 200, description = "The rollups of the range", body = DailyRollups),
        (status = 400, description = "Missing or bad date, reversed range, more than 366 days, a filter longer \
            than 200 characters, or an unknown parameter", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn daily(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiQuery(query): ApiQuery<DailyQuery>,
) -> Result<Json<DailyRollups>, ApiError> {
    let from = date("from", query.from.as_deref())?;
    let to = date("to", query.to.as_deref())?;
    if to < from {
        return Err(ApiError::bad_parameter("to", "is before from"));
    }
    if (to - from).num_days() + 1 > MAX_DAYS {
        return Err(ApiError::bad_parameter(
            "to",
            format!("the range may cover at most {MAX_DAYS} days"),
        ));
    }
    let filter = RollupFilter::new(from, to, query.workflow, query.channel, query.provider)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(rollups::show(&state.pool, &filter).await?))
}

//! The clock's schedules over HTTP: list them with their progress, pause and resume them fleet-wide.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{AdminScope, Authorized, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::ApiPath;
use super::responses::{AdminAuth, ReadAuth};
use crate::audit::Actor;
use crate::clock::schedules::{self, ScheduleView};

/// Every schedule (built-in and configured): cron, time zone, next and last tick, and the last tick's outcome.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    responses(
        (status = 200, description = "Schedules", body = Vec<ScheduleView>),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_schedules(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let views = schedules::list(&state.pool, &state.engine, &state.schedules, Utc::now()).await?;
    Ok(Json(views))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleState {
    pub name: String,
    pub paused: bool,
}

async fn set_paused(
    state: &ApiState,
    actor: &Actor,
    name: &str,
    paused: bool,
) -> Result<Json<ScheduleState>, ApiError> {
    schedules::set_paused(&state.pool, actor, &state.schedules, name, paused).await?;
    Ok(Json(ScheduleState {
        name: name.to_string(),
        paused,
    }))
}

/// Pause a schedule for the whole fleet: its ticks pass without firing (and do not fire on resume).
#[utoipa::path(
    post, path = "/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Paused", body = ScheduleState),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn pause_schedule(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleState>, ApiError> {
    set_paused(&state, &admin.actor, &name, true).await
}

/// Let a paused schedule fire again, from its next tick.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Resumed", body = ScheduleState),
        (status = 404, description = "No such schedule", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn resume_schedule(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ScheduleState>, ApiError> {
    set_paused(&state, &admin.actor, &name, false).await
}

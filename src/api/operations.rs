//! Operating the queue over HTTP: queues (depth, pause, resume), dead letters (list, show, replay, delete) and
//! the worker fleet.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{AdminScope, Authorized, ReadScope};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, finish_page, page_params};
use super::responses::{AdminAuth, JsonBody, ReadAuth};
use crate::audit::Actor;
use crate::queue::admin::{self, QueueStats, WorkerView};
use crate::queue::dead_letters::{self, DeadLetter, DeadLetterFilter, Replayed};
use crate::queue::{JobKind, QueueError, QueueName};

/// Every queue that has jobs or settings.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    responses(
        (status = 200, description = "Queues", body = Vec<QueueStats>),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_queues(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<Vec<QueueStats>>, ApiError> {
    Ok(Json(admin::queue_stats(&state.pool).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueState {
    pub name: String,
    pub paused: bool,
}

async fn set_paused(
    state: &ApiState,
    actor: &Actor,
    name: &str,
    paused: bool,
) -> Result<Json<QueueState>, ApiError> {
    let queue = QueueName::parse(name).map_err(|e| ApiError::field("name", e.to_string()))?;
    admin::set_paused(&state.pool, actor, &queue, paused).await?;
    Ok(Json(QueueState {
        name: queue.to_string(),
        paused,
    }))
}

/// Stop the whole fleet from claiming this queue's jobs (running jobs finish).
#[utoipa::path(
    post, path = "/v1/queues/{name}/pause", tag = "queues",
    params(("name" = String, Path, description = "Queue name", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 200, description = "Paused", body = QueueState),
        (status = 422, description = "Bad queue name", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn pause_queue(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<QueueState>, ApiError> {
    set_paused(&state, &admin.actor, &name, true).await
}

/// Let the fleet claim this queue's jobs again.
#[utoipa::path(
    post, path = "/v1/queues/{name}/resume", tag = "queues",
    params(("name" = String, Path, description = "Queue name", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 200, description = "Resumed", body = QueueState),
        (status = 422, description = "Bad queue name", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn resume_queue(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<QueueState>, ApiError> {
    set_paused(&state, &admin.actor, &name, false).await
}

/// Filters for listing dead letters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub kind: Option<String>,
    /// Only dead letters that failed at or after this time (RFC 3339).
    pub failed_since: Option<DateTime<Utc>>,
    /// Only dead letters that failed before this time (RFC 3339).
    pub failed_before: Option<DateTime<Utc>>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// Newest first.
    pub items: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Dead letters, newest first, with cursor pagination.
#[utoipa::path(
    get, path = "/v1/dead-letters", tag = "dead letters",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_dead_letters(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let (limit, before_id) = page_params(query.limit, query.cursor.as_deref())?;
    let filter = DeadLetterFilter {
        id: None,
        queue: checked_queue(query.queue)?,
        kind: checked_kind(query.kind)?,
        failed_since: query.failed_since,
        failed_before: query.failed_before,
    };
    // One extra row tells whether there is a next page.
    let mut items = dead_letters::list(&state.pool, &filter, before_id, limit + 1).await?;
    let next_cursor = finish_page(&mut items, limit, |letter| letter.id);
    Ok(Json(DeadLetterPage { items, next_cursor }))
}

/// One dead letter with every attempt's error.
#[utoipa::path(
    get, path = "/v1/dead-letters/{id}", tag = "dead letters",
    params(("id" = i64, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetter),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_dead_letter(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<DeadLetter>, ApiError> {
    dead_letters::get(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("dead letter {id} not found")))
}

/// Re-enqueue one dead letter as a new job, attempts reset.
#[utoipa::path(
    post, path = "/v1/dead-letters/{id}/replay", tag = "dead letters",
    params(("id" = i64, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "The new job", body = Replayed),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already replayed", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn replay_dead_letter(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Replayed>, ApiError> {
    let aging = state.defaults.priority_aging;
    let one = DeadLetterFilter::by_id(id);
    if let Some(replayed) = dead_letters::replay(&state.pool, &admin.actor, &one, aging)
        .await?
        .pop()
    {
        return Ok(Json(replayed));
    }
    match dead_letters::get(&state.pool, id).await? {
        Some(letter) => Err(ApiError::conflict(format!(
            "dead letter {id} was already replayed as job {}",
            letter.replayed_as.unwrap_or_default()
        ))),
        None => Err(ApiError::not_found(format!("dead letter {id} not found"))),
    }
}

/// Which dead letters to replay; empty fields match everything.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFilter {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub kind: Option<String>,
    pub failed_since: Option<DateTime<Utc>>,
    pub failed_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplaySummary {
    /// How many dead letters were replayed.
    pub replayed: usize,
    pub jobs: Vec<Replayed>,
}

/// Re-enqueue every matching dead letter not replayed yet.
#[utoipa::path(
    post, path = "/v1/dead-letters/replay", tag = "dead letters",
    request_body = ReplayFilter,
    responses(
        (status = 200, description = "What was replayed", body = ReplaySummary),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        JsonBody, AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn replay_dead_letters(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiJson(filter): ApiJson<ReplayFilter>,
) -> Result<Json<ReplaySummary>, ApiError> {
    let filter = DeadLetterFilter {
        id: None,
        queue: checked_queue(filter.queue)?,
        kind: checked_kind(filter.kind)?,
        failed_since: filter.failed_since,
        failed_before: filter.failed_before,
    };
    let aging = state.defaults.priority_aging;
    let jobs = dead_letters::replay(&state.pool, &admin.actor, &filter, aging).await?;
    Ok(Json(ReplaySummary {
        replayed: jobs.len(),
        jobs,
    }))
}

/// Delete one dead letter.
#[utoipa::path(
    delete, path = "/v1/dead-letters/{id}", tag = "dead letters",
    params(("id" = i64, Path, description = "Dead letter id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        AdminAuth,
    ),
    security(("api_key" = ["admin"]))
)]
pub async fn delete_dead_letter(
    State(state): State<ApiState>,
    admin: Authorized<AdminScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    match dead_letters::purge(&state.pool, &admin.actor, &DeadLetterFilter::by_id(id)).await? {
        0 => Err(QueueError::NotFound(format!("dead letter {id}")).into()),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// The live worker fleet, from heartbeats.
#[utoipa::path(
    get, path = "/v1/workers", tag = "workers",
    responses(
        (status = 200, description = "Worker processes", body = Vec<WorkerView>),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn list_workers(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    Ok(Json(admin::list_workers(&state.pool).await?))
}

/// A queue name filter, parsed like every queue name (a malformed one cannot match anything: say so).
fn checked_queue(queue: Option<String>) -> Result<Option<String>, ApiError> {
    queue
        .map(|q| {
            QueueName::parse(&q)
                .map(|q| q.to_string())
                .map_err(|e| ApiError::field("queue", e.to_string()))
        })
        .transpose()
}

fn checked_kind(kind: Option<String>) -> Result<Option<String>, ApiError> {
    kind.map(|k| {
        JobKind::parse(&k)
            .map(|k| k.to_string())
            .map_err(|e| ApiError::field("kind", e.to_string()))
    })
    .transpose()
}

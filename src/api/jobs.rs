//! `/v1/jobs`: enqueue one job or a batch, look a job up, cancel it.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Authorized, EnqueueScope, ReadScope};
use super::error::{ApiError, FieldError, Problem};
use super::extract::{
    ApiJson, ApiPath, empty_object, idempotency_key_header, json_type, request_id,
};
use super::responses::{EnqueueAuth, JsonBody, ReadAuth};
use super::schemas::StorableJson;
use crate::queue::admin::{self, JobView};
use crate::queue::producers::ProducerRules;
use crate::queue::{self, Enqueued, IdempotencyKey, JobKind, NewJob, Priority, QueueName};

/// A job to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Queue name: 1-64 characters of `[A-Za-z0-9_.-]`, not one of herald's own queues (`workflows.queue` and
    /// `clock.queue`, by default `workflows` and `herald.maintenance`: 422).
    #[schema(example = "emails", pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: String,
    /// Job kind (which handler runs it): 1-128 characters of `[A-Za-z0-9_.-]`, not under `herald.` (herald's
    /// own kinds; with `jobs.allow_test_kinds` on, its test kinds `herald.noop`, `herald.sleep`, `herald.log` are
    /// let through).
    #[schema(
        example = "billing.invoice",
        pattern = "^(?!herald\\.)[A-Za-z0-9_.-]{1,128}$"
    )]
    pub kind: String,
    /// Any JSON value; `{}` if absent. Strings in it cannot contain U+0000 (PostgreSQL's `jsonb` cannot store it;
    /// such a request is answered 422).
    #[serde(default = "empty_object")]
    #[schema(value_type = StorableJson)]
    pub payload: serde_json::Value,
    /// 0-9, higher runs first (default 0).
    #[schema(minimum = 0, maximum = 9)]
    #[serde(default, deserialize_with = "whole_number")]
    pub priority: Option<i64>,
    /// Run at this time instead of now (RFC 3339).
    pub run_at: Option<DateTime<Utc>>,
    /// Run this many milliseconds after `run_at` (or after now), at most ten years.
    #[schema(minimum = 0, maximum = 315360000000_i64)]
    #[serde(default, deserialize_with = "whole_number")]
    pub delay_ms: Option<i64>,
    /// Attempts before the job is dead-lettered (default: jobs.max_attempts).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_attempts: Option<i64>,
    /// Handler timeout in milliseconds (default: jobs.timeout_secs).
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout_ms: Option<i64>,
    /// Makes the enqueue idempotent: 1-255 characters, no control characters. For `POST /v1/jobs` the
    /// `Idempotency-Key` header does the same, and wins if both are given.
    #[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]{1,255}$")]
    pub idempotency_key: Option<String>,
}

/// JSON Schema's `integer` includes numbers like `3.0`; accept them, refuse `3.5`. Anything else is refused in
/// the same words, rather than serde's "expected i64".
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    let value: Option<serde_json::Value> = Option::deserialize(deserializer)?;
    let number = match value {
        None => return Ok(None),
        Some(serde_json::Value::Number(number)) => number,
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected an integer, got {}",
                json_type(&other)
            )));
        }
    };
    number
        .as_i64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {number}")))
}

/// The outcome of enqueueing one job.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueueResponse {
    pub id: i64,
    /// `inserted`, or `duplicate` when the idempotency key was already used for the same job (a replay).
    #[schema(example = "inserted")]
    pub status: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to `api.max_batch` (default 1,000) jobs, inserted in one statement.
    #[schema(min_items = 1, max_items = 1000)]
    pub jobs: Vec<JobRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    /// Position in the request.
    pub index: usize,
    pub id: i64,
    /// `inserted`, `duplicate` (key already used for the same job) or `conflict` (key used for another job).
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
}

impl JobRequest {
    /// Validates every field, naming each bad one under `prefix` (`jobs[3].`).
    fn into_new_job(
        self,
        prefix: &str,
        request_id: Option<&str>,
        rules: &ProducerRules,
    ) -> Result<NewJob, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut check = |field: &str, result: Result<(), String>| {
            if let Err(message) = result {
                errors.push(FieldError {
                    field: format!("{prefix}{field}"),
                    message,
                });
            }
        };
        let queue = QueueName::parse(&self.queue);
        check(
            "queue",
            queue.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        if queue.is_ok() {
            check("queue", rules.check_queue(&self.queue));
        }
        let kind = JobKind::parse(&self.kind);
        check("kind", kind.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if kind.is_ok() {
            check("kind", rules.check_kind(&self.kind));
        }
        let priority = Priority::new(self.priority.unwrap_or(0));
        check(
            "priority",
            priority.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        let key = self
            .idempotency_key
            .as_deref()
            .map(IdempotencyKey::parse)
            .transpose();
        check(
            "idempotency_key",
            key.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        if let Some(attempts) = self.max_attempts.filter(|a| !(1..=1000).contains(a)) {
            check(
                "max_attempts",
                Err(format!("{attempts} is not between 1 and 1000")),
            );
        }
        if let Some(ms) = self.timeout_ms.filter(|ms| !(1..=86_400_000).contains(ms)) {
            check(
                "timeout_ms",
                Err(format!("{ms} is not between 1 and 86400000")),
            );
        }
        if let Some(ms) = self
            .delay_ms
            .filter(|ms| !(0..=315_360_000_000).contains(ms))
        {
            check(
                "delay_ms",
                Err(format!("{ms} is not between 0 and ten years")),
            );
        }
        let (Ok(queue), Ok(kind), Ok(priority), Ok(key), true) =
            (queue, kind, priority, key, errors.is_empty())
        else {
            return Err(errors);
        };
        let mut job = NewJob::new(queue, kind, self.payload).priority(priority);
        // delay_ms counts from run_at if both are given.
        job.run_at = match (self.run_at, self.delay_ms) {
            (at, Some(ms)) => {
                let from = at.unwrap_or_else(Utc::now);
                let due = from.checked_add_signed(chrono::Duration::milliseconds(ms));
                Some(due.ok_or_else(|| {
                    vec![FieldError {
                        field: format!("{prefix}delay_ms"),
                        message: "run_at + delay_ms is out of range".into(),
                    }]
                })?)
            }
            (at, None) => at,
        };
        job.max_attempts = self.max_attempts.map(|a| a as i32); // range-checked above
        job.timeout = self.timeout_ms.map(|ms| Duration::from_millis(ms as u64));
        job.idempotency_key = key;
        job.request_id = request_id.map(str::to_string);
        Ok(job)
    }
}

/// Enqueue one job.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~][ -~]{0,254}$", description = "Makes the request idempotent: a repeat returns the original job")),
    responses(
        (status = 201, description = "Inserted", body = EnqueueResponse),
        (status = 200, description = "A repeat of an earlier request with the same Idempotency-Key (header `Idempotent-Replayed: true`)", body = EnqueueResponse),
        (status = 409, description = "The Idempotency-Key was used for a different job", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The server is shutting down (see `Retry-After`), or the database is unavailable", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn enqueue_one(
    State(state): State<ApiState>,
    _: Authorized<EnqueueScope>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    let mut request = request;
    if let Some(body_key) = &request.idempotency_key {
        IdempotencyKey::parse(body_key)
            .map_err(|e| ApiError::field("idempotency_key", e.to_string()))?;
    }
    if let Some(key) = idempotency_key_header(&headers)? {
        request.idempotency_key = Some(key);
    }
    let job = request
        .into_new_job("", request_id(&headers), &state.producers)
        .map_err(ApiError::validation)?;
    let queue_name = job.queue.to_string();
    match state.enqueuer.enqueue(job).await? {
        Enqueued::Inserted(id) => {
            state.metrics.job_enqueued(&queue_name);
            Ok((
                StatusCode::CREATED,
                Json(EnqueueResponse {
                    id,
                    status: "inserted".into(),
                }),
            )
                .into_response())
        }
        Enqueued::Duplicate(id) => {
            let mut response = Json(EnqueueResponse {
                id,
                status: "duplicate".into(),
            })
            .into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Enqueued::Conflict(id) => Err(ApiError::conflict(format!(
            "this idempotency key was already used for job {id}, enqueued with a different queue, kind, priority or payload"
        ))),
    }
}

/// Enqueue up to `api.max_batch` jobs in one statement.
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per job, in order", body = BatchResponse),
        (status = 422, description = "Invalid fields, or too many jobs", body = Problem, content_type = "application/problem+json"),
        JsonBody, EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn enqueue_batch(
    State(state): State<ApiState>,
    _: Authorized<EnqueueScope>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    let max = state.settings.max_batch.get();
    if request.jobs.is_empty() || request.jobs.len() > max {
        return Err(ApiError::field(
            "jobs",
            format!(
                "send 1 to {max} jobs (api.max_batch), not {}",
                request.jobs.len()
            ),
        ));
    }
    let request_id = request_id(&headers);
    let mut jobs = Vec::with_capacity(request.jobs.len());
    let mut errors = Vec::new();
    for (index, job) in request.jobs.into_iter().enumerate() {
        match job.into_new_job(&format!("jobs[{index}]."), request_id, &state.producers) {
            Ok(job) => jobs.push(job),
            Err(mut bad) => errors.append(&mut bad),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut conn = state.pool.acquire().await?;
    let results = queue::enqueue_many(&mut conn, &state.defaults, &jobs).await?;
    let items = results
        .iter()
        .zip(&jobs)
        .enumerate()
        .map(|(index, (result, job))| {
            let status = match result {
                Enqueued::Inserted(_) => {
                    state.metrics.job_enqueued(job.queue.as_str());
                    "inserted"
                }
                Enqueued::Duplicate(_) => "duplicate",
                Enqueued::Conflict(_) => "conflict",
            };
            BatchItem {
                index,
                id: result.id(),
                status: status.into(),
            }
        })
        .collect();
    Ok(Json(BatchResponse { results: items }))
}

/// A job: waiting, running, or finished (from history).
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        ReadAuth,
    ),
    security(("api_key" = ["read"]))
)]
pub async fn get_job(
    State(state): State<ApiState>,
    _: Authorized<ReadScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<JobView>, ApiError> {
    admin::find_job(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))
}

/// Cancel a job that has not started.
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 400, description = "Bad id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No waiting job with this id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is running", body = Problem, content_type = "application/problem+json"),
        EnqueueAuth,
    ),
    security(("api_key" = ["enqueue"]))
)]
pub async fn cancel_job(
    State(state): State<ApiState>,
    caller: Authorized<EnqueueScope>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    admin::cancel_job(&state.pool, &caller.actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Operating the queue: pause/resume and depth of queues, looking up and cancelling jobs, the worker fleet.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::QueueError;
use super::sql;
use super::types::{JobId, QueueName};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub name: String,
    pub paused: bool,
    /// Due and waiting for a worker.
    pub available: i64,
    pub running: i64,
    /// Waiting for their run_at (including retries in backoff).
    pub scheduled: i64,
    /// How long the oldest available job has been due.
    pub oldest_age_secs: Option<f64>,
}

pub async fn queue_stats(pool: &PgPool) -> Result<Vec<QueueStats>, QueueError> {
    let rows = sqlx::query(sql::QUEUE_STATS).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(QueueStats {
                name: row.try_get("name")?,
                paused: row.try_get("paused")?,
                available: row.try_get("available")?,
                running: row.try_get("running")?,
                scheduled: row.try_get("scheduled")?,
                oldest_age_secs: row.try_get("oldest_age_secs")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(QueueError::from)
}

/// Pauses (`true`) or resumes a queue for the whole fleet. Running jobs finish; no new ones are claimed.
pub async fn set_paused(pool: &PgPool, queue: &QueueName, paused: bool) -> Result<(), QueueError> {
    sqlx::query(sql::SET_PAUSED)
        .bind(queue.as_str())
        .bind(paused)
        .fetch_one(pool)
        .await?;
    Ok(())
}

/// A job as `herald jobs show` and the API present it, from wherever it is now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// `available`, `scheduled`, `running`, `completed`, `cancelled` or `dead`.
    pub state: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub errors: serde_json::Value,
    pub idempotency_key: Option<String>,
    /// The HTTP request that created the job, if it came through the API.
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub run_at: Option<DateTime<Utc>>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Looks a job up in the hot table, then in its history.
pub async fn find_job(pool: &PgPool, id: JobId) -> Result<Option<JobView>, QueueError> {
    if let Some(row) = sqlx::query(sql::LIVE_JOB)
        .bind(id)
        .fetch_optional(pool)
        .await?
    {
        let state = if row.try_get("running")? {
            "running"
        } else if row.try_get("scheduled")? {
            "scheduled"
        } else {
            "available"
        };
        return Ok(Some(JobView {
            id,
            queue: row.try_get("queue")?,
            kind: row.try_get("kind")?,
            state: state.to_string(),
            payload: row.try_get("payload")?,
            priority: row.try_get("priority")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            errors: row.try_get("errors")?,
            idempotency_key: row.try_get("idempotency_key")?,
            request_id: row.try_get("request_id")?,
            created_at: row.try_get("created_at")?,
            run_at: row.try_get("run_at")?,
            claimed_at: row.try_get("claimed_at")?,
            finished_at: None,
        }));
    }
    let Some(row) = sqlx::query(sql::FINISHED_JOB)
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(JobView {
        id,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        state: row.try_get("outcome")?,
        payload: row.try_get("payload")?,
        priority: row.try_get("priority")?,
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        errors: row.try_get("errors")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_id: row.try_get("request_id")?,
        created_at: row.try_get("created_at")?,
        run_at: None,
        claimed_at: row.try_get("claimed_at")?,
        finished_at: row.try_get("finished_at")?,
    }))
}

/// Cancels a job that is waiting (available or scheduled). A running job cannot be cancelled: it is a
/// [`QueueError::Conflict`]; an unknown or finished job is [`QueueError::NotFound`].
pub async fn cancel_job(pool: &PgPool, id: JobId) -> Result<(), QueueError> {
    if sqlx::query(sql::CANCEL)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .is_some()
    {
        return Ok(());
    }
    match sqlx::query_scalar::<_, bool>(sql::JOB_RUNNING)
        .bind(id)
        .fetch_optional(pool)
        .await?
    {
        Some(true) => Err(QueueError::Conflict(format!("job {id} is running"))),
        _ => Err(QueueError::NotFound(format!("waiting job {id}"))),
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerView {
    pub id: Uuid,
    pub hostname: String,
    pub pid: i32,
    pub queues: Vec<String>,
    /// Handlers this process may run at once over all its queues: the sum of each queue's concurrency, so
    /// `worker.concurrency = 16` on the two default queues shows 32.
    pub concurrency: i32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

/// The worker processes that registered and have not left or been reaped.
pub async fn list_workers(pool: &PgPool) -> Result<Vec<WorkerView>, QueueError> {
    let rows = sqlx::query(sql::LIST_WORKERS).fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(WorkerView {
                id: row.try_get("id")?,
                hostname: row.try_get("hostname")?,
                pid: row.try_get("pid")?,
                queues: row.try_get("queues")?,
                concurrency: row.try_get("concurrency")?,
                started_at: row.try_get("started_at")?,
                heartbeat_at: row.try_get("heartbeat_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(QueueError::from)
}

/// Live worker processes serving `queue`, by a heartbeat newer than `fresh`.
pub async fn live_workers_serving(
    pool: &PgPool,
    queue: &str,
    fresh: Duration,
) -> Result<u32, QueueError> {
    let count: i64 = sqlx::query_scalar(sql::LIVE_WORKERS_SERVING)
        .bind(queue)
        .bind(i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX))
        .fetch_one(pool)
        .await?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Jobs waiting or running in each of `queues` (a queue with none is absent).
pub async fn depths(
    pool: &PgPool,
    queues: &[String],
) -> Result<std::collections::HashMap<String, i64>, QueueError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql::QUEUE_DEPTHS)
        .bind(queues)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

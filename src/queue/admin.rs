//! Operating the queue: pause/resume and depth of queues, looking up and cancelling jobs, the worker fleet.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::QueueError;
use super::sql;
use super::types::{JobId, JobState, QueueName};
use crate::audit::{self, Actor};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
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
    Ok(sqlx::query_as(sql::QUEUE_STATS).fetch_all(pool).await?)
}

/// Pauses (`true`) or resumes a queue for the whole fleet. Running jobs finish; no new ones are claimed.
pub async fn set_paused(
    pool: &PgPool,
    actor: &Actor,
    queue: &QueueName,
    paused: bool,
) -> Result<(), QueueError> {
    let mut tx = pool.begin().await?;
    let changed: bool = sqlx::query(sql::SET_PAUSED)
        .bind(queue.as_str())
        .bind(paused)
        .fetch_one(&mut *tx)
        .await?
        .try_get("changed")?;
    // Pausing a paused queue changes nothing, and is not an action to audit.
    if changed {
        let action = if paused {
            "queue.pause"
        } else {
            "queue.resume"
        };
        audit::record(&mut *tx, actor, action, queue.as_str(), json!({})).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A job as `herald jobs show` and the API present it, from wherever it is now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// `available`, `scheduled`, `running`, `completed`, `cancelled` or `dead`.
    pub state: JobState,
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

/// The columns `LIVE_JOB` and `FINISHED_JOB` share.
#[derive(sqlx::FromRow)]
struct JobRow {
    queue: String,
    kind: String,
    payload: serde_json::Value,
    priority: i16,
    attempt: i32,
    max_attempts: i32,
    errors: serde_json::Value,
    idempotency_key: Option<String>,
    request_id: Option<String>,
    created_at: DateTime<Utc>,
    claimed_at: Option<DateTime<Utc>>,
}

/// A job still in the hot table: its state follows from its lease and schedule.
#[derive(sqlx::FromRow)]
struct LiveJobRow {
    #[sqlx(flatten)]
    job: JobRow,
    run_at: DateTime<Utc>,
    running: bool,
    scheduled: bool,
}

/// A finished job's history row: its outcome is its state.
#[derive(sqlx::FromRow)]
struct FinishedJobRow {
    #[sqlx(flatten)]
    job: JobRow,
    outcome: JobState,
    finished_at: DateTime<Utc>,
}

impl JobRow {
    fn into_view(
        self,
        id: JobId,
        state: JobState,
        run_at: Option<DateTime<Utc>>,
        finished_at: Option<DateTime<Utc>>,
    ) -> JobView {
        JobView {
            id,
            queue: self.queue,
            kind: self.kind,
            state,
            payload: self.payload,
            priority: self.priority,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            errors: self.errors,
            idempotency_key: self.idempotency_key,
            request_id: self.request_id,
            created_at: self.created_at,
            run_at,
            claimed_at: self.claimed_at,
            finished_at,
        }
    }
}

/// Jobs dead-lettered in the last `window`, per queue (the busiest first, at most 1,000 queues).
pub async fn recent_dead_letters(
    pool: &PgPool,
    window: std::time::Duration,
) -> Result<Vec<(String, i64)>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT queue, count(*) FROM herald_dead_letters \
         WHERE failed_at > now() - make_interval(secs => $1) GROUP BY queue ORDER BY count(*) DESC, queue LIMIT 1000",
    )
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

/// Of the jobs `ids`, those failing: dead-lettered (in the history as `dead`), or waiting for a retry after an
/// error. A snooze or a shutdown's interruption is recorded as an error entry too, but is no failure. One
/// statement for all of them (the alert evaluator asks for every schedule's latest job at once).
pub async fn failing_jobs(
    conn: &mut PgConnection,
    ids: &[JobId],
) -> Result<Vec<FailingJob>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT id, kind, dead, attempt, max_attempts, last ->> 'message' AS error FROM ( \
             SELECT j.id, j.kind, false AS dead, j.attempt, j.max_attempts, j.errors -> -1 AS last \
             FROM herald_jobs j WHERE j.id = ANY($1) \
             UNION ALL \
             SELECT h.job_id, h.kind, true, h.attempt, h.max_attempts, h.errors -> -1 \
             FROM herald_job_history h WHERE h.job_id = ANY($1) AND h.outcome = 'dead' \
         ) f \
         WHERE dead OR (last IS NOT NULL AND last ->> 'kind' NOT IN ('snoozed', 'shutdown'))",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// A job [`failing_jobs`] found.
#[derive(Debug, sqlx::FromRow)]
pub struct FailingJob {
    pub id: JobId,
    pub kind: String,
    /// Dead-lettered; else waiting for another attempt.
    pub dead: bool,
    pub attempt: i32,
    pub max_attempts: i32,
    /// The latest error's message.
    pub error: Option<String>,
}

/// Looks a job up in the hot table, then in its history.
pub async fn find_job(pool: &PgPool, id: JobId) -> Result<Option<JobView>, QueueError> {
    let live: Option<LiveJobRow> = sqlx::query_as(sql::LIVE_JOB)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    if let Some(row) = live {
        let state = if row.running {
            JobState::Running
        } else if row.scheduled {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        return Ok(Some(row.job.into_view(id, state, Some(row.run_at), None)));
    }
    let finished: Option<FinishedJobRow> = sqlx::query_as(sql::FINISHED_JOB)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(finished.map(|row| {
        row.job
            .into_view(id, row.outcome, None, Some(row.finished_at))
    }))
}

/// Cancels a job that is waiting (available or scheduled). A running job cannot be cancelled: it is a
/// [`QueueError::Conflict`]; an unknown or finished job is [`QueueError::NotFound`].
pub async fn cancel_job(pool: &PgPool, actor: &Actor, id: JobId) -> Result<(), QueueError> {
    let mut tx = pool.begin().await?;
    if !cancel_waiting_jobs(&mut tx, &[id]).await?.is_empty() {
        audit::record(
            &mut *tx,
            actor,
            "job.cancel",
            &format!("job:{id}"),
            json!({}),
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    match sqlx::query_scalar::<_, bool>(sql::JOB_RUNNING)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    {
        Some(true) => Err(QueueError::Conflict(format!("job {id} is running"))),
        // Cancelling is idempotent: a job cancelled before (a retried DELETE) is answered as cancelled, with no
        // second audit row, since nothing changed.
        _ if find_job(pool, id)
            .await?
            .is_some_and(|job| job.state == JobState::Cancelled) =>
        {
            Ok(())
        }
        _ => Err(QueueError::NotFound(format!("waiting job {id}"))),
    }
}

/// Cancels the jobs among `ids` that are waiting (available or scheduled), inside the caller's transaction, so
/// that they go with whatever made them pointless (a workflow removes a wait's timeout job in the transaction
/// that satisfies the wait). Each leaves the hot table with a `cancelled` history row, as [`cancel_job`] does.
/// A leased (running) job is left alone: its handler is already at work, and must cope with finding nothing to
/// do. Ids no longer in the hot table are ignored. Returns the ids cancelled. The caller bounds `ids` (one
/// statement carries them all).
pub async fn cancel_waiting_jobs(
    conn: &mut PgConnection,
    ids: &[JobId],
) -> Result<Vec<JobId>, QueueError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(sql::CANCEL)
        .bind(ids)
        .fetch_all(conn)
        .await?)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
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
    Ok(sqlx::query_as(sql::LIST_WORKERS).fetch_all(pool).await?)
}

/// Jobs each worker holds a lease on now (its handlers running or about to), by worker id.
pub async fn leases_per_worker(pool: &PgPool) -> Result<Vec<(Uuid, i64)>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT leased_by, count(*) FROM herald_jobs WHERE lease_token IS NOT NULL AND leased_by IS NOT NULL \
         GROUP BY leased_by",
    )
    .fetch_all(pool)
    .await?)
}

/// Attempts settled per queue in the last `secs` seconds (from the history's BRIN index on `finished_at`).
pub async fn finished_per_queue(
    pool: &PgPool,
    secs: i64,
) -> Result<Vec<(String, i64)>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT queue, count(*) FROM herald_job_history \
         WHERE finished_at > now() - make_interval(secs => $1) GROUP BY queue ORDER BY queue LIMIT 1000",
    )
    .bind(secs as f64)
    .fetch_all(pool)
    .await?)
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

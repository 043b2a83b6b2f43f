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

/// Which of a queue's waiting or running jobs [`list_jobs`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveState {
    /// Due and waiting for a worker, in claim order.
    Ready,
    /// Waiting for their `run_at` (later jobs, retries in backoff), soonest first.
    Scheduled,
    /// Leased by a worker, longest running first.
    Running,
}

/// A search among a queue's live jobs: any of `id`, `kind`, `idempotency_key` narrows it (exact matches).
#[derive(Debug, Clone)]
pub struct JobSearch<'a> {
    pub queue: &'a str,
    pub state: LiveState,
    pub id: Option<JobId>,
    pub kind: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    /// At most 500.
    pub limit: i64,
}

/// A line of a job list (the job's page has the rest, from [`find_job`]).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobLine {
    pub id: JobId,
    pub kind: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub idempotency_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    /// The latest error's message (a job retrying after a failure).
    pub error: Option<String>,
}

/// How long [`list_jobs`] may read: a search by kind or key that matches nothing reads the whole state of a
/// deep queue, and the scheduled list of a small queue walks the promoter's index past every other queue's jobs.
const LIST_BUDGET: &str = "5s";

/// A queue's live jobs in one state, in the order the queue takes them. Each state reads through the index that
/// serves it (the claim index, the promoter's, the lease index), so an unfiltered list of a deep queue reads
/// about `limit` rows. `None` when the search read for longer than its budget.
pub async fn list_jobs(
    pool: &PgPool,
    search: &JobSearch<'_>,
) -> Result<Option<Vec<JobLine>>, QueueError> {
    let (state, order) = match search.state {
        LiveState::Ready => ("lease_token IS NULL AND NOT scheduled", "sort_key, id"),
        LiveState::Scheduled => ("scheduled", "run_at, id"),
        LiveState::Running => ("lease_token IS NOT NULL", "claimed_at, id"),
    };
    let statement = format!(
        "SELECT id, kind, priority, attempt, max_attempts, idempotency_key, run_at, created_at, claimed_at, \
                errors -> -1 ->> 'message' AS error \
         FROM herald_jobs \
         WHERE queue = $1 AND {state} \
           AND ($2::bigint IS NULL OR id = $2) AND ($3::text IS NULL OR kind = $3) \
           AND ($4::text IS NULL OR idempotency_key = $4) \
         ORDER BY {order} LIMIT $5"
    );
    let mut tx = crate::db::begin_within(pool, LIST_BUDGET).await?;
    let found = sqlx::query_as(&statement)
        .bind(search.queue)
        .bind(search.id)
        .bind(search.kind)
        .bind(search.idempotency_key)
        .bind(search.limit.clamp(1, 500))
        .fetch_all(&mut *tx)
        .await;
    match found {
        Ok(rows) => {
            tx.commit().await?;
            Ok(Some(rows))
        }
        Err(error) if crate::db::cancelled_for_time(&error) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// One minute of the queue's traffic (see [`throughput`]).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Minute {
    pub at: DateTime<Utc>,
    pub enqueued: i64,
    pub completed: i64,
    /// Dead-lettered (failed for good).
    pub failed: i64,
}

/// How long [`throughput`] may count: an hour of a busy fleet's history is millions of rows, and an overview
/// that refreshes every few seconds must not turn into a load on the database.
const THROUGHPUT_BUDGET: &str = "2s";

/// Jobs enqueued, completed and dead-lettered per minute over the last `minutes` (at most 1,440), oldest
/// first, every minute present. `None` when counting took longer than its budget.
pub async fn throughput(pool: &PgPool, minutes: i32) -> Result<Option<Vec<Minute>>, QueueError> {
    let mut tx = crate::db::begin_within(pool, THROUGHPUT_BUDGET).await?;
    // A job created in the window is in the hot table still, or finished (in the window, after it was created).
    let counted = sqlx::query_as(
        "WITH bounds AS (SELECT date_trunc('minute', now()) - make_interval(mins => $1 - 1) AS start), \
         minutes AS (SELECT generate_series(start, date_trunc('minute', now()), interval '1 minute') AS at \
                     FROM bounds), \
         finished AS (SELECT date_trunc('minute', h.finished_at) AS at, \
                             count(*) FILTER (WHERE h.outcome = 'completed') AS completed, \
                             count(*) FILTER (WHERE h.outcome = 'dead') AS failed \
                      FROM herald_job_history h, bounds WHERE h.finished_at >= bounds.start GROUP BY 1), \
         created AS (SELECT date_trunc('minute', c.created_at) AS at, count(*) AS enqueued FROM ( \
                         SELECT h.created_at FROM herald_job_history h, bounds \
                         WHERE h.finished_at >= bounds.start AND h.created_at >= bounds.start \
                         UNION ALL \
                         SELECT j.created_at FROM herald_jobs j, bounds WHERE j.created_at >= bounds.start \
                     ) c GROUP BY 1) \
         SELECT m.at, coalesce(c.enqueued, 0) AS enqueued, coalesce(f.completed, 0) AS completed, \
                coalesce(f.failed, 0) AS failed \
         FROM minutes m LEFT JOIN finished f ON f.at = m.at LEFT JOIN created c ON c.at = m.at ORDER BY m.at",
    )
    .bind(minutes.clamp(1, 1440))
    .fetch_all(&mut *tx)
    .await;
    match counted {
        Ok(rows) => {
            tx.commit().await?;
            Ok(Some(rows))
        }
        Err(error) if crate::db::cancelled_for_time(&error) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

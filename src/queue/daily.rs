//! Per-day aggregates of finished jobs, for the clock's daily rollups (`clock::rollups` stores them; the queue
//! owns `herald_job_history`, so the counting happens here).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::QueueError;
use super::sql;

/// The jobs of one queue and kind that finished in a time range.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct JobDay {
    pub queue: String,
    pub kind: String,
    /// Jobs whose handler ran to an end: `completed + dead`.
    pub executed: i64,
    pub completed: i64,
    /// Dead-lettered.
    pub dead: i64,
    pub cancelled: i64,
    /// Jobs that needed more than one attempt.
    pub retried: i64,
    /// Attempts made by all these jobs.
    pub attempts: i64,
    /// Claim of the last attempt minus the time it was due, in milliseconds (`None`: no claimed job, or only
    /// rows finished before history recorded `run_at`).
    pub pickup_p50_ms: Option<f64>,
    pub pickup_p95_ms: Option<f64>,
    pub pickup_p99_ms: Option<f64>,
}

/// Jobs that finished in `[from, to)`, per queue and kind, ordered by both; at most `limit` groups (the caller
/// asks for one more than it accepts to tell a full answer from a cut one).
pub async fn job_days(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<JobDay>, QueueError> {
    Ok(sqlx::query_as(sql::JOB_DAYS)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

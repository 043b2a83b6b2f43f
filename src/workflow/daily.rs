//! Per-day aggregates of runs and steps, for the clock's daily rollups (`clock::rollups` stores them; the
//! workflow module owns `herald_runs`, `herald_run_steps` and the definitions that name each node's kind).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::{WorkflowError, sql};

/// One workflow's runs in a time range.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RunDay {
    pub workflow: String,
    /// Runs created in the range.
    pub started: i64,
    /// Runs that finished in the range, by final status.
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// `finished_at - created_at` of the runs that completed in the range, in milliseconds.
    pub duration_p50_ms: Option<f64>,
    pub duration_p95_ms: Option<f64>,
    pub duration_p99_ms: Option<f64>,
}

/// One workflow's steps of one node kind that finished in a time range.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StepDay {
    pub workflow: String,
    /// `trigger`, `action`, `condition`, `branch`, `transform`, `delay`, `wait_for_events` (`unknown` if the
    /// run's definition version does not name the node).
    pub node_kind: String,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Steps that needed more than one attempt.
    pub retried: i64,
    /// `finished_at - started_at`, in milliseconds.
    pub duration_p50_ms: Option<f64>,
    pub duration_p95_ms: Option<f64>,
    pub duration_p99_ms: Option<f64>,
}

/// Runs started or finished in `[from, to)`, per workflow, ordered by name; at most `limit` workflows.
pub async fn run_days(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<RunDay>, WorkflowError> {
    Ok(sqlx::query_as(sql::RUN_DAYS)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Steps finished in `[from, to)`, per workflow and node kind, ordered by both; at most `limit` groups.
pub async fn step_days(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<StepDay>, WorkflowError> {
    Ok(sqlx::query_as(sql::STEP_DAYS)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

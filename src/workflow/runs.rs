//! Runs: start them (the row, the steps done at start and the first node jobs in one transaction; concurrent
//! single starts share one, see `starts.rs`), read one with its timeline, list, cancel, retry from the failed node.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::starts::{RunStart, Started, insert_runs, prepare, runs_holding, trigger_context};
use super::{Engine, WorkflowError, sql};
use crate::audit::{self, Actor};

/// A run's status.
// Spelled as `herald_runs.status` stores it.
// sqlx declares this type by name (`text`): bind `as_str()`, since binding the enum itself costs a type lookup
// per connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 4] = [
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step's status: `pending`, then `completed` or `failed` (by way of `waiting` for delay and wait nodes), or
/// `cancelled` with its run.
// Spelled as `herald_run_steps.status` stores it.
// sqlx declares this type by name (`text`): bind `as_str()`, since binding the enum itself costs a type lookup
// per connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl StepStatus {
    pub const ALL: [StepStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run and its timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct RunView {
    pub id: i64,
    pub workflow: String,
    pub version: i32,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: RunStatus,
    /// 1, plus one per retry.
    pub epoch: i32,
    /// Steps of the current epoch not finished yet.
    pub pending: i32,
    /// Trigger data (`trigger`), node outputs (`nodes`) and transform results.
    pub context: Value,
    pub idempotency_key: Option<String>,
    pub failed_node: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Every node execution, in order (empty in listings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[sqlx(skip)]
    pub steps: Vec<StepView>,
}

/// One node execution.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct StepView {
    #[sqlx(rename = "node_id")]
    pub node: String,
    pub epoch: i32,
    /// `pending`, `running`, `waiting`, `completed`, `failed` or `cancelled`.
    pub status: StepStatus,
    /// What the node decided: `accepted`, `sent`, `then`, `else`, `case_N`, `default`, `set`, `elapsed`,
    /// `satisfied`, `timed_out`.
    pub outcome: Option<String>,
    pub output: Option<Value>,
    /// The last attempt's error.
    pub error: Option<String>,
    pub attempts: i32,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Filters for [`Engine::list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    /// Runs started for this recipient (their profile id).
    pub recipient: Option<String>,
    /// Runs with an id below this (the previous page's last id).
    pub before: Option<i64>,
    pub limit: i64,
}

impl Engine {
    /// Starts a run of the workflow's latest version. The trigger data is checked against the trigger's fields
    /// first, so bad input is refused before anything is stored. Concurrent starts share one transaction and one
    /// commit (see `starts.rs`).
    pub async fn start_run(
        &self,
        workflow: &str,
        data: Value,
        idempotency_key: Option<String>,
        request_id: Option<String>,
    ) -> Result<Started, WorkflowError> {
        self.start_run_for(workflow, data, idempotency_key, request_id, None)
            .await
    }

    /// [`start_run`](Self::start_run) for a recipient: the run's actions address them unless they say otherwise
    /// (see `docs/recipients.md`). The recipient need not exist yet: profiles are read when an action sends.
    pub async fn start_run_for(
        &self,
        workflow: &str,
        data: Value,
        idempotency_key: Option<String>,
        request_id: Option<String>,
        recipient: Option<String>,
    ) -> Result<Started, WorkflowError> {
        let start = RunStart {
            workflow: workflow.to_string(),
            data,
            key: idempotency_key,
            request_id,
            recipient,
            trace_parent: crate::telemetry::current_traceparent(),
        };
        self.start_batches().start_run(start).await
    }

    /// Starts a run of the workflow's latest version inside the caller's transaction, under an idempotency key:
    /// for the clock, whose tick and run commit together. A taken key answers with the run that holds it.
    pub async fn start_run_in(
        &self,
        conn: &mut sqlx::PgConnection,
        workflow: &str,
        data: Value,
        idempotency_key: String,
    ) -> Result<Started, WorkflowError> {
        let definition = self.catalog.latest(workflow).await?;
        let context = trigger_context(&definition, data, "data")?;
        let key = Some(idempotency_key);
        let run = prepare(&definition, context, key.clone(), None);
        let (ids, started) = insert_runs(conn, &self.jobs, &definition, &[&run]).await?;
        // Counted now: the commit is the caller's (a clock tick that rolls back and fires again counts twice).
        started.count();
        if let Some(run) = ids.first() {
            return Ok(Started::Created {
                id: run.id,
                version: definition.version,
            });
        }
        let key = key.as_deref().unwrap_or_default();
        let holders = runs_holding(conn, &definition.name, &[key]).await?;
        let (id, version) = holders.get(key).copied().ok_or_else(|| {
            WorkflowError::Io(format!(
                "the run holding idempotency key `{key}` was not found"
            ))
        })?;
        Ok(Started::Existing { id, version })
    }

    /// Starts many runs of the latest version in one transaction (no idempotency keys): for bulk triggers and
    /// the benchmark. Returns the run ids.
    pub async fn start_runs(
        &self,
        workflow: &str,
        data: Vec<Value>,
    ) -> Result<Vec<i64>, WorkflowError> {
        let definition = self.catalog.latest(workflow).await?;
        let runs = data
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let context = trigger_context(&definition, item, &format!("[{index}].data"))?;
                Ok(prepare(&definition, context, None, None))
            })
            .collect::<Result<Vec<_>, WorkflowError>>()?;
        let mut tx = self.pool.begin().await?;
        let runs = runs.iter().collect::<Vec<_>>();
        let (runs, started) = insert_runs(&mut tx, &self.jobs, &definition, &runs).await?;
        tx.commit().await?;
        started.count();
        Ok(runs.into_iter().map(|run| run.id).collect())
    }

    /// Starts runs of the workflow's latest version inside the caller's transaction, one per `(data, key, trace
    /// to continue)`, for the Kafka bridge. Each item gets its own answer: `Ok(true)` started, `Ok(false)` its key was taken (a
    /// duplicate), `Err` its data does not fit the trigger. The outer error (an unknown workflow, the database)
    /// concerns every item.
    pub async fn start_runs_in(
        &self,
        conn: &mut sqlx::PgConnection,
        workflow: &str,
        items: Vec<(Value, String, Option<String>)>,
    ) -> Result<Vec<Result<bool, WorkflowError>>, WorkflowError> {
        let definition = self.catalog.latest(workflow).await?;
        let mut answers = Vec::with_capacity(items.len());
        let (mut runs, mut positions) = (Vec::new(), Vec::new());
        for (position, (data, key, trace)) in items.into_iter().enumerate() {
            match trigger_context(&definition, data, "data") {
                Ok(context) => {
                    let mut run = prepare(&definition, context, Some(key), None);
                    run.trace_parent = trace;
                    runs.push(run);
                    positions.push(position);
                    answers.push(Ok(false));
                }
                Err(error) => answers.push(Err(error)),
            }
        }
        if runs.is_empty() {
            return Ok(answers);
        }
        let refs = runs.iter().collect::<Vec<_>>();
        let (inserted, started) = insert_runs(conn, &self.jobs, &definition, &refs).await?;
        // Counted now: the commit is the caller's (a bridge batch that fails and is stored again counts twice).
        started.count();
        let started: std::collections::HashSet<String> =
            inserted.into_iter().filter_map(|run| run.key).collect();
        for (position, run) in positions.into_iter().zip(&runs) {
            answers[position] = Ok(run.key.as_ref().is_some_and(|k| started.contains(k)));
        }
        Ok(answers)
    }

    /// A run with its timeline.
    pub async fn get_run(&self, id: i64) -> Result<RunView, WorkflowError> {
        let mut run: RunView = sqlx::query_as(sql::GET_RUN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("run {id}")))?;
        run.steps = sqlx::query_as(sql::GET_STEPS)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(run)
    }

    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunView>, WorkflowError> {
        Ok(sqlx::query_as(sql::LIST_RUNS)
            .bind(&filter.workflow)
            .bind(filter.status.map(RunStatus::as_str))
            .bind(filter.before)
            .bind(filter.limit.clamp(1, 1000))
            .bind(&filter.recipient)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Cancels a running run: its unfinished steps are cancelled and their jobs will do nothing; the timers its
    /// parked steps hold (delays' resume jobs, waits' timeouts) leave the queue in the same transaction.
    pub async fn cancel_run(&self, actor: &Actor, id: i64) -> Result<RunView, WorkflowError> {
        let mut tx = self.pool.begin().await?;
        let cancelled: Option<(i64, Vec<i64>)> = sqlx::query_as(sql::CANCEL_RUN)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((_, timers)) = &cancelled {
            self.jobs.cancel_timers(&mut tx, timers).await?;
            let target = format!("run:{id}");
            audit::record(&mut *tx, actor, "run.cancel", &target, json!({})).await?;
        }
        tx.commit().await?;
        let run = self.get_run(id).await?;
        match cancelled {
            Some(_) => {
                super::metrics::run_finished(&run.workflow, "cancelled");
                Ok(run)
            }
            None => Err(WorkflowError::Conflict(format!(
                "run {id} is {}, not running",
                run.status
            ))),
        }
    }

    /// Retries a failed run from the node that failed, in a new epoch (earlier steps stay in the timeline).
    pub async fn retry_run(&self, actor: &Actor, id: i64) -> Result<RunView, WorkflowError> {
        let mut tx = self.pool.begin().await?;
        let reopened: Option<(i64, i32, String)> = sqlx::query_as(sql::RETRY_RUN)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((_, epoch, node)) = reopened else {
            tx.rollback().await?;
            let run = self.get_run(id).await?;
            return Err(WorkflowError::Conflict(format!(
                "run {id} is {}, not failed",
                run.status
            )));
        };
        let details = json!({ "from_node": node, "epoch": epoch });
        self.jobs
            .enqueue_run_phase(
                &mut tx,
                [(id, epoch, node, crate::telemetry::current_traceparent())],
            )
            .await?;
        audit::record(&mut *tx, actor, "run.retry", &format!("run:{id}"), details).await?;
        tx.commit().await?;
        self.get_run(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migration's text with whitespace runs folded, to find a CHECK constraint that spans lines.
    fn migration() -> String {
        let text = include_str!("../../migrations/0003_workflows.sql");
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn check(column: &str, values: impl Iterator<Item = &'static str>) -> String {
        let quoted: Vec<String> = values.map(|v| format!("'{v}'")).collect();
        format!("CHECK ({column} IN ({}))", quoted.join(", "))
    }

    #[test]
    fn run_statuses_are_spelled_as_the_runs_table_stores_them() {
        for status in RunStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
            assert_eq!(status.to_string(), status.as_str());
            assert_eq!(serde_json::from_value::<RunStatus>(json).unwrap(), status);
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            let mut sent = sqlx::postgres::PgArgumentBuffer::default();
            let _ = sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&status, &mut sent);
            assert_eq!(&sent[..], status.as_str().as_bytes());
        }
        let check = check("status", RunStatus::ALL.into_iter().map(RunStatus::as_str));
        assert!(migration().contains(&check), "{check} not in the migration");
    }

    #[test]
    fn step_statuses_are_spelled_as_the_steps_table_stores_them() {
        for status in StepStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
            assert_eq!(status.to_string(), status.as_str());
            assert_eq!(serde_json::from_value::<StepStatus>(json).unwrap(), status);
            assert_eq!(StepStatus::parse(status.as_str()), Some(status));
            let mut sent = sqlx::postgres::PgArgumentBuffer::default();
            let _ = sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&status, &mut sent);
            assert_eq!(&sent[..], status.as_str().as_bytes());
        }
        let check = check(
            "status",
            StepStatus::ALL.into_iter().map(StepStatus::as_str),
        );
        assert!(migration().contains(&check), "{check} not in the migration");
    }
}

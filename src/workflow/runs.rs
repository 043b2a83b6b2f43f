//! Runs: start one (its row, its trigger step and the trigger's node job in one transaction), read it with its
//! timeline, list, cancel, retry from the failed node.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::definition::Workflow;
use super::definition::extract_trigger;
use super::{Engine, WorkflowError, sql};

/// The outcome of starting a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new run, on this version.
    Created { id: i64, version: i32 },
    /// The idempotency key already started this run.
    Existing { id: i64, version: i32 },
}

/// A run and its timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: i64,
    pub workflow: String,
    pub version: i32,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
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
    pub steps: Vec<StepView>,
}

/// One node execution.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub node: String,
    pub epoch: i32,
    /// `pending`, `running`, `waiting`, `completed`, `failed` or `cancelled`.
    pub status: String,
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
    pub status: Option<String>,
    /// Runs with an id below this (the previous page's last id).
    pub before: Option<i64>,
    pub limit: i64,
}

const RUN_STATUSES: [&str; 4] = ["running", "completed", "failed", "cancelled"];

impl Engine {
    /// Starts a run of the workflow's latest version. The trigger data is checked against the trigger's fields
    /// first, so bad input is refused before anything is stored.
    pub async fn start_run(
        &self,
        workflow: &str,
        data: Value,
        idempotency_key: Option<String>,
        request_id: Option<String>,
    ) -> Result<Started, WorkflowError> {
        let definition = self.catalog.latest(workflow).await?;
        let context = trigger_context(&definition, data, "data")?;
        let mut tx = self.pool.begin().await?;
        let key = idempotency_key.clone();
        let ids = self
            .insert_runs(
                &mut tx,
                &definition,
                vec![context],
                vec![key],
                vec![request_id],
            )
            .await?;
        let Some(&(id, _)) = ids.first() else {
            // The key is taken: that run is the answer (its transaction has committed: ours waited for it).
            tx.rollback().await?;
            let row = sqlx::query(sql::FIND_RUN_BY_KEY)
                .bind(&definition.name)
                .bind(&idempotency_key)
                .fetch_one(&self.pool)
                .await?;
            return Ok(Started::Existing {
                id: row.try_get("id")?,
                version: row.try_get("version")?,
            });
        };
        tx.commit().await?;
        Ok(Started::Created {
            id,
            version: definition.version,
        })
    }

    /// Starts many runs of the latest version in one transaction (no idempotency keys): for bulk triggers and
    /// the benchmark. Returns the run ids.
    pub async fn start_runs(
        &self,
        workflow: &str,
        data: Vec<Value>,
    ) -> Result<Vec<i64>, WorkflowError> {
        let definition = self.catalog.latest(workflow).await?;
        let contexts = data
            .into_iter()
            .enumerate()
            .map(|(index, item)| trigger_context(&definition, item, &format!("[{index}].data")))
            .collect::<Result<Vec<_>, _>>()?;
        let count = contexts.len();
        let mut tx = self.pool.begin().await?;
        let runs = self
            .insert_runs(
                &mut tx,
                &definition,
                contexts,
                vec![None; count],
                vec![None; count],
            )
            .await?;
        tx.commit().await?;
        Ok(runs.into_iter().map(|(id, _)| id).collect())
    }

    /// Starts runs of the workflow's latest version inside the caller's transaction, one per `(data, key)`, for
    /// the Kafka bridge. Each item gets its own answer: `Ok(true)` started, `Ok(false)` its key was taken (a
    /// duplicate), `Err` its data does not fit the trigger. The outer error (an unknown workflow, the database)
    /// concerns every item.
    pub async fn start_runs_in(
        &self,
        conn: &mut sqlx::PgConnection,
        workflow: &str,
        items: Vec<(Value, String)>,
    ) -> Result<Vec<Result<bool, WorkflowError>>, WorkflowError> {
        let definition = self.catalog.latest(workflow).await?;
        let mut answers = Vec::with_capacity(items.len());
        let (mut contexts, mut keys, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for (position, (data, key)) in items.into_iter().enumerate() {
            match trigger_context(&definition, data, "data") {
                Ok(context) => {
                    contexts.push(context);
                    keys.push(Some(key));
                    positions.push(position);
                    answers.push(Ok(false));
                }
                Err(error) => answers.push(Err(error)),
            }
        }
        if contexts.is_empty() {
            return Ok(answers);
        }
        let count = contexts.len();
        let inserted = self
            .insert_runs(conn, &definition, contexts, keys.clone(), vec![None; count])
            .await?;
        let started: std::collections::HashSet<String> =
            inserted.into_iter().filter_map(|(_, key)| key).collect();
        for (position, key) in positions.into_iter().zip(keys) {
            answers[position] = Ok(key.is_some_and(|k| started.contains(&k)));
        }
        Ok(answers)
    }

    /// Inserts runs with their pending trigger steps and enqueues the trigger jobs, in the caller's
    /// transaction. A run whose idempotency key is taken is skipped; the runs inserted are returned as
    /// `(id, idempotency key)`.
    async fn insert_runs(
        &self,
        conn: &mut sqlx::PgConnection,
        definition: &Workflow,
        contexts: Vec<Value>,
        keys: Vec<Option<String>>,
        request_ids: Vec<Option<String>>,
    ) -> Result<Vec<(i64, Option<String>)>, WorkflowError> {
        let rows = sqlx::query(sql::START_RUNS)
            .bind(&definition.name)
            .bind(definition.version)
            .bind(contexts)
            .bind(keys)
            .bind(request_ids)
            .bind(&definition.trigger)
            .fetch_all(&mut *conn)
            .await?;
        let runs: Vec<(i64, Option<String>)> = rows
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("idempotency_key")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let triggers = runs
            .iter()
            .map(|&(id, _)| (id, 1, definition.trigger.clone()));
        self.jobs.enqueue_run_phase(conn, triggers).await?;
        Ok(runs)
    }

    /// A run with its timeline.
    pub async fn get_run(&self, id: i64) -> Result<RunView, WorkflowError> {
        let row = sqlx::query(sql::GET_RUN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("run {id}")))?;
        let mut run = run_from_row(&row)?;
        let steps = sqlx::query(sql::GET_STEPS)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        run.steps = steps.iter().map(step_from_row).collect::<Result<_, _>>()?;
        Ok(run)
    }

    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunView>, WorkflowError> {
        if let Some(status) = &filter.status
            && !RUN_STATUSES.contains(&status.as_str())
        {
            let message = format!("must be one of {}", RUN_STATUSES.join(", "));
            return Err(WorkflowError::InvalidInput(vec![(
                "status".into(),
                message,
            )]));
        }
        let rows = sqlx::query(sql::LIST_RUNS)
            .bind(&filter.workflow)
            .bind(&filter.status)
            .bind(filter.before)
            .bind(filter.limit.clamp(1, 1000))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    /// Cancels a running run: its pending steps are cancelled and their jobs will do nothing.
    pub async fn cancel_run(&self, id: i64) -> Result<RunView, WorkflowError> {
        let cancelled = sqlx::query(sql::CANCEL_RUN)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let run = self.get_run(id).await?;
        match cancelled {
            Some(_) => Ok(run),
            None => Err(WorkflowError::Conflict(format!(
                "run {id} is {}, not running",
                run.status
            ))),
        }
    }

    /// Retries a failed run from the node that failed, in a new epoch (earlier steps stay in the timeline).
    pub async fn retry_run(&self, id: i64) -> Result<RunView, WorkflowError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sql::RETRY_RUN)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            let run = self.get_run(id).await?;
            return Err(WorkflowError::Conflict(format!(
                "run {id} is {}, not failed",
                run.status
            )));
        };
        let epoch: i32 = row.try_get("epoch")?;
        let node: String = row.try_get("failed_node")?;
        self.jobs
            .enqueue_run_phase(&mut tx, [(id, epoch, node)])
            .await?;
        tx.commit().await?;
        self.get_run(id).await
    }
}

/// Checks trigger data against the trigger's fields (problems named under `prefix`) and builds a new run's
/// context. Bad input is refused before anything is stored.
fn trigger_context(
    definition: &Workflow,
    data: Value,
    prefix: &str,
) -> Result<Value, WorkflowError> {
    extract_trigger(definition.trigger_fields(), &data).map_err(|problems| {
        let fields = problems
            .into_iter()
            .map(|(f, m)| (format!("{prefix}.{f}"), m));
        WorkflowError::InvalidInput(fields.collect())
    })?;
    Ok(json!({ "trigger": data, "nodes": {} }))
}

fn run_from_row(row: &PgRow) -> Result<RunView, sqlx::Error> {
    Ok(RunView {
        id: row.try_get("id")?,
        workflow: row.try_get("workflow")?,
        version: row.try_get("version")?,
        status: row.try_get("status")?,
        epoch: row.try_get("epoch")?,
        pending: row.try_get("pending")?,
        context: row.try_get("context")?,
        idempotency_key: row.try_get("idempotency_key")?,
        failed_node: row.try_get("failed_node")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        steps: Vec::new(),
    })
}

fn step_from_row(row: &PgRow) -> Result<StepView, sqlx::Error> {
    Ok(StepView {
        node: row.try_get("node_id")?,
        epoch: row.try_get("epoch")?,
        status: row.try_get("status")?,
        outcome: row.try_get("outcome")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        attempts: row.try_get("attempts")?,
        enqueued_at: row.try_get("enqueued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

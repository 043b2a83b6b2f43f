//! Node jobs read and write their steps in batches.
//!
//! Done one node at a time, a node job costs a read of its step and run, then a transaction of four round trips
//! to finish it, and the benchmark showed the database's CPU, not the disk, was the limit. So node handlers hand
//! both to per-process [`Coalescer`]s: every step read that arrives while a batch is out goes in the next
//! `BEGIN_STEPS` statement, and every finished step in the next `FINISH_STEPS` statement, one enqueue and one
//! commit: the group commit the queue's completer does for acks. Each handler waits for its own answer, so "the
//! node finished" still means "its effect is committed".
//!
//! A write batch the database refuses (a deadlock with another process's batch, say) is retried one step at a
//! time, so one step's problem never fails another's.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{FromRow, PgPool, Row};

use super::inline::InlineStep;
use super::metrics::RunsEnded;
use super::runs::StepStatus;
use super::{NodeJob, NodeJobs, WorkflowError, sql};
use crate::channels::deliveries::{self, Finished};
use crate::coalesce::{Coalescer, whole_or_each};
use crate::db;

/// Most steps one statement reads or finishes.
const MAX_BATCH: usize = 512;

/// The run as a node job sees it.
#[derive(sqlx::FromRow)]
pub(super) struct RunState {
    pub workflow: String,
    pub version: i32,
    pub context: Value,
    pub created_at: DateTime<Utc>,
}

/// A node's outcome, ready to record.
pub(super) struct FinishedStep {
    pub job: NodeJob,
    /// The status the step must be in: `pending`, or `waiting` for a resumed node.
    pub from: StepStatus,
    pub outcome: String,
    pub output: Value,
    /// Top-level context keys to set (transforms; the trigger's extracted data).
    pub patch: Map<String, Value>,
    /// The pure nodes after it, evaluated already (see `inline.rs`): recorded completed with it.
    pub inline: Vec<InlineStep>,
    pub next: Vec<String>,
    /// An action's send results (one per address: a recipient's devices), recorded on their deliveries in the
    /// same transaction.
    pub deliveries: Vec<Finished>,
    /// The trace the next nodes' jobs continue: the finishing job's (captured in its span; the batch runs in a
    /// task of its own).
    pub trace_parent: Option<String>,
}

type Loaded = Result<Option<RunState>, Arc<WorkflowError>>;
type Committed = Result<(), Arc<WorkflowError>>;

/// The batching handles of one process.
pub(super) struct StepBatches {
    loads: Coalescer<NodeJob, Loaded>,
    finishes: Coalescer<FinishedStep, Committed>,
}

impl StepBatches {
    /// Starts the background tasks (inside the runtime); they stop when this is dropped.
    pub(super) fn start(pool: PgPool, jobs: NodeJobs) -> Self {
        let reader = pool.clone();
        let loads = Coalescer::start(MAX_BATCH, 2, move |keys: Vec<NodeJob>| {
            let pool = reader.clone();
            async move { load(&pool, &keys).await }
        });
        let finishes = Coalescer::start(MAX_BATCH, 1, move |steps: Vec<FinishedStep>| {
            let (pool, jobs) = (pool.clone(), jobs.clone());
            async move { finish(&pool, &jobs, steps).await }
        });
        Self { loads, finishes }
    }

    /// The job's run, if the step is in the state its phase expects and the run is still running in its epoch.
    /// `None` means there is nothing to do: an earlier attempt finished the step, or the run ended.
    pub(super) async fn begin(&self, job: &NodeJob) -> Loaded {
        self.loads.call(job.clone()).await.map_err(stopped)?
    }

    /// Records a finished step (and enqueues its next nodes); returns once that is committed.
    pub(super) async fn finish(&self, step: FinishedStep) -> Committed {
        self.finishes.call(step).await.map_err(stopped)?
    }
}

fn stopped(error: crate::coalesce::Stopped) -> Arc<WorkflowError> {
    Arc::new(WorkflowError::Io(error.to_string()))
}

async fn load(pool: &PgPool, keys: &[NodeJob]) -> Vec<Loaded> {
    let rows = sqlx::query(sql::BEGIN_STEPS)
        .bind(keys.iter().map(|k| k.run).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.epoch).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.node.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.phase.as_str()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            let error = Arc::new(WorkflowError::from(error));
            return keys.iter().map(|_| Err(Arc::clone(&error))).collect();
        }
    };
    let mut found: Vec<Loaded> = keys.iter().map(|_| Ok(None)).collect();
    for row in rows {
        let state = RunState::from_row(&row);
        let position = row
            .try_get::<i64, _>("position")
            .ok()
            .and_then(|p| usize::try_from(p - 1).ok());
        if let Some(slot) = position.and_then(|p| found.get_mut(p)) {
            *slot = state.map(Some).map_err(|e| Arc::new(e.into()));
        }
    }
    found
}

async fn finish(pool: &PgPool, jobs: &NodeJobs, steps: Vec<FinishedStep>) -> Vec<Committed> {
    let committed = whole_or_each("steps", &steps, |batch| async move {
        commit(pool, jobs, batch)
            .await
            .map(|()| vec![(); batch.len()])
    })
    .await;
    // A step that could not be recorded is retried by its job; the send it made is still worth recording, so the
    // retry finds the delivery `sent` (not `sending`, which would make it `unknown`).
    for (step, result) in steps.iter().zip(&committed) {
        if result.is_ok() || step.deliveries.is_empty() {
            continue;
        }
        let deliveries: Vec<&Finished> = step.deliveries.iter().collect();
        if let Err(error) = record_sends(pool, &deliveries).await {
            tracing::warn!(%error, run = step.job.run, node = %step.job.node, "could not record a send's result");
        }
    }
    committed
}

/// Records one step's send results alone, synchronously (this pool's commits are relaxed).
async fn record_sends(pool: &PgPool, sends: &[&Finished]) -> Result<(), sqlx::Error> {
    let mut tx = db::begin_bounded(pool, &[SYNCHRONOUS]).await?;
    deliveries::finish_in(&mut tx, sends).await?;
    tx.commit().await
}

/// Sends' results commit as the delivery layer's own do: synchronously, though this pool's commits are relaxed.
const SYNCHRONOUS: &str = "synchronous_commit TO on";

async fn commit(
    pool: &PgPool,
    jobs: &NodeJobs,
    steps: &[FinishedStep],
) -> Result<(), WorkflowError> {
    let deliveries: Vec<&Finished> = steps.iter().flat_map(|s| &s.deliveries).collect();
    let settings: &[&str] = if deliveries.is_empty() {
        &[]
    } else {
        &[SYNCHRONOUS]
    };
    let mut tx = db::begin_bounded(pool, settings).await?;
    deliveries::finish_in(&mut tx, &deliveries).await?;
    let completed = finish_steps(&mut tx, jobs, steps).await?;
    tx.commit().await?;
    completed.count();
    Ok(())
}

/// A row of `FINISH_STEPS`: a next node to enqueue (run, epoch, node), or (epoch and node NULL) a run it
/// completed, with its workflow.
type FinishRow = (i64, Option<i32>, Option<String>, Option<String>);

/// Finishes `steps` inside the caller's transaction: one statement for all of them, then one enqueue for the
/// next nodes that statement inserted (a node two edges reach is inserted, and enqueued, once).
pub(super) async fn finish_steps(
    conn: &mut sqlx::PgConnection,
    jobs: &NodeJobs,
    steps: &[FinishedStep],
) -> Result<RunsEnded, WorkflowError> {
    let rows: Vec<FinishRow> = sqlx::query_as(sql::FINISH_STEPS)
        .bind(steps.iter().map(|s| s.job.run).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.job.epoch).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| s.job.node.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|s| s.from.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.outcome.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| &s.output).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| Value::Object(s.patch.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            steps
                .iter()
                .map(|s| serde_json::json!(s.next))
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|s| s.job.attempt).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.job.started_at).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| serde_json::json!(s.inline))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let mut next = Vec::with_capacity(rows.len());
    let mut completed = Vec::new();
    // Each next node continues the trace of the step that led to it (one step per run in a batch, in practice).
    // (With traces off no step has one, and the map stays empty.)
    let traces: std::collections::HashMap<i64, &str> = steps
        .iter()
        .filter_map(|s| Some((s.job.run, s.trace_parent.as_deref()?)))
        .collect();
    let trace_of = |run: i64| traces.get(&run).map(|t| t.to_string());
    for (run, epoch, node, workflow) in rows {
        match (epoch, node, workflow) {
            (Some(epoch), Some(node), _) => next.push((run, epoch, node, trace_of(run))),
            (_, _, Some(workflow)) => completed.push(workflow),
            _ => {}
        }
    }
    jobs.enqueue_run_phase(conn, next).await?;
    Ok(RunsEnded::new("completed", completed))
}

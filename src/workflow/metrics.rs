//! The workflow engine's Prometheus metrics: runs started and finished by workflow, node executions by node kind
//! and result, and the runs parked on a wait-for-events node (counted once per fleet).
//!
//! Counted where the engine records each change, after its commit where the code has one to wait for; a node's
//! execution is counted whether it ran as a job or inline (a condition evaluated with the step before it, see
//! `inline.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGauge, Opts};
use sqlx::PgPool;

use crate::metrics::{BoundedLabels, counter_vec};

/// Most workflow names used as label values; the rest are counted under `other` (anyone with a key can store
/// workflows, and each name would be a series of its own).
const MAX_WORKFLOW_LABELS: usize = 100;

static WORKFLOW_LABELS: LazyLock<BoundedLabels> =
    LazyLock::new(|| BoundedLabels::new(MAX_WORKFLOW_LABELS));

pub static RUNS_STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "workflow_runs_started_total",
        "Workflow runs started, by workflow",
        &["workflow"],
    )
});

pub static RUNS_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "workflow_runs_finished_total",
        "Workflow runs finished, by workflow and status (completed, failed, cancelled)",
        &["workflow", "status"],
    )
});

pub static NODE_EXECUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "workflow_node_executions_total",
        "Workflow node executions, by node kind and result (completed, parked, recorded, retried, snoozed, failed)",
        &["kind", "result"],
    )
});

pub static WAITING_RUNS: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::with_opts(Opts::new(
        "workflow_waiting_runs",
        "Wait-for-events nodes waiting now, fleet-wide (exported by the queue-stats leader only; take the max)",
    ))
    .unwrap_or_else(|_| unreachable!("the metric's name is valid"))
});

/// Every metric above, for the process's registry.
pub fn all() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(RUNS_STARTED.clone()),
        Box::new(RUNS_FINISHED.clone()),
        Box::new(NODE_EXECUTIONS.clone()),
        Box::new(WAITING_RUNS.clone()),
    ]
}

pub(super) fn runs_started(workflow: &str, count: u64) {
    RUNS_STARTED
        .with_label_values(&[WORKFLOW_LABELS.label(workflow)])
        .inc_by(count);
}

pub(super) fn run_finished(workflow: &str, status: &str) {
    RUNS_FINISHED
        .with_label_values(&[WORKFLOW_LABELS.label(workflow), status])
        .inc();
}

/// Runs a statement ended (completed, failed), to count once the caller's transaction commits: a transaction
/// that rolls back (and is retried) must not count them twice.
#[must_use = "count the ended runs after the commit"]
pub(super) struct RunsEnded {
    status: &'static str,
    workflows: Vec<String>,
}

impl RunsEnded {
    pub(super) fn new(status: &'static str, workflows: Vec<String>) -> Self {
        Self { status, workflows }
    }

    pub(super) fn none() -> Self {
        Self::new("completed", Vec::new())
    }

    pub(super) fn count(self) {
        for workflow in &self.workflows {
            run_finished(workflow, self.status);
        }
    }
}

pub(super) fn node_executed(kind: &str, result: &str) {
    NODE_EXECUTIONS.with_label_values(&[kind, result]).inc();
}

/// Counting stops here: past it the gauge reads this value (a bounded index scan, whatever the backlog).
const MAX_WAITING_COUNTED: i64 = 1_000_000;

/// The waiting runs' gauge, refreshed by the queue-stats leader (`queue::stats::FleetGauge`).
pub struct WaitingRuns;

impl crate::queue::stats::FleetGauge for WaitingRuns {
    fn refresh<'a>(&'a self, pool: &'a PgPool) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let counted = async {
                let mut tx = crate::db::begin_bounded(pool, &[]).await?;
                let count: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT 1 FROM herald_waits WHERE status = 'waiting' LIMIT $1) w",
                )
                .bind(MAX_WAITING_COUNTED)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok::<i64, sqlx::Error>(count)
            };
            match counted.await {
                Ok(count) => WAITING_RUNS.set(count),
                Err(error) => tracing::warn!(%error, "counting waiting runs failed"),
            }
        })
    }

    fn clear(&self) {
        WAITING_RUNS.set(0);
    }
}

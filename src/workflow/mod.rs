//! Notification workflows: versioned definitions whose nodes run as queue jobs.
//!
//! * [`definition`]: the YAML/JSON format, validation and compilation (see `docs/workflows.md`);
//! * [`expr`]: the expression and template language (minijinja);
//! * [`catalog`]: stored versions, synced from `jobs/`, compiled once per process;
//! * `runs.rs`: starting, reading, cancelling and retrying runs; `starts.rs` inserts new runs and batches
//!   concurrent single starts into one transaction;
//! * `inline.rs`: pure nodes (condition, branch, transform) evaluated where the run already is, not as jobs;
//! * `engine.rs`: the node job handler: executes one node and, in one transaction, records its step and
//!   enqueues the next node jobs;
//! * `send.rs`: action nodes: addressing (raw addresses, recipients' profiles), preferences, quiet hours, one
//!   delivery per address;
//! * [`fanout`]: topic triggers, one run per member, page by page; [`erase`]: a deleted recipient's history
//!   scrubbed in batches;
//! * `events.rs`: events and wait-for-events nodes;
//! * `throttle.rs` and `digest.rs`: throttle nodes (at most N per key per window) and digest nodes (one
//!   continuation per key per window, with the batch);
//! * [`daily`]: per-day aggregates of runs and steps, for the clock's rollups.
//!
//! A run is a row in `herald_runs`; each node execution is a step row plus a queue job of kind
//! [`NodeJob::KIND`](crate::queue::Job::KIND). Guarantees: a node's effect on its run (step status, output,
//! context, next steps) is recorded exactly once even if its worker dies and the job runs again; messages are
//! sent at least once with a stable idempotency key.

pub mod catalog;
pub mod daily;
pub mod definition;
mod digest;
mod engine;
pub mod erase;
mod events;
pub mod expr;
pub mod fanout;
mod inline;
pub mod metrics;
pub mod retention;
mod runs;
mod send;
mod settings;
mod sql;
mod starts;
mod steps;
mod throttle;

use std::sync::Arc;

use tracing::Instrument;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

pub use catalog::{Catalog, Saved, WorkflowSummary};
pub use definition::{DefinitionError, Workflow, valid_name};
pub use events::{EventReceipt, MAX_EVENT_KEY_CHARS, MAX_EVENT_NAME_CHARS, NewEvent};
pub use runs::{RunFilter, RunStatus, RunView, StepStatus, StepView};
pub use starts::Started;

use crate::channels::Channels;
use crate::channels::deliveries::DeliveryBatches;
use crate::queue::{
    self, HandlerRegistry, Job, JobDefaults, JobKind, NewJob, QueueError, QueueName,
};
use crate::recipients::RecipientsSettings;
use crate::recipients::unsubscribe::Signer;
pub use settings::WorkflowSettings;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("invalid workflow definition: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<DefinitionError>),
    #[error(
        "version {version} of workflow `{name}` is already stored with different content; bump `version`"
    )]
    VersionConflict { name: String, version: i32 },
    #[error("invalid input: {}", .0.iter().map(|(f, m)| format!("{f} {m}")).collect::<Vec<_>>().join("; "))]
    InvalidInput(Vec<(String, String)>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Provider(#[from] crate::channels::ProviderConfigError),
    /// One error answered to every caller of a batch (run starts, events).
    #[error(transparent)]
    Shared(Arc<WorkflowError>),
}

impl WorkflowError {
    /// A coalesced call's answer as this caller's own: its error unwrapped when no other caller shares it.
    fn from_batch<T>(
        answer: Result<Result<T, Arc<WorkflowError>>, crate::coalesce::Stopped>,
    ) -> Result<T, WorkflowError> {
        let answer = answer.map_err(|stopped| WorkflowError::Io(stopped.to_string()))?;
        answer.map_err(|shared| Arc::try_unwrap(shared).unwrap_or_else(WorkflowError::Shared))
    }
}

/// The job that executes one node of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeJob {
    pub run: i64,
    pub epoch: i32,
    pub node: String,
    #[serde(default)]
    pub phase: Phase,
    /// This attempt's number and start, set by the handler (not part of the payload): recorded on the step.
    #[serde(skip)]
    pub attempt: i32,
    #[serde(skip)]
    pub started_at: Option<DateTime<Utc>>,
    /// This attempt's queue job (not part of the payload): a resumed step it is the timer of may park again.
    #[serde(skip)]
    pub job_id: Option<i64>,
}

impl NodeJob {
    pub fn new(run: i64, epoch: i32, node: String, phase: Phase) -> Self {
        Self {
            run,
            epoch,
            node,
            phase,
            attempt: 0,
            started_at: None,
            job_id: None,
        }
    }
}

impl Job for NodeJob {
    const KIND: &'static str = "herald.workflow.node";
}

/// Which part of a node a job runs. Delay and wait-for-events nodes run in two parts: `run` parks the step,
/// then `resume` (the delay elapsed, the events arrived) or `timeout` finishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Run,
    Resume,
    Timeout,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Run => "run",
            Phase::Resume => "resume",
            Phase::Timeout => "timeout",
        }
    }
}

/// Everything the workflow code needs: the database, the compiled definitions, the channels.
pub struct Engine {
    /// Synchronous commits: starting runs, events, cancel, retry (a caller was told they happened).
    pool: PgPool,
    /// Relaxed commits for node jobs' own steps (see [`crate::db::relaxed_commit_pool`]).
    steps_pool: PgPool,
    pub catalog: Catalog,
    /// The template catalogue actions with `template:` render from.
    pub templates: crate::templates::Catalogue,
    channels: Channels,
    settings: WorkflowSettings,
    jobs: NodeJobs,
    /// Started on first use, inside the runtime (see `steps.rs`).
    step_batches: std::sync::OnceLock<steps::StepBatches>,
    /// The same for single run starts (see `starts.rs`; on `pool`: a started run is durable).
    start_batches: std::sync::OnceLock<starts::StartBatches>,
    /// The same for events (see `events.rs`; on `pool`: a stored event is durable).
    event_batches: std::sync::OnceLock<events::EventBatches>,
    /// The same for action nodes' delivery records (on `pool`: they must be durable before a provider call).
    delivery_batches: std::sync::OnceLock<DeliveryBatches>,
    /// How unsubscribe links are made (`[recipients]`), and their signer, loaded on the first email to a
    /// recipient (see `send.rs`).
    recipients: RecipientsSettings,
    unsubscribe: tokio::sync::OnceCell<Signer>,
}

impl Engine {
    /// `steps_pool` commits without waiting for the WAL flush (see [`crate::db::relaxed_commit_pool`]);
    /// `defaults` are the queue's job defaults, for the node jobs.
    pub fn new(
        pool: PgPool,
        steps_pool: PgPool,
        settings: &WorkflowSettings,
        defaults: JobDefaults,
        channels: Channels,
    ) -> Result<Self, WorkflowError> {
        Ok(Self {
            catalog: Catalog::new(pool.clone()),
            templates: crate::templates::Catalogue::new(pool.clone()),
            steps_pool,
            pool,
            channels,
            settings: settings.clone(),
            jobs: NodeJobs {
                queue: settings.queue.clone(),
                kind: JobKind::parse(NodeJob::KIND).map_err(QueueError::from)?,
                max_attempts: settings.node_max_attempts,
                defaults,
            },
            step_batches: std::sync::OnceLock::new(),
            start_batches: std::sync::OnceLock::new(),
            event_batches: std::sync::OnceLock::new(),
            delivery_batches: std::sync::OnceLock::new(),
            recipients: RecipientsSettings::default(),
            unsubscribe: tokio::sync::OnceCell::new(),
        })
    }

    /// The `[recipients]` settings unsubscribe links are made with (the defaults otherwise).
    pub fn with_recipients(mut self, settings: &RecipientsSettings) -> Self {
        self.recipients = settings.clone();
        self
    }

    /// The queue that carries node jobs (`workflows.queue`): runs and events feed it.
    pub fn node_queue(&self) -> &QueueName {
        &self.jobs.queue
    }

    fn step_batches(&self) -> &steps::StepBatches {
        self.step_batches
            .get_or_init(|| steps::StepBatches::start(self.steps_pool.clone(), self.jobs.clone()))
    }

    fn start_batches(&self) -> &starts::StartBatches {
        self.start_batches.get_or_init(|| {
            let catalog = self.catalog.clone();
            starts::StartBatches::start(self.pool.clone(), self.jobs.clone(), catalog)
        })
    }

    fn event_batches(&self) -> &events::EventBatches {
        self.event_batches
            .get_or_init(|| events::EventBatches::start(self.pool.clone(), self.jobs.clone()))
    }

    fn delivery_batches(&self) -> &DeliveryBatches {
        self.delivery_batches
            .get_or_init(|| DeliveryBatches::start(self.pool.clone()))
    }
}

/// How node jobs are made and enqueued.
#[derive(Clone)]
struct NodeJobs {
    queue: QueueName,
    kind: JobKind,
    max_attempts: i32,
    defaults: JobDefaults,
}

impl NodeJobs {
    /// The queue job for one phase of one node, due at `run_at` (now if `None`).
    fn new_job(&self, job: NodeJob, run_at: Option<DateTime<Utc>>) -> NewJob {
        let payload = serde_json::json!({
            "run": job.run, "epoch": job.epoch, "node": job.node, "phase": job.phase.as_str(),
        });
        let mut new = NewJob::new(self.queue.clone(), self.kind.clone(), payload)
            .max_attempts(self.max_attempts);
        if let Some(at) = run_at {
            new = new.run_at(at);
        }
        new
    }

    /// Enqueues `jobs` (made by [`new_job`](Self::new_job)) inside the caller's transaction; one answer per job,
    /// in order (node jobs carry no idempotency key: each is inserted).
    async fn enqueue(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: &[NewJob],
    ) -> Result<Vec<queue::Enqueued>, WorkflowError> {
        Ok(queue::enqueue_many(conn, &self.defaults, jobs).await?)
    }

    /// Removes timer jobs (a parked step's `resume` or `timeout` job, see `migrations/0009_step_timers.sql`) that
    /// the change being made in the caller's transaction leaves with nothing to do: a satisfied wait's timeout, a
    /// cancelled or failed run's timers. They leave the queue as cancelled jobs; one already running is left to
    /// find nothing to do, as it always could.
    async fn cancel_timers(
        &self,
        conn: &mut sqlx::PgConnection,
        timers: &[i64],
    ) -> Result<(), WorkflowError> {
        queue::admin::cancel_waiting_jobs(conn, timers).await?;
        Ok(())
    }

    /// Enqueues the `run` phase of each (run, epoch, node, trace to continue) inside the caller's transaction.
    async fn enqueue_run_phase(
        &self,
        conn: &mut sqlx::PgConnection,
        steps: impl IntoIterator<Item = (i64, i32, String, Option<String>)>,
    ) -> Result<(), WorkflowError> {
        let jobs: Vec<NewJob> = steps
            .into_iter()
            .map(|(run, epoch, node, trace)| {
                self.new_job(NodeJob::new(run, epoch, node, Phase::Run), None)
                    .trace_parent(trace)
            })
            .collect();
        self.enqueue(conn, &jobs).await?;
        Ok(())
    }
}

/// Registers the node job handler.
pub fn register(registry: &mut HandlerRegistry, engine: Arc<Engine>) {
    let nodes = Arc::clone(&engine);
    registry.register(move |job: NodeJob, ctx| {
        let engine = Arc::clone(&nodes);
        // A span of its own in traces only: the attempt's span already names the job in every log line, and a
        // span's fields cost formatting on every node job.
        let span = if crate::telemetry::exporting() {
            tracing::info_span!("node", run = job.run, node = %job.node)
        } else {
            tracing::Span::none()
        };
        async move { engine.run_node(job, ctx).await }.instrument(span)
    });
    let fanouts = Arc::clone(&engine);
    registry.register(move |job: fanout::FanoutJob, ctx| {
        let engine = Arc::clone(&fanouts);
        async move { engine.fanout_page(job, ctx).await }
    });
    registry.register(move |job: erase::EraseJob, _ctx| {
        let engine = Arc::clone(&engine);
        async move { engine.erase(job).await }
    });
}

/// The workflow tables whose rows are updated or deleted all day, for the clock's housekeeping vacuum.
pub const CHURNED_TABLES: &[&str] = &[
    "herald_runs",
    "herald_run_steps",
    "herald_waits",
    "herald_events",
    "herald_digest_windows",
];

//! The apalis backend and executor: an apalis worker that runs claimed jobs with a concurrency limit.
//!
//! herald keeps apalis at the edge it is good at (a tower service pipeline with a concurrency limit, driven by a
//! `Backend`) and does the durable parts itself. The fetcher hands claimed jobs to [`ClaimedJobs`], a
//! [`Backend`] over an in-process channel; the apalis worker polls it when it has a free slot and calls
//! [`run_attempt`], which runs the handler (panics caught in `attempt.rs`, its timeout enforced here) and sends
//! the outcome to the completer. Database work never happens inside the backend: apalis ends a worker for good on a backend
//! error, so claim failures stay in the fetcher, which backs off and retries.
//!
//! Each attempt's handler runs on a task of its own, watched from the executor's task:
//! * a handler that never yields (a CPU loop, a blocking call) holds only its own thread, not the whole queue
//!   (apalis polls its handlers together, so one stuck inline would stall every handler of the queue);
//! * the job's timeout is enforced from here, outside the handler's task, so it fires for a handler that never
//!   yields too: the handler's task is aborted and the attempt settled as a timeout (a failed attempt), which
//!   gives its lease up so the job retries on any worker. A handler that cannot be stopped (it never yields)
//!   keeps its thread and its concurrency slot until it really ends, and its job is dead-lettered rather than
//!   retried, so one runaway job cannot pin a slot on every worker of the fleet in turn.
//! * a job whose lease term passed while it waited for a slot is started only if the worker's heartbeats since
//!   prove no rescuer can have taken it (`liveness.rs`); otherwise (the worker was frozen) it may already have
//!   run elsewhere, and it is given back unstarted.
//!
//! Shutdown: apalis stops polling the backend and waits for running handlers; after the grace period the worker
//! future is dropped, which aborts the handler tasks, and each attempt's [`PendingAck`] records the attempt as
//! interrupted so the job is retried at once. A handler stuck without yielding cannot be aborted; it no longer
//! holds anything up (see `src/shutdown.rs` and `main.rs` for how the process exits around it).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{
    Backend, Data, Task, TaskBuilder, TaskId, WorkerBuilder, WorkerBuilderExt, WorkerContext,
};
use apalis_core::backend::BackendConfig;
use apalis_core::backend::finalize::Ephemeral;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tower_layer::Identity;

use super::attempt::execute;
use super::completer::Ack;
use super::handlers::HandlerRegistry;
use super::ledger::Ledger;
use super::liveness::Liveness;
use super::retry::RetryPolicy;
use super::slots::Slots;
use super::watched::{AbortOnDrop, PollProbe, probed};
use crate::queue::lease::{AttemptError, ClaimedJob, Settlement};
use crate::queue::metrics::{KindMetrics, QueueMetrics};
use tracing::Instrument;

/// A claimed job and its slot in the fetcher's capacity (freed when the job is settled or dropped).
pub struct HeldJob {
    pub job: ClaimedJob,
    pub slot: OwnedSemaphorePermit,
    /// Its queue's and kind's counters.
    pub metrics: Arc<KindMetrics>,
}

/// The apalis backend: claimed jobs waiting for a free handler slot.
pub struct ClaimedJobs {
    incoming: Arc<Mutex<mpsc::UnboundedReceiver<HeldJob>>>,
    shared: Arc<Slots>,
}

impl ClaimedJobs {
    pub fn new(incoming: Arc<Mutex<mpsc::UnboundedReceiver<HeldJob>>>, shared: Arc<Slots>) -> Self {
        Self { incoming, shared }
    }
}

impl Backend for ClaimedJobs {
    type Task = Task<HeldJob>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<HeldJob>, Infallible>>> {
        // The lock is never contended: only this backend receives; it exists so the runner can drain leftovers.
        let Ok(mut incoming) = self.incoming.lock() else {
            return Poll::Ready(None);
        };
        match incoming.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(held)) => {
                self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
                let task = TaskBuilder::new(held).task_id(TaskId::from_int(0)).build();
                Poll::Ready(Some(Ok(task)))
            }
        }
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for ClaimedJobs {
    type Args = HeldJob;
    type Id = u64;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}

/// What every attempt needs, shared through apalis's `Data`.
#[derive(Clone)]
pub struct AttemptDeps {
    pub registry: Arc<HandlerRegistry>,
    pub retry: RetryPolicy,
    pub acks: mpsc::Sender<Ack>,
    pub shared: Arc<Slots>,
    pub ledger: Arc<Ledger>,
    pub liveness: Arc<Liveness>,
    pub queue_metrics: Arc<QueueMetrics>,
}

/// How long a handler that was told to stop at its timeout may take to do so before it is reported as stuck.
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// The apalis task function: run one attempt and hand its outcome to the completer.
pub async fn run_attempt(held: HeldJob, deps: Data<AttemptDeps>) -> Result<(), Infallible> {
    let HeldJob { job, slot, metrics } = held;
    if !deps.liveness.may_start(job.start_by) {
        let skipped = Ack {
            id: job.id,
            lease_token: job.lease_token,
            settlement: Settlement::NotStarted,
            metrics,
        };
        if deps.acks.send(skipped).await.is_err() {
            // Out of the ledger, so reconciliation gives it back.
            deps.ledger.forget([(job.id, job.lease_token)]);
        }
    } else {
        run_watched(job, metrics, &deps).await;
    }
    drop(slot);
    deps.shared.room_freed.notify_one();
    Ok(())
}

/// Runs the handler on its own task under the job's timeout and sends its outcome to the completer. The
/// completer outlives every executor, so sending only fails if it crashed; the job is then reconciled or rescued.
async fn run_watched(job: ClaimedJob, metrics: Arc<KindMetrics>, deps: &AttemptDeps) {
    let queue = &deps.queue_metrics;
    let due_for = (chrono::Utc::now() - job.run_at)
        .to_std()
        .unwrap_or_default();
    queue.pickup_seconds.observe(due_for.as_secs_f64());
    metrics.started();
    let _running = InFlight::enter(&queue.in_flight);
    let began = std::time::Instant::now();
    let mut pending = PendingAck::interrupted(
        &job,
        deps.acks.clone(),
        Arc::clone(&deps.ledger),
        Arc::clone(&metrics),
    );
    let (attempt, timeout) = (job.attempt, job.timeout);
    let probe = Arc::new(PollProbe::default());
    // Every log line of the attempt, the handler's included, names the job: by its id alone, since the span is
    // built for every attempt and each field costs formatting (the queue bench lost ~5% with four fields).
    let span = if crate::telemetry::exporting() {
        // A trace viewer shows spans by name and fields: there, what the job is matters more than its id.
        tracing::info_span!("job", job = job.id, kind = %job.kind, queue = %job.queue.as_str(), attempt)
    } else {
        tracing::info_span!("job", job = job.id)
    };
    if let Some(parent) = &job.trace_parent {
        crate::telemetry::set_parent(&span, parent.as_bytes());
    }
    let attempt_run = execute(job, Arc::clone(&deps.registry), deps.retry).instrument(span);
    let mut handler = AbortOnDrop(tokio::spawn(probed(attempt_run, Arc::clone(&probe))));
    match tokio::time::timeout(timeout, &mut handler.0).await {
        Ok(finished) => {
            metrics.ran(began.elapsed());
            pending.settle(outcome(finished, attempt, &deps.retry));
            pending.send().await;
        }
        Err(_) => {
            let overdue = stop_overdue(&mut handler, &probe, timeout, attempt, &deps.retry).await;
            metrics.ran(began.elapsed());
            let job = pending.id;
            pending.settle(overdue.settlement);
            pending.send().await;
            if overdue.runaway {
                tracing::error!(
                    job,
                    "a handler ran past its timeout without yielding (a CPU loop or a blocking call): its job was \
                     dead-lettered, and it keeps a thread and a concurrency slot until it returns"
                );
            }
            // Keep the slot until the handler's task really ends: deliberately without a deadline, because the
            // thread is busy exactly that long. Shutdown drops this wait after its grace period.
            if !overdue.ended {
                let _ = (&mut handler.0).await;
            }
        }
    }
}

/// Counts a running handler in its queue's in-flight gauge until dropped (whichever way the attempt ends).
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The settlement of an attempt whose task ended. `execute` catches the handler's panics, so a task error is a
/// panic in herald's own code around it (or the abort after a timeout).
fn outcome(
    finished: Result<Settlement, tokio::task::JoinError>,
    attempt: i32,
    retry: &RetryPolicy,
) -> Settlement {
    finished.unwrap_or_else(|error| Settlement::Retry {
        delay: retry.delay(attempt),
        error: AttemptError::new(
            attempt,
            "panic",
            &format!("the attempt's task failed: {error}"),
        ),
    })
}

/// What became of an attempt past its timeout.
struct Overdue {
    settlement: Settlement,
    /// The handler's task has ended.
    ended: bool,
    /// The handler never yields and cannot be stopped.
    runaway: bool,
}

/// Ends an attempt past its timeout, whatever its handler does: the task is aborted, and a handler that yields
/// stops at its next poll; the attempt is a `timeout` failure and the job retries (anywhere). One still inside the
/// same poll [`STOP_WITHIN`] later never yields and cannot be stopped: it keeps its thread and its slot until it
/// returns, so its job is dead-lettered instead of retried, or each retry would pin a slot (and a thread) on
/// another worker too. Either way the lease is given up.
async fn stop_overdue(
    handler: &mut AbortOnDrop<Settlement>,
    probe: &PollProbe,
    timeout: Duration,
    attempt: i32,
    retry: &RetryPolicy,
) -> Overdue {
    let (inside_at_timeout, polls_at_timeout) = probe.read();
    handler.0.abort();
    let timed_out = format!("timed out after {timeout:?}");
    let failed = |message: &str| Settlement::Retry {
        delay: retry.delay(attempt),
        error: AttemptError::new(attempt, "timeout", message),
    };
    match tokio::time::timeout(STOP_WITHIN, &mut handler.0).await {
        // It finished just after its timeout after all: its own outcome stands.
        Ok(Ok(settlement)) => Overdue {
            settlement,
            ended: true,
            runaway: false,
        },
        Ok(Err(_)) => Overdue {
            settlement: failed(&timed_out),
            ended: true,
            runaway: false,
        },
        // Still running. A task that was not polled in time (its thread busy with another) is cancelled at its
        // next poll; only one inside the same poll all along is a runaway.
        Err(_) => {
            let (inside, polls) = probe.read();
            let runaway = inside_at_timeout && inside && polls == polls_at_timeout;
            let settlement = if runaway {
                let message = format!(
                    "{timed_out} and could not be stopped (a CPU loop or a blocking call, never yielding): \
                     dead-lettered rather than retried, so it cannot hold a thread on every worker"
                );
                Settlement::Dead {
                    error: AttemptError::new(attempt, "timeout", &message),
                }
            } else {
                failed(&timed_out)
            };
            Overdue {
                settlement,
                ended: false,
                runaway,
            }
        }
    }
}

/// The ack an attempt owes the completer, delivered even if the attempt is dropped (shutdown past the grace
/// period): until the handler finishes it says "interrupted" (available again at once, attempt refunded); after,
/// it carries the real outcome, so a drop while waiting for room in the ack channel loses nothing.
struct PendingAck {
    ledger: Arc<Ledger>,
    metrics: Arc<KindMetrics>,
    id: crate::queue::JobId,
    lease_token: i64,
    attempt: i32,
    /// `None` until the attempt has an outcome; dropped without one, it reports "interrupted". (Built lazily: the
    /// interrupted error costs an allocation and a clock read that nearly every attempt would throw away.)
    settlement: Option<Settlement>,
    sent: bool,
    acks: mpsc::Sender<Ack>,
}

impl PendingAck {
    fn interrupted(
        job: &ClaimedJob,
        acks: mpsc::Sender<Ack>,
        ledger: Arc<Ledger>,
        metrics: Arc<KindMetrics>,
    ) -> Self {
        Self {
            ledger,
            metrics,
            id: job.id,
            lease_token: job.lease_token,
            attempt: job.attempt,
            settlement: None,
            sent: false,
            acks,
        }
    }

    fn settle(&mut self, settlement: Settlement) {
        self.settlement = Some(settlement);
    }

    fn take_ack(&mut self) -> Option<Ack> {
        if std::mem::replace(&mut self.sent, true) {
            return None;
        }
        let settlement = self.settlement.take().unwrap_or_else(|| {
            let message = "interrupted: the worker shut down before the handler finished";
            Settlement::Interrupted {
                error: AttemptError::new(self.attempt, "shutdown", message),
            }
        });
        Some(Ack {
            id: self.id,
            lease_token: self.lease_token,
            settlement,
            metrics: Arc::clone(&self.metrics),
        })
    }

    async fn send(mut self) {
        let Some(ack) = self.take_ack() else { return };
        if let Err(mpsc::error::SendError(ack)) = self.acks.send(ack).await {
            // Drop reports it.
            self.sent = false;
            self.settlement = Some(ack.settlement);
        }
    }
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        if let Some(ack) = self.take_ack()
            && self.acks.try_send(ack).is_err()
        {
            // Out of the ledger, so reconciliation gives the job back (it runs again).
            self.ledger.forget([(self.id, self.lease_token)]);
            tracing::warn!(
                "could not hand an attempt's outcome to the completer; the job will run again"
            );
        }
    }
}

/// Runs claimed jobs from `incoming`, at most `concurrency` at once, until `stop` resolves; then lets running
/// handlers finish for up to `grace` and drops the rest (see [`PendingAck`]).
pub async fn execute_until(
    name: String,
    backend: ClaimedJobs,
    deps: AttemptDeps,
    concurrency: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(deps)
        .concurrency(concurrency)
        .build(run_attempt);
    let run = worker.run_until(async move {
        let _ = stop_rx.await;
        Ok::<(), std::io::Error>(())
    });
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return log_exit(result),
        _ = stop => {}
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(grace, &mut run).await {
        Ok(result) => log_exit(result),
        Err(_) => tracing::warn!("shutdown grace elapsed; cancelling the handlers still running"),
    }
}

fn log_exit(result: Result<(), apalis::prelude::WorkerError>) {
    if let Err(error) = result {
        tracing::error!(%error, "executor stopped with an error");
    }
}

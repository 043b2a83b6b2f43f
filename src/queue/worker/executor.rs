//! The executor: an apalis worker that runs claimed jobs with a concurrency limit.
//!
//! herald keeps apalis at the edge it is good at (a tower service pipeline with a concurrency limit, driven by a
//! `Backend`) and does the durable parts itself. The fetcher hands claimed jobs to [`ClaimedJobs`], a
//! [`Backend`] over an in-process channel; the apalis worker polls it when it has a free slot and calls
//! [`run_attempt`], which runs the handler (timeout and panic handling in `execute.rs`) and sends the outcome to
//! the completer. Database work never happens inside the backend: apalis ends a worker for good on a backend
//! error, so claim failures stay in the fetcher, which backs off and retries.
//!
//! Shutdown: apalis stops polling the backend and waits for running handlers; after the grace period the worker
//! future is dropped, which drops the handlers, and each one's [`Interrupted`] guard records the attempt as
//! interrupted so the job is retried at once.

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

use super::completer::Ack;
use super::execute::execute;
use super::handlers::HandlerRegistry;
use super::retry::RetryPolicy;
use super::runner::Shared;
use crate::queue::lease::{AttemptError, ClaimedJob, Settlement};

/// A claimed job and its slot in the fetcher's capacity (freed when the job is settled or dropped).
pub struct HeldJob {
    pub job: ClaimedJob,
    pub slot: OwnedSemaphorePermit,
}

/// The apalis backend: claimed jobs waiting for a free handler slot.
pub struct ClaimedJobs {
    incoming: Arc<Mutex<mpsc::UnboundedReceiver<HeldJob>>>,
    shared: Arc<Shared>,
}

impl ClaimedJobs {
    pub fn new(
        incoming: Arc<Mutex<mpsc::UnboundedReceiver<HeldJob>>>,
        shared: Arc<Shared>,
    ) -> Self {
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
    pub shared: Arc<Shared>,
}

/// The apalis task function: run one attempt and hand its outcome to the completer.
pub async fn run_attempt(held: HeldJob, deps: Data<AttemptDeps>) -> Result<(), Infallible> {
    let HeldJob { job, slot } = held;
    let mut pending = PendingAck::interrupted(&job, deps.acks.clone());
    let settlement = execute(job, &deps.registry, &deps.retry).await;
    pending.settle(settlement);
    // The completer outlives every executor, so this only fails if it crashed; the lease then expires and the
    // job is rescued.
    pending.send().await;
    drop(slot);
    deps.shared.room_freed.notify_one();
    Ok(())
}

/// The ack an attempt owes the completer, delivered even if the attempt is dropped (shutdown past the grace
/// period): until the handler finishes it says "interrupted" (available again at once, attempt refunded); after,
/// it carries the real outcome, so a drop while waiting for room in the ack channel loses nothing.
struct PendingAck {
    ack: Option<Ack>,
    acks: mpsc::Sender<Ack>,
}

impl PendingAck {
    fn interrupted(job: &ClaimedJob, acks: mpsc::Sender<Ack>) -> Self {
        let message = "interrupted: the worker shut down before the handler finished";
        let settlement = Settlement::Interrupted {
            error: AttemptError::new(job.attempt, "shutdown", message),
        };
        Self {
            ack: Some(Ack {
                id: job.id,
                lease_token: job.lease_token,
                settlement,
            }),
            acks,
        }
    }

    fn settle(&mut self, settlement: Settlement) {
        if let Some(ack) = &mut self.ack {
            ack.settlement = settlement;
        }
    }

    async fn send(mut self) {
        let Some(ack) = self.ack.take() else { return };
        if let Err(mpsc::error::SendError(ack)) = self.acks.send(ack).await {
            self.ack = Some(ack); // Drop reports it
        }
    }
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        if let Some(ack) = self.ack.take()
            && self.acks.try_send(ack).is_err()
        {
            tracing::warn!(
                "could not hand an attempt's outcome to the completer; the job will run again after its lease"
            );
        }
    }
}

/// Runs claimed jobs from `incoming`, at most `concurrency` at once, until `stop` resolves; then lets running
/// handlers finish for up to `grace` and drops the rest (see [`Interrupted`]).
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

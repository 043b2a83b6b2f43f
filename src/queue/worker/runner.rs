//! One queue inside one worker process: a fetcher that claims batches, and a dispatcher that runs up to
//! `concurrency` handlers at once.
//!
//! The fetcher holds at most `concurrency + batch_size` jobs (claimed, not yet finished) and claims again when
//! half a batch of room is free, or at once when the dispatcher has nothing left to start, so claims overlap with
//! execution and never shrink to one row each. When a claim comes back short the queue is drained and the fetcher
//! sleeps until a wakeup (or a slow safety poll).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::completer::Ack;
use super::execute::execute;
use super::handlers::HandlerRegistry;
use super::retry::RetryPolicy;
use crate::queue::lease::{self, AttemptError, ClaimedJob, Settlement};
use crate::queue::types::{JobId, QueueSpec};

/// A claimed job with its share of the fetcher's capacity; dropping the permit frees the room.
type Held = (ClaimedJob, OwnedSemaphorePermit);

pub struct QueueRunner {
    pub pool: PgPool,
    pub spec: QueueSpec,
    pub worker_id: Uuid,
    pub batch_size: usize,
    pub lease: Duration,
    pub safety_poll: Duration,
    pub shutdown_grace: Duration,
    pub registry: Arc<HandlerRegistry>,
    pub retry: RetryPolicy,
    pub wakeup: Arc<Notify>,
    pub acks: mpsc::Sender<Ack>,
}

/// State the fetcher and the dispatcher share.
struct Shared {
    /// Room for claimed-but-unfinished jobs.
    capacity: Arc<Semaphore>,
    /// Signalled whenever a job finishes (room was freed).
    room_freed: Notify,
    /// Jobs handed to the dispatcher but not started.
    waiting: AtomicUsize,
}

impl QueueRunner {
    /// Runs until `shutdown`, then drains: releases unstarted jobs, gives running ones `shutdown_grace`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let shared = Arc::new(Shared {
            capacity: Arc::new(Semaphore::new(this.spec.concurrency + this.batch_size)),
            room_freed: Notify::new(),
            waiting: AtomicUsize::new(0),
        });
        let (to_dispatch, dispatch_rx) = mpsc::unbounded_channel();
        let fetcher = tokio::spawn(Arc::clone(&this).fetch(Arc::clone(&shared), to_dispatch, shutdown.clone()));
        this.dispatch(shared, dispatch_rx, shutdown).await;
        if let Err(error) = fetcher.await {
            tracing::error!(%error, queue = %this.spec.name, "fetcher task failed");
        }
    }

    async fn fetch(self: Arc<Self>, shared: Arc<Shared>, out: mpsc::UnboundedSender<Held>, shutdown: CancellationToken) {
        let low_water = (self.batch_size / 2).max(1);
        let mut drained = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            if drained {
                // Sleep until a wakeup; the safety poll covers a wakeup lost while the listener reconnected.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wakeup.notified() => {}
                    _ = tokio::time::sleep(self.safety_poll) => {}
                }
            }
            let Some(room) = self.wait_for_room(&shared, low_water, &shutdown).await else { return };
            let wanted = room.num_permits();
            let started = std::time::Instant::now();
            match lease::claim(&self.pool, &self.spec.name, wanted, self.lease, self.worker_id).await {
                Ok(jobs) => {
                    tracing::debug!(wanted, claimed = jobs.len(), elapsed = ?started.elapsed(), "claimed");
                    backoff = Duration::from_millis(100);
                    drained = jobs.len() < wanted;
                    self.hand_over(&shared, &out, jobs, room).await;
                }
                Err(error) => {
                    tracing::warn!(%error, queue = %self.spec.name, retry_in = ?backoff, "claim failed");
                    drop(room);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Waits until at least `low_water` slots are free (or any, if the dispatcher is idle) and takes them all,
    /// up to one batch.
    async fn wait_for_room(
        &self,
        shared: &Shared,
        low_water: usize,
        shutdown: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            let freed = shared.room_freed.notified();
            let free = shared.capacity.available_permits();
            let starving = shared.waiting.load(Ordering::Acquire) == 0;
            if free >= low_water || (starving && free > 0) {
                let take = free.min(self.batch_size) as u32;
                if let Ok(permit) = Arc::clone(&shared.capacity).try_acquire_many_owned(take) {
                    return Some(permit);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = freed => {}
            }
        }
    }

    async fn hand_over(
        &self,
        shared: &Shared,
        out: &mpsc::UnboundedSender<Held>,
        jobs: Vec<ClaimedJob>,
        mut room: OwnedSemaphorePermit,
    ) {
        let mut unsent = Vec::new();
        for job in jobs {
            let Some(slot) = room.split(1) else { break };
            shared.waiting.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::error::SendError((job, _slot))) = out.send((job, slot)) {
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                unsent.push((job.id, job.lease_token));
            }
        }
        // The dispatcher stopped (shutdown) while we were claiming: give these back at once.
        release_with_retry(&self.pool, &unsent).await;
    }

    async fn dispatch(
        &self,
        shared: Arc<Shared>,
        mut incoming: mpsc::UnboundedReceiver<Held>,
        shutdown: CancellationToken,
    ) {
        let running = Arc::new(Semaphore::new(self.spec.concurrency));
        let mut in_flight = JoinSet::new();
        let mut started: HashMap<tokio::task::Id, (JobId, i64, i32)> = HashMap::new();
        loop {
            while let Some(done) = in_flight.try_join_next_with_id() {
                started.remove(&task_id(&done));
            }
            let run_permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = Arc::clone(&running).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (job, slot) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = incoming.recv() => match next {
                    Some(held) => held,
                    None => break,
                },
            };
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            let identity = (job.id, job.lease_token, job.attempt);
            let task = self.spawn_attempt(&mut in_flight, &shared, job, slot, run_permit);
            started.insert(task, identity);
        }
        self.drain(incoming, in_flight, started).await;
    }

    fn spawn_attempt(
        &self,
        in_flight: &mut JoinSet<()>,
        shared: &Arc<Shared>,
        job: ClaimedJob,
        slot: OwnedSemaphorePermit,
        run_permit: OwnedSemaphorePermit,
    ) -> tokio::task::Id {
        let registry = Arc::clone(&self.registry);
        let retry = self.retry;
        let acks = self.acks.clone();
        let shared = Arc::clone(shared);
        let handle = in_flight.spawn(async move {
            let (id, lease_token) = (job.id, job.lease_token);
            let settlement = execute(job, &registry, &retry).await;
            drop(run_permit);
            // The completer outlives every runner, so this only fails if it crashed; the lease then expires
            // and the job is rescued.
            let _ = acks.send(Ack { id, lease_token, settlement }).await;
            drop(slot);
            shared.room_freed.notify_one();
        });
        handle.id()
    }

    /// Shutdown: release what never started, let running handlers finish within the grace period, then cancel
    /// the rest and record them as interrupted (retried at once, by this or another worker).
    async fn drain(
        &self,
        mut incoming: mpsc::UnboundedReceiver<Held>,
        mut in_flight: JoinSet<()>,
        mut started: HashMap<tokio::task::Id, (JobId, i64, i32)>,
    ) {
        incoming.close();
        let mut unstarted = VecDeque::new();
        while let Ok((job, _slot)) = incoming.try_recv() {
            unstarted.push_back((job.id, job.lease_token));
        }
        release_with_retry(&self.pool, unstarted.make_contiguous()).await;

        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, in_flight.join_next_with_id()).await {
            started.remove(&task_id(&done));
        }
        if started.is_empty() {
            return;
        }
        tracing::warn!(queue = %self.spec.name, jobs = started.len(), "shutdown grace elapsed; cancelling handlers");
        in_flight.abort_all();
        while let Some(done) = in_flight.join_next_with_id().await {
            if let Some((id, lease_token, attempt)) = started.remove(&task_id(&done)) {
                let error = AttemptError {
                    attempt,
                    kind: "shutdown",
                    message: "interrupted: the worker shut down before the handler finished".into(),
                    at: chrono::Utc::now(),
                };
                let settlement = Settlement::Retry { delay: Duration::ZERO, error };
                let _ = self.acks.send(Ack { id, lease_token, settlement }).await;
            }
        }
    }
}

fn task_id(done: &Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => *id,
        Err(error) => error.id(),
    }
}

/// Releases unstarted jobs, retrying through a short outage; if it keeps failing, their leases expire and the
/// rescuer returns them instead.
async fn release_with_retry(pool: &PgPool, jobs: &[(JobId, i64)]) {
    if jobs.is_empty() {
        return;
    }
    for attempt in 1..=5u32 {
        match lease::release(pool, jobs).await {
            Ok(released) => {
                tracing::info!(released, "released unstarted jobs");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "releasing unstarted jobs failed");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
        }
    }
}

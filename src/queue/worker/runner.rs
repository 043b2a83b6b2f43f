//! One queue inside one worker process: a fetcher that claims batches, and the apalis executor (`backend.rs`)
//! that runs up to `concurrency` handlers at once.
//!
//! The fetcher holds at most `concurrency + batch_size` jobs (claimed, not yet finished) and claims again when
//! half a batch of room is free, or at once when the dispatcher has nothing left to start, so claims overlap with
//! execution and never shrink to one row each. When a claim comes back short the queue is drained and the fetcher
//! sleeps until a wakeup (or a slow safety poll).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backend::{AttemptDeps, ClaimedJobs, HeldJob, execute_until};
use super::completer::Ack;
use super::handlers::HandlerRegistry;
use super::ledger::Ledger;
use super::liveness::Liveness;
use super::retry::RetryPolicy;
use super::slots::Slots;
use crate::queue::lease::{self, ClaimedJob};
use crate::queue::types::{JobId, QueueSpec};

/// A claimed job with its share of the fetcher's capacity; dropping the permit frees the room.
type Held = HeldJob;

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
    /// What this process holds, for reconciliation (`ledger.rs`).
    pub ledger: Arc<Ledger>,
    /// Whether a job past its lease term may still start (`liveness.rs`).
    pub liveness: Arc<Liveness>,
}

impl QueueRunner {
    /// Runs until `shutdown`, then drains: releases unstarted jobs, gives running ones `shutdown_grace`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let shared = Arc::new(Slots::new(this.spec.concurrency + this.batch_size));
        let (to_dispatch, dispatch_rx) = mpsc::unbounded_channel();
        let fetcher = tokio::spawn(Arc::clone(&this).fetch(
            Arc::clone(&shared),
            to_dispatch,
            shutdown.clone(),
        ));
        this.dispatch(shared, dispatch_rx, shutdown).await;
        if let Err(error) = fetcher.await {
            tracing::error!(%error, queue = %this.spec.name, "fetcher task failed");
        }
    }

    async fn fetch(
        self: Arc<Self>,
        shared: Arc<Slots>,
        out: mpsc::UnboundedSender<Held>,
        shutdown: CancellationToken,
    ) {
        let low_water = (self.batch_size / 2).max(1);
        let mut drained = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            // Checked first: with a backlog there is always room and work, so the waits below would never see
            // the shutdown, and every claim would go straight back (claim one, release one, forever).
            if shutdown.is_cancelled() {
                return;
            }
            if drained {
                // Sleep until a wakeup; the safety poll covers a wakeup lost while the listener reconnected.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wakeup.notified() => {}
                    _ = tokio::time::sleep(self.safety_poll) => {}
                }
            }
            let Some(room) = self.wait_for_room(&shared, low_water, &shutdown).await else {
                return;
            };
            let wanted = room.num_permits();
            let started = std::time::Instant::now();
            let token = lease::new_lease_token();
            self.ledger.claim_sent(token);
            let claimed = match self.pool.acquire().await {
                Ok(mut conn) => {
                    let (queue, worker) = (&self.spec.name, self.worker_id);
                    lease::claim_on(&mut *conn, queue, wanted, self.lease, worker, token).await
                }
                Err(error) => Err(error.into()),
            };
            match &claimed {
                Ok(jobs) => self.ledger.claim_answered(token, jobs),
                Err(_) => self.ledger.claim_abandoned(token),
            }
            match claimed {
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
        shared: &Slots,
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
        shared: &Slots,
        out: &mpsc::UnboundedSender<Held>,
        jobs: Vec<ClaimedJob>,
        mut room: OwnedSemaphorePermit,
    ) {
        let mut unsent = Vec::new();
        for job in jobs {
            let Some(slot) = room.split(1) else { break };
            shared.waiting.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::error::SendError(held)) = out.send(HeldJob { job, slot }) {
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
                unsent.push((held.job.id, held.job.lease_token));
            }
        }
        // The dispatcher stopped (shutdown) while we were claiming: give these back at once.
        release_with_retry(&self.pool, &self.ledger, &unsent).await;
    }

    /// Runs claimed jobs through the apalis executor until shutdown, then gives back what never started.
    async fn dispatch(
        &self,
        shared: Arc<Slots>,
        incoming: mpsc::UnboundedReceiver<Held>,
        shutdown: CancellationToken,
    ) {
        let incoming = Arc::new(Mutex::new(incoming));
        let deps = AttemptDeps {
            registry: Arc::clone(&self.registry),
            retry: self.retry,
            acks: self.acks.clone(),
            shared: Arc::clone(&shared),
            ledger: Arc::clone(&self.ledger),
            liveness: Arc::clone(&self.liveness),
        };
        let backend = ClaimedJobs::new(Arc::clone(&incoming), Arc::clone(&shared));
        let name = format!("herald-{}", self.spec.name);
        let stop = shutdown.clone().cancelled_owned();
        let run = execute_until(
            name,
            backend,
            deps,
            self.spec.concurrency,
            stop,
            self.shutdown_grace,
        );
        // Give back what never started as soon as shutdown begins, not after the grace period: another worker
        // can take it at once. A job is either taken by the executor or drained here, never both.
        let release_at_stop = async {
            shutdown.cancelled().await;
            release_with_retry(&self.pool, &self.ledger, &drain(&incoming)).await;
        };
        tokio::join!(run, release_at_stop);
        // Anything that arrived after the first drain (a claim that was in flight).
        release_with_retry(&self.pool, &self.ledger, &drain(&incoming)).await;
    }
}

/// Closes the channel and takes every job still in it.
fn drain(incoming: &Mutex<mpsc::UnboundedReceiver<Held>>) -> Vec<(JobId, i64)> {
    match incoming.lock() {
        Ok(mut incoming) => {
            incoming.close();
            std::iter::from_fn(|| incoming.try_recv().ok())
                .map(|held| (held.job.id, held.job.lease_token))
                .collect()
        }
        Err(_) => Vec::new(),
    }
}

/// Releases unstarted jobs, retrying through a short outage. If it keeps failing, the jobs leave the ledger
/// anyway: reconciliation then gives back whatever the database still says this worker holds (or, once the
/// process is gone, the rescuer returns them).
async fn release_with_retry(pool: &PgPool, ledger: &Ledger, jobs: &[(JobId, i64)]) {
    if jobs.is_empty() {
        return;
    }
    for attempt in 1..=5u32 {
        match lease::release(pool, jobs).await {
            Ok(released) => {
                tracing::info!(released, "released unstarted jobs");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "releasing unstarted jobs failed");
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
        }
    }
    ledger.forget(jobs.iter().copied());
}

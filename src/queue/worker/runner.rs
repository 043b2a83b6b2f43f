//! One queue inside one worker process: a fetcher that claims batches, and the apalis executor (`backend.rs`)
//! that runs up to `concurrency` handlers at once.
//!
//! The fetcher holds at most `concurrency + batch_size` jobs (claimed, not yet finished) and claims again when
//! half a batch of room is free, or at once when the dispatcher has nothing left to start, so claims overlap with
//! execution and never shrink to one row each. When a claim comes back short the queue is drained and the fetcher
//! sleeps until a wakeup (or a slow safety poll).
//!
//! **Where a claim starts.** A claim searches the queue's jobs in `sort_key` order. The jobs before the front of
//! the line were claimed already, and their old row versions stay in the index until vacuum removes them; while
//! an old transaction holds vacuum back (an idle `BEGIN` in some session), they pile up by the million, and a
//! claim that starts at the queue's oldest entry wades through all of them every time. So the fetcher remembers
//! a *floor*: after a full claim, the `sort_key` of the last job it took (nothing available lies before it, but
//! jobs made available later); after a short one, "nothing pending". Whatever makes a job available announces
//! its lowest `sort_key` in its wakeup (enqueue, promotion), which lowers the floor before the next claim; a
//! wakeup that names no key (a release, a rescue, a resume, a replay, a reconnected listener) clears the floor,
//! and so does the safety poll's period, so a job no wakeup announced (a claim rolled back elsewhere, a row
//! locked by another session during our claim) waits at most that long.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backend::{AttemptDeps, ClaimedJobs, HeldJob, execute_until};
use super::completer::Ack;
use super::handlers::HandlerRegistry;
use super::ledger::Ledger;
use super::liveness::Liveness;
use super::retry::RetryPolicy;
use super::slots::Slots;
use super::wakeups::QueueSignal;
use crate::queue::lease::{self, Claim, ClaimedJob};
use crate::queue::metrics::QueueMetrics;
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
    pub wakeup: Arc<QueueSignal>,
    pub acks: mpsc::Sender<Ack>,
    /// What this process holds, for reconciliation (`ledger.rs`).
    pub ledger: Arc<Ledger>,
    /// Whether a job past its lease term may still start (`liveness.rs`).
    pub liveness: Arc<Liveness>,
    /// This queue's metrics, with a label set per registered kind.
    pub metrics: Arc<QueueMetrics>,
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
        let mut floor = Floor::All;
        let mut last_full_search = std::time::Instant::now();
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
                    _ = self.wakeup.notify.notified() => {}
                    _ = tokio::time::sleep(self.safety_poll) => {}
                }
            }
            let Some(room) = self.wait_for_room(&shared, low_water, &shutdown).await else {
                return;
            };
            floor = floor.lowered_to(self.wakeup.take_floor());
            if last_full_search.elapsed() >= self.safety_poll {
                floor = Floor::All;
            }
            let from = match floor {
                // Nothing was made available since the last claim came back short: no need to ask.
                Floor::Nothing => {
                    drained = true;
                    drop(room);
                    continue;
                }
                Floor::All => None,
                Floor::From(key) => Some(key),
            };
            let wanted = room.num_permits();
            let started = std::time::Instant::now();
            let token = lease::new_lease_token();
            self.ledger.claim_sent(token);
            let claim = Claim {
                queue: &self.spec.name,
                limit: wanted,
                lease: self.lease,
                worker: self.worker_id,
                token,
            };
            let claimed = match self.pool.acquire().await {
                Ok(mut conn) => lease::claim_from(&mut *conn, &claim, from).await,
                Err(error) => Err(error.into()),
            };
            match &claimed {
                Ok(claimed) => self.ledger.claim_answered(token, &claimed.jobs),
                Err(_) => self.ledger.claim_abandoned(token),
            }
            match claimed {
                Ok(claimed) => {
                    let jobs = claimed.jobs;
                    self.metrics
                        .claim_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.claim_jobs.observe(jobs.len() as f64);
                    tracing::debug!(wanted, claimed = jobs.len(), elapsed = ?started.elapsed(), ?from, "claimed");
                    backoff = Duration::from_millis(100);
                    drained = jobs.len() < wanted;
                    if from.is_none() {
                        last_full_search = std::time::Instant::now();
                    }
                    floor = match claimed.last_sort_key {
                        Some(key) if !drained => Floor::From(key),
                        _ => Floor::Nothing,
                    };
                    self.hand_over(&shared, &out, jobs, room).await;
                }
                Err(error) => {
                    // What the failed claim would have taken is still there: search from the same floor again.
                    floor = from.map_or(Floor::All, Floor::From);
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
            let metrics = self.metrics.kind(&job.kind);
            let held = HeldJob { job, slot, metrics };
            if let Err(mpsc::error::SendError(held)) = out.send(held) {
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
            queue_metrics: Arc::clone(&self.metrics),
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

/// Where the fetcher's next claim starts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Floor {
    /// Search the whole queue.
    All,
    /// Search from this `sort_key` on: nothing available lies before it.
    From(DateTime<Utc>),
    /// Nothing available since the last claim came back short.
    Nothing,
}

impl Floor {
    /// Lowered by a wakeup's hint (`QueueSignal::take_floor`: `i64::MAX` none, `i64::MIN` search all).
    fn lowered_to(self, hint_micros: i64) -> Self {
        if hint_micros == i64::MAX {
            return self;
        }
        let Some(hint) =
            DateTime::<Utc>::from_timestamp_micros(hint_micros).filter(|_| hint_micros != i64::MIN)
        else {
            return Floor::All;
        };
        match self {
            Floor::All => Floor::All,
            Floor::From(key) => Floor::From(key.min(hint)),
            Floor::Nothing => Floor::From(hint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wakeup_lowers_the_floor_and_one_without_a_key_clears_it() {
        let at = |micros| DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
        assert_eq!(Floor::Nothing.lowered_to(i64::MAX), Floor::Nothing);
        assert_eq!(Floor::Nothing.lowered_to(5), Floor::From(at(5)));
        assert_eq!(Floor::From(at(9)).lowered_to(5), Floor::From(at(5)));
        assert_eq!(Floor::From(at(3)).lowered_to(5), Floor::From(at(3)));
        assert_eq!(Floor::From(at(3)).lowered_to(i64::MIN), Floor::All);
        assert_eq!(Floor::All.lowered_to(5), Floor::All);
    }
}

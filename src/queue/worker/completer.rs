//! The completer: acks are batched so that one statement settles up to `ack_batch` attempts. Up to
//! [`FLUSHES_IN_FLIGHT`] batches are written at once (on separate connections; batches never share a job), so
//! gathering the next batch and claiming new work overlap with writing the last one.
//!
//! An ack is never dropped: if a flush fails (connection lost, database restarting), the batch is kept and
//! retried with backoff. If the outage outlasts the lease, the rescuer hands the job to another worker and the
//! late flush is rejected by the lease token, which is exactly-once completion at work. Once a batch's statement
//! has answered, its jobs leave the ledger (`ledger.rs`): not before, so reconciliation never gives back a job
//! whose ack is still on its way.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};

use super::ledger::Ledger;
use crate::queue::JobId;
use crate::queue::lease::{self, AttemptError, Settled, Settlement};
use crate::queue::metrics::{ACK_JOBS, ACK_SECONDS, KindMetrics, STALE_ACKS};

/// One finished attempt on its way to the database.
#[derive(Debug)]
pub struct Ack {
    pub id: JobId,
    pub lease_token: i64,
    pub settlement: Settlement,
    /// The counters of the job's queue and kind, for what the database does with the settlement.
    pub metrics: Arc<KindMetrics>,
}

#[derive(Debug, Clone)]
pub struct CompleterOptions {
    pub flush_every: Duration,
    pub max_batch: usize,
    pub priority_aging: Duration,
}

/// How many ack batches may be written at once. One was the bottleneck of the execute benchmark: a 1,000-ack
/// statement takes ~12 ms, during which finished handlers waited to hand over their acks.
pub const FLUSHES_IN_FLIGHT: u32 = 2;

/// Runs until every sender is dropped and everything received has been flushed.
pub async fn run(
    pool: PgPool,
    mut acks: mpsc::Receiver<Ack>,
    options: CompleterOptions,
    ledger: Arc<Ledger>,
) {
    let flushing = Arc::new(Semaphore::new(FLUSHES_IN_FLIGHT as usize));
    let options = Arc::new(options);
    loop {
        let mut batch: Vec<(JobId, i64, Settlement)> = Vec::with_capacity(options.max_batch);
        let mut counters: Vec<Arc<KindMetrics>> = Vec::with_capacity(options.max_batch);
        // Block for the first ack, then gather more until the batch is full or the flush interval passes.
        let Some(first) = acks.recv().await else {
            break;
        };
        let mut next = Some(first);
        let deadline = tokio::time::Instant::now() + options.flush_every;
        while let Some(ack) = next.take() {
            batch.push((ack.id, ack.lease_token, ack.settlement));
            counters.push(ack.metrics);
            if batch.len() < options.max_batch
                && let Ok(Some(ack)) = tokio::time::timeout_at(deadline, acks.recv()).await
            {
                next = Some(ack);
            }
        }
        let Ok(slot) = Arc::clone(&flushing).acquire_owned().await else {
            break;
        };
        let (pool, options, ledger) = (pool.clone(), Arc::clone(&options), Arc::clone(&ledger));
        tokio::spawn(async move {
            let leases: Vec<(JobId, i64)> =
                batch.iter().map(|(id, token, _)| (*id, *token)).collect();
            flush(&pool, &mut batch, &counters, &options).await;
            ledger.forget(leases);
            drop(slot);
        });
    }
    // Wait for the flushes still running.
    let _ = flushing.acquire_many(FLUSHES_IN_FLIGHT).await;
}

async fn flush(
    pool: &PgPool,
    batch: &mut Vec<(JobId, i64, Settlement)>,
    counters: &[Arc<KindMetrics>],
    options: &CompleterOptions,
) {
    let mut backoff = Duration::from_millis(50);
    let mut tries = 0u32;
    loop {
        let started = std::time::Instant::now();
        tries += 1;
        match lease::settle(pool, batch, options.priority_aging).await {
            Ok(settled) => {
                tracing::debug!(acks = batch.len(), elapsed = ?started.elapsed(), "flushed acks");
                ACK_SECONDS.observe(started.elapsed().as_secs_f64());
                ACK_JOBS.observe(batch.len() as f64);
                report(pool, batch, counters, &settled, tries);
                batch.clear();
                return;
            }
            Err(error) if error.is_refused_data() => {
                // Retrying the same statement would fail forever and hold every job in the batch; settle the
                // rows one by one so only the offending one needs special treatment.
                tracing::error!(%error, acks = batch.len(), "an ack batch was refused; settling its rows one by one");
                for (ack, counter) in batch.drain(..).zip(counters) {
                    settle_alone(pool, ack, counter, options).await;
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, acks = batch.len(), retry_in = ?backoff, "flushing acks failed; will retry");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Settles one ack after its batch was refused. If the database refuses this row too, the attempt is recorded
/// as dead with an error that can be stored; if even that is refused, the job is released so that it runs again
/// rather than staying leased to a live worker forever.
async fn settle_alone(
    pool: &PgPool,
    ack: (JobId, i64, Settlement),
    counter: &Arc<KindMetrics>,
    options: &CompleterOptions,
) {
    let (id, token, settlement) = ack;
    let mut one = vec![(id, token, settlement)];
    let counters = std::slice::from_ref(counter);
    flush_unless_refused(pool, &mut one, counters, options).await;
    let Some((id, token, settlement)) = one.pop() else {
        return;
    };
    let attempt = match &settlement {
        Settlement::Retry { error, .. }
        | Settlement::Dead { error }
        | Settlement::Interrupted { error }
        | Settlement::Snoozed { error, .. } => error.attempt,
        Settlement::Completed | Settlement::NotStarted => 0,
    };
    let message = "the attempt's outcome could not be stored; see the worker log";
    let mut dead = vec![(
        id,
        token,
        Settlement::Dead {
            error: AttemptError::new(attempt, "unstorable", message),
        },
    )];
    flush_unless_refused(pool, &mut dead, counters, options).await;
    if !dead.is_empty() {
        tracing::error!(job = id, "could not settle the job at all; releasing it");
        let _ = lease::release(pool, &[(id, token)]).await;
    }
}

/// Like `flush`, but gives up (leaving the batch in place) when the database refuses the data.
async fn flush_unless_refused(
    pool: &PgPool,
    batch: &mut Vec<(JobId, i64, Settlement)>,
    counters: &[Arc<KindMetrics>],
    options: &CompleterOptions,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match lease::settle(pool, batch, options.priority_aging).await {
            Ok(settled) => {
                report(pool, batch, counters, &settled, 1);
                batch.clear();
                return;
            }
            Err(error) if error.is_refused_data() => {
                tracing::error!(%error, "the database refused an ack");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "settling an ack failed; will retry");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Logs what a flush did that an operator should know: dead letters, jobs given back unstarted, and acks that
/// were rejected, saying why (the job is gone: its ack already committed; or another lease holds it now).
fn report(
    pool: &PgPool,
    batch: &[(JobId, i64, Settlement)],
    counters: &[Arc<KindMetrics>],
    settled: &[(JobId, Settled)],
    tries: u32,
) {
    count(batch, counters, settled);
    let dead = settled.iter().filter(|(_, s)| *s == Settled::Dead).count();
    if dead > 0 {
        tracing::warn!(dead, "jobs moved to the dead letters");
    }
    let unstarted = batch
        .iter()
        .filter(|(_, _, s)| matches!(s, Settlement::NotStarted))
        .count();
    let released = settled
        .iter()
        .filter(|(_, s)| *s == Settled::Released)
        .count();
    if unstarted > 0 {
        tracing::warn!(
            skipped = unstarted,
            released,
            "did not start buffered jobs whose lease term had passed while this worker's heartbeats had stopped \
             (it was frozen); those not rescued meanwhile were given back"
        );
    }
    // The usual case, checked without building anything: every started attempt was answered.
    if settled.len() - released == batch.len() - unstarted {
        return;
    }
    let answered: std::collections::HashSet<JobId> = settled.iter().map(|(id, _)| *id).collect();
    let stale: Vec<JobId> = batch
        .iter()
        .filter(|(id, _, s)| !matches!(s, Settlement::NotStarted) && !answered.contains(id))
        .map(|(id, _, _)| *id)
        .collect();
    STALE_ACKS.inc_by(stale.len() as u64);
    // Rare, so one more query says what happened: in a task of its own, so the flush slot is free meanwhile, and
    // one at a time, so that a storm of rejected acks (a thawed worker) cannot take the queue pool's connections
    // from claims and acks. Beyond that one, the rejection is logged without the explanation.
    match EXPLAINING.try_acquire() {
        Ok(turn) => {
            let pool = pool.clone();
            tokio::spawn(async move {
                explain_stale(&pool, stale, tries).await;
                drop(turn);
            });
        }
        Err(_) => tracing::warn!(
            ?stale,
            "rejected stale acks: their leases were rescued or already settled"
        ),
    }
}

/// Counts each settlement the database answered under its job's queue and kind (`counters` runs beside `batch`).
fn count(
    batch: &[(JobId, i64, Settlement)],
    counters: &[Arc<KindMetrics>],
    settled: &[(JobId, Settled)],
) {
    let position: std::collections::HashMap<JobId, usize> = batch
        .iter()
        .enumerate()
        .map(|(at, (id, _, _))| (*id, at))
        .collect();
    for (id, outcome) in settled {
        if let Some(&at) = position.get(id)
            && let (Some((_, _, settlement)), Some(counter)) = (batch.get(at), counters.get(at))
        {
            counter.settled(settlement, *outcome);
        }
    }
}

/// One explanation of rejected acks at a time, per process (see [`report`]).
static EXPLAINING: Semaphore = Semaphore::const_new(1);

/// Logs rejected acks, split by what became of their jobs: still queued (rescued; another attempt holds or will
/// hold them) or gone (finished, by another attempt or by an earlier try of the same batch).
async fn explain_stale(pool: &PgPool, stale: Vec<JobId>, tries: u32) {
    let still_queued = match lease::still_queued(pool, &stale).await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(?stale, %error, "rejected stale acks: their leases were rescued or already settled");
            return;
        }
    };
    let (rescued, finished): (Vec<JobId>, Vec<JobId>) =
        stale.iter().partition(|id| still_queued.contains(id));
    if !rescued.is_empty() {
        tracing::warn!(
            stale = ?rescued,
            "rejected stale acks: these jobs' leases were rescued (this worker had stopped heartbeating past its lease) \
             and another attempt holds or will hold them"
        );
    }
    if !finished.is_empty() && tries > 1 {
        tracing::info!(
            already_settled = ?finished,
            "acks already settled, most likely by the earlier try of this batch, which committed before its answer was lost"
        );
    } else if !finished.is_empty() {
        tracing::warn!(
            stale = ?finished,
            "rejected stale acks: these jobs' leases were rescued and another attempt has already finished them"
        );
    }
}

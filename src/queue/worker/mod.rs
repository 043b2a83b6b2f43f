//! The worker process: everything that turns rows in `herald_jobs` into handler calls.
//!
//! Tasks inside one process:
//! * **wakeups**: one LISTEN connection; NOTIFYs wake the queue they name.
//! * **promoter**: makes due scheduled jobs available, sleeping until the next one is due (or the poll interval).
//! * **heartbeat**: the registry row that keeps this worker's leases valid, on a connection of its own so that
//!   it never waits behind other work (a blocked rescue, an exhausted pool).
//! * **maintenance**: reconciliation of this worker's leases (`ledger.rs`), rescue of expired leases, reaping
//!   dead workers.
//! * **one runner per queue**: claim batches (`runner.rs`), run handlers on an apalis worker (`backend.rs`; one attempt in `attempt.rs`).
//! * **completer**: batched acks (see `completer.rs`).
//!
//! The queue's own statements (claims, acks, maintenance) run on a small pool of their own whose connections
//! carry a server-side `statement_timeout` ([`lease::SERVER_DEADLINE`]): a statement stuck behind a lock is
//! cancelled by PostgreSQL before the worker gives up on it. Handlers use the pool they were given.
//!
//! Database trouble never ends the process: every loop logs, backs off and tries again.

mod attempt;
mod backend;
mod completer;
mod handlers;
mod ledger;
mod liveness;
mod retry;
mod runner;
mod slots;
mod wakeups;
mod watched;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use handlers::{HandlerFuture, HandlerRegistry, JobContext, JobError, builtin};
pub use retry::RetryPolicy;

use crate::queue::lease::{self, WorkerIdentity};
use crate::queue::metrics::{LEASE_RESCUES, QueueMetrics};
use crate::queue::settings::{JobSettings, WorkerSettings};
use crate::queue::types::{JobDefaults, QueueSpec};
use crate::setting::InvalidSetting;
use completer::CompleterOptions;
use ledger::Ledger;
use liveness::Liveness;
use runner::QueueRunner;
use wakeups::Wakeups;

/// Everything a worker process needs to know, usually built from `[worker]` and `[jobs]` ([`WorkerOptions::new`]).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queues: Vec<QueueSpec>,
    pub batch_size: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub rescue_interval: Duration,
    pub shutdown_grace: Duration,
    pub ack_flush: Duration,
    pub ack_batch: usize,
    pub defaults: JobDefaults,
    pub retry: RetryPolicy,
    /// Register the fault-drill kinds (`worker.drills`).
    pub drills: bool,
}

impl WorkerOptions {
    /// From `[worker]` and `[jobs]`.
    pub fn new(worker: &WorkerSettings, jobs: &JobSettings) -> Result<Self, InvalidSetting> {
        Ok(Self {
            queues: worker.queue_specs()?,
            batch_size: worker.batch_size.get(),
            lease: worker.lease,
            poll_interval: worker.poll_interval,
            heartbeat_interval: worker.heartbeat,
            // A zero interval would spin the maintenance loop.
            rescue_interval: worker.rescue_interval.max(Duration::from_secs(1)),
            shutdown_grace: worker.shutdown_grace,
            ack_flush: worker.ack_flush,
            ack_batch: worker.ack_batch.get(),
            defaults: jobs.defaults(),
            retry: RetryPolicy {
                base: jobs.retry_base,
                max: jobs.retry_max,
            },
            drills: worker.drills,
        })
    }
}

/// Runs a worker until `shutdown` fires, then shuts down gracefully: stop claiming, release unstarted jobs,
/// let running handlers finish (up to the grace period), flush acks, leave the registry.
pub async fn run(
    pool: PgPool,
    options: WorkerOptions,
    mut registry: HandlerRegistry,
    shutdown: CancellationToken,
) {
    if options.drills {
        builtin::register_drills(&mut registry);
    }
    let identity = WorkerIdentity::of_this_process(
        options.queues.iter().map(|q| q.name.to_string()).collect(),
        options.queues.iter().map(|q| q.concurrency as i32).sum(),
    );
    tracing::info!(worker = %identity.id, queues = ?identity.queues, "worker starting");
    let handler_pool = pool;
    let pool = queue_pool(&handler_pool, options.queues.len());
    let ledger = Arc::new(Ledger::default());
    let liveness = Arc::new(Liveness::new(options.lease));
    let background = CancellationToken::new();
    let wakeups = Arc::new(Wakeups::new(options.queues.iter().map(|q| q.name.as_str())));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(Arc::clone(&wakeups).listen(handler_pool.clone(), background.clone()));
    tasks.spawn(promote_loop(
        pool.clone(),
        options.poll_interval,
        wakeups.promoter(),
        background.clone(),
    ));
    tasks.spawn(heartbeat_loop(
        pool.clone(),
        identity.clone(),
        options.heartbeat_interval,
        Arc::clone(&liveness),
        background.clone(),
    ));
    tasks.spawn(maintain_loop(
        pool.clone(),
        identity.id,
        Arc::clone(&ledger),
        options.clone(),
        background.clone(),
    ));

    let (acks, ack_rx) = mpsc::channel(options.ack_batch * 4);
    let completer_options = CompleterOptions {
        flush_every: options.ack_flush,
        max_batch: options.ack_batch,
        priority_aging: options.defaults.priority_aging,
    };
    let completer = tokio::spawn(completer::run(
        pool.clone(),
        ack_rx,
        completer_options,
        Arc::clone(&ledger),
    ));

    let registry = Arc::new(registry);
    let mut runners = tokio::task::JoinSet::new();
    for spec in &options.queues {
        let runner = QueueRunner {
            pool: pool.clone(),
            spec: spec.clone(),
            worker_id: identity.id,
            batch_size: options.batch_size,
            lease: options.lease,
            safety_poll: options.poll_interval * 5,
            shutdown_grace: options.shutdown_grace,
            registry: Arc::clone(&registry),
            retry: options.retry,
            wakeup: wakeups.queue(spec.name.as_str()),
            acks: acks.clone(),
            ledger: Arc::clone(&ledger),
            liveness: Arc::clone(&liveness),
            metrics: Arc::new(QueueMetrics::new(spec.name.as_str(), registry.kinds())),
        };
        runners.spawn(runner.run(shutdown.clone()));
    }
    drop(acks);
    runners.join_all().await;
    // Every runner dropped its sender: the completer flushes what is left and returns. If the database is down,
    // do not wait long: unflushed jobs run again after their lease (at-least-once still holds).
    match tokio::time::timeout(lease::CALL_DEADLINE, completer).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "completer task failed"),
        Err(_) => tracing::error!(
            "could not write the last acks in time; those jobs will run again after their lease"
        ),
    }
    background.cancel();
    tasks.join_all().await;
    if let Err(error) = lease::deregister(&pool, identity.id).await {
        tracing::warn!(%error, "could not remove this worker from the registry; it will be reaped");
    }
    tracing::info!(worker = %identity.id, "worker stopped");
}

/// Flips due scheduled jobs to available. Sleeps until the next job is due, the poll interval passes, or a
/// wakeup says something was scheduled.
async fn promote_loop(
    pool: PgPool,
    poll: Duration,
    wakeup: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    const BATCH: i64 = 5_000;
    loop {
        let mut pause = poll;
        match lease::promote(&pool, BATCH).await {
            Ok(pass) if pass.promoted == BATCH => continue, // more are due right now
            Ok(pass) => {
                if let Some(next) = pass.next_run_at {
                    let until_next = (next - chrono::Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO);
                    pause = pause.min(until_next);
                }
            }
            Err(error) => tracing::warn!(%error, "promoting scheduled jobs failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wakeup.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The pool the queue's own statements run on: the handlers' pool's settings, plus a server-side deadline on
/// every statement. Connections: one claim per queue, the completer's flushes, the promoter and maintenance.
fn queue_pool(handlers: &PgPool, queues: usize) -> PgPool {
    let options = lease::with_server_deadline(&handlers.connect_options(), lease::SERVER_DEADLINE);
    PgPoolOptions::new()
        .max_connections((queues + completer::FLUSHES_IN_FLIGHT as usize + 3) as u32)
        // No ping before every checkout: it doubled the round trips of each claim and ack (see `db.rs`).
        .test_before_acquire(false)
        .acquire_timeout(handlers.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// Heartbeats on a connection of its own, so that nothing else this process does (a rescue blocked by a table
/// lock, every pooled connection busy) can delay them: a worker that stops heartbeating loses its leases. The
/// statement's deadline is one interval: a heartbeat that cannot get through is dropped and the next one sent
/// on a fresh connection, rather than queued. When no connection of its own can be opened (the server is at
/// `max_connections`), it borrows one from the queue's pool rather than fall silent. Each answered heartbeat
/// extends what `liveness.rs` can prove.
///
/// It deliberately runs on the same runtime as the handlers: if a stuck handler wedges every thread, the
/// heartbeat stops too and the rest of the fleet rescues this worker's jobs, which is what should happen.
async fn heartbeat_loop(
    pool: PgPool,
    identity: WorkerIdentity,
    every: Duration,
    liveness: Arc<Liveness>,
    stop: CancellationToken,
) {
    // The queue pool's options, whose `statement_timeout` is replaced by one interval.
    let options = lease::with_server_deadline(&pool.connect_options(), every);
    let deadline = every + Duration::from_secs(1);
    let mut connection: Option<PgConnection> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if connection.is_none() {
            match lease::within(every, PgConnection::connect_with(&options)).await {
                Ok(fresh) => connection = Some(fresh),
                Err(error) => tracing::warn!(%error, "heartbeat: cannot open its own connection"),
            }
        }
        let sent = std::time::Instant::now();
        let beat = match connection.as_mut() {
            Some(conn) => lease::heartbeat(&mut *conn, &identity, deadline).await,
            None => lease::heartbeat(&pool, &identity, deadline).await,
        };
        match beat {
            Ok(()) => liveness.heartbeat_answered(sent),
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed");
                connection = None; // its state is unknown after a timeout: start afresh
            }
        }
    }
    if let Some(conn) = connection {
        let _ = conn.close().await;
    }
}

/// Reconciliation of this worker's leases, rescue of other workers' expired leases, and reaping of workers
/// long gone. Each statement has a deadline, so a pass ends even when a lock blocks it.
async fn maintain_loop(
    pool: PgPool,
    worker: uuid::Uuid,
    ledger: Arc<Ledger>,
    options: WorkerOptions,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(options.rescue_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Shutdown does not wait for a pass stuck behind a lock: each statement's server deadline ends it.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = maintain(&pool, worker, &ledger, &options) => {}
        }
    }
}

/// One maintenance pass.
async fn maintain(pool: &PgPool, worker: uuid::Uuid, ledger: &Ledger, options: &WorkerOptions) {
    reconcile(pool, worker, ledger).await;
    match lease::rescue(pool, options.lease).await {
        Ok(pass) if pass.returned + pass.dead > 0 => {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            LEASE_RESCUES
                .with_label_values(&["returned"])
                .inc_by(count(pass.returned));
            LEASE_RESCUES
                .with_label_values(&["dead_lettered"])
                .inc_by(count(pass.dead));
            tracing::warn!(
                returned = pass.returned,
                dead = pass.dead,
                "rescued jobs with expired leases"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "rescuing expired leases failed"),
    }
    // A worker silent for several leases is gone; forget it so the fleet view stays true.
    if let Err(error) = lease::reap_workers(pool, options.lease * 3).await {
        tracing::warn!(%error, "reaping dead workers failed");
    }
}

/// Gives back the leases the database says this worker holds but the worker does not know of (see
/// `ledger.rs`): the jobs were never handed to a handler, so their attempt is refunded.
async fn reconcile(pool: &PgPool, worker: uuid::Uuid, ledger: &Ledger) {
    let leased = match lease::leases_of(pool, worker).await {
        Ok(leased) => leased,
        Err(error) => {
            tracing::warn!(%error, "listing this worker's leases failed");
            return;
        }
    };
    let orphans = ledger.orphans(leased);
    if orphans.is_empty() {
        return;
    }
    // A job settled between the two reads looks orphaned too; its token is gone, so releasing it does nothing.
    match lease::release(pool, &orphans).await {
        Ok(0) => {}
        Ok(released) => tracing::warn!(
            released,
            "gave back jobs leased to this worker by a claim whose answer never reached it"
        ),
        Err(error) => tracing::warn!(%error, "giving back orphaned leases failed; will retry"),
    }
}

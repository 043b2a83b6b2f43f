//! The worker process: everything that turns rows in `herald_jobs` into handler calls.
//!
//! Tasks inside one process:
//! * **wakeups**: one LISTEN connection; NOTIFYs wake the queue they name.
//! * **promoter**: makes due scheduled jobs available, sleeping until the next one is due (or the poll interval).
//! * **maintenance**: heartbeat (the registry row that keeps this worker's leases valid), rescue of expired
//!   leases, reaping dead workers.
//! * **one runner per queue**: claim batches (`runner.rs`), run handlers on an apalis worker (`executor.rs`).
//! * **completer**: batched acks (see `completer.rs`).
//!
//! Database trouble never ends the process: every loop logs, backs off and tries again.

mod completer;
mod execute;
mod executor;
mod handlers;
mod retry;
mod runner;
mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use handlers::{HandlerFuture, HandlerRegistry, JobContext, JobError, builtin};
pub use retry::RetryPolicy;

use crate::config::{ConfigError, Settings};
use crate::queue::lease::{self, WorkerIdentity};
use crate::queue::types::{JobDefaults, QueueSpec};
use completer::CompleterOptions;
use runner::QueueRunner;
use wakeups::Wakeups;

/// Everything a worker process needs to know, usually built from [`Settings`].
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
}

impl WorkerOptions {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let worker = &settings.worker;
        Ok(Self {
            queues: settings.queue_specs()?,
            batch_size: worker.batch_size,
            lease: Duration::from_secs(worker.lease_secs),
            poll_interval: Duration::from_millis(worker.poll_interval_ms),
            heartbeat_interval: Duration::from_secs(worker.heartbeat_secs),
            rescue_interval: Duration::from_secs(worker.rescue_interval_secs.max(1)),
            shutdown_grace: Duration::from_secs(worker.shutdown_grace_secs),
            ack_flush: Duration::from_millis(worker.ack_flush_ms),
            ack_batch: worker.ack_batch,
            defaults: settings.job_defaults(),
            retry: settings.retry_policy(),
        })
    }
}

/// Runs a worker until `shutdown` fires, then shuts down gracefully: stop claiming, release unstarted jobs,
/// let running handlers finish (up to the grace period), flush acks, leave the registry.
pub async fn run(
    pool: PgPool,
    options: WorkerOptions,
    registry: HandlerRegistry,
    shutdown: CancellationToken,
) {
    let identity = WorkerIdentity::of_this_process(
        options.queues.iter().map(|q| q.name.to_string()).collect(),
        options.queues.iter().map(|q| q.concurrency as i32).sum(),
    );
    tracing::info!(worker = %identity.id, queues = ?identity.queues, "worker starting");
    let background = CancellationToken::new();
    let wakeups = Arc::new(Wakeups::new(options.queues.iter().map(|q| q.name.as_str())));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(Arc::clone(&wakeups).listen(pool.clone(), background.clone()));
    tasks.spawn(promote_loop(
        pool.clone(),
        options.poll_interval,
        wakeups.promoter(),
        background.clone(),
    ));
    tasks.spawn(maintain_loop(
        pool.clone(),
        identity.clone(),
        options.clone(),
        background.clone(),
    ));

    let (acks, ack_rx) = mpsc::channel(options.ack_batch * 4);
    let completer_options = CompleterOptions {
        flush_every: options.ack_flush,
        max_batch: options.ack_batch,
        priority_aging: options.defaults.priority_aging,
    };
    let completer = tokio::spawn(completer::run(pool.clone(), ack_rx, completer_options));

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
        };
        runners.spawn(runner.run(shutdown.clone()));
    }
    drop(acks);
    runners.join_all().await;
    // Every runner dropped its sender: the completer flushes what is left and returns. If the database is down,
    // do not wait forever: unflushed jobs run again after their lease (at-least-once still holds).
    match tokio::time::timeout(options.shutdown_grace + Duration::from_secs(30), completer).await {
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

/// Heartbeat (keeps this worker's leases valid) and, less often, rescue of other workers' expired leases.
async fn maintain_loop(
    pool: PgPool,
    identity: WorkerIdentity,
    options: WorkerOptions,
    stop: CancellationToken,
) {
    let mut heartbeat = tokio::time::interval(options.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rescue = tokio::time::interval(options.rescue_interval);
    rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = heartbeat.tick() => {
                if let Err(error) = lease::heartbeat(&pool, &identity).await {
                    tracing::warn!(%error, "heartbeat failed");
                }
            }
            _ = rescue.tick() => {
                match lease::rescue(&pool, options.lease).await {
                    Ok(pass) if pass.returned + pass.dead > 0 => {
                        tracing::warn!(returned = pass.returned, dead = pass.dead, "rescued jobs with expired leases");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "rescuing expired leases failed"),
                }
                // A worker silent for several leases is gone; forget it so the fleet view stays true.
                if let Err(error) = lease::reap_workers(&pool, options.lease * 3).await {
                    tracing::warn!(%error, "reaping dead workers failed");
                }
            }
        }
    }
}

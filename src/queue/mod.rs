//! herald's durable job queue on PostgreSQL.
//!
//! * [`enqueue`](mod@enqueue): insert one job or a batch in one statement, inside the caller's transaction if it wants.
//! * [`lease`]: claim, settle (ack/retry/dead-letter), release, promote scheduled jobs, rescue expired leases,
//!   heartbeat. The worker runtime drives these; tests call them directly.
//! * [`admin`]: queue pause/resume and stats, job lookup and cancel, the worker fleet.
//! * [`dead_letters`]: list, replay, purge.
//! * [`daily`]: per-day aggregates of finished jobs, for the clock's rollups.
//! * [`settings`](WorkerSettings): `[worker]` and `[jobs]`.
//! * [`worker`]: the process that runs handlers: wakeups, claiming, the apalis executor, batched acks, shutdown.
//!
//! Guarantees (README "Guarantees"): a job's handler runs at least once; its completion is recorded exactly once
//! (a stale ack is rejected by its lease token); a crash loses no job (an expired lease returns it to the queue).

pub mod admin;
pub mod daily;
pub mod dead_letters;
pub mod enqueue;
pub mod lease;
pub mod metrics;
pub mod producers;
pub mod retention;
mod settings;
mod sql;
pub mod stats;
mod types;
pub mod worker;

pub use enqueue::{enqueue, enqueue_many};
pub use settings::{JobSettings, WorkerSettings, parse_queue_specs};
pub use types::*;
pub use worker::{HandlerRegistry, JobContext, JobError, RetryPolicy};

/// Errors from the queue's operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

impl QueueError {
    /// The database refused the values sent (SQLSTATE classes 22 "data exception" and 23 "integrity
    /// constraint"): sending the same statement again cannot succeed, unlike a lost connection.
    pub fn is_refused_data(&self) -> bool {
        match self {
            QueueError::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            QueueError::Database(sqlx::Error::Encode(_)) => true,
            _ => false,
        }
    }
}

/// The queue's tables whose rows are updated or deleted all day, for the clock's housekeeping vacuum. (Not the
/// history: rows are only appended to it, and retention drops its partitions instead of deleting rows.)
pub const CHURNED_TABLES: &[&str] = &["herald_jobs", "herald_idempotency_keys", "herald_workers"];

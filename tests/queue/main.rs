//! The job queue: enqueueing, the lease life cycle statement by statement, the worker runtime in-process, and
//! crashes (a worker process killed, PostgreSQL restarted). One test binary; each module was a binary of its own.

/// The helpers in tests/common: the base every binary uses (databases, settings, workers, polling, processes).
#[path = "../common"]
mod common {
    mod base;
    pub use base::*;
}

mod crash;
mod enqueue;
mod lease;
mod observability;
mod worker;

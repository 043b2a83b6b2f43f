//! A Rust service that runs the standard herald worker with a job kind of its own.
//!
//! ```sh
//! DATABASE_URL=postgres://… cargo run --example custom_worker
//! herald enqueue --kind example.greet --payload '{"name":"Ada"}'
//! ```
//!
//! The worker serves `worker.queues` from the usual settings (config/, `HERALD_*`), runs `example.greet` jobs
//! with the handler below and every built-in kind and workflow node beside them, and shuts down gracefully on
//! SIGTERM or Ctrl-C, as `herald worker` does.

use herald::config::Settings;
use herald::queue::{HandlerRegistry, Job, JobError};
use serde::{Deserialize, Serialize};

/// The job's payload; `KIND` routes it to its handler.
#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
}

impl Job for Greet {
    const KIND: &'static str = "example.greet";
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    herald::telemetry::init();
    let mut kinds = HandlerRegistry::new();
    kinds.register(|job: Greet, _ctx| async move {
        if job.name.is_empty() {
            // Permanent: retrying cannot fix the payload, so it goes to the dead letters at once.
            return Err(JobError::permanent("no name to greet"));
        }
        tracing::info!(name = %job.name, "hello");
        Ok(())
    });
    herald::app::Worker::new(Settings::load()?)
        .handlers(kinds)
        .run()?;
    Ok(())
}

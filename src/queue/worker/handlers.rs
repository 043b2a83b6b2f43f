//! Handlers: the code that runs a job of a given kind, and the typed error it answers with.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::queue::types::{Job, JobId, QueueName};

/// How a handler says an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Try again after the retry policy's exponential backoff (with jitter).
    #[error("{0}")]
    Retry(String),
    /// Try again after exactly this long (a provider's Retry-After, say).
    #[error("{1} (retry after {0:?})")]
    RetryAfter(Duration, String),
    /// The work could not start for a reason outside the job (every provider's circuit is open, no rate permit):
    /// try again after this long without spending an attempt.
    #[error("{1} (snoozed for {0:?})")]
    Snooze(Duration, String),
    /// Retrying cannot help: dead-letter the job now.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry(message.into())
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }
}

/// What a handler knows about the attempt it is running.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: JobId,
    pub queue: QueueName,
    pub kind: String,
    /// 1 on the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    /// When this attempt was due.
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
type ErasedHandler = Arc<dyn Fn(serde_json::Value, JobContext) -> HandlerFuture + Send + Sync>;

/// Maps job kinds to handlers. Every worker process of one binary registers the same kinds.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, ErasedHandler>,
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a handler for a typed job. A payload that does not decode as `J` is dead-lettered at once
    /// (retrying would not change the bytes).
    pub fn register<J, F, Fut>(&mut self, handler: F) -> &mut Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register_raw(J::KIND, move |payload, ctx| {
            let handler = Arc::clone(&handler);
            async move {
                let job: J = serde_json::from_value(payload).map_err(|e| {
                    JobError::Permanent(format!("payload does not decode as {}: {e}", J::KIND))
                })?;
                handler(job, ctx).await
            }
        })
    }

    /// Registers a handler that takes the raw JSON payload.
    pub fn register_raw<F, Fut>(&mut self, kind: &str, handler: F) -> &mut Self
    where
        F: Fn(serde_json::Value, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let erased: ErasedHandler = Arc::new(move |payload, ctx| Box::pin(handler(payload, ctx)));
        self.handlers.insert(kind.to_string(), erased);
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&ErasedHandler> {
        self.handlers.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

/// Kinds every herald worker understands, for smoke tests, benchmarks and operations.
pub mod builtin {
    use super::*;

    /// Does nothing; the benchmark's job.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Noop {}
    impl Job for Noop {
        const KIND: &'static str = "herald.noop";
    }

    /// Sleeps `ms` milliseconds: a stand-in for slow work in crash and shutdown tests.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Sleep {
        pub ms: u64,
    }
    impl Job for Sleep {
        const KIND: &'static str = "herald.sleep";
    }

    /// Logs its payload at INFO: what `herald enqueue` sends by default.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct Log(pub serde_json::Value);
    impl Job for Log {
        const KIND: &'static str = "herald.log";
    }

    /// Burns CPU for `ms` milliseconds without ever yielding: a drill for a handler stuck in a CPU loop (a
    /// runaway template, say). Registered only with `worker.drills = true`.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Spin {
        pub ms: u64,
    }
    impl Job for Spin {
        const KIND: &'static str = "herald.spin";
    }

    /// Blocks its thread for `ms` milliseconds (`std::thread::sleep`): a drill for a handler stuck in a blocking
    /// call. Registered only with `worker.drills = true`.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Block {
        pub ms: u64,
    }
    impl Job for Block {
        const KIND: &'static str = "herald.block";
    }

    /// The longest a drill holds its thread, whatever its payload asks.
    const MAX_DRILL: Duration = Duration::from_secs(3600);

    /// The fault-drill kinds: handlers that misbehave on purpose, so operators and the tests can see what the
    /// engine does with a handler that never yields. Off by default: one such job holds a worker thread.
    pub fn register_drills(registry: &mut HandlerRegistry) {
        registry.register(|job: Spin, _| async move {
            let until = std::time::Instant::now() + Duration::from_millis(job.ms).min(MAX_DRILL);
            let mut spins = 0u64;
            while std::time::Instant::now() < until {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
            Ok(())
        });
        registry.register(|job: Block, _| async move {
            std::thread::sleep(Duration::from_millis(job.ms).min(MAX_DRILL));
            Ok(())
        });
    }

    pub fn register(registry: &mut HandlerRegistry) {
        registry.register(|_: Noop, _| async { Ok(()) });
        registry.register(|job: Sleep, _| async move {
            tokio::time::sleep(Duration::from_millis(job.ms)).await;
            Ok(())
        });
        registry.register(|job: Log, ctx: JobContext| async move {
            tracing::info!(job_id = ctx.id, queue = %ctx.queue, attempt = ctx.attempt, payload = %job.0, "herald.log");
            Ok(())
        });
    }
}

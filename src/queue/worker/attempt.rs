//! Running one attempt: find the handler, catch panics, and turn whatever happened into a [`Settlement`] for the
//! completer. The job's timeout is enforced from outside, by the executor (`backend.rs`), which awaits this on
//! another task: that works for a handler that never yields too.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use super::handlers::{HandlerRegistry, JobContext, JobError};
use super::retry::RetryPolicy;
use crate::queue::lease::{AttemptError, ClaimedJob, Settlement};

pub async fn execute(
    job: ClaimedJob,
    registry: Arc<HandlerRegistry>,
    retry: RetryPolicy,
) -> Settlement {
    let attempt = job.attempt;
    let error = |kind: &'static str, message: String| AttemptError::new(attempt, kind, &message);
    let retry_later = |kind, message| Settlement::Retry {
        delay: retry.delay(attempt),
        error: error(kind, message),
    };

    let Some(handler) = registry.get(&job.kind) else {
        let message = format!("no handler is registered for kind `{}`", job.kind);
        return Settlement::Dead {
            error: error("no_handler", message),
        };
    };
    let context = JobContext {
        id: job.id,
        queue: job.queue,
        kind: job.kind,
        attempt,
        max_attempts: job.max_attempts,
        run_at: job.run_at,
        created_at: job.created_at,
    };
    // A handler may panic while building its future as well as while it runs; both count as a failed attempt.
    let started = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(job.payload, context)))
    {
        Ok(future) => future,
        Err(panic) => return retry_later("panic", panic_message(panic.as_ref())),
    };
    match AssertUnwindSafe(started).catch_unwind().await {
        Err(panic) => retry_later("panic", panic_message(panic.as_ref())),
        Ok(Ok(())) => Settlement::Completed,
        Ok(Err(JobError::Retry(message))) => retry_later("error", message),
        Ok(Err(JobError::RetryAfter(delay, message))) => Settlement::Retry {
            delay,
            error: error("error", message),
        },
        Ok(Err(JobError::Snooze(delay, message))) => Settlement::Snoozed {
            delay,
            error: error("snoozed", message),
        },
        Ok(Err(JobError::Permanent(message))) => Settlement::Dead {
            error: error("permanent", message),
        },
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into());
    format!("handler panicked: {text}")
}

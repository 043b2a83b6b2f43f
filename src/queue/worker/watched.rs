//! Watching an attempt's task from outside: abort it when the attempt is dropped, and tell a handler that cannot
//! be stopped (inside one poll of its future since its timeout) from one that was merely not scheduled in time to
//! see its abort. Used by `backend.rs`.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Context;

/// Whether a task is inside a poll of its future, and how many polls it has begun: what tells a handler that
/// cannot be stopped (inside one poll all along) from one that was merely not scheduled in time to see its abort.
#[derive(Default)]
pub struct PollProbe {
    inside: AtomicBool,
    polls: AtomicU64,
}

impl PollProbe {
    /// (inside a poll, polls begun), read together closely enough for the question asked of them.
    pub fn read(&self) -> (bool, u64) {
        (
            self.inside.load(Ordering::Acquire),
            self.polls.load(Ordering::Acquire),
        )
    }
}

/// Runs `future`, recording each of its polls in `probe`. The future is pinned inside this one (on the task's own
/// allocation), so probing adds no allocation per attempt.
pub async fn probed<F: Future>(future: F, probe: Arc<PollProbe>) -> F::Output {
    let mut future = pin!(future);
    poll_fn(move |cx: &mut Context<'_>| {
        probe.polls.fetch_add(1, Ordering::AcqRel);
        probe.inside.store(true, Ordering::Release);
        let result = future.as_mut().poll(cx);
        probe.inside.store(false, Ordering::Release);
        result
    })
    .await
}

/// Aborts the handler's task when the attempt is dropped (shutdown past the grace period), as dropping an inline
/// future used to. A handler that never yields cannot be aborted; it runs on until the process exits.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

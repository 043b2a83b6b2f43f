//! Watching an attempt's task from outside: abort it when the attempt is dropped, and tell a handler that cannot
//! be stopped (inside one poll of its future since its timeout) from one that was merely not scheduled in time to
//! see its abort. Used by `executor.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

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

/// A future whose polls are recorded in a [`PollProbe`].
pub struct Probed<F> {
    pub future: Pin<Box<F>>,
    pub probe: Arc<PollProbe>,
}

impl<F: Future> Future for Probed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.probe.polls.fetch_add(1, Ordering::AcqRel);
        self.probe.inside.store(true, Ordering::Release);
        let result = self.future.as_mut().poll(cx);
        self.probe.inside.store(false, Ordering::Release);
        result
    }
}

/// Aborts the handler's task when the attempt is dropped (shutdown past the grace period), as dropping an inline
/// future used to. A handler that never yields cannot be aborted; it runs on until the process exits.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

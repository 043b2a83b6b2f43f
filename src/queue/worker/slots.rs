//! The room a queue's fetcher and executor share: how many claimed-but-unfinished jobs it may hold, and who is
//! waiting. Its own file so that the fetcher (`runner.rs`) and the executor (`backend.rs`) both use it without
//! importing each other.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Notify, Semaphore};

/// State the fetcher and the executor share.
pub struct Slots {
    /// Room for claimed-but-unfinished jobs.
    pub capacity: Arc<Semaphore>,
    /// Signalled whenever a job finishes (room was freed).
    pub room_freed: Notify,
    /// Jobs handed to the executor but not started.
    pub waiting: AtomicUsize,
}

impl Slots {
    /// Room for `capacity` claimed-but-unfinished jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: Arc::new(Semaphore::new(capacity)),
            room_freed: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }
}

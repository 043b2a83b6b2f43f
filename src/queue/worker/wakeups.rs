//! Wakeups: one LISTEN connection per worker process turns NOTIFYs into in-process signals, so an idle queue
//! starts a new job within milliseconds without polling.
//!
//! If the connection drops, it reconnects with backoff and then wakes everyone once, because notifications sent
//! while it was away are lost.
//!
//! A queue's wakeup also carries a hint for its claims: the lowest `sort_key` announced since the fetcher last
//! looked ([`QueueSignal::take_floor`]), or "search everything" when a notification did not say (see `runner.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::sql::{CHANNEL, SCHEDULED_WAKEUP};

/// The signals a worker process waits on.
#[derive(Debug, Default)]
pub struct Wakeups {
    queues: HashMap<String, Arc<QueueSignal>>,
    promoter: Arc<Notify>,
}

/// A queue's wakeup, and the lowest `sort_key` (microseconds since the epoch) announced since its fetcher last
/// took it: `i64::MAX` when nothing was announced, `i64::MIN` when a notification named no key (search all).
#[derive(Debug)]
pub struct QueueSignal {
    pub notify: Notify,
    lowest: AtomicI64,
}

impl Default for QueueSignal {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            lowest: AtomicI64::new(i64::MAX),
        }
    }
}

impl QueueSignal {
    fn announce(&self, sort_key_micros: i64) {
        self.lowest.fetch_min(sort_key_micros, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// The lowest key announced since the last call (`i64::MAX`: none; `i64::MIN`: search all), and resets it.
    pub fn take_floor(&self) -> i64 {
        self.lowest.swap(i64::MAX, Ordering::AcqRel)
    }
}

impl Wakeups {
    pub fn new<'a>(queues: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            queues: queues
                .into_iter()
                .map(|q| (q.to_string(), Arc::new(QueueSignal::default())))
                .collect(),
            promoter: Arc::new(Notify::new()),
        }
    }

    pub fn queue(&self, name: &str) -> Arc<QueueSignal> {
        self.queues.get(name).cloned().unwrap_or_default()
    }

    pub fn promoter(&self) -> Arc<Notify> {
        Arc::clone(&self.promoter)
    }

    fn dispatch(&self, payload: &str) {
        if payload == SCHEDULED_WAKEUP {
            self.promoter.notify_one();
            return;
        }
        // `queue@micros`, or a bare queue name (no key known: search all). Queue names cannot contain '@'.
        let (queue, lowest) = match payload.rsplit_once('@') {
            Some((queue, micros)) => (queue, micros.parse().unwrap_or(i64::MIN)),
            None => (payload, i64::MIN),
        };
        if let Some(signal) = self.queues.get(queue) {
            signal.announce(lowest);
        }
    }

    fn wake_all(&self) {
        self.promoter.notify_one();
        self.queues.values().for_each(|s| s.announce(i64::MIN));
    }

    /// Listens until `shutdown` fires (see [`crate::db::listen`]).
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        crate::db::listen(
            &pool,
            CHANNEL,
            "wakeups",
            &shutdown,
            |payload| self.dispatch(payload),
            || self.wake_all(),
        )
        .await;
    }
}

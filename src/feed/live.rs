//! Live feeds: the API process's one `LISTEN herald_feed` connection, and the streams waiting on it.
//!
//! Every write to a recipient's feed (a new item, a mark) runs `pg_notify('herald_feed', <recipient>)` in its own
//! transaction, so it arrives after the commit, at every API process of the fleet. Each open stream holds a watch
//! on its recipient's counter here; a notification bumps it, and the stream reads what is new from the table (the
//! notification carries no data: a stream that missed several reads them all at once). When the connection drops,
//! notifications may be lost: on reconnecting every watch is bumped, so every stream looks once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The notification channel.
pub const CHANNEL: &str = "herald_feed";

/// The streams of one API process, by recipient.
pub struct Live {
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    open: AtomicUsize,
    max_streams: usize,
    per_recipient: usize,
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This process has `feed.max_streams` open.
    Full,
    /// The recipient has `feed.max_streams_per_recipient` open here.
    RecipientFull,
}

/// One open stream's place: dropped when the stream ends (the client went away), which frees it.
pub struct Subscription {
    live: Arc<Live>,
    recipient: String,
    pub changes: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.live.open.fetch_sub(1, Ordering::Relaxed);
        let mut watchers = self.live.watchers.lock().unwrap_or_else(|e| e.into_inner());
        // This subscription's receiver still counts until it is dropped, after this: 1 means it was the last.
        if watchers
            .get(&self.recipient)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            watchers.remove(&self.recipient);
        }
    }
}

impl Live {
    /// Starts listening on `pool` (one connection, held until `shutdown`).
    pub fn start(
        pool: PgPool,
        max_streams: usize,
        per_recipient: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let live = Arc::new(Self {
            watchers: Mutex::default(),
            open: AtomicUsize::new(0),
            max_streams,
            per_recipient,
        });
        let listening = Arc::clone(&live);
        tokio::spawn(async move { listening.listen(pool, shutdown).await });
        live
    }

    /// A place for a new stream of `recipient`, unless this process or this recipient has its most open.
    pub fn subscribe(self: &Arc<Self>, recipient: &str) -> Result<Subscription, Refused> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max_streams {
            return Err(Refused::Full);
        }
        let sender = watchers
            .entry(recipient.to_string())
            .or_insert_with(|| watch::channel(0).0);
        if sender.receiver_count() >= self.per_recipient {
            return Err(Refused::RecipientFull);
        }
        // (An entry made just now has no receiver yet: it gets this one.)
        let changes = sender.subscribe();
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            live: Arc::clone(self),
            recipient: recipient.to_string(),
            changes,
        })
    }

    /// Streams open in this process.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn wake(&self, recipient: &str) {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = watchers.get(recipient) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn wake_all(&self) {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for sender in watchers.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    async fn listen(&self, pool: PgPool, shutdown: CancellationToken) {
        crate::db::listen(
            &pool,
            CHANNEL,
            "feed",
            &shutdown,
            |recipient| self.wake(recipient),
            || self.wake_all(),
        )
        .await;
    }
}

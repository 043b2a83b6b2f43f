//! Wakeups: one LISTEN connection per worker process turns NOTIFYs into in-process signals, so an idle queue
//! starts a new job within milliseconds without polling.
//!
//! If the connection drops, it reconnects with backoff and then wakes everyone once, because notifications sent
//! while it was away are lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::sql::{CHANNEL, SCHEDULED_WAKEUP};

/// The signals a worker process waits on.
#[derive(Debug, Default)]
pub struct Wakeups {
    queues: HashMap<String, Arc<Notify>>,
    promoter: Arc<Notify>,
}

impl Wakeups {
    pub fn new<'a>(queues: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            queues: queues
                .into_iter()
                .map(|q| (q.to_string(), Arc::new(Notify::new())))
                .collect(),
            promoter: Arc::new(Notify::new()),
        }
    }

    pub fn queue(&self, name: &str) -> Arc<Notify> {
        self.queues.get(name).cloned().unwrap_or_default()
    }

    pub fn promoter(&self) -> Arc<Notify> {
        Arc::clone(&self.promoter)
    }

    fn dispatch(&self, payload: &str) {
        if payload == SCHEDULED_WAKEUP {
            self.promoter.notify_one();
        } else if let Some(notify) = self.queues.get(payload) {
            notify.notify_one();
        }
    }

    fn wake_all(&self) {
        self.promoter.notify_one();
        self.queues.values().for_each(|n| n.notify_one());
    }

    /// Listens until `shutdown` fires.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.listen_once(&pool, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "wakeup listener lost its connection");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn listen_once(
        &self,
        pool: &PgPool,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        // Anything sent while we were not listening is lost: look once.
        self.wake_all();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = listener.try_recv() => match message? {
                    Some(notification) => self.dispatch(notification.payload()),
                    // PgListener reconnected under us: treat it as a new connection so we catch up.
                    None => return Err(sqlx::Error::Protocol("listener connection was re-established".into())),
                },
            }
        }
    }
}

//! The fleet at a glance, read from the tables the fleet keeps (no process is asked anything): what
//! `herald status` prints and the dashboard's overview shows, so both read the same rows the same way.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::alerts::{self, Alert};
use crate::bridge::{self, StoredOffset};
use crate::channels::circuits::{self, CircuitRecord};
use crate::clock::schedules::{self, ScheduleTick};
use crate::queue::admin::{self, QueueStats, WorkerView};
use crate::queue::{self, QueueError};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The fleet now.
#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub at: DateTime<Utc>,
    /// Each live worker with the jobs it holds a lease on.
    pub workers: Vec<(WorkerView, i64)>,
    /// Each queue with the attempts it settled in the last minute.
    pub queues: Vec<(QueueStats, i64)>,
    /// Who last counted the queue depths for the metrics, and how long ago (see `queue::stats`).
    pub stats_leader: Option<(String, f64)>,
    pub circuits: Vec<CircuitRecord>,
    pub bridge: Vec<StoredOffset>,
    pub schedules: Vec<ScheduleTick>,
    /// herald's alerts about itself: firing and pending, then resolved in the last day.
    pub alerts: Vec<Alert>,
}

pub async fn read(pool: &PgPool) -> Result<FleetStatus, StatusError> {
    let leases: HashMap<uuid::Uuid, i64> =
        admin::leases_per_worker(pool).await?.into_iter().collect();
    let workers = admin::list_workers(pool)
        .await?
        .into_iter()
        .map(|worker| {
            let held = leases.get(&worker.id).copied().unwrap_or(0);
            (worker, held)
        })
        .collect();
    let finished: HashMap<String, i64> = admin::finished_per_queue(pool, 60)
        .await?
        .into_iter()
        .collect();
    let queues = admin::queue_stats(pool)
        .await?
        .into_iter()
        .map(|queue| {
            let per_minute = finished.get(&queue.name).copied().unwrap_or(0);
            (queue, per_minute)
        })
        .collect();
    let stats_leader = queue::stats::read(pool)
        .await?
        .into_iter()
        .min_by(|a, b| a.age_secs.total_cmp(&b.age_secs))
        .map(|row| (row.computed_by, row.age_secs));
    Ok(FleetStatus {
        at: Utc::now(),
        workers,
        queues,
        stats_leader,
        circuits: circuits::list(pool).await?,
        bridge: bridge::stored_offsets(pool).await?,
        schedules: schedules::last_ticks(pool).await?,
        alerts: alerts::list(pool).await?,
    })
}

//! Publishing circuit states and the fleet size: the two background tasks of a sending process.
//!
//! Breakers live in each worker process (a provider that fails for one host may work for another), but operators
//! need one view: every transition is written to `herald_provider_circuits`, which `GET /v1/providers` reads.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::breaker::{CircuitState, Transition};
use super::chain::ProviderFleet;
use super::sql;

/// Writes each circuit transition of this process (`process_id`) to the database, in order.
pub fn spawn_recorder(pool: PgPool, process_id: Uuid) -> mpsc::UnboundedSender<Transition> {
    let (sender, mut transitions) = mpsc::unbounded_channel::<Transition>();
    tokio::spawn(async move {
        while let Some(transition) = transitions.recv().await {
            tracing::warn!(
                provider = transition.provider,
                state = transition.state.as_str(),
                failures = transition.consecutive_failures,
                error = transition.last_error.as_deref().unwrap_or(""),
                "provider circuit changed"
            );
            if let Err(error) = record(&pool, process_id, &transition).await {
                tracing::warn!(%error, "cannot record a circuit transition");
            }
        }
    });
    sender
}

pub async fn record(
    pool: &PgPool,
    process_id: Uuid,
    transition: &Transition,
) -> Result<(), sqlx::Error> {
    let open_ms = transition
        .open_for
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    sqlx::query(sql::RECORD_CIRCUIT)
        .bind(transition.provider)
        .bind(process_id)
        .bind(transition.state.as_str())
        .bind(i32::try_from(transition.consecutive_failures).unwrap_or(i32::MAX))
        .bind(open_ms)
        .bind(&transition.last_error)
        .execute(pool)
        .await
        .map(|_| ())
}

/// One process's circuit for one provider, as recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CircuitRecord {
    pub provider: String,
    pub worker_id: Uuid,
    /// `closed`, `open` or `half_open`.
    pub state: CircuitState,
    pub consecutive_failures: i32,
    pub open_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl CircuitRecord {
    /// Open and still cooling down at `now` (an open circuit whose cooldown has passed is about to half-open: it no
    /// longer counts as open).
    pub fn is_open_at(&self, now: DateTime<Utc>) -> bool {
        self.state == CircuitState::Open && self.open_until.is_some_and(|until| until > now)
    }
}

pub async fn list(pool: &PgPool) -> Result<Vec<CircuitRecord>, sqlx::Error> {
    sqlx::query_as(sql::LIST_CIRCUITS).fetch_all(pool).await
}

/// Counts the live workers serving `queue` every `every` and re-divides the rate limits when the count changes.
pub fn spawn_fleet_refresh(
    pool: PgPool,
    fleet: Arc<ProviderFleet>,
    queue: String,
    every: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match crate::queue::admin::live_workers_serving(&pool, &queue, every * 3).await {
                Ok(count) => {
                    if fleet.limits.set_workers(count) {
                        tracing::info!(live_workers = count, "provider rate shares re-divided");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot count live workers; keeping the current shares")
                }
            }
        }
    });
}

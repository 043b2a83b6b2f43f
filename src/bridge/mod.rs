//! The Kafka bridge: topic events become jobs, workflow runs and events for wait-for-events nodes.
//!
//! * [`routes`]: which message becomes what (config `[[bridge.routes]]`).
//! * [`store`]: a batch's results and its partitions' next offsets, written in one Postgres transaction.
//! * [`consumer`]: the consumer-group member: batching, rebalances (store, then give up; start from Postgres),
//!   backpressure (pause the topics feeding a deep queue), lag.
//! * [`dead_letters`]: messages that could not be decoded or routed, listed and replayed.
//!
//! Guarantee: a message's jobs/runs/events exist if and only if its offset is stored in Postgres, and a batch
//! skips messages below the stored offset. So a crash anywhere neither loses a message nor stores it twice;
//! `docs/bridge.md` walks through why.

pub mod consumer;
pub mod dead_letters;
pub mod message;
pub mod metrics;
pub mod retention;
pub mod routes;
mod settings;
mod sql;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use consumer::ConsumerOptions;
pub use message::RawMessage;
pub use routes::{RouteConfigError, RouteSettings, Routed, Router};
pub use store::{BatchOutcome, BatchWriter};

pub use settings::{BridgeSettings, LibrdkafkaSettings, StartFrom};

use crate::queue::{JobDefaults, QueueError};
use crate::workflow::{Engine, WorkflowError};
use consumer::BridgeContext;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Route(#[from] RouteConfigError),
    #[error("bridge: {0}")]
    Config(String),
}

/// How long a stopping bridge waits for librdkafka to leave the group and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);

/// The batch writer for `[bridge]`.
pub fn writer(
    settings: &BridgeSettings,
    defaults: JobDefaults,
    pool: PgPool,
    engine: Arc<Engine>,
) -> Result<BatchWriter, BridgeError> {
    let router = Router::new(&settings.routes)?;
    Ok(BatchWriter::new(
        pool,
        settings.group_id.clone(),
        router,
        engine,
        defaults,
    ))
}

/// Refuses to start without brokers or routes (checked before anything connects).
pub fn check_configured(settings: &BridgeSettings) -> Result<(), BridgeError> {
    if !settings.enabled() {
        return Err(BridgeError::Config(
            "no brokers: set bridge.brokers (HERALD_BRIDGE__BROKERS)".into(),
        ));
    }
    // The routes themselves were checked when the settings loaded.
    if settings.routes.is_empty() {
        return Err(BridgeError::Config(
            "no routes: add [[bridge.routes]] (see docs/bridge.md)".into(),
        ));
    }
    Ok(())
}

/// Runs the bridge until `shutdown`: joins the consumer group, stores batches, and on shutdown stores the batch
/// in hand, leaves the group and closes the consumer.
pub async fn run(
    settings: &BridgeSettings,
    defaults: JobDefaults,
    pool: PgPool,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) -> Result<(), BridgeError> {
    check_configured(settings)?;
    let workflow_queue = engine.node_queue().to_string();
    let writer = Arc::new(writer(settings, defaults, pool, engine)?);
    let topics = writer.router().topics();
    let options = ConsumerOptions::from_settings(settings, &workflow_queue);
    let context = BridgeContext::new(
        writer.clone(),
        tokio::runtime::Handle::current(),
        options.clone(),
        shutdown.clone(),
    );
    let consumer: BaseConsumer<BridgeContext> = options
        .client_config(writer.group())
        .create_with_context(context)?;
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_names)?;
    tracing::info!(group = writer.group(), topics = ?topics, "bridge consuming");

    let (done, finished) = tokio::sync::oneshot::channel();
    let thread_shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("herald-bridge".into())
        .spawn(move || {
            consumer::consume(&consumer, &options, &thread_shutdown);
            // Leaving the group revokes the partitions (nothing is pending any more), then librdkafka closes.
            drop(consumer);
            let _ = done.send(());
        })
        .map_err(|e| BridgeError::Config(format!("cannot start the consumer thread: {e}")))?;
    let mut finished = finished;
    tokio::select! {
        ended = &mut finished => {
            if ended.is_err() {
                // The thread ended without saying so: it panicked. Exit with an error so a supervisor restarts us.
                return Err(BridgeError::Config("the consumer thread stopped unexpectedly".into()));
            }
        }
        _ = shutdown.cancelled() => {
            if tokio::time::timeout(CLOSE_TIMEOUT, finished).await.is_err() {
                tracing::warn!("the Kafka consumer did not close in time; exiting anyway (offsets are in Postgres)");
            }
        }
    }
    tracing::info!("bridge stopped");
    Ok(())
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct StoredOffset {
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub next_offset: Option<i64>,
    /// Messages behind the end of the partition when the last batch was stored (NULL until known).
    pub lag: Option<i64>,
    /// Seconds since the offset last moved.
    pub idle_secs: f64,
}

/// Every group's stored offsets (at most 1,000 partitions), for `herald status`.
pub async fn stored_offsets(pool: &sqlx::PgPool) -> Result<Vec<StoredOffset>, sqlx::Error> {
    sqlx::query_as(
        "SELECT group_id, topic, partition, next_offset, greatest(end_offset - next_offset, 0) AS lag, \
                extract(epoch FROM now() - updated_at)::float8 AS idle_secs \
         FROM herald_bridge_offsets ORDER BY group_id, topic, partition LIMIT 1000",
    )
    .fetch_all(pool)
    .await
}

/// The bridge tables whose rows are updated all day, for the clock's housekeeping vacuum.
pub const CHURNED_TABLES: &[&str] = &["herald_bridge_offsets"];

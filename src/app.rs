//! The roles a herald process runs, built the same way for `main` and for the tests.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::channels::Channels;
use crate::config::Settings;
use crate::queue::HandlerRegistry;
use crate::queue::worker::{self, WorkerOptions, builtin};
use crate::workflow::{self, Engine, WorkflowError};

/// The built-in handlers (no-op, sleep, log): what the queue's own tests run.
pub fn handler_registry() -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    builtin::register(&mut registry);
    registry
}

/// Everything a herald worker runs: the built-in handlers plus workflow nodes.
pub fn worker_registry(engine: Arc<Engine>) -> HandlerRegistry {
    let mut registry = handler_registry();
    workflow::register(&mut registry, engine);
    registry
}

/// The workflow engine with the channels from settings (provider adapters are built here: a missing
/// credential fails the start).
pub fn engine(pool: PgPool, settings: &Settings) -> Result<Arc<Engine>, WorkflowError> {
    let channels = Channels::from_settings(settings, &pool)?;
    Ok(Arc::new(Engine::new(pool, settings, channels)?))
}

/// Syncs `workflows.dir` into the database if the folder exists (a worker deployed without it still runs the
/// versions already stored). An invalid definition stops the process: better than running an old version.
pub async fn sync_workflows(engine: &Engine, settings: &Settings) -> Result<(), WorkflowError> {
    let dir = &settings.workflows.dir;
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "no workflow folder; using the versions already stored");
        return Ok(());
    }
    for (file, name, version, saved) in engine.catalog.sync_dir(dir).await? {
        tracing::info!(%file, workflow = %name, version, ?saved, "workflow synced");
    }
    Ok(())
}

/// Runs the API role until `shutdown`, on `listener`.
pub async fn run_api(
    pool: PgPool,
    settings: Settings,
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics =
        crate::metrics::Metrics::new().map_err(|e| std::io::Error::other(e.to_string()))?;
    let state = crate::api::ApiState::new(pool, &settings, metrics, engine);
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "API listening");
    }
    crate::api::serve(listener, state, shutdown).await
}

/// Runs the worker role until `shutdown`.
pub async fn run_worker(
    pool: PgPool,
    engine: Arc<Engine>,
    options: WorkerOptions,
    shutdown: CancellationToken,
) {
    worker::run(pool, options, worker_registry(engine), shutdown).await;
}

/// Runs the Kafka bridge until `shutdown`, serving `/metrics` on `bridge.metrics_listen` if set.
pub async fn run_bridge(
    pool: PgPool,
    settings: &Settings,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) -> Result<(), crate::bridge::BridgeError> {
    let listen = settings.bridge.metrics_listen.trim();
    if !listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            crate::bridge::BridgeError::Config(format!("bridge.metrics_listen {listen}: {e}"))
        })?;
        let metrics = crate::metrics::Metrics::new()
            .map_err(|e| crate::bridge::BridgeError::Config(e.to_string()))?;
        tokio::spawn(crate::metrics::serve(listener, metrics, shutdown.clone()));
    }
    crate::bridge::run(settings, pool, engine, shutdown).await
}

/// Worker options from settings, with command-line overrides applied.
pub fn worker_options(
    settings: &Settings,
    queues: Option<Vec<String>>,
    concurrency: Option<usize>,
) -> Result<WorkerOptions, crate::config::ConfigError> {
    let mut settings = settings.clone();
    if let Some(concurrency) = concurrency {
        settings.worker.concurrency = concurrency;
    }
    if let Some(queues) = queues {
        settings.worker.queues = queues;
    }
    WorkerOptions::from_settings(&settings)
}

//! The roles a herald process runs, built the same way for `main` and for the tests.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::queue::HandlerRegistry;
use crate::queue::worker::{self, WorkerOptions, builtin};

/// The handlers every herald worker registers. Later modules (workflows, channels) add theirs here.
pub fn handler_registry() -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    builtin::register(&mut registry);
    registry
}

/// Runs the API role until `shutdown`, on `listener`.
pub async fn run_api(
    pool: PgPool,
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let metrics =
        crate::metrics::Metrics::new().map_err(|e| std::io::Error::other(e.to_string()))?;
    let state =
        crate::api::ApiState::new(pool, settings.job_defaults(), settings.api.clone(), metrics);
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "API listening");
    }
    crate::api::serve(listener, state, shutdown).await
}

/// Runs the worker role until `shutdown`.
pub async fn run_worker(pool: PgPool, options: WorkerOptions, shutdown: CancellationToken) {
    worker::run(pool, options, handler_registry(), shutdown).await;
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

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM (what process managers send).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight jobs");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

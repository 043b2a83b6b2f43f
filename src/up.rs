//! `herald up`: every role in one process (API, worker, clock, and the Kafka bridge if `bridge.brokers` is set) on
//! `DATABASE_URL`, or on a private PostgreSQL it starts under `embedded_postgres.dir` and stops on exit.

use std::sync::Arc;

use anyhow::Context;

use herald::app::App;
use herald::config::Settings;
use herald::embedded_postgres::EmbeddedPostgres;
use herald::queue::HandlerRegistry;

use crate::WorkerArgs;

pub async fn run(settings: Settings, args: WorkerArgs) -> anyhow::Result<()> {
    let cluster = match &settings.database.url {
        Some(_) => None,
        None => {
            let dir = &settings.embedded_postgres.dir;
            let cluster =
                EmbeddedPostgres::start(dir).context("starting the private PostgreSQL")?;
            tracing::info!(url = %cluster.url(), dir = %dir.display(), "private PostgreSQL is running");
            Some(Arc::new(cluster))
        }
    };
    // A second Ctrl-C (or a wedged runtime) ends the process without unwinding: stop the private cluster first.
    if let Some(cluster) = cluster.as_ref().filter(|c| c.started_here) {
        let cluster = Arc::clone(cluster);
        herald::shutdown::before_forced_exit(move || {
            let _ = cluster.stop();
        });
    }
    let result = match &cluster {
        Some(cluster) => run_roles(settings, &cluster.url(), args).await,
        None => {
            let url = settings.database.url.clone().unwrap_or_default();
            run_roles(settings, &url, args).await
        }
    };
    if let Some(cluster) = cluster.filter(|c| c.started_here) {
        cluster.stop().context("stopping the private PostgreSQL")?;
        tracing::info!("private PostgreSQL stopped");
    }
    result
}

async fn run_roles(settings: Settings, url: &str, args: WorkerArgs) -> anyhow::Result<()> {
    let options = herald::app::worker_options(&settings, args.queues, args.concurrency)?;
    let app = Arc::new(App::boot_at(settings, url).await?);
    let listener = crate::bind(&app.settings).await?;
    let address = listener.local_addr()?;
    let scopes = herald::api::keys::Scope::ALL;
    let (key, _) = herald::api::keys::create(&app.pool, "herald-up-dev", &scopes).await?;
    println!("herald is up: API on http://{address} (docs at /docs), worker and clock running.");
    println!("development API key (all scopes, created for this run): {key}");
    println!("  curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\");
    println!(
        "       -d '{{\"queue\":\"default\",\"kind\":\"herald.log\",\"payload\":{{\"hello\":1}}}}' http://{address}/v1/jobs"
    );
    let settings = &app.settings;
    let grace = settings
        .worker
        .shutdown_grace
        .max(settings.api.shutdown_grace);
    let shutdown = herald::shutdown::on_signal(grace);
    let api = tokio::spawn({
        let (app, shutdown) = (Arc::clone(&app), shutdown.clone());
        async move { app.serve_api(listener, shutdown).await }
    });
    let bridge = if settings.bridge.enabled() {
        println!("Kafka bridge consuming from {}", settings.bridge.brokers);
        let (app, shutdown) = (Arc::clone(&app), shutdown.clone());
        // Not `App::run_bridge`: under `up` the API's /metrics serves the bridge's metrics, so no listener of its own.
        Some(tokio::spawn(async move {
            herald::bridge::run(
                &app.settings.bridge,
                app.settings.jobs.defaults(),
                app.pool.clone(),
                Arc::clone(&app.engine),
                shutdown,
            )
            .await
        }))
    } else {
        None
    };
    let clock = tokio::spawn({
        let (app, shutdown) = (Arc::clone(&app), shutdown.clone());
        async move { app.run_clock(shutdown).await }
    });
    app.run_worker(options, HandlerRegistry::new(), shutdown)
        .await;
    api.await??;
    clock.await??;
    if let Some(bridge) = bridge {
        bridge.await??;
    }
    Ok(())
}

//! `herald up`: every role in one process (API, worker, clock, and the Kafka bridge if `bridge.brokers` is set) on
//! `DATABASE_URL`, or on a private PostgreSQL it starts under `embedded_postgres.dir` and stops on exit.

use std::sync::Arc;

use anyhow::Context;

use herald::app::App;
use herald::config::Settings;
use herald::embedded_postgres::EmbeddedPostgres;
use herald::queue::HandlerRegistry;

use crate::{UpArgs, WorkerArgs};

/// The name of the keys `up` mints (and revokes: on exit, and left over from a run that was killed).
const DEV_KEY_NAME: &str = "herald-up-dev";

pub async fn run(settings: Settings, args: UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        worker: args,
        dev_key,
    } = args;
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
    // An all-scope key is minted only on the private cluster (a development database by construction), or when
    // asked for: `up` pointed at a shared server must not leave keys behind.
    let result = match &cluster {
        Some(cluster) => {
            // The quick start enqueues `herald.log` over HTTP on the private cluster.
            let mut settings = settings;
            settings.jobs.allow_test_kinds = true;
            run_roles(settings, &cluster.url(), args, DevKey::OnPrivateCluster).await
        }
        None => {
            let url = settings.database.url.clone().unwrap_or_default();
            let dev_key = if dev_key {
                DevKey::OnSharedServer
            } else {
                DevKey::None
            };
            run_roles(settings, &url, args, dev_key).await
        }
    };
    if let Some(cluster) = cluster.filter(|c| c.started_here) {
        cluster.stop().context("stopping the private PostgreSQL")?;
        tracing::info!("private PostgreSQL stopped");
    }
    result
}

/// Whether `up` mints a development key, and where.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DevKey {
    None,
    /// The private cluster is this checkout's own: keys left by earlier runs that were killed are revoked.
    OnPrivateCluster,
    /// `--dev-key` on a server others may use: only this run's key is revoked (another developer's `up` may be
    /// running with its own).
    OnSharedServer,
}

async fn run_roles(
    settings: Settings,
    url: &str,
    args: WorkerArgs,
    mint_key: DevKey,
) -> anyhow::Result<()> {
    let options = herald::app::worker_options(&settings, args.queues, args.concurrency)?;
    let app = Arc::new(App::boot_at(settings, url).await?);
    let listener = crate::bind(&app.settings).await?;
    let address = listener.local_addr()?;
    println!("herald is up: API on http://{address} (docs at /docs), worker and clock running.");
    let actor = herald::audit::Actor::herald("herald up");
    let dev_key = if mint_key != DevKey::None {
        if mint_key == DevKey::OnPrivateCluster {
            // Keys of earlier runs that were killed before they could revoke theirs.
            herald::api::keys::revoke_named(&app.pool, &actor, DEV_KEY_NAME).await?;
        }
        let scopes = herald::api::keys::Scope::ALL;
        let (key, record) =
            herald::api::keys::create(&app.pool, &actor, DEV_KEY_NAME, &scopes).await?;
        println!("development API key (all scopes, revoked when herald up exits): {key}");
        println!("  curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\");
        println!(
            "       -d '{{\"queue\":\"default\",\"kind\":\"herald.log\",\"payload\":{{\"hello\":1}}}}' http://{address}/v1/jobs"
        );
        Some(record.id)
    } else {
        println!(
            "no development key: DATABASE_URL points at a server herald up did not start (create one with \
             `herald keys create`, or run with --dev-key)"
        );
        None
    };
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
    if let Some(id) = dev_key {
        herald::api::keys::revoke(&app.pool, &actor, id).await?;
    }
    api.await??;
    clock.await??;
    if let Some(bridge) = bridge {
        bridge.await??;
    }
    Ok(())
}

//! The one boot path: how a herald process goes from [`Settings`] to running roles, for `main`, the tests and
//! any Rust service that embeds herald.
//!
//! [`App::boot`] connects, migrates, builds the channels and the workflow engine, and syncs `workflows.dir`; the
//! roles then run on what it built ([`App::serve_api`], [`App::run_worker`], [`App::run_bridge`]). This is the
//! only module (with `main`) that holds the whole [`Settings`]: it hands each part its own section.
//!
//! To run the standard worker with job kinds of your own, use [`Worker`] (see `examples/custom_worker.rs`).

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::audit::Actor;
use crate::bridge::BridgeError;
use crate::channels::{Channels, FleetShare, ProviderConfigError};
use crate::clock::ClockError;
use crate::clock::schedules::{Schedule, Ticker};
use crate::config::{ConfigError, Settings};
use crate::db::{self, DbError};
use crate::metrics::Metrics;
use crate::queue::HandlerRegistry;
use crate::queue::worker::{self, WorkerOptions, builtin};
use crate::setting::InvalidSetting;
use crate::workflow::{self, Engine, WorkflowError};

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error(transparent)]
    Templates(#[from] crate::templates::TemplatesError),
    #[error(transparent)]
    Provider(#[from] ProviderConfigError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What every role runs on: the settings, the database pool and the workflow engine with its channels.
pub struct App {
    pub settings: Settings,
    pub pool: PgPool,
    pub engine: Arc<Engine>,
    /// The channels the engine sends through (herald's own alerts go out on them too).
    pub channels: Channels,
}

impl App {
    /// Connects to `DATABASE_URL` (or the private cluster `herald up` runs here), migrates, builds the engine and
    /// syncs `workflows.dir`: everything a role needs before it starts.
    pub async fn boot(settings: Settings) -> Result<Self, BootError> {
        let url = db::database_url(&settings.database, &settings.embedded_postgres.dir)?;
        Self::boot_at(settings, &url).await
    }

    /// [`App::boot`] on the database at `url`.
    pub async fn boot_at(settings: Settings, url: &str) -> Result<Self, BootError> {
        let pool = db::connect(url, &settings.database).await?;
        if settings.database.migrate {
            db::migrate(&pool).await?;
        } else {
            db::readiness(&pool).await.map_err(DbError::NotMigrated)?;
        }
        let app = Self::on_pool(settings, pool)?;
        app.sync_templates().await?;
        app.sync_workflows().await?;
        Ok(app)
    }

    /// The engine and its channels on a pool that is already migrated, without syncing `workflows.dir` (tests and
    /// commands that only read). Must run inside the Tokio runtime (the channels start background tasks).
    pub fn on_pool(settings: Settings, pool: PgPool) -> Result<Self, BootError> {
        let channels = channels(&settings, &pool)?;
        Self::with_channels(settings, pool, channels)
    }

    /// [`App::on_pool`] with channels of your own instead of those settings configure (tests record messages
    /// this way).
    pub fn with_channels(
        settings: Settings,
        pool: PgPool,
        channels: Channels,
    ) -> Result<Self, BootError> {
        let steps_pool = db::relaxed_commit_pool(&pool, &settings.database);
        let engine = Arc::new(
            Engine::new(
                pool.clone(),
                steps_pool,
                &settings.workflows,
                settings.jobs.defaults(),
                channels.clone(),
            )?
            .with_recipients(&settings.recipients),
        );
        Ok(Self {
            settings,
            pool,
            engine,
            channels,
        })
    }

    /// Syncs `templates.dir` into the database if the folder exists, as [`sync_workflows`](Self::sync_workflows)
    /// does for workflows (and before it: workflows name templates).
    pub async fn sync_templates(&self) -> Result<(), crate::templates::TemplatesError> {
        let dir = &self.settings.templates.dir;
        if !dir.is_dir() {
            tracing::info!(dir = %dir.display(), "no template folder; using the versions already stored");
            return Ok(());
        }
        let actor = Actor::herald("template sync at start");
        for (file, name, version, saved) in self.engine.templates.sync_dir(&actor, dir).await? {
            tracing::info!(%file, template = %name, version, ?saved, "template synced");
        }
        Ok(())
    }

    /// Syncs `workflows.dir` into the database if the folder exists (a process deployed without it still runs the
    /// versions already stored). An invalid definition stops the process: better than running an old version.
    pub async fn sync_workflows(&self) -> Result<(), WorkflowError> {
        let dir = &self.settings.workflows.dir;
        if !dir.is_dir() {
            tracing::info!(dir = %dir.display(), "no workflow folder; using the versions already stored");
            return Ok(());
        }
        let actor = Actor::herald("workflow sync at start");
        for (file, name, version, saved) in self.engine.catalog.sync_dir(&actor, dir).await? {
            tracing::info!(%file, workflow = %name, version, ?saved, "workflow synced");
        }
        Ok(())
    }

    /// Serves the HTTP API on `listener` until `shutdown`.
    pub async fn serve_api(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let settings = &self.settings;
        let metrics = process_metrics(&self.settings, &self.pool)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let parts = crate::api::ApiParts {
            pool: self.pool.clone(),
            defaults: settings.jobs.defaults(),
            metrics,
            engine: Arc::clone(&self.engine),
            providers: crate::api::configured_providers(
                &settings.channels.chains,
                &settings.providers,
            ),
            callbacks: settings.callbacks.clone(),
            schedules: self
                .schedules()
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            producers: settings.producer_rules(),
            feed: settings.feed.clone(),
        };
        let state = crate::api::ApiState::new(&settings.api, parts);
        self.publish_queue_stats(&shutdown);
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "API listening");
        }
        crate::api::serve(listener, state, shutdown).await
    }

    /// Runs a worker until `shutdown`: `handlers` (your own kinds, or an empty registry) plus herald's built-in
    /// kinds and the workflow nodes.
    pub async fn run_worker(
        &self,
        options: WorkerOptions,
        handlers: HandlerRegistry,
        shutdown: CancellationToken,
    ) {
        let registry = worker_registry(handlers, Arc::clone(&self.engine));
        worker::run(self.pool.clone(), options, registry, shutdown).await;
    }

    /// Takes part in the fleet's queue-stats election and keeps this process's queue gauges current (see
    /// `queue::stats`), until `shutdown`; unless `metrics.queue_stats_secs` is 0.
    pub fn publish_queue_stats(&self, shutdown: &CancellationToken) {
        let every = self.settings.metrics.queue_stats;
        if !every.is_zero() {
            // The workflows' waiting runs are counted by the same leader, once per fleet.
            let fleet_gauges: Vec<Box<dyn crate::queue::stats::FleetGauge>> =
                vec![Box::new(crate::workflow::metrics::WaitingRuns)];
            tokio::spawn(crate::queue::stats::run(
                self.pool.clone(),
                every,
                fleet_gauges,
                shutdown.clone(),
            ));
        }
        // The alert evaluator is elected the same way and reads the same numbers.
        let alerts = &self.settings.alerts;
        if alerts.enabled() {
            tokio::spawn(crate::alerts::run(
                self.pool.clone(),
                self.channels.clone(),
                alerts.clone(),
                shutdown.clone(),
            ));
        }
    }

    /// For a role without the API (worker, bridge, clock): takes part in the queue-stats election, and serves
    /// `/metrics`, `/healthz` and `/readyz` on `metrics.listen` until `shutdown`, if it is set. Fails if the
    /// address cannot be bound.
    pub async fn serve_probes(&self, shutdown: CancellationToken) -> Result<(), BootError> {
        self.publish_queue_stats(&shutdown);
        let listen = self.settings.metrics.listen.trim();
        if listen.is_empty() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("metrics.listen {listen}: {e}")))?;
        let metrics = process_metrics(&self.settings, &self.pool).map_err(std::io::Error::other)?;
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics,
            self.pool.clone(),
            shutdown,
        ));
        Ok(())
    }

    /// Runs the Kafka bridge until `shutdown`.
    pub async fn run_bridge(&self, shutdown: CancellationToken) -> Result<(), BridgeError> {
        let bridge = &self.settings.bridge;
        crate::bridge::run(
            bridge,
            self.settings.jobs.defaults(),
            self.pool.clone(),
            Arc::clone(&self.engine),
            shutdown,
        )
        .await
    }

    /// The clock's schedules: the built-in maintenance ones and `[[clock.schedules]]`.
    pub fn schedules(&self) -> Result<Arc<[Schedule]>, ClockError> {
        Ok(crate::clock::all_schedules(&self.settings.clock)?.into())
    }

    /// The schedules' ticker, for `run_clock` and for tests that drive time by hand.
    pub fn ticker(&self) -> Result<Ticker, ClockError> {
        Ok(Ticker::new(
            self.pool.clone(),
            self.schedules()?.to_vec(),
            self.settings.jobs.defaults(),
            Arc::clone(&self.engine),
            self.settings.clock.missed_after,
        ))
    }

    /// The clock role until `shutdown`: fires the schedules' ticks, and serves the maintenance queue they fill
    /// with one handler (maintenance is heavy and one clock doing it at a time is enough; if that clock dies,
    /// another rescues its job).
    pub async fn run_clock(&self, shutdown: CancellationToken) -> Result<(), BootError> {
        let clock = &self.settings.clock;
        let ticker = self.ticker()?;
        let queue = format!("{}:1", clock.queue);
        let options = worker_options(&self.settings, Some(vec![queue]), None)?;
        let handlers = crate::clock::maintenance_handlers(&self.pool, clock);
        let housekeeping = async {
            if !clock.vacuum_check.is_zero() {
                let pool = self.pool.clone();
                let every = clock.vacuum_check;
                crate::clock::housekeeping::run(
                    pool,
                    every,
                    clock.vacuum_min_dead,
                    shutdown.clone(),
                )
                .await;
            }
        };
        let statistics =
            crate::clock::housekeeping::keep_statistics(self.pool.clone(), shutdown.clone());
        let partitions = crate::clock::housekeeping::run_partitions(
            self.pool.clone(),
            clock.partitions.clone(),
            clock.poll,
            shutdown.clone(),
        );
        tokio::join!(
            ticker.run(clock.poll, shutdown.clone()),
            housekeeping,
            statistics,
            partitions,
            self.run_worker(options, handlers, shutdown.clone())
        );
        Ok(())
    }

    /// The bridge's batch writer (for `herald bridge dlq replay`).
    pub fn bridge_writer(&self) -> Result<crate::bridge::BatchWriter, BridgeError> {
        crate::bridge::writer(
            &self.settings.bridge,
            self.settings.jobs.defaults(),
            self.pool.clone(),
            Arc::clone(&self.engine),
        )
    }
}

/// Worker options from `[worker]` and `[jobs]`, with command-line overrides applied. Checked before [`App::boot`],
/// so a bad `--queues` fails before anything connects.
pub fn worker_options(
    settings: &Settings,
    queues: Option<Vec<String>>,
    concurrency: Option<std::num::NonZeroUsize>,
) -> Result<WorkerOptions, InvalidSetting> {
    let mut section = settings.worker.clone();
    if let Some(concurrency) = concurrency {
        section.concurrency = concurrency;
    }
    if let Some(queues) = queues {
        section.queues = queues;
    }
    WorkerOptions::new(&section, &settings.jobs)
}

/// The channels settings configure (with `channels.sink = "providers"`, every provider's adapter is built here: a
/// missing credential fails the start). Must run inside the Tokio runtime.
pub fn channels(settings: &Settings, pool: &PgPool) -> Result<Channels, ProviderConfigError> {
    let share = FleetShare {
        queue: settings.workflows.queue.to_string(),
        every: settings.worker.heartbeat,
    };
    let channels = Channels::from_settings(&settings.channels, &settings.providers, share, pool)?;
    // The in-app feed is herald's own table, whatever the sink: a development setup's feed works too.
    let feed = Arc::new(crate::feed::FeedChannel::new(pool.clone()));
    Ok(channels.with(crate::channels::ChannelKind::InApp, feed))
}

/// The process's metrics registry: HTTP, plus the queue's, the channels' and the bridge's process-wide metrics.
/// Queue labels name the queues `settings` configure.
fn process_metrics(settings: &Settings, pool: &PgPool) -> Result<Metrics, prometheus::Error> {
    let process = crate::metrics::ProcessCollector::new(
        pool.clone(),
        settings.database.max_connections.get(),
    )?;
    let collectors = crate::queue::metrics::all()
        .into_iter()
        .chain([Box::new(process) as Box<dyn prometheus::core::Collector>])
        .chain(crate::queue::stats::all())
        .chain(crate::channels::metrics::all())
        .chain(crate::workflow::metrics::all())
        .chain(crate::clock::metrics::all())
        .chain(crate::alerts::all())
        .chain(crate::db::metrics())
        .chain(crate::bridge::metrics::all());
    let queues = settings
        .worker
        .queue_specs()
        .unwrap_or_default()
        .into_iter()
        .map(|spec| spec.name.to_string())
        .chain([
            settings.workflows.queue.to_string(),
            settings.clock.queue.to_string(),
        ]);
    Metrics::new(collectors, queues)
}

/// The built-in handlers (no-op, sleep, log): what the queue's own tests run.
pub fn handler_registry() -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    builtin::register(&mut registry);
    registry
}

/// What a herald worker runs: `handlers`, then the built-in kinds and the workflow nodes (the `herald.` kinds are
/// herald's own: one of yours by such a name is replaced).
pub fn worker_registry(mut handlers: HandlerRegistry, engine: Arc<Engine>) -> HandlerRegistry {
    builtin::register(&mut handlers);
    workflow::register(&mut handlers, engine);
    handlers
}

/// The standard herald worker with job kinds of your own: settings + your [`HandlerRegistry`] + herald's built-in
/// kinds and workflow nodes, until SIGTERM or SIGINT, then a graceful shutdown (River's `Client` with its
/// `Workers`, Oban's `start_link`).
///
/// ```no_run
/// # use herald::queue::{HandlerRegistry, Job};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Invoice { id: i64 }
/// # impl Job for Invoice { const KIND: &'static str = "billing.invoice"; }
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let mut kinds = HandlerRegistry::new();
///     kinds.register(|invoice: Invoice, _ctx| async move {
///         println!("invoice {}", invoice.id);
///         Ok(())
///     });
///     herald::app::Worker::new(herald::config::Settings::load()?)
///         .handlers(kinds)
///         .run()?;
///     Ok(())
/// }
/// ```
pub struct Worker {
    settings: Settings,
    handlers: HandlerRegistry,
    queues: Option<Vec<String>>,
    concurrency: Option<std::num::NonZeroUsize>,
}

impl Worker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            handlers: HandlerRegistry::new(),
            queues: None,
            concurrency: None,
        }
    }

    /// Your job kinds.
    pub fn handlers(mut self, handlers: HandlerRegistry) -> Self {
        self.handlers = handlers;
        self
    }

    /// Serve these queues (`name` or `name:concurrency`) instead of `worker.queues`.
    pub fn queues(mut self, queues: Vec<String>) -> Self {
        self.queues = Some(queues);
        self
    }

    /// Handlers at once per queue, instead of `worker.concurrency`.
    pub fn concurrency(mut self, concurrency: std::num::NonZeroUsize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// Runs from a plain `fn main`: takes SIGTERM/SIGINT on a thread of its own (see `shutdown`), starts the
    /// runtime, boots and works until a signal, then shuts down gracefully within `worker.shutdown_grace_secs`.
    pub fn run(self) -> Result<(), BootError> {
        crate::shutdown::watch();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(BootError::Runtime)?;
        let grace = self.settings.worker.shutdown_grace;
        let result = runtime.block_on(self.run_until(crate::shutdown::on_signal(grace)));
        // A handler stuck without yielding can never be joined; do not wait for its thread.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        result
    }

    /// Runs inside your own runtime until `shutdown` is cancelled.
    pub async fn run_until(self, shutdown: CancellationToken) -> Result<(), BootError> {
        let options = worker_options(&self.settings, self.queues, self.concurrency)?;
        let app = App::boot(self.settings).await?;
        app.serve_probes(shutdown.clone()).await?;
        app.run_worker(options, self.handlers, shutdown).await;
        Ok(())
    }
}

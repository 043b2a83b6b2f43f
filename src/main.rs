//! The `herald` command line: parsing and dispatch only; the work happens in the library.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use sqlx::PgPool;

use herald::config::Settings;
use herald::embedded_postgres::EmbeddedPostgres;
use herald::queue::dead_letters::{self, DeadLetterFilter};
use herald::queue::{self, IdempotencyKey, JobKind, NewJob, Priority, QueueName, admin};
use herald::{app, bench, db, telemetry};

/// herald: a durable PostgreSQL job queue worker fleet.
///
/// The database comes from DATABASE_URL; without it, commands use the private cluster that `herald up` started in
/// this directory. Settings: config/default.toml, config/$HERALD_ENV.toml, HERALD_* variables.
#[derive(Parser)]
#[command(name = "herald", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations and exit.
    Migrate,
    /// Run a worker process: claim and execute jobs until SIGTERM/SIGINT, then shut down gracefully.
    Worker(WorkerArgs),
    /// Serve the HTTP API (api.listen, or 0.0.0.0:$PORT) until SIGTERM/SIGINT.
    Api,
    /// Run every role in one process (migrate, API, worker, and the Kafka bridge if bridge.brokers is set) and print a development API key. Without
    /// DATABASE_URL, first start a private PostgreSQL under .herald/pg (stopped again on Ctrl-C).
    Up(WorkerArgs),
    /// API keys: create (printed once), list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Enqueue one job.
    Enqueue(EnqueueArgs),
    /// Look up or cancel a job.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Dead letters: jobs that failed for good.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Queue depth, pause and resume (fleet-wide).
    Queues {
        #[command(subcommand)]
        command: QueuesCommand,
    },
    /// The live worker fleet (from heartbeats).
    Workers,
    /// The Kafka bridge: consume the routed topics (bridge.routes) into jobs, runs and events until SIGTERM,
    /// with offsets stored in Postgres. `herald bridge dlq` lists and replays messages it could not route.
    Bridge {
        #[command(subcommand)]
        command: Option<BridgeCommand>,
    },
    /// Workflow definitions and runs.
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
    },
    /// Measure enqueue and execution throughput and pickup latency on a scratch database
    /// (`herald bench workflows` measures workflow runs instead).
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Runs of a trigger -> condition -> action workflow through the whole engine.
    Workflows(herald::bench_workflows::WorkflowBenchArgs),
    /// Provider chaos: chat actions through a slack -> discord chain against a fake answering 5xx and 429.
    Channels(herald::bench_channels::ChannelBenchArgs),
    /// Kafka into jobs: bridge throughput with one and two processes, and produce -> job started latency.
    Bridge(herald::bench_bridge::BridgeBenchArgs),
}

#[derive(Args)]
struct WorkerArgs {
    /// Queues to serve, comma-separated, each optionally `name:concurrency` (default: worker.queues).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Handlers running at once per queue (default: worker.concurrency).
    #[arg(long)]
    concurrency: Option<usize>,
}

#[derive(Args)]
struct EnqueueArgs {
    #[arg(long, default_value = "default")]
    queue: String,
    /// The job kind (which handler runs it).
    #[arg(long, default_value = "herald.log")]
    kind: String,
    /// JSON payload.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// 0-9, higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i64,
    /// Run at this time (RFC 3339), instead of now.
    #[arg(long, conflicts_with = "delay")]
    run_at: Option<DateTime<Utc>>,
    /// Run after this long (e.g. 30s, 5m, 2h).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    #[arg(long)]
    max_attempts: Option<i32>,
    /// Handler timeout (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Show a job (waiting, running or finished) as JSON.
    Show { id: i64 },
    /// Cancel a job that has not started.
    Cancel { id: i64 },
}

#[derive(Args, Default)]
struct DlqFilterArgs {
    #[arg(long)]
    queue: Option<String>,
    #[arg(long)]
    kind: Option<String>,
    /// Only dead letters that failed within this long (e.g. 1h).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only dead letters older than this (e.g. 30d).
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
}

#[derive(Subcommand)]
enum BridgeCommand {
    /// Messages the bridge could not decode or route.
    Dlq {
        #[command(subcommand)]
        command: BridgeDlqCommand,
    },
}

#[derive(Subcommand)]
enum BridgeDlqCommand {
    /// List dead-lettered messages, oldest first (not yet replayed, unless --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Route one dead-lettered message again (by id), or every one not yet replayed (--all), through the
    /// current routes.
    Replay {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// With --all: at most this many.
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Page cursor: the last id of the previous page.
        #[arg(long)]
        before_id: Option<i64>,
    },
    /// Show one dead letter with every attempt's error.
    Show { id: i64 },
    /// Re-enqueue one dead letter (by id) or all matching ones (--all with filters), attempts reset.
    Replay {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Delete one dead letter (by id) or all matching ones (--all with filters).
    Purge {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once and stored only as a digest.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: enqueue, read, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List keys (names, prefixes, scopes; never the keys).
    List,
    /// Revoke a key by id (API servers stop accepting it within api.key_cache_secs).
    Revoke { id: i64 },
}

#[derive(Subcommand)]
enum WorkflowsCommand {
    /// Validate every definition in a folder (default: workflows.dir) and store them; nothing is stored unless
    /// all are valid. Prints each problem with its file and node.
    Sync {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Validate the definitions in a folder without storing anything (no database needed).
    Check {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// List stored workflows (latest version of each).
    List,
    /// Start a run of a workflow's latest version.
    Trigger {
        name: String,
        /// Trigger data (JSON object).
        #[arg(long, default_value = "{}")]
        data: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a run and its timeline as JSON.
    Run { id: i64 },
}

#[derive(Subcommand)]
enum QueuesCommand {
    /// Depth, running, scheduled and paused state of every queue.
    List,
    /// Stop the whole fleet from claiming this queue's jobs (running ones finish).
    Pause { name: String },
    /// Let the fleet claim this queue's jobs again.
    Resume { name: String },
}

fn main() -> anyhow::Result<()> {
    telemetry::init();
    // Before the runtime starts its threads: signals go to a thread of their own (see shutdown.rs).
    herald::shutdown::watch();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(cli));
    // A handler stuck without yielding can never be joined; do not wait for its thread (its attempt was already
    // recorded as interrupted, and the job runs again elsewhere).
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The shutdown token of a role with the given grace period in seconds (see shutdown.rs for what follows it).
fn on_signal(grace_secs: u64) -> tokio_util::sync::CancellationToken {
    herald::shutdown::on_signal(Duration::from_secs(grace_secs))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    match cli.command {
        Command::Up(args) => up(&settings, args).await,
        Command::Bench { what: None, args } => Ok(bench::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Workflows(args)),
            ..
        } => Ok(herald::bench_workflows::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Channels(args)),
            ..
        } => Ok(herald::bench_channels::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Bridge(args)),
            ..
        } => Ok(herald::bench_bridge::run(&settings, args).await?),
        Command::Migrate => {
            db::migrate(&connect(&settings).await?).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Worker(args) => {
            let pool = connect(&settings).await?;
            db::migrate(&pool).await?;
            let options = app::worker_options(&settings, args.queues, args.concurrency)?;
            let engine = app::engine(pool.clone(), &settings)?;
            app::sync_workflows(&engine, &settings).await?;
            let shutdown = on_signal(settings.worker.shutdown_grace_secs);
            app::run_worker(pool, engine, options, shutdown).await;
            Ok(())
        }
        Command::Api => {
            let pool = connect(&settings).await?;
            db::migrate(&pool).await?;
            let engine = app::engine(pool.clone(), &settings)?;
            app::sync_workflows(&engine, &settings).await?;
            let listener = bind(&settings).await?;
            let shutdown = on_signal(settings.api.shutdown_grace_secs);
            app::run_api(pool, settings.clone(), engine, listener, shutdown).await?;
            Ok(())
        }
        Command::Keys { command } => keys(&connect(&settings).await?, command).await,
        Command::Enqueue(args) => enqueue(&settings, &connect(&settings).await?, args).await,
        Command::Jobs { command } => jobs(&connect(&settings).await?, command).await,
        Command::Dlq { command } => dlq(&settings, &connect(&settings).await?, command).await,
        Command::Queues { command } => queues(&connect(&settings).await?, command).await,
        Command::Workers => print_json(&admin::list_workers(&connect(&settings).await?).await?),
        Command::Workflows { command } => workflows(&settings, command).await,
        Command::Bridge { command: None } => {
            herald::bridge::check_configured(&settings)?;
            let pool = connect(&settings).await?;
            db::migrate(&pool).await?;
            let engine = app::engine(pool.clone(), &settings)?;
            app::sync_workflows(&engine, &settings).await?;
            let shutdown = on_signal(settings.worker.shutdown_grace_secs);
            app::run_bridge(pool, &settings, engine, shutdown).await?;
            Ok(())
        }
        Command::Bridge {
            command: Some(BridgeCommand::Dlq { command }),
        } => bridge_dlq(&settings, command).await,
    }
}

async fn bridge_dlq(settings: &Settings, command: BridgeDlqCommand) -> anyhow::Result<()> {
    use herald::bridge::dead_letters::{self as bridge_dlq, DeadLetterQuery};
    let pool = connect(settings).await?;
    match command {
        BridgeDlqCommand::List { all, limit } => {
            let query = DeadLetterQuery {
                include_replayed: all,
                id: None,
                group_id: None,
                limit,
            };
            print_json(&bridge_dlq::list(&pool, &query).await?)
        }
        BridgeDlqCommand::Replay { id, all, limit } => {
            if id.is_none() && !all {
                bail!("give a dead letter id, or --all to replay every one not yet replayed");
            }
            let engine = app::engine(pool.clone(), settings)?;
            let writer = herald::bridge::writer(settings, pool, engine)?;
            let query = DeadLetterQuery {
                include_replayed: false,
                id,
                group_id: None,
                limit: if id.is_some() { 1 } else { limit },
            };
            let results = bridge_dlq::replay(&writer, &query).await?;
            let replayed = results.iter().filter(|r| r.replayed).count();
            print_json(&serde_json::json!({ "replayed": replayed, "results": results }))
        }
    }
}

async fn workflows(settings: &Settings, command: WorkflowsCommand) -> anyhow::Result<()> {
    use herald::workflow::catalog;
    if let WorkflowsCommand::Check { dir } = &command {
        let dir = dir
            .clone()
            .unwrap_or_else(|| settings.workflows.dir.clone());
        let checked = catalog::check_dir(&dir).map_err(report_invalid)?;
        for (file, name, version) in checked {
            println!("{file}: {name} v{version} is valid");
        }
        return Ok(());
    }
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let engine = app::engine(pool, settings)?;
    match command {
        WorkflowsCommand::Check { .. } => Ok(()),
        WorkflowsCommand::Sync { dir } => {
            let dir = dir.unwrap_or_else(|| settings.workflows.dir.clone());
            let outcomes = engine
                .catalog
                .sync_dir(&dir)
                .await
                .map_err(report_invalid)?;
            for (file, name, version, saved) in outcomes {
                println!("{file}: {name} v{version} {saved:?}");
            }
            Ok(())
        }
        WorkflowsCommand::List => print_json(&engine.catalog.list().await?),
        WorkflowsCommand::Trigger {
            name,
            data,
            idempotency_key,
        } => {
            let data: serde_json::Value =
                serde_json::from_str(&data).context("--data is not valid JSON")?;
            let started = engine.start_run(&name, data, idempotency_key, None).await?;
            println!("{started:?}");
            Ok(())
        }
        WorkflowsCommand::Run { id } => print_json(&engine.get_run(id).await?),
    }
}

/// Prints each definition problem on its own line before failing.
fn report_invalid(error: herald::workflow::WorkflowError) -> anyhow::Error {
    if let herald::workflow::WorkflowError::Invalid(problems) = &error {
        for problem in problems {
            eprintln!("{problem}");
        }
        return anyhow::anyhow!("{} problem(s) in workflow definitions", problems.len());
    }
    error.into()
}

async fn bind(settings: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    let address = settings.api.listen_address();
    tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address} (api.listen)"))
}

async fn keys(pool: &PgPool, command: KeysCommand) -> anyhow::Result<()> {
    use herald::api::keys::{self, Scope};
    match command {
        KeysCommand::Create { name, scopes } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s)
                        .with_context(|| format!("unknown scope `{s}` (use enqueue, read, admin)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (key, record) = keys::create(pool, &name, &scopes).await?;
            println!("{key}");
            eprintln!(
                "created key {} ({}) with scopes {:?}; it is shown only now",
                record.id, record.prefix, record.scopes
            );
            Ok(())
        }
        KeysCommand::List => print_json(&keys::list(pool).await?),
        KeysCommand::Revoke { id } => {
            if !keys::revoke(pool, id).await? {
                bail!("no live key with id {id}");
            }
            println!("key {id} revoked");
            Ok(())
        }
    }
}

async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = db::database_url(&settings.embedded_postgres.dir)?;
    Ok(db::connect(&url, &settings.database).await?)
}

/// Every role in one process, on the configured database or a private one.
async fn up(settings: &Settings, args: WorkerArgs) -> anyhow::Result<()> {
    let embedded = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => None,
        _ => {
            let dir = &settings.embedded_postgres.dir;
            let cluster =
                EmbeddedPostgres::start(dir).context("starting the private PostgreSQL")?;
            tracing::info!(url = %cluster.url(), dir = %dir.display(), "private PostgreSQL is running");
            Some(std::sync::Arc::new(cluster))
        }
    };
    // A second Ctrl-C (or a wedged runtime) ends the process without unwinding: stop the private cluster first.
    if let Some(cluster) = embedded.as_ref().filter(|c| c.started_here) {
        let cluster = std::sync::Arc::clone(cluster);
        herald::shutdown::before_forced_exit(move || {
            let _ = cluster.stop();
        });
    }
    let url = match &embedded {
        Some(cluster) => cluster.url(),
        None => db::database_url(&settings.embedded_postgres.dir)?,
    };
    let result = async {
        let pool = db::connect(&url, &settings.database).await?;
        db::migrate(&pool).await?;
        let options = app::worker_options(settings, args.queues, args.concurrency)?;
        let engine = app::engine(pool.clone(), settings)?;
        app::sync_workflows(&engine, settings).await?;
        let listener = bind(settings).await?;
        let address = listener.local_addr()?;
        let scopes = herald::api::keys::Scope::ALL;
        let (key, _) = herald::api::keys::create(&pool, "herald-up-dev", &scopes).await?;
        println!("herald is up: API on http://{address} (docs at /docs), worker running.");
        println!("development API key (all scopes, created for this run): {key}");
        println!("  curl -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\");
        println!("       -d '{{\"queue\":\"default\",\"kind\":\"herald.log\",\"payload\":{{\"hello\":1}}}}' http://{address}/v1/jobs");
        let grace = settings.worker.shutdown_grace_secs.max(settings.api.shutdown_grace_secs);
        let shutdown = on_signal(grace);
        let api = app::run_api(pool.clone(), settings.clone(), engine.clone(), listener, shutdown.clone());
        let api = tokio::spawn(api);
        let bridge = if settings.bridge.brokers.trim().is_empty() {
            None
        } else {
            println!("Kafka bridge consuming from {}", settings.bridge.brokers);
            let (pool, settings, engine, shutdown) =
                (pool.clone(), settings.clone(), engine.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                herald::bridge::run(&settings, pool, engine, shutdown).await
            }))
        };
        app::run_worker(pool, engine, options, shutdown).await;
        api.await??;
        if let Some(bridge) = bridge {
            bridge.await??;
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(cluster) = embedded.filter(|c| c.started_here) {
        cluster.stop().context("stopping the private PostgreSQL")?;
        tracing::info!("private PostgreSQL stopped");
    }
    result
}

async fn enqueue(settings: &Settings, pool: &PgPool, args: EnqueueArgs) -> anyhow::Result<()> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let mut job = NewJob::new(
        QueueName::parse(&args.queue)?,
        JobKind::parse(&args.kind)?,
        payload,
    )
    .priority(Priority::new(args.priority)?);
    if let Some(at) = args.run_at.or_else(|| args.delay.map(|d| Utc::now() + d)) {
        job = job.run_at(at);
    }
    if let Some(attempts) = args.max_attempts {
        if attempts < 1 {
            bail!("--max-attempts must be at least 1");
        }
        job = job.max_attempts(attempts);
    }
    if let Some(timeout) = args.timeout {
        job = job.timeout(timeout);
    }
    if let Some(key) = args.idempotency_key {
        job = job.idempotency_key(IdempotencyKey::parse(&key)?);
    }
    let mut conn = pool.acquire().await?;
    let result = queue::enqueue(&mut conn, &settings.job_defaults(), job).await?;
    print_json(&result)
}

async fn jobs(pool: &PgPool, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::Show { id } => match admin::find_job(pool, id).await? {
            Some(job) => print_json(&job),
            None => bail!("job {id} not found"),
        },
        JobsCommand::Cancel { id } => {
            admin::cancel_job(pool, id).await?;
            println!("job {id} cancelled");
            Ok(())
        }
    }
}

async fn dlq(settings: &Settings, pool: &PgPool, command: DlqCommand) -> anyhow::Result<()> {
    let aging = settings.job_defaults().priority_aging;
    match command {
        DlqCommand::List {
            filter,
            limit,
            before_id,
        } => print_json(
            &dead_letters::list(pool, &filter.into_filter(None), before_id, limit).await?,
        ),
        DlqCommand::Show { id } => match dead_letters::get(pool, id).await? {
            Some(letter) => print_json(&letter),
            None => bail!("dead letter {id} not found"),
        },
        DlqCommand::Replay { id, all, filter } => {
            let filter = selection(id, all, filter)?;
            let replayed = dead_letters::replay(pool, &filter, aging).await?;
            print_json(&serde_json::json!({ "replayed": replayed.len(), "jobs": replayed }))
        }
        DlqCommand::Purge { id, all, filter } => {
            let purged = dead_letters::purge(pool, &selection(id, all, filter)?).await?;
            print_json(&serde_json::json!({ "purged": purged }))
        }
    }
}

/// Replay and purge act on one id, or on everything matching with an explicit `--all`.
fn selection(
    id: Option<i64>,
    all: bool,
    filter: DlqFilterArgs,
) -> anyhow::Result<DeadLetterFilter> {
    match (id, all) {
        (Some(id), _) => Ok(DeadLetterFilter::by_id(id)),
        (None, true) => Ok(filter.into_filter(None)),
        (None, false) => {
            bail!("name a dead letter id, or pass --all (with --queue/--kind/--since/--older-than)")
        }
    }
}

impl DlqFilterArgs {
    fn into_filter(self, id: Option<i64>) -> DeadLetterFilter {
        DeadLetterFilter {
            id,
            queue: self.queue,
            kind: self.kind,
            failed_since: self.since.map(|d| Utc::now() - d),
            failed_before: self.older_than.map(|d| Utc::now() - d),
        }
    }
}

async fn queues(pool: &PgPool, command: QueuesCommand) -> anyhow::Result<()> {
    match command {
        QueuesCommand::List => print_json(&admin::queue_stats(pool).await?),
        QueuesCommand::Pause { name } => {
            admin::set_paused(pool, &QueueName::parse(&name)?, true).await?;
            println!("queue {name} paused");
            Ok(())
        }
        QueuesCommand::Resume { name } => {
            admin::set_paused(pool, &QueueName::parse(&name)?, false).await?;
            println!("queue {name} resumed");
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `250ms`, `30s`, `5m`, `2h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number followed by ms, s, m, h or d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

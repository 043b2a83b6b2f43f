//! The `herald` command line: parsing and dispatch. The roles run through the library's one boot path
//! (`herald::app`); the operating commands are in `commands.rs`, `herald up` in `up.rs`, the benchmarks in
//! `bench/` (part of the binary, not the library).

mod bench;
mod commands;
mod up;

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use commands::{
    ArchiveCommand, BridgeDlqCommand, CronCommand, DlqCommand, EnqueueArgs, JobsCommand,
    KeysCommand, QueuesCommand, RecipientsCommand, RollupCommand, RollupDays, TemplatesCommand,
    TopicsCommand, WorkflowsCommand, connect, print_json,
};
use herald::app::App;
use herald::config::Settings;
use herald::queue::{HandlerRegistry, admin};
use herald::telemetry;

/// herald: a durable PostgreSQL job queue worker fleet.
///
/// The database comes from DATABASE_URL; without it, commands use the private cluster that `herald up` started in
/// this directory. Settings: config/default.toml, config/$HERALD_ENV.toml, HERALD_* variables.
#[derive(Parser)]
#[command(name = "herald", version)]
struct Cli {
    /// Do not apply pending migrations at start (as `database.migrate = false`): refuse to start unless the
    /// database is current. For roles whose database user has no DDL rights.
    #[arg(long, global = true)]
    no_migrate: bool,
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
    /// Run every role in one process (migrate, API, worker, clock, and the Kafka bridge if bridge.brokers is set). Without
    /// DATABASE_URL, first start a private PostgreSQL under .herald/pg (stopped again on Ctrl-C) and print a development
    /// API key, revoked on exit.
    Up(UpArgs),
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
    /// The fleet on one screen: workers, queues, provider circuits, the bridge's offsets, the clock's schedules.
    Status(commands::StatusArgs),
    /// The audit log: who created or revoked keys, paused queues, replayed or deleted dead letters, changed
    /// suppressions, saved workflows, cancelled or retried runs (JSON, newest first).
    Audit(commands::AuditArgs),
    /// The Kafka bridge: consume the routed topics (bridge.routes) into jobs, runs and events until SIGTERM,
    /// with offsets stored in Postgres. `herald bridge dlq` lists and replays messages it could not route.
    Bridge {
        #[command(subcommand)]
        command: Option<BridgeCommand>,
    },
    /// The clock role: fire the cron schedules (built-in maintenance and `[[clock.schedules]]`) exactly once per
    /// tick across the fleet, and run the maintenance jobs (retention, rollups) they enqueue. Run one or more.
    Clock,
    /// The clock's schedules: list, pause, resume.
    Cron {
        #[command(subcommand)]
        command: CronCommand,
    },
    /// Daily rollups: recompute days from the raw rows (`--day D`, or `--from D --to D`), or `show` them.
    #[command(args_conflicts_with_subcommands = true)]
    Rollup {
        #[command(subcommand)]
        command: Option<RollupCommand>,
        #[command(flatten)]
        days: RollupDays,
    },
    /// Retention by hand: `herald retention run` does one pass (archive, verify, remove old rows).
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// What retention archived: list the manifests, restore a day for inspection.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// The template catalogue: check (no database), sync, list, preview.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// Workflow definitions and runs.
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
    },
    /// Recipient profiles: put, patch, get, list, erase, preferences.
    Recipients {
        #[command(subcommand)]
        command: RecipientsCommand,
    },
    /// Topics: add and remove members, list them.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
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
    Workflows(bench::workflows::WorkflowBenchArgs),
    /// The HTTP triggers from outside (a real API process): throughput, latency at a fixed rate, and a run's
    /// request to its provider call.
    Http(bench::http::HttpBenchArgs),
    /// A topic trigger to many recipients: runs created per second, sends end to end, and another queue's pickup
    /// latency meanwhile.
    Fanout(bench::fanout::FanoutBenchArgs),
    /// Many events over many digest keys, every window closing at once: arrivals/s, continuations/s, and an
    /// exactly-once check.
    Digest(bench::digest::DigestBenchArgs),
    /// Live in-app feed delivery: send-to-stream latency with many Server-Sent-Events streams open.
    Feed(bench::feed::FeedBenchArgs),
    /// Provider chaos: chat actions through a slack -> discord chain against a fake answering 5xx and 429.
    Channels(bench::channels::ChannelBenchArgs),
    /// Kafka into jobs: bridge throughput with one and two processes, and produce -> job started latency.
    Bridge(bench::bridge::BridgeBenchArgs),
    /// A long steady load reported every minute (pickup, table sizes, dead tuples), optionally with an idle
    /// transaction holding back vacuum and with history retention at minutes.
    Soak(bench::soak::SoakArgs),
    /// Retention: archive and remove 1,000,000 old history rows while the queue runs a steady load.
    Retention(bench::retention::RetentionBenchArgs),
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// One retention pass now (or as of --now): print what it archived and removed (JSON).
    Run(commands::RetentionRunArgs),
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Queues to serve, comma-separated, each optionally `name:concurrency` (default: worker.queues).
    #[arg(long, value_delimiter = ',')]
    pub queues: Option<Vec<String>>,
    /// Handlers running at once per queue (default: worker.concurrency).
    #[arg(long)]
    pub concurrency: Option<NonZeroUsize>,
}

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Also mint an all-scope development key when DATABASE_URL points at a server herald did not start (by
    /// default only the private cluster gets one). It is revoked on exit.
    #[arg(long)]
    pub dev_key: bool,
}

#[derive(Subcommand)]
enum BridgeCommand {
    /// Messages the bridge could not decode or route.
    Dlq {
        #[command(subcommand)]
        command: BridgeDlqCommand,
    },
}

fn main() -> ExitCode {
    let telemetry = telemetry::init();
    // Before the runtime starts its threads: signals go to a thread of their own (see shutdown.rs).
    herald::shutdown::watch();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.into()),
    };
    let result = runtime.block_on(run(cli));
    // A handler stuck without yielding can never be joined; do not wait for its thread (its attempt was already
    // recorded as interrupted, and the job runs again elsewhere).
    runtime.shutdown_timeout(Duration::from_secs(1));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// A user-facing error: the message and its causes on one line, never a backtrace (`RUST_BACKTRACE` is for
/// panics, which are bugs).
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load()?;
    if cli.no_migrate {
        settings.database.migrate = false;
    }
    match cli.command {
        Command::Up(args) => up::run(settings, args).await,
        Command::Bench { what: None, args } => Ok(bench::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Workflows(args)),
            ..
        } => Ok(bench::workflows::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Fanout(args)),
            ..
        } => Ok(bench::fanout::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Digest(args)),
            ..
        } => Ok(bench::digest::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Feed(args)),
            ..
        } => Ok(bench::feed::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Http(args)),
            ..
        } => Ok(bench::http::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Channels(args)),
            ..
        } => Ok(bench::channels::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Bridge(args)),
            ..
        } => Ok(bench::bridge::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Soak(args)),
            ..
        } => Ok(bench::soak::run(&settings, args).await?),
        Command::Bench {
            what: Some(BenchWhat::Retention(args)),
            ..
        } => Ok(bench::retention::run(&settings, args).await?),
        Command::Migrate => {
            herald::db::migrate(&connect(&settings).await?).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Worker(args) => {
            let grace = settings.worker.shutdown_grace;
            let options = herald::app::worker_options(&settings, args.queues, args.concurrency)?;
            let app = App::boot(settings).await?;
            let shutdown = herald::shutdown::on_signal(grace);
            app.serve_probes(shutdown.clone()).await?;
            app.run_worker(options, HandlerRegistry::new(), shutdown)
                .await;
            Ok(())
        }
        Command::Api => {
            let grace = settings.api.shutdown_grace;
            let app = App::boot(settings).await?;
            let listener = bind(&app.settings).await?;
            app.serve_api(listener, herald::shutdown::on_signal(grace))
                .await?;
            Ok(())
        }
        Command::Bridge { command: None } => {
            herald::bridge::check_configured(&settings.bridge)?;
            let grace = settings.worker.shutdown_grace;
            let app = App::boot(settings).await?;
            let shutdown = herald::shutdown::on_signal(grace);
            app.serve_probes(shutdown.clone()).await?;
            app.run_bridge(shutdown).await?;
            Ok(())
        }
        Command::Clock => {
            let grace = settings.worker.shutdown_grace;
            let app = App::boot(settings).await?;
            let shutdown = herald::shutdown::on_signal(grace);
            app.serve_probes(shutdown.clone()).await?;
            app.run_clock(shutdown).await?;
            Ok(())
        }
        Command::Cron { command } => commands::cron(&settings, command).await,
        Command::Rollup { command, days } => commands::rollup(&settings, days, command).await,
        Command::Retention {
            command: RetentionCommand::Run(args),
        } => commands::retention_run(&settings, args).await,
        Command::Archive { command } => commands::archive(&settings, command).await,
        Command::Bridge {
            command: Some(BridgeCommand::Dlq { command }),
        } => commands::bridge_dlq(&settings, command).await,
        Command::Keys { command } => commands::keys(&connect(&settings).await?, command).await,
        Command::Enqueue(args) => {
            commands::enqueue(&settings, &connect(&settings).await?, args).await
        }
        Command::Jobs { command } => commands::jobs(&connect(&settings).await?, command).await,
        Command::Dlq { command } => {
            commands::dlq(&settings, &connect(&settings).await?, command).await
        }
        Command::Queues { command } => commands::queues(&connect(&settings).await?, command).await,
        Command::Status(args) => commands::status(&settings, args).await,
        Command::Workers => print_json(&admin::list_workers(&connect(&settings).await?).await?),
        Command::Audit(args) => commands::audit(&connect(&settings).await?, args).await,
        Command::Templates { command } => commands::templates(&settings, command).await,
        Command::Workflows { command } => commands::workflows(&settings, command).await,
        Command::Recipients { command } => commands::recipients(&settings, command).await,
        Command::Topics { command } => commands::topics(&settings, command).await,
    }
}

/// The API's listener on `api.listen` (which `PORT` replaces, see `config`).
async fn bind(settings: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    let address = &settings.api.listen;
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (api.listen)"))
}

//! Test helpers every test binary includes: a fresh database per test on the server named by DATABASE_URL, an
//! in-process worker, a worker process, and polling with a deadline (never fixed sleeps). Each binary uses a
//! different part, so the helpers some binaries leave unused say so with a narrow `allow(dead_code)`.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use herald::config::Settings;
use herald::queue::worker::{self, WorkerOptions};
use herald::queue::{HandlerRegistry, JobDefaults, NewJob, QueueName, QueueSpec, RetryPolicy};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// A database of its own for one test, migrated, dropped when the value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    #[allow(dead_code)] // for tests that hand the database to a herald process
    pub url: String,
    server: String,
    name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::on_server(&server_url()).await
    }

    pub async fn on_server(server: &str) -> Self {
        let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot connect to the test server (DATABASE_URL, default {DEFAULT_URL}): {error}. \
                     Run ./test.sh, which starts a local PostgreSQL, or point DATABASE_URL at one"
                )
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create db");
        admin.close().await;
        let url = herald::db::with_database(server, &name);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .expect("connect to test db");
        herald::db::migrate(&pool).await.expect("migrate");
        Self {
            pool,
            url,
            server: server.to_string(),
            name,
        }
    }
}

impl TestDb {
    /// Enqueues `jobs` in one batch with the test defaults and returns their ids.
    #[allow(dead_code)] // only some binaries enqueue directly
    pub async fn enqueue(&self, jobs: Vec<NewJob>) -> Vec<i64> {
        let mut conn = self.pool.acquire().await.expect("connection");
        herald::queue::enqueue_many(&mut conn, &defaults(), &jobs)
            .await
            .expect("enqueue")
            .iter()
            .map(|r| r.id())
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs outside async; do the cleanup on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&server)
                    .await
                {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&sql).execute(&admin).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Settings as the tests run them (config/default.toml + config/test.toml).
#[allow(dead_code)] // the queue binary needs no settings
pub fn settings() -> Settings {
    Settings::load_from(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config")),
        Some("test"),
    )
    .expect("settings")
}

pub fn defaults() -> JobDefaults {
    JobDefaults {
        max_attempts: 5,
        timeout: Duration::from_secs(30),
        priority_aging: Duration::from_secs(60),
    }
}

/// Worker options with fast timers, serving `queues` (name, concurrency).
#[allow(dead_code)] // only the binaries that run a worker in-process
pub fn options(queues: &[(&str, usize)]) -> WorkerOptions {
    WorkerOptions {
        queues: queues
            .iter()
            .map(|(name, concurrency)| QueueSpec {
                name: queue(name),
                concurrency: *concurrency,
            })
            .collect(),
        batch_size: 50,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(200),
        heartbeat_interval: Duration::from_secs(1),
        rescue_interval: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
        ack_flush: Duration::from_millis(5),
        ack_batch: 100,
        defaults: defaults(),
        retry: RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
        },
        drills: false,
    }
}

pub fn queue(name: &str) -> QueueName {
    QueueName::parse(name).expect("queue name")
}

#[allow(dead_code)] // only some binaries enqueue directly
pub fn job(queue_name: &str, kind: &str, payload: serde_json::Value) -> NewJob {
    NewJob::new(
        queue(queue_name),
        herald::queue::JobKind::parse(kind).expect("kind"),
        payload,
    )
}

/// An in-process worker; `stop` shuts it down gracefully and waits.
#[allow(dead_code)] // only the binaries that run a worker in-process
pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

#[allow(dead_code)] // only the binaries that run a worker in-process
impl RunningWorker {
    pub fn start(pool: &PgPool, options: WorkerOptions, registry: HandlerRegistry) -> Self {
        init_test_logging();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker::run(
            pool.clone(),
            options,
            registry,
            shutdown.clone(),
        ));
        Self { shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task");
    }
}

/// Polls `check` every 10 ms until it returns true; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// Jobs still in the hot table.
#[allow(dead_code)] // only the binaries that look at the queue's tables
pub async fn live_jobs(pool: &PgPool) -> i64 {
    scalar_i64(pool, "SELECT count(*) FROM herald_jobs").await
}

/// Completions recorded per job: (jobs completed, total completion rows). Equal means none completed twice.
#[allow(dead_code)] // only the binaries that look at the queue's tables
pub async fn completions(pool: &PgPool) -> (i64, i64) {
    let distinct = scalar_i64(
        pool,
        "SELECT count(DISTINCT job_id) FROM herald_job_history WHERE outcome = 'completed'",
    )
    .await;
    let total = scalar_i64(
        pool,
        "SELECT count(*) FROM herald_job_history WHERE outcome = 'completed'",
    )
    .await;
    (distinct, total)
}

/// Worker logs in the test's captured output (shown when a test fails). RUST_LOG filters, default `warn`.
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `n` distinct ports nothing listens on at the moment (each held until all are chosen, so two cannot be the same).
#[allow(dead_code)] // only the binaries that start several servers
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("its address").port())
        .collect()
}

/// A port nothing listens on at the moment (for a server the test starts next).
#[allow(dead_code)] // only the binaries that start servers of their own
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Starts `herald <args>` as a separate process on `url`, with the test settings and logs at `warn`.
#[allow(dead_code)] // only the binaries that start herald processes
pub fn spawn_herald(url: &str, args: &[&str]) -> tokio::process::Child {
    spawn_herald_with(url, args, &[])
}

/// [`spawn_herald`] with extra environment variables (settings overrides such as `HERALD_CHANNELS__SINK`, or
/// `RUST_LOG` instead of the default `warn`).
#[allow(dead_code)] // only the binaries that start herald processes
pub fn spawn_herald_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", url)
        .env("HERALD_ENV", "test")
        .env("RUST_LOG", "warn")
        // The caller's variables last: they may override the defaults above (a test that needs INFO spans).
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .expect("start herald")
}

#[allow(dead_code)] // only the binaries that scrape a herald process
/// The value of the sample `name` whose labels include `labels`, summed over the rest (0 if none).
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let found: std::collections::BTreeMap<&str, &str> = rest
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key, value.trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|(key, want)| found.get(key) == Some(want))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The text a herald process serves at `http://{address}/metrics` (empty while nothing answers there yet).
#[allow(dead_code)] // only the binaries that scrape a herald process
pub async fn scrape(address: &str) -> String {
    let answer = reqwest::get(format!("http://{address}/metrics")).await;
    match answer {
        Ok(response) if response.status().is_success() => response.text().await.unwrap_or_default(),
        _ => String::new(),
    }
}

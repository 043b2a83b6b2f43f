//! `herald bench channels`: provider chaos. N runs of a one-action chat workflow go through a real
//! `herald worker` process whose chain is `slack -> discord`, both pointed at an in-process fake that answers
//! 30% 5xx, 10% 429 (with `Retry-After`) and 60% success, each in that provider's wire format.
//!
//! The fake counts successful sends per message; at the end every message must have been accepted exactly once
//! (its delivery `sent`) or be dead-lettered with a reason, never accepted twice, never lost.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sqlx::PgPool;
use tokio::process::Child;

use crate::bench::{BenchError, herald_process, scratch_database, stop_workers, wait_for_count};
use herald::config::Settings;
use herald::workflow::definition;

const CHAOS_WORKFLOW: &str = r#"
name: chaos
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      n: { type: string }
      room: { type: string }
    next: notify
  - id: notify
    kind: action
    channel: chat
    to: "{{ trigger.room }}"
    content:
      body: "chaos-{{ trigger.n }}"
"#;

#[derive(Debug, Clone, clap::Args)]
pub struct ChannelBenchArgs {
    /// Action nodes (one run each).
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Chat webhooks the messages are spread over (a 429 pauses only its own webhook).
    #[arg(long, default_value_t = 10)]
    pub destinations: usize,
    /// Share of answers that are 5xx, and that are 429.
    #[arg(long, default_value_t = 0.30)]
    pub error_rate: f64,
    #[arg(long, default_value_t = 0.10)]
    pub rate_limit_rate: f64,
    #[arg(long, default_value = "herald_bench_channels")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ChannelBenchReport {
    pub messages: usize,
    pub destinations: usize,
    pub wall_secs: f64,
    pub sent_per_s: f64,
    pub provider_calls: u64,
    pub answered_5xx: u64,
    pub answered_429: u64,
    pub sent: i64,
    pub dead_lettered: i64,
    pub accepted_twice: usize,
    pub lost: i64,
    pub by_provider: HashMap<String, i64>,
}

/// What the fake saw.
#[derive(Default)]
struct FakeState {
    calls: u64,
    errors: u64,
    limited: u64,
    /// Successful answers per message text.
    accepted: HashMap<String, u32>,
    /// When each message text was first accepted.
    arrived: HashMap<String, Instant>,
    next_id: u64,
}

pub(crate) struct Fake {
    state: Mutex<FakeState>,
    error_rate: f64,
    rate_limit_rate: f64,
}

pub async fn run(settings: &Settings, args: ChannelBenchArgs) -> Result<(), BenchError> {
    let (url, pool) = scratch_database(settings, &args.database).await?;

    let fake = Arc::new(Fake::new(args.error_rate, args.rate_limit_rate));
    let fake_url = serve_fake(Arc::clone(&fake)).await?;
    let config_dir = tempdir_with_config(&fake_url, args.destinations.max(1))?;

    let engine = herald::app::App::on_pool(settings.clone(), pool.clone())
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .engine;
    let definition = definition::parse_text("chaos.yaml", CHAOS_WORKFLOW)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    engine
        .catalog
        .save(
            &herald::audit::Actor::herald("bench"),
            "chaos.yaml",
            &definition,
        )
        .await
        .map_err(failed)?;
    let rooms = args.destinations.max(1);
    for chunk in (0..args.messages).collect::<Vec<_>>().chunks(1_000) {
        let data = chunk
            .iter()
            .map(
                |i| serde_json::json!({ "n": i.to_string(), "room": format!("room{}", i % rooms) }),
            )
            .collect();
        engine.start_runs("chaos", data).await.map_err(failed)?;
    }

    let started = Instant::now();
    let workers = (0..args.workers.max(1))
        .map(|_| spawn_chaos_worker(&url, config_dir.path(), args.concurrency))
        .collect::<Result<Vec<_>, _>>()?;
    wait_until_settled(&pool, args.messages as i64, Duration::from_secs(1800)).await?;
    let wall_secs = started.elapsed().as_secs_f64();
    stop_workers(workers).await;

    let report = report(&pool, &fake, &args, wall_secs).await?;
    pool.close().await;
    print_report(&report, args.json);
    if report.accepted_twice > 0 || report.lost > 0 {
        return Err(BenchError::Failed(format!(
            "{} messages accepted twice, {} lost",
            report.accepted_twice, report.lost
        )));
    }
    Ok(())
}

fn failed(error: herald::workflow::WorkflowError) -> BenchError {
    BenchError::Failed(error.to_string())
}

/// A config folder for the worker processes: the chain and both providers pointed at the fake. The worker
/// reads `config/default.toml` from its working directory on top of the built-in defaults.
pub(crate) fn tempdir_with_config(
    fake_url: &str,
    destinations: usize,
) -> Result<TempConfig, BenchError> {
    let dir = std::env::temp_dir().join(format!("herald-bench-channels-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("config")).map_err(io_failed)?;
    let webhooks = |provider: &str, path: &str| {
        (0..destinations)
            .map(|i| format!("room{i} = \"{fake_url}/{provider}/{path}/{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (slack, discord) = (
        webhooks("slack", "services/T0/B0"),
        webhooks("discord", "api/webhooks/1"),
    );
    let config = format!(
        r#"
[channels]
sink = "providers"
attempts_per_provider = 2
retry_pause_ms = 50

[channels.chains]
chat = ["slack", "discord"]

[providers.slack]
webhooks = {{ {slack} }}
timeout_ms = 2000

[providers.discord]
webhooks = {{ {discord} }}
timeout_ms = 2000
"#
    );
    std::fs::write(dir.join("config/default.toml"), config).map_err(io_failed)?;
    Ok(TempConfig(dir))
}

pub(crate) struct TempConfig(std::path::PathBuf);

impl TempConfig {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_failed(error: std::io::Error) -> BenchError {
    BenchError::Failed(error.to_string())
}

fn spawn_chaos_worker(url: &str, dir: &Path, concurrency: usize) -> Result<Child, BenchError> {
    herald_process(url, "error")?
        .args(["worker", "--queues", &format!("workflows:{concurrency}")])
        .current_dir(dir)
        .env("HERALD_WORKFLOWS__NODE_MAX_ATTEMPTS", "8")
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start a worker process: {e}")))
}

pub(crate) async fn serve_fake(fake: Arc<Fake>) -> Result<String, BenchError> {
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let fake = Arc::clone(&fake);
        async move { fake.answer(&uri, &body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io_failed)?;
    let address = listener.local_addr().map_err(io_failed)?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{address}"))
}

impl Fake {
    /// A fake that answers this share of calls with 5xx, this share with 429, and the rest with success.
    pub(crate) fn new(error_rate: f64, rate_limit_rate: f64) -> Self {
        Self {
            state: Mutex::new(FakeState::default()),
            error_rate,
            rate_limit_rate,
        }
    }

    /// Messages it accepted (by text), and how many of them it accepted more than once.
    pub(crate) fn accepted(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let twice = state.accepted.values().filter(|n| **n > 1).count();
        (state.accepted.len(), twice)
    }

    /// When the message with this text was first accepted.
    pub(crate) fn arrived(&self, text: &str) -> Option<Instant> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.arrived.get(text).copied()
    }

    /// Draws an answer class, then answers in the wire format of the provider the path names.
    fn answer(&self, uri: &Uri, body: &[u8]) -> Response {
        let discord = uri.path().starts_with("/discord");
        let draw: f64 = rand::random();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.calls += 1;
        if draw < self.error_rate {
            state.errors += 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable").into_response();
        }
        if draw < self.error_rate + self.rate_limit_rate {
            state.limited += 1;
            return if discord {
                let body = serde_json::json!({"message": "You are being rate limited.", "retry_after": 0.2, "global": false});
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    axum::Json(body),
                )
                    .into_response()
            } else {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    "rate_limited",
                )
                    .into_response()
            };
        }
        let text = message_text(body, discord);
        state
            .arrived
            .entry(text.clone())
            .or_insert_with(Instant::now);
        *state.accepted.entry(text).or_default() += 1;
        state.next_id += 1;
        if discord {
            let id = state.next_id.to_string();
            (StatusCode::OK, axum::Json(serde_json::json!({ "id": id }))).into_response()
        } else {
            (StatusCode::OK, "ok").into_response()
        }
    }
}

fn message_text(body: &[u8], discord: bool) -> String {
    let field = if discord { "content" } else { "text" };
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get(field).and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Waits until every run has completed or failed.
async fn wait_until_settled(pool: &PgPool, total: i64, limit: Duration) -> Result<(), BenchError> {
    let sql = "SELECT count(*) FROM herald_runs WHERE status IN ('completed', 'failed')";
    wait_for_count(pool, sql, total, limit, "runs settled").await
}

async fn report(
    pool: &PgPool,
    fake: &Fake,
    args: &ChannelBenchArgs,
    wall_secs: f64,
) -> Result<ChannelBenchReport, BenchError> {
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM herald_deliveries WHERE status = 'sent'")
            .fetch_one(pool)
            .await?;
    let dead_lettered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM herald_dead_letters WHERE reason IS NOT NULL AND reason <> ''",
    )
    .fetch_one(pool)
    .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(provider, '?'), count(*) FROM herald_deliveries WHERE status = 'sent' GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    let state = fake.state.lock().unwrap_or_else(|p| p.into_inner());
    let accepted_twice = state.accepted.values().filter(|n| **n > 1).count();
    // A message is lost if it neither reached the fake (accepted) nor was dead-lettered.
    let accepted = state.accepted.len() as i64;
    let lost = (args.messages as i64 - accepted - dead_lettered).max(0);
    Ok(ChannelBenchReport {
        messages: args.messages,
        destinations: args.destinations.max(1),
        wall_secs,
        sent_per_s: sent as f64 / wall_secs.max(1e-6),
        provider_calls: state.calls,
        answered_5xx: state.errors,
        answered_429: state.limited,
        sent,
        dead_lettered,
        accepted_twice,
        lost,
        by_provider: rows.into_iter().collect(),
    })
}

fn print_report(report: &ChannelBenchReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    println!(
        "herald bench channels: {} chat actions over {} webhooks, chain slack -> discord, fake answering 5xx/429/ok",
        report.messages, report.destinations
    );
    println!("  wall time              {:>10.1} s", report.wall_secs);
    println!(
        "  sent                   {:>10} ({:.0} sends/s) by {:?}",
        report.sent, report.sent_per_s, report.by_provider
    );
    println!(
        "  provider calls         {:>10} ({} answered 5xx, {} answered 429)",
        report.provider_calls, report.answered_5xx, report.answered_429
    );
    println!("  dead-lettered          {:>10}", report.dead_lettered);
    println!("  accepted twice         {:>10}", report.accepted_twice);
    println!("  lost                   {:>10}", report.lost);
}

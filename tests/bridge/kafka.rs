//! Kafka for the bridge tests: librdkafka's in-process mock cluster (a real Kafka-protocol listener on a local
//! port, so `herald bridge` processes can join it too), a producer, and bridges run in-process or as processes.

use std::sync::Arc;
use std::time::Duration;

use herald::bridge::{BridgeError, RouteSettings};
use herald::config::Settings;
use herald::workflow::Engine;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A mock cluster with one broker and the given topics. Keep it alive for the whole test.
pub fn mock_cluster(topics: &[(&str, i32)]) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for (topic, partitions) in topics {
        cluster
            .create_topic(topic, *partitions, 1)
            .expect("create topic");
    }
    cluster
}

/// Librdkafka settings that make group joins and rebalances take about a second instead of ~10.
pub fn fast_group_settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("session.timeout.ms", "3000"),
        ("heartbeat.interval.ms", "300"),
        ("topic.metadata.refresh.interval.ms", "1000"),
    ]
}

/// `[bridge]` settings for `brokers` with `routes`: small batches, fast group timers.
pub fn bridge_settings(brokers: &str, routes: Vec<RouteSettings>) -> Settings {
    let mut settings = crate::common::settings();
    settings.bridge.brokers = brokers.to_string();
    settings.bridge.routes = routes;
    settings.bridge.batch_size = std::num::NonZeroUsize::new(100).expect("not zero");
    settings.bridge.linger = Duration::from_millis(10);
    settings.bridge.check_interval = Duration::from_millis(100);
    for (key, value) in fast_group_settings() {
        settings
            .bridge
            .librdkafka
            .0
            .insert(key.to_string(), value.to_string());
    }
    settings
}

pub fn job_route(topic: &str, queue: &str, kind: &str) -> RouteSettings {
    RouteSettings {
        topic: topic.into(),
        target: "job".into(),
        queue: Some(queue.into()),
        kind: Some(kind.into()),
        ..Default::default()
    }
}

/// The same routes as the environment variable `HERALD_BRIDGE__ROUTES` (TOML inline), for bridge processes.
pub fn job_route_env(topic: &str, queue: &str, kind: &str) -> String {
    format!(r#"[{{topic="{topic}",target="job",queue="{queue}",kind="{kind}"}}]"#)
}

pub struct TestProducer {
    producer: BaseProducer,
}

/// A producer that waits for every message to be acknowledged.
pub fn producer(brokers: &str) -> TestProducer {
    let producer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    TestProducer { producer }
}

impl TestProducer {
    /// Sends `payload` to `partition` with optional headers; call [`TestProducer::flush`] to wait for delivery.
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) {
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(payload)
            .headers(owned);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((error, returned)) => {
                    // The local queue is full: let deliveries drain, then try again.
                    assert!(
                        matches!(
                            error,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce failed: {error}"
                    );
                    self.producer.poll(Duration::from_millis(50));
                    record = returned;
                }
            }
        }
    }

    pub fn send_json(&self, topic: &str, partition: Option<i32>, value: &serde_json::Value) {
        self.send(topic, partition, value.to_string().as_bytes(), &[]);
    }

    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(30))
            .expect("every message delivered");
    }
}

/// A bridge running in this process (its consumer on a thread of its own).
pub struct RunningBridge {
    pub shutdown: CancellationToken,
    task: JoinHandle<Result<(), BridgeError>>,
}

impl RunningBridge {
    pub fn start(settings: Settings, pool: PgPool, engine: Arc<Engine>) -> Self {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let defaults = settings.jobs.defaults();
        let task = tokio::spawn(async move {
            herald::bridge::run(&settings.bridge, defaults, pool, engine, token).await
        });
        Self { shutdown, task }
    }

    /// SIGTERM's path: store the batch in hand, leave the group, close.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the bridge stops within 30 s")
            .expect("bridge task")
            .expect("bridge ran without error");
    }
}

/// Jobs in the hot table (no worker runs in these tests) per kind.
pub async fn jobs_of_kind(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM herald_jobs WHERE kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .expect("count jobs")
}

/// (jobs, distinct message sequence numbers) among jobs whose payload carries `seq`.
pub async fn jobs_and_distinct_seqs(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT payload->>'seq') FROM herald_jobs WHERE payload ? 'seq'",
    )
    .fetch_one(pool)
    .await
    .expect("count jobs")
}

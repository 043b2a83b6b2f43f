//! The Kafka bridge against librdkafka's mock cluster: routing to each target, offsets stored with the jobs,
//! bad messages dead-lettered with their bytes, backpressure, consumer-group rebalances, kill -9 mid-stream, and
//! the event aggregation case (an HTTP event and a Kafka event completing one wait node, in both orders).

use std::time::Duration;

use crate::common::flows::Flow;
use crate::common::*;
use crate::kafka::*;
use herald::bridge::RouteSettings;
use herald::bridge::dead_letters::{self, DeadLetterQuery};
use herald::workflow::RunStatus;
use serde_json::json;

const SIGNUP: &str = r#"
name: signup
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { user: { type: string } }
    next: hello
  - id: hello
    kind: action
    channel: chat
    to: "{{ trigger.user }}"
    content: { text: "welcome" }
"#;

const ORDER: &str = r#"
name: order
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { order: { type: string } }
    next: gate
  - id: gate
    kind: wait_for_events
    events: [paid, shipped]
    key: trigger.order
    mode: all
    next: done
  - id: done
    kind: action
    channel: chat
    to: "{{ trigger.order }}"
    content: { text: "paid and shipped" }
"#;

fn workflow_route(topic: &str, workflow: &str) -> RouteSettings {
    RouteSettings {
        topic: topic.into(),
        target: "workflow".into(),
        workflow: Some(workflow.into()),
        ..Default::default()
    }
}

fn event_route(topic: &str, event: &str, key: &str) -> RouteSettings {
    RouteSettings {
        topic: topic.into(),
        target: "event".into(),
        event: Some(event.into()),
        key: Some(key.into()),
        ..Default::default()
    }
}

async fn stored_offset(pool: &sqlx::PgPool, topic: &str, partition: i32) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT next_offset FROM herald_bridge_offsets WHERE group_id = 'herald' AND topic = $1 AND partition = $2",
    )
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await
    .expect("offset")
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_jobs_runs_and_events_with_their_offsets_stored() {
    let cluster = mock_cluster(&[("orders", 2), ("signups", 1), ("payments", 1)]);
    let brokers = cluster.bootstrap_servers();
    let flow = Flow::without_worker(&[SIGNUP, ORDER]).await;
    let settings = bridge_settings(
        &brokers,
        vec![
            job_route("orders", "kafka", "order.created"),
            workflow_route("signups", "signup"),
            event_route("payments", "paid", "/order"),
        ],
    );
    let producer = producer(&brokers);
    for seq in 0..30 {
        producer.send_json("orders", Some(seq % 2), &json!({ "seq": seq }));
    }
    for user in ["ada", "grace"] {
        producer.send_json("signups", None, &json!({ "user": user }));
    }
    producer.send_json("payments", None, &json!({ "order": "o-1", "amount": 5 }));
    producer.flush();

    let bridge = RunningBridge::start(settings, flow.db.pool.clone(), flow.engine.clone());
    let pool = &flow.db.pool;
    wait_until(Duration::from_secs(30), "every message stored", || async {
        jobs_of_kind(pool, "order.created").await == 30
            && scalar_i64(pool, "SELECT count(*) FROM herald_runs").await == 2
            && scalar_i64(pool, "SELECT count(*) FROM herald_events").await == 1
    })
    .await;
    bridge.stop().await;

    let (jobs, seqs) = jobs_and_distinct_seqs(pool).await;
    assert_eq!((jobs, seqs), (30, 30), "one job per message");
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM herald_runs ORDER BY idempotency_key")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(keys, ["kafka:signups:0:0", "kafka:signups:0:1"]);
    let (event_id, key): (String, String) =
        sqlx::query_as("SELECT event_id, key FROM herald_events")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (event_id.as_str(), key.as_str()),
        ("kafka:payments:0:0", "o-1")
    );
    assert_eq!(stored_offset(pool, "orders", 0).await, Some(15));
    assert_eq!(stored_offset(pool, "orders", 1).await, Some(15));
    assert_eq!(stored_offset(pool, "signups", 0).await, Some(2));
    assert_eq!(stored_offset(pool, "payments", 0).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_starts_from_the_offset_in_postgres_not_the_brokers() {
    let cluster = mock_cluster(&[("orders", 1)]);
    let brokers = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let producer = producer(&brokers);
    for seq in 0..100 {
        producer.send_json("orders", Some(0), &json!({ "seq": seq }));
    }
    producer.flush();
    // The broker says the group is done with all 100; Postgres says 60.
    commit_on_broker(&brokers, "herald", "orders", 0, 100);
    sqlx::query(
        "INSERT INTO herald_bridge_offsets (group_id, topic, partition, next_offset) VALUES ('herald', 'orders', 0, 60)",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let settings = bridge_settings(&brokers, vec![job_route("orders", "kafka", "k")]);
    let engine = herald::app::App::on_pool(settings.clone(), db.pool.clone())
        .unwrap()
        .engine;
    let bridge = RunningBridge::start(settings, db.pool.clone(), engine);
    wait_until(Duration::from_secs(30), "offsets 60..99 stored", || async {
        stored_offset(&db.pool, "orders", 0).await == Some(100)
    })
    .await;
    bridge.stop().await;
    let seqs: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'seq' FROM herald_jobs ORDER BY (payload->>'seq')::int",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<String> = (60..100).map(|s| s.to_string()).collect();
    assert_eq!(
        seqs, expected,
        "exactly the messages after the Postgres offset"
    );
}

/// Commits an offset for `group` on the broker, as a consumer of that group would.
fn commit_on_broker(brokers: &str, group: &str, topic: &str, partition: i32, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    drop(offsets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_with_their_bytes_and_the_bridge_moves_on() {
    let cluster = mock_cluster(&[("payments", 1), ("signups", 1)]);
    let brokers = cluster.bootstrap_servers();
    let flow = Flow::without_worker(&[]).await;
    let mut typed = job_route("payments", "kafka", "refund");
    typed.when_header = Some("type".into());
    typed.equals = Some("refund".into());
    let routes = vec![
        typed,
        event_route("payments", "paid", "/order"),
        workflow_route("signups", "signup"), // not defined yet
    ];
    let settings = bridge_settings(&brokers, routes);
    let producer = producer(&brokers);
    producer.send("payments", None, b"{not json", &[("trace", "t-1")]);
    producer.send("payments", None, br#"{"amount": 5}"#, &[]); // no correlation key
    producer.send("payments", None, br#"{"seq": 1}"#, &[("type", "refund")]);
    producer.send("payments", None, br#"{"order": "o-9"}"#, &[]);
    producer.send("signups", None, br#"{"user": "ada"}"#, &[]);
    producer.flush();

    let bridge = RunningBridge::start(settings.clone(), flow.db.pool.clone(), flow.engine.clone());
    let pool = &flow.db.pool;
    wait_until(
        Duration::from_secs(30),
        "all five messages handled",
        || async {
            stored_offset(pool, "payments", 0).await == Some(4)
                && stored_offset(pool, "signups", 0).await == Some(1)
        },
    )
    .await;
    bridge.stop().await;

    assert_eq!(jobs_of_kind(pool, "refund").await, 1);
    assert_eq!(
        scalar_i64(pool, "SELECT count(*) FROM herald_events").await,
        1
    );
    let query = DeadLetterQuery {
        limit: 10,
        ..Default::default()
    };
    let mut letters = dead_letters::list(pool, &query).await.unwrap();
    // The two topics' batches may be stored in either order; the assertions below read payments first.
    letters.sort_by(|a, b| (&a.topic, a.offset).cmp(&(&b.topic, b.offset)));
    let summary: Vec<(String, i64, Option<String>, String)> = letters
        .iter()
        .map(|l| {
            (
                l.topic.clone(),
                l.offset,
                l.payload.clone(),
                l.error.clone(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!(summary[0].1, 0);
    assert_eq!(summary[0].2.as_deref(), Some("{not json"), "raw bytes kept");
    assert!(summary[0].3.contains("not valid JSON"), "{}", summary[0].3);
    assert_eq!(
        letters[0].message.header("trace"),
        Some(&b"t-1"[..]),
        "headers kept"
    );
    assert!(
        summary[1].3.contains("no field `/order`"),
        "{}",
        summary[1].3
    );
    assert_eq!(summary[2].0, "signups");
    assert!(summary[2].3.contains("not found"), "{}", summary[2].3);

    // Once the workflow exists, replaying starts the run; the message still missing its key stays dead.
    flow.save(SIGNUP).await;
    let writer = herald::bridge::writer(
        &settings.bridge,
        settings.jobs.defaults(),
        pool.clone(),
        flow.engine.clone(),
    )
    .unwrap();
    let results = dead_letters::replay(&writer, &herald::audit::Actor::cli(), &query)
        .await
        .unwrap();
    // Replay answers in id order, which need not be the listing's order (the three dead letters come from
    // different partitions, so their ids follow the order the bridge wrote them): compare sorted.
    let mut replayed: Vec<(i64, bool)> = results.iter().map(|r| (r.id, r.replayed)).collect();
    replayed.sort();
    let mut expected = vec![
        (letters[0].id, false),
        (letters[1].id, false),
        (letters[2].id, true),
    ];
    expected.sort();
    assert_eq!(replayed, expected);
    // The replay that went through is audited; the two that failed are not.
    let audited = herald::audit::list(
        pool,
        &herald::audit::AuditFilter {
            action: Some("bridge_dead_letter.replay".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    let targets: Vec<&str> = audited.iter().map(|a| a.target.as_str()).collect();
    assert_eq!(targets, [format!("bridge_dead_letter:{}", letters[2].id)]);
    let key: String = sqlx::query_scalar("SELECT idempotency_key FROM herald_runs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(key, "kafka:signups:0:0");
    assert_eq!(dead_letters::list(pool, &query).await.unwrap().len(), 2);
    let again = dead_letters::replay(&writer, &herald::audit::Actor::cli(), &query)
        .await
        .unwrap();
    assert!(
        again.iter().all(|r| !r.replayed),
        "a replayed row is not replayed twice"
    );
    assert_eq!(
        scalar_i64(pool, "SELECT count(*) FROM herald_runs").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_pauses_its_topic_until_it_drains() {
    let cluster = mock_cluster(&[("bulk", 1)]);
    let brokers = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let mut settings = bridge_settings(&brokers, vec![job_route("bulk", "bulk", "k")]);
    settings.bridge.batch_size = std::num::NonZeroUsize::new(10).unwrap();
    settings.bridge.max_queue_depth = 50;
    settings.bridge.resume_depth = 20;
    let producer = producer(&brokers);
    for seq in 0..300 {
        producer.send_json("bulk", Some(0), &json!({ "seq": seq }));
    }
    producer.flush();
    let engine = herald::app::App::on_pool(settings.clone(), db.pool.clone())
        .unwrap()
        .engine;
    let bridge = RunningBridge::start(settings, db.pool.clone(), engine);

    let paused = || {
        herald::bridge::metrics::PAUSED
            .with_label_values(&["bulk"])
            .get()
            == 1
    };
    wait_until(Duration::from_secs(30), "the topic to pause", || async {
        paused()
    })
    .await;
    let at_pause = live_jobs(&db.pool).await;
    // A pause cannot be observed by its absence of progress without a window: watch one for a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = live_jobs(&db.pool).await;
    assert!(paused(), "still paused");
    assert!(
        (50..50 + 2 * 10 + 1).contains(&after),
        "at most the batches in hand after the limit: {at_pause} then {after}"
    );

    // Drain the queue (as workers would): the bridge resumes and delivers the rest, each message once.
    let drained = std::sync::atomic::AtomicI64::new(0);
    wait_until(
        Duration::from_secs(60),
        "all 300 messages delivered",
        || async {
            let gone = scalar_i64(
                &db.pool,
                "WITH gone AS (DELETE FROM herald_jobs RETURNING 1) SELECT count(*) FROM gone",
            )
            .await;
            drained.fetch_add(gone, std::sync::atomic::Ordering::SeqCst) + gone == 300
        },
    )
    .await;
    // The last batches may pause the topic again for a moment (the queue filled between two drains); the bridge
    // resumes at its next depth check once the queue is empty.
    wait_until(Duration::from_secs(10), "resumed", || async { !paused() }).await;
    bridge.stop().await;
    assert_eq!(live_jobs(&db.pool).await, 0, "no message stored twice");
    assert!(!paused(), "resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridges_joining_and_leaving_a_group_split_partitions_and_lose_nothing() {
    let cluster = mock_cluster(&[("events", 6)]);
    let brokers = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    // Each bridge names its jobs, so the test can see who stored what.
    let start = |name: &str| {
        let settings = bridge_settings(&brokers, vec![job_route("events", "kafka", name)]);
        let engine = herald::app::App::on_pool(settings.clone(), db.pool.clone())
            .unwrap()
            .engine;
        RunningBridge::start(settings, db.pool.clone(), engine)
    };
    let producer = producer(&brokers);
    let seq = std::sync::atomic::AtomicUsize::new(0);
    let produce = |count: usize| {
        for _ in 0..count {
            let next = seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            producer.send_json("events", None, &json!({ "seq": next }));
        }
        producer.flush();
    };
    // Messages keep coming while the group changes, so each member's share shows in its jobs.
    let first = start("first");
    let second = start("second");
    wait_until(
        Duration::from_secs(30),
        "both bridges store messages",
        || async {
            produce(20);
            jobs_of_kind(&db.pool, "first").await > 0 && jobs_of_kind(&db.pool, "second").await > 0
        },
    )
    .await;
    let third = start("third");
    wait_until(
        Duration::from_secs(30),
        "the third bridge gets partitions",
        || async {
            produce(20);
            jobs_of_kind(&db.pool, "third").await > 0
        },
    )
    .await;
    first.stop().await;
    produce(600);
    let total = seq.load(std::sync::atomic::Ordering::SeqCst) as i64;
    wait_until(Duration::from_secs(60), "every message stored", || async {
        jobs_and_distinct_seqs(&db.pool).await.1 == total
    })
    .await;
    second.stop().await;
    third.stop().await;
    assert_eq!(
        jobs_and_distinct_seqs(&db.pool).await,
        (total, total),
        "every message stored exactly once across three rebalances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_bridge_process_mid_stream_loses_and_duplicates_nothing() {
    let cluster = mock_cluster(&[("stream", 3)]);
    let brokers = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let routes = job_route_env("stream", "kafka", "k");
    let env = bridge_env(&brokers, &routes);
    let producer = producer(&brokers);
    for seq in 0..6000 {
        producer.send_json(
            "stream",
            None,
            &json!({ "seq": seq, "pad": "x".repeat(200) }),
        );
    }
    producer.flush();

    let mut victim = spawn_herald_with(&db.url, &["bridge"], &env_refs(&env));
    wait_until(
        Duration::from_secs(60),
        "the victim to store some batches",
        || async { live_jobs(&db.pool).await >= 500 },
    )
    .await;
    victim.kill().await.unwrap(); // SIGKILL: mid-stream, between any two steps
    let at_kill = live_jobs(&db.pool).await;
    assert!(at_kill < 6000, "killed mid-stream ({at_kill} stored)");

    let mut survivor = spawn_herald_with(&db.url, &["bridge"], &env_refs(&env));
    wait_until(
        Duration::from_secs(90),
        "all 6,000 messages stored",
        || async { jobs_and_distinct_seqs(&db.pool).await.1 == 6000 },
    )
    .await;
    survivor.kill().await.unwrap();
    assert_eq!(jobs_and_distinct_seqs(&db.pool).await, (6000, 6000));
}

fn bridge_env(brokers: &str, routes: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("HERALD_BRIDGE__BROKERS".to_string(), brokers.to_string()),
        ("HERALD_BRIDGE__ROUTES".to_string(), routes.to_string()),
        ("HERALD_BRIDGE__BATCH_SIZE".to_string(), "200".to_string()),
    ];
    for (key, value) in fast_group_settings() {
        env.push((
            format!(
                "HERALD_BRIDGE__LIBRDKAFKA__{}",
                key.replace('.', "_").to_uppercase()
            ),
            value.to_string(),
        ));
    }
    env
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_event_and_a_kafka_event_complete_one_wait_node_in_either_order() {
    let cluster = mock_cluster(&[("shipments", 1)]);
    let brokers = cluster.bootstrap_servers();
    let flow = Flow::start(&[ORDER]).await;
    let settings = bridge_settings(
        &brokers,
        vec![event_route("shipments", "shipped", "/order")],
    );
    let api = Api::start(&flow, &settings).await;
    let bridge = RunningBridge::start(settings, flow.db.pool.clone(), flow.engine.clone());
    let producer = producer(&brokers);

    // Order a: the HTTP event first, then the Kafka one. Order b: Kafka first.
    let run_a = flow.trigger("order", json!({ "order": "a" })).await;
    let run_b = flow.trigger("order", json!({ "order": "b" })).await;
    flow.step_reaches(run_a, "gate", "waiting").await;
    flow.step_reaches(run_b, "gate", "waiting").await;
    api.event("paid", "a").await;
    producer.send_json("shipments", None, &json!({ "order": "a" }));
    producer.send_json("shipments", None, &json!({ "order": "b" }));
    producer.flush();
    wait_until(
        Duration::from_secs(30),
        "the Kafka event for b stored",
        || async {
            scalar_i64(
                &flow.db.pool,
                "SELECT count(*) FROM herald_events WHERE key = 'b'",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        flow.run(run_b).await.status,
        RunStatus::Running,
        "b still waits for its payment"
    );
    api.event("paid", "b").await;

    for run in [run_a, run_b] {
        assert_eq!(
            flow.finished(run, "completed").await.status,
            RunStatus::Completed
        );
    }
    assert_eq!(flow.recorder.messages().len(), 2, "one message per order");
    bridge.stop().await;
    api.shutdown.cancel();
}

/// The HTTP API on the flow's database and engine.
struct Api {
    address: String,
    key: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Api {
    async fn start(flow: &Flow, settings: &herald::config::Settings) -> Self {
        use herald::api::keys::{self, Scope};
        let (key, _) = keys::create(
            &flow.db.pool,
            &herald::audit::Actor::cli(),
            "service",
            &Scope::ALL,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        // The API as `herald api` runs it, on the flow's engine (whose channels record what they send).
        let app = herald::app::App {
            settings: settings.clone(),
            pool: flow.db.pool.clone(),
            engine: flow.engine.clone(),
            channels: herald::channels::Channels::uniform(flow.recorder.clone()),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move { app.serve_api(listener, stop).await });
        Self {
            address,
            key,
            shutdown,
        }
    }

    async fn event(&self, name: &str, key: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/events", self.address))
            .bearer_auth(&self.key)
            .json(&json!({ "name": name, "key": key }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
}

/// A batch's jobs and its offsets are one transaction: when storing the offsets fails, the jobs are gone too,
/// and the retried batch stores each message once.
#[tokio::test]
async fn a_batch_whose_offsets_cannot_be_stored_leaves_no_jobs_behind() {
    let db = TestDb::new().await;
    let settings = bridge_settings("unused:9092", vec![job_route("orders", "kafka", "k")]);
    let writer = herald::app::App::on_pool(settings, db.pool.clone())
        .unwrap()
        .bridge_writer()
        .unwrap();
    let batch: Vec<herald::bridge::RawMessage> = (0..5)
        .map(|offset| raw("orders", offset, json!({ "seq": offset })))
        .collect();
    // The offset update is the last statement of the batch: make it fail, as a crash right there would.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'offset store refused'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON herald_bridge_offsets FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let error = writer.write(&batch).await.unwrap_err();
    assert!(
        error.to_string().contains("offset store refused"),
        "{error}"
    );
    assert_eq!(live_jobs(&db.pool).await, 0, "no job without its offset");
    assert_eq!(stored_offset(&db.pool, "orders", 0).await, None);

    sqlx::query("DROP TRIGGER refuse ON herald_bridge_offsets")
        .execute(&db.pool)
        .await
        .unwrap();
    let outcome = writer.write(&batch).await.unwrap();
    assert_eq!((outcome.jobs, outcome.stale), (5, 0));
    // The same batch again (a redelivery after a crash before the broker commit): every message is stale.
    let again = writer.write(&batch).await.unwrap();
    assert_eq!((again.jobs, again.stale), (0, 5));
    assert_eq!(jobs_and_distinct_seqs(&db.pool).await, (5, 5));
    assert_eq!(stored_offset(&db.pool, "orders", 0).await, Some(5));
}

fn raw(topic: &str, offset: i64, payload: serde_json::Value) -> herald::bridge::RawMessage {
    herald::bridge::RawMessage {
        topic: topic.into(),
        partition: 0,
        offset,
        key: None,
        headers: Vec::new(),
        payload: Some(payload.to_string().into_bytes()),
        problem: None,
    }
}

/// A value the database refuses that routing did not catch must not stall the partition: the batch is stored
/// message by message and the refused one dead-lettered.
#[tokio::test]
async fn a_message_the_database_refuses_is_dead_lettered_alone() {
    let db = TestDb::new().await;
    let settings = bridge_settings("unused:9092", vec![job_route("orders", "kafka", "k")]);
    let writer = herald::app::App::on_pool(settings, db.pool.clone())
        .unwrap()
        .bridge_writer()
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_three() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.payload->>'seq' = '3' THEN
           RAISE EXCEPTION 'bad value' USING ERRCODE = '22023'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_three BEFORE INSERT ON herald_jobs FOR EACH ROW EXECUTE FUNCTION refuse_three();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let batch: Vec<_> = (0..6)
        .map(|seq| raw("orders", seq, json!({ "seq": seq })))
        .collect();
    let error = writer.write(&batch).await.unwrap_err();
    assert!(herald::bridge::store::is_refused_data(&error), "{error}");
    let outcome = writer.write_isolating(&batch).await.unwrap();
    assert_eq!(outcome.jobs, 5);
    assert_eq!(outcome.dead_lettered, [("orders".to_string(), 1)].into());
    assert_eq!(stored_offset(&db.pool, "orders", 0).await, Some(6));
    let query = DeadLetterQuery {
        limit: 10,
        ..Default::default()
    };
    let letters = dead_letters::list(&db.pool, &query).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].offset, 3);
    assert!(
        letters[0].error.contains("bad value"),
        "{}",
        letters[0].error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_latest_is_pinned_in_postgres_and_skips_only_older_messages() {
    let cluster = mock_cluster(&[("news", 1)]);
    let brokers = cluster.bootstrap_servers();
    let db = TestDb::new().await;
    let producer = producer(&brokers);
    for seq in 0..10 {
        producer.send_json("news", Some(0), &json!({ "seq": seq }));
    }
    producer.flush();
    let mut settings = bridge_settings(&brokers, vec![job_route("news", "kafka", "k")]);
    settings.bridge.start_from = herald::bridge::StartFrom::Latest;
    let engine = herald::app::App::on_pool(settings.clone(), db.pool.clone())
        .unwrap()
        .engine;
    let bridge = RunningBridge::start(settings, db.pool.clone(), engine);
    wait_until(
        Duration::from_secs(30),
        "the start pinned at the end",
        || async { stored_offset(&db.pool, "news", 0).await == Some(10) },
    )
    .await;
    for seq in 10..15 {
        producer.send_json("news", Some(0), &json!({ "seq": seq }));
    }
    producer.flush();
    wait_until(
        Duration::from_secs(30),
        "the new messages stored",
        || async { stored_offset(&db.pool, "news", 0).await == Some(15) },
    )
    .await;
    bridge.stop().await;
    assert_eq!(jobs_and_distinct_seqs(&db.pool).await, (5, 5));
}

/// An identity topic keeps profiles current: each message creates or replaces its recipient (the latest message
/// for an id wins), a bad profile is dead-lettered naming its field, and the offsets move with the profiles.
#[tokio::test]
async fn an_identity_topic_keeps_recipient_profiles_current() {
    let db = TestDb::new().await;
    let route = herald::bridge::RouteSettings {
        topic: "identity".into(),
        target: "recipient".into(),
        key: Some("/user_id".into()),
        ..Default::default()
    };
    let settings = bridge_settings("unused:9092", vec![route]);
    let writer = herald::app::App::on_pool(settings, db.pool.clone())
        .unwrap()
        .bridge_writer()
        .unwrap();
    let batch = vec![
        raw(
            "identity",
            0,
            json!({ "user_id": "u1", "email": "old@example.com" }),
        ),
        raw(
            "identity",
            1,
            json!({ "user_id": "u2", "phone": "+14155550100", "timezone": "America/Chicago" }),
        ),
        raw(
            "identity",
            2,
            json!({ "user_id": "u3", "email": "not an address" }),
        ),
        raw(
            "identity",
            3,
            json!({ "user_id": "u1", "email": "new@example.com", "data": { "plan": "pro" } }),
        ),
    ];
    let outcome = writer.write(&batch).await.unwrap();
    assert_eq!(outcome.recipients, 2);
    assert_eq!(outcome.dead_lettered, [("identity".to_string(), 1)].into());
    assert_eq!(stored_offset(&db.pool, "identity", 0).await, Some(4));
    let u1 = herald::recipients::store::get(&db.pool, "u1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u1.email.as_deref(), Some("new@example.com"));
    assert_eq!(u1.data.0, json!({ "plan": "pro" }));
    let u2 = herald::recipients::store::get(&db.pool, "u2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u2.timezone.as_deref(), Some("America/Chicago"));
    assert!(
        herald::recipients::store::get(&db.pool, "u3")
            .await
            .unwrap()
            .is_none()
    );
    let letters = dead_letters::list(
        &db.pool,
        &DeadLetterQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(letters[0].error.contains("email"), "{:?}", letters[0].error);
}
